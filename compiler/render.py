"""Stage 6, render: lay view-models out with the jinja templates and parse the result back.

Every value reaches YAML through :func:`to_flow` (the ``q`` filter), which writes YAML flow
syntax with double-quoted strings escaped for YAML, so no user string can change the document's
structure. Rendered text is parsed back at once; a parse failure is an llmc bug, never a user error.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import jinja2
from ruamel.yaml import YAML

# The C loader (ruamel.yaml.clib) when installed: parsing back is most of render's time.
_LOADER = YAML(typ="safe")
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r", "\0": "\\0"}


def yaml_quote(text: str) -> str:
    """A YAML double-quoted scalar that loads back as exactly ``text``."""
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


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("llmc_templates", ""),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
    )
    env.filters["q"] = to_flow
    return env


def render_object(template: str, view: dict) -> dict:
    text = environment().get_template(template).render(o=view)
    try:
        obj = _LOADER.load(text)
    except Exception as exc:  # pragma: no cover - would be a template bug
        raise RuntimeError(f"internal error: template {template} produced invalid YAML: {exc}\n{text}") from exc
    if not isinstance(obj, dict):  # pragma: no cover
        raise RuntimeError(f"internal error: template {template} did not produce a mapping")
    return obj
