"""Stage 7, emit: objects → a deterministic multi-document YAML (or JSON List) stream.

Key order is the templates' order (what Istio's docs show), objects are sorted by the caller, and
multi-line strings (the Lua source) become literal blocks so ``kubectl get -o yaml`` diffs stay
readable. The same objects always give the same bytes.
"""

from __future__ import annotations

import io
import json
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.representer import RoundTripRepresenter
from ruamel.yaml.scalarstring import DoubleQuotedScalarString, LiteralScalarString

# Characters YAML 1.1 readers (ruamel's included) treat as line breaks or refuse raw: a scalar
# holding one is emitted double-quoted, where ruamel escapes them (\N, \L, \P, \x..).
_NEEDS_ESCAPE = frozenset("\x85\u2028\u2029\ufeff") | frozenset(map(chr, [*range(0x20), *range(0x7F, 0xA0)])) - {"\n"}


def _prepare(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _prepare(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_prepare(v) for v in value]
    if isinstance(value, str):
        if "\n" in value and _literal_safe(value):
            return LiteralScalarString(value)
        if "\n" in value or not _NEEDS_ESCAPE.isdisjoint(value):
            return DoubleQuotedScalarString(value)
    return value


def _literal_safe(text: str) -> bool:
    """Literal blocks hold no escapes: no trailing blanks on a line, no special characters."""
    if "\t" in text or any(line != line.rstrip(" ") for line in text.split("\n")):
        return False
    return _NEEDS_ESCAPE.isdisjoint(text.replace("\n", ""))


def _yaml() -> YAML:
    y = YAML(typ="rt", pure=True)
    y.default_flow_style = False
    y.width = 4096
    y.indent(mapping=2, sequence=2, offset=0)
    y.Representer = RoundTripRepresenter
    y.explicit_start = False
    return y


def dump_yaml(objects: list[dict]) -> str:
    y = _yaml()
    chunks = []
    for obj in objects:
        buf = io.StringIO()
        y.dump(_prepare(obj), buf)
        chunks.append(buf.getvalue())
    return "---\n" + "---\n".join(chunks) if chunks else ""


def dump_json(objects: list[dict]) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}, indent=2,
                      ensure_ascii=False) + "\n"
