"""Stage 6, render: lay view-models out with the jinja templates and parse the result back.

Templates are JSON (a subset of YAML): every value reaches a template through the ``q`` filter,
which JSON-encodes it, so no user string can change the document's structure; the rendered text
is parsed back at once with ``json.loads`` (a parse failure is an llmc bug, never a user error).
JSON rather than YAML templates because parsing every object back with a YAML loader was most of
``render``'s time on large meshes (README, "Performance").

:func:`yaml_quote` and :func:`to_flow` are the YAML quoting the emitter uses for strings that
cannot be written plain; both are property-tested to round-trip.
"""

from __future__ import annotations

import json
import re
from functools import cache
from typing import Any

import jinja2

_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r", "\0": "\\0"}
_SIMPLE = re.compile(r'^[ !#-\[\]-~]*$')  # printable ASCII without '"' and '\\'


def yaml_quote(text: str) -> str:
    """A YAML double-quoted scalar that loads back as exactly ``text``."""
    if _SIMPLE.fullmatch(text):
        return f'"{text}"'
    out = []
    for ch in text:
        code = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif code < 0x20 or 0x7F <= code <= 0x9F:
            out.append(f"\\x{code:02x}")
        elif code in (0x2028, 0x2029, 0xFEFF) or 0xD800 <= code <= 0xDFFF or code in (0xFFFE, 0xFFFF):
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def to_flow(value: Any) -> str:
    """YAML flow text for plain data (used for test inputs and anything written inline)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return yaml_quote(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{yaml_quote(str(k))}: {to_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(to_flow(v) for v in value) + "]"
    raise TypeError(f"cannot render {type(value).__name__} into YAML")


def _json(value: Any) -> str:
    if isinstance(value, str) and _SIMPLE.fullmatch(value):
        return f'"{value}"'  # the common case, without json.dumps' call overhead
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("llmc_templates", ""),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
    )
    env.filters["q"] = _json
    return env


def render_object(template: str, view: dict) -> dict:
    text = environment().get_template(template).render(o=view)
    try:
        obj = json.loads(text)
    except ValueError as exc:  # pragma: no cover - would be a template bug
        raise RuntimeError(f"internal error: template {template} produced invalid JSON: {exc}\n{text}") from exc
    if not isinstance(obj, dict):  # pragma: no cover
        raise RuntimeError(f"internal error: template {template} did not produce an object")
    return obj
