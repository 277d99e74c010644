"""CRDs for LLMProvider and LLMRoute, generated from the pydantic models in :mod:`compiler.api`.

pydantic emits JSON Schema with ``$ref``/``anyOf``; Kubernetes wants *structural* OpenAPI v3
schemas (every node typed, no refs, nullable expressed by omission). :func:`structural` converts,
in one of two flavours from the same models:

* ``strict=False`` — the CRD schema, by the API server's rules (apiextensions ``validation.go``):
  ``properties`` and ``additionalProperties`` are mutually exclusive, so a closed object carries no
  ``additionalProperties: false`` and relies on the server's pruning of unknown fields; maps use
  ``additionalProperties`` alone. Cross-field rules travel as CEL ``x-kubernetes-validations``
  declared on the models (``json_schema_extra``), with list-type annotations.
* ``strict=True`` — the schema :mod:`compiler.schema` checks raw documents with: the same types and
  bounds, plus ``additionalProperties: false`` on closed objects, so ``llmc render`` reports an
  unknown field (LLMC101) where the API server would silently prune it. CEL annotations are left out
  (the resolve stage reports those rules with located diagnostics).

``schemas/`` and ``deploy/crds/`` hold the rendered CRDs; a test fails if they differ from
:func:`render_crds`, and ``tests/support/crd_rules.py`` checks them by the API server's rules.
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

from .api import SPEC_MODELS
from .constants import GROUP as API_GROUP
from .constants import KINDS, PLURALS, SOURCE_KINDS
from .constants import SERVED_VERSIONS as API_VERSIONS

_KEEP = ("type", "description", "properties", "items", "additionalProperties", "required", "enum",
         "minimum", "maximum", "minLength", "maxLength", "pattern", "minItems", "maxItems", "maxProperties", "default",
         "x-kubernetes-list-type", "x-kubernetes-list-map-keys", "x-kubernetes-validations")
_KUBE_ONLY = ("x-kubernetes-list-type", "x-kubernetes-list-map-keys", "x-kubernetes-validations")
CATEGORIES = ["llmc", "istio-io"]

SHORT_NAMES = {k.kind: list(k.short_names) for k in SOURCE_KINDS}
PRINTER_COLUMNS = {
    "LLMProvider": [
        {"name": "Host", "type": "string", "jsonPath": ".spec.host"},
        {"name": "Path", "type": "string", "jsonPath": ".spec.path"},
        {"name": "Programmed", "type": "string",
         "jsonPath": ".status.conditions[?(@.type==\"Programmed\")].status"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
    "LLMRoute": [
        {"name": "Host", "type": "string", "jsonPath": ".spec.host"},
        {"name": "Gateways", "type": "string", "jsonPath": ".spec.gateways", "priority": 1},
        {"name": "Programmed", "type": "string",
         "jsonPath": ".status.conditions[?(@.type==\"Programmed\")].status"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
}


# metav1.Condition, as the API server's own types declare it (k8s.io/apimachinery meta/v1).
CONDITIONS_SCHEMA: dict[str, Any] = {
    "type": "array",
    "description": "Accepted, ResolvedRefs and Programmed, written by `llmc controller`.",
    "maxItems": 8,
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
    "items": {
        "type": "object",
        "required": ["type", "status", "lastTransitionTime", "reason", "message"],
        "properties": {
            "type": {"type": "string", "maxLength": 316,
                     "pattern": r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                                r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"},
            "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0},
            "lastTransitionTime": {"type": "string", "format": "date-time"},
            "reason": {"type": "string", "minLength": 1, "maxLength": 1024,
                       "pattern": r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"},
            "message": {"type": "string", "maxLength": 32768},
        },
    },
}


def structural(node: Any, defs: dict[str, Any], strict: bool = False) -> Any:
    """Inline ``$ref``s, collapse ``Optional`` unions, drop keys Kubernetes does not accept.

    ``strict`` keeps ``additionalProperties: false`` on closed objects (for the compiler's own check)
    and drops the Kubernetes-only annotations; without it the result is a CRD schema."""
    if isinstance(node, dict):
        if "$ref" in node:
            target = defs[node["$ref"].rsplit("/", 1)[-1]]
            merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
            return structural(merged, defs, strict)
        if "anyOf" in node:
            options = [o for o in node["anyOf"] if o.get("type") != "null"]
            if len(options) != 1:
                raise ValueError(f"cannot express union in a structural schema: {node}")
            merged = {**options[0], **{k: v for k, v in node.items() if k != "anyOf"}}
            return structural(merged, defs, strict)
        if "const" in node:
            node = {**{k: v for k, v in node.items() if k != "const"}, "enum": [node["const"]]}
        out: dict[str, Any] = {}
        for key in _KEEP:
            if key not in node or strict and key in _KUBE_ONLY:
                continue
            value = node[key]
            if key == "properties":
                out[key] = {k: structural(v, defs, strict) for k, v in value.items()}
            elif key in ("items", "additionalProperties") and isinstance(value, dict):
                out[key] = structural(value, defs, strict)
            elif key == "default" and value is None:
                continue
            elif key == "additionalProperties" and value is False and not strict:
                continue  # a closed object in a CRD: the API server prunes unknown fields
            else:
                out[key] = copy.deepcopy(value)
        if "properties" in out or node.get("type") == "object" and "additionalProperties" not in out:
            out.setdefault("type", "object")
        return out
    return node


@cache
def spec_schema(kind: str, strict: bool = False) -> dict[str, Any]:
    """The spec's schema: the CRD's (``strict=False``) or the compiler's (``strict=True``)."""
    raw = SPEC_MODELS[kind].model_json_schema(mode="validation")
    return structural(raw, raw.get("$defs", {}), strict)


def object_schema(kind: str) -> dict[str, Any]:
    """Schema of a whole object, as the API server sees it (metadata checked elsewhere)."""
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema(kind, strict=True),
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        },
        "additionalProperties": False,
    }


def crd(kind: str) -> dict[str, Any]:
    plural = PLURALS[kind]
    status_schema = {
        "type": "object",
        "description": "Written by `llmc controller`.",
        "properties": {"conditions": copy.deepcopy(CONDITIONS_SCHEMA)},
    }
    versions = []
    for i, version in enumerate(API_VERSIONS):
        versions.append({
            "name": version,
            "served": True,
            "storage": i == len(API_VERSIONS) - 1,
            "subresources": {"status": {}},
            "additionalPrinterColumns": PRINTER_COLUMNS[kind],
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "description": (SPEC_MODELS[kind].__doc__ or kind).strip().splitlines()[0],
                "required": ["spec"],
                "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "metadata": {"type": "object"},
                    "spec": spec_schema(kind),
                    "status": status_schema,
                },
            }},
        })
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{API_GROUP}",
            "labels": {"app.kubernetes.io/managed-by": "llmc", "app.kubernetes.io/part-of": "llmc"},
        },
        "spec": {
            "group": API_GROUP,
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural,
                      "singular": kind.lower(), "shortNames": SHORT_NAMES[kind],
                      "categories": list(CATEGORIES)},
            "scope": "Namespaced",
            "versions": versions,
        },
    }


def render_crds() -> dict[str, str]:
    """File name → YAML text, as committed under ``schemas/``."""
    from .emit import dump_yaml

    return {f"{PLURALS[k]}.yaml": dump_yaml([crd(k)]) for k in KINDS}
