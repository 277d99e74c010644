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
from ruamel.yaml.scalarstring import LiteralScalarString


def _prepare(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _prepare(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_prepare(v) for v in value]
    if isinstance(value, str) and "\n" in value and _literal_safe(value):
        return LiteralScalarString(value)
    return value


def _literal_safe(text: str) -> bool:
    """Literal blocks cannot hold trailing spaces on lines or most control characters faithfully."""
    if any(line != line.rstrip(" \t") for line in text.split("\n")):
        return False
    return all(ch == "\n" or ch == "\t" or 0x20 <= ord(ch) < 0x7F or ord(ch) > 0xA0 for ch in text)


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
