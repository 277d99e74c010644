"""Stage 2, schema: check raw documents against the CRD schema and build typed API objects.

The schema is the structural schema generated from :mod:`compiler.api` (the one in the CRDs), so a
document that passes here is one the API server accepts. The fast path validates with the
pydantic models themselves in strict mode (the schema is generated from them); only a document
they reject is checked with jsonschema, whose errors become diagnostics with stable codes and the
user's line/column. (jsonschema on every document was a fifth of render time on large meshes.)
"""

from __future__ import annotations

import difflib
import re
from typing import Any

from jsonschema import Draft202012Validator
from pydantic import ValidationError

from .api import OBJECT_MODELS, LLMProvider, LLMRoute
from .crds import object_schema
from .diagnostics import Diagnostics
from .load import Document

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

_TYPE_NAMES = {"string": "a string", "integer": "an integer", "boolean": "a boolean (true/false)",
               "object": "a mapping", "array": "a list", "number": "a number"}


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return "null"


def _validators() -> dict[str, Draft202012Validator]:
    return {kind: Draft202012Validator(object_schema(kind)) for kind in OBJECT_MODELS}


_VALIDATORS: dict[str, Draft202012Validator] | None = None


def validate_metadata(doc: Document, diags: Diagnostics) -> bool:
    meta = doc.data.get("metadata")
    ok = True
    if not isinstance(meta, dict):
        diags.error("LLMC103", "metadata with a name is required", **doc.where(("metadata",)))
        return False
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        diags.error("LLMC103", "metadata.name is required", **doc.where(("metadata", "name")))
        ok = False
    elif len(name) > 253 or not DNS_SUBDOMAIN.fullmatch(name):
        diags.error("LLMC105", f"invalid name {name!r}: must be a lowercase RFC 1123 subdomain "
                    "(a-z, 0-9, '-', '.'; at most 253 characters)", **doc.where(("metadata", "name")))
        ok = False
    ns = meta.get("namespace")
    if not isinstance(ns, str) or len(ns) > 63 or not DNS_LABEL.fullmatch(ns):
        diags.error("LLMC105", f"invalid namespace {ns!r}: must be an RFC 1123 label",
                    **doc.where(("metadata", "namespace")))
        ok = False
    return ok


def validate_document(doc: Document, diags: Diagnostics, metadata_checked: bool = False) -> bool:
    """Report every schema violation of ``doc``; True when it is valid."""
    global _VALIDATORS
    if _VALIDATORS is None:
        _VALIDATORS = _validators()
    ok = metadata_checked or validate_metadata(doc, diags)
    for err in sorted(_VALIDATORS[doc.kind].iter_errors(doc.data), key=lambda e: list(map(str, e.path))):
        ok = False
        path = tuple(err.absolute_path)
        validator = err.validator
        if validator == "additionalProperties":
            known = sorted(err.schema.get("properties", {}))
            extra = sorted(set(err.instance) - set(known))
            for key in extra:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"known fields: {', '.join(known)}"
                diags.error("LLMC101", f"unknown field {key!r}", **doc.where(path + (key,)), hint=hint)
        elif validator == "type":
            expected = err.validator_value
            hint = ""
            if expected == "string" and isinstance(err.instance, bool | int | float):
                hint = ("YAML reads unquoted yes/no/on/off/true/false as booleans and digits as numbers, "
                        "as kubectl does: quote the value as you wrote it, e.g. \"yes\" or \"1.5\"")
            diags.error("LLMC102", f"expected {_TYPE_NAMES.get(expected, expected)}, got "
                        f"{_json_type(err.instance)}", **doc.where(path), hint=hint)
        elif validator == "required":
            missing = [k for k in err.validator_value if k not in err.instance]
            for key in missing:
                diags.error("LLMC103", f"missing required field {key!r}", **doc.where(path + (key,)))
        elif validator == "minItems" and err.validator_value == 1:
            diags.error("LLMC103", "must have at least one entry", **doc.where(path))
        else:
            diags.error("LLMC104", f"invalid value: {err.message}", **doc.where(path))
    return ok


def check_document(doc: Document, diags: Diagnostics) -> LLMProvider | LLMRoute | None:
    """The typed API object, or None after reporting every schema violation of ``doc``."""
    if not validate_metadata(doc, diags):
        validate_document(doc, diags, metadata_checked=True)
        return None
    try:
        return OBJECT_MODELS[doc.kind].model_validate(doc.data, strict=True)
    except ValidationError as exc:
        if validate_document(doc, diags, metadata_checked=True):
            # The models and the generated schema disagree: still report, never crash.
            for e in exc.errors():
                diags.error("LLMC104", f"invalid value: {e['msg']}", **doc.where(tuple(e["loc"])))
        return None
