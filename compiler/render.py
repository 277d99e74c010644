"""Stage 6, render: lay view-models out with the jinja templates and parse the result back.

Templates are JSON (a subset of YAML): every value reaches a template through the ``q`` filter,
which JSON-encodes it, so no user string can change the document's structure; the rendered text
is parsed back at once with ``json.loads`` (a parse failure is an llmc bug, never a user error).
JSON rather than YAML templates because parsing every object back with a YAML loader was most of
``render``'s time on large meshes (docs/performance.md).
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import jinja2

from .emit import SIMPLE_QUOTED


def _json(value: Any) -> str:
    if isinstance(value, str) and SIMPLE_QUOTED.fullmatch(value):
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
