"""CRDs for LLMProvider and LLMRoute, generated from the pydantic models in :mod:`compiler.api`.

pydantic emits JSON Schema with ``$ref``/``anyOf``; Kubernetes wants *structural* OpenAPI v3
schemas (every node typed, no refs, nullable expressed by omission). :func:`structural` converts.
The same structural spec schema is used by :mod:`compiler.schema` to check raw documents, so what
the API server accepts and what ``llmc validate`` accepts cannot drift apart; ``schemas/`` holds the
rendered CRDs and a test fails if they differ from :func:`render_crds`.
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

from .api import SPEC_MODELS
from .constants import GROUP as API_GROUP
from .constants import SERVED_VERSIONS as API_VERSIONS

_KEEP = ("type", "description", "properties", "items", "additionalProperties", "required", "enum",
         "minimum", "maximum", "minLength", "maxLength", "pattern", "minItems", "maxItems", "default")

PLURALS = {"LLMProvider": "llmproviders", "LLMRoute": "llmroutes"}
SHORT_NAMES = {"LLMProvider": ["llmp"], "LLMRoute": ["llmr"]}
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
        {"name": "Programmed", "type": "string",
         "jsonPath": ".status.conditions[?(@.type==\"Programmed\")].status"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
}


def structural(node: Any, defs: dict[str, Any]) -> Any:
    """Inline ``$ref``s, collapse ``Optional`` unions, drop keys Kubernetes does not accept."""
    if isinstance(node, dict):
        if "$ref" in node:
            target = defs[node["$ref"].rsplit("/", 1)[-1]]
            merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
            return structural(merged, defs)
        if "anyOf" in node:
            options = [o for o in node["anyOf"] if o.get("type") != "null"]
            if len(options) != 1:
                raise ValueError(f"cannot express union in a structural schema: {node}")
            merged = {**options[0], **{k: v for k, v in node.items() if k != "anyOf"}}
            return structural(merged, defs)
        if "const" in node:
            node = {**{k: v for k, v in node.items() if k != "const"}, "enum": [node["const"]]}
        out: dict[str, Any] = {}
        for key in _KEEP:
            if key not in node:
                continue
            value = node[key]
            if key == "properties":
                out[key] = {k: structural(v, defs) for k, v in value.items()}
            elif key in ("items", "additionalProperties") and isinstance(value, dict):
                out[key] = structural(value, defs)
            elif key == "default" and value is None:
                continue
            else:
                out[key] = copy.deepcopy(value)
        if "properties" in out or node.get("type") == "object" and "additionalProperties" not in out:
            out.setdefault("type", "object")
        return out
    return node


@cache
def spec_schema(kind: str) -> dict[str, Any]:
    raw = SPEC_MODELS[kind].model_json_schema(mode="validation")
    schema = structural(raw, raw.get("$defs", {}))
    return schema


def object_schema(kind: str) -> dict[str, Any]:
    """Schema of a whole object, as the API server sees it (metadata checked elsewhere)."""
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema(kind),
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        },
        "additionalProperties": False,
    }


def crd(kind: str) -> dict[str, Any]:
    plural = PLURALS[kind]
    status_schema = {
        "type": "object",
        "description": "Written by `llmc controller`.",
        "x-kubernetes-preserve-unknown-fields": True,
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
                      "categories": ["llmc"]},
            "scope": "Namespaced",
            "versions": versions,
        },
    }


def render_crds() -> dict[str, str]:
    """File name → YAML text, as committed under ``schemas/``."""
    from .emit import dump_yaml

    return {f"{PLURALS[k]}.yaml": dump_yaml([crd(k)]) for k in ("LLMProvider", "LLMRoute")}
