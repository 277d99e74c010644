"""Strict validation of generated objects against Istio's own CRD file (crd-all.gen.yaml).

Mirrors what the API server does with ``kubectl apply --validate=strict``:
* the object's ``apiVersion``/``kind`` must be a served version of an Istio CRD;
* the ``openAPIV3Schema`` is checked with jsonschema, with every object schema closed
  (``additionalProperties: false``) unless it declares ``x-kubernetes-preserve-unknown-fields`` or
  its own ``additionalProperties`` — so an unknown field is an error, not silently pruned;
* every ``x-kubernetes-validations`` CEL rule on a node present in the object is evaluated with
  cel-python (Kubernetes' ``url()``/``isURL()``/``substring()`` extensions are provided; transition
  rules using ``oldSelf`` do not apply to creation and are skipped). A rule that fails to evaluate
  counts as a violation.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import celpy
import yaml
from celpy import celtypes
from jsonschema import Draft202012Validator


def _close(schema: Any) -> Any:
    if isinstance(schema, dict):
        out = {k: _close(v) for k, v in schema.items()}
        if out.get("x-kubernetes-int-or-string"):
            out.pop("type", None)
            out["anyOf"] = out.get("anyOf", []) + [{"type": "integer"}, {"type": "string"}]
        if (out.get("type") == "object" and "properties" in out
                and not out.get("x-kubernetes-preserve-unknown-fields")
                and "additionalProperties" not in out):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_close(v) for v in schema]
    return schema


@cache
def load_crds(path: str) -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) → openAPIV3Schema for every served version."""
    out = {}
    for doc in yaml.safe_load_all(Path(path).read_text()):
        if not doc or doc.get("kind") != "CustomResourceDefinition":
            continue
        group, kind = doc["spec"]["group"], doc["spec"]["names"]["kind"]
        for v in doc["spec"]["versions"]:
            if v.get("served"):
                out[(f"{group}/{v['name']}", kind)] = v["schema"]["openAPIV3Schema"]
    return out


def _url(value: Any) -> Any:
    parsed = urlparse(str(value))
    if not parsed.scheme:
        raise ValueError(f"not a URL: {value}")
    return celtypes.MapType({celtypes.StringType("scheme"): celtypes.StringType(parsed.scheme)})


def _is_url(value: Any) -> celtypes.BoolType:
    try:
        parsed = urlparse(str(value))
        return celtypes.BoolType(bool(parsed.scheme) and bool(parsed.netloc or parsed.path))
    except ValueError:
        return celtypes.BoolType(False)


def _get_scheme(url: Any) -> celtypes.StringType:
    return celtypes.StringType(url[celtypes.StringType("scheme")])


def _substring(s: Any, start: Any, end: Any = None) -> celtypes.StringType:
    text = str(s)
    return celtypes.StringType(text[int(start):] if end is None else text[int(start):int(end)])


FUNCTIONS = {"url": _url, "isURL": _is_url, "getScheme": _get_scheme, "substring": _substring}
_ENV = celpy.Environment()


@cache
def _program(rule: str):
    return _ENV.program(_ENV.compile(rule), functions=FUNCTIONS)


def _cel_errors(schema: dict, value: Any, path: str) -> list[str]:
    errors: list[str] = []
    for v in schema.get("x-kubernetes-validations", []) or []:
        rule = v["rule"]
        if "oldSelf" in rule:
            continue
        try:
            result = _program(rule).evaluate({"self": celpy.json_to_cel(value)})
            ok = bool(result) if isinstance(result, celtypes.BoolType | bool) else False
        except Exception as exc:  # evaluation failure is a failure, never a pass
            ok = False
            rule = f"{rule} (evaluation error: {exc})"
        if not ok:
            errors.append(f"{path or '<root>'}: {v.get('message', 'CEL rule failed')}: {rule}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for k, sub in value.items():
            child = props.get(k) or (extra if isinstance(extra, dict) else None)
            if child:
                errors += _cel_errors(child, sub, f"{path}.{k}" if path else k)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, sub in enumerate(value):
            errors += _cel_errors(schema["items"], sub, f"{path}[{i}]")
    return errors


@cache
def _validator(path: str, api_version: str, kind: str) -> tuple[Draft202012Validator, dict] | None:
    schema = load_crds(path).get((api_version, kind))
    if schema is None:
        return None
    closed = _close(copy.deepcopy(schema))
    # The API server handles these itself; metadata is checked by its own rules (names, labels).
    closed["properties"].update({"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                                 "metadata": {"type": "object"}})
    return Draft202012Validator(closed), schema


def validate(obj: dict, crd_path: str) -> list[str]:
    """Every violation of ``obj`` against the Istio CRDs in ``crd_path`` (empty when valid)."""
    found = _validator(crd_path, obj.get("apiVersion", ""), obj.get("kind", ""))
    if found is None:
        return [f"no served Istio CRD for {obj.get('apiVersion')} {obj.get('kind')}"]
    validator, raw = found
    errors = [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
              for e in validator.iter_errors(obj)]
    return errors + _cel_errors(raw, obj, "")
