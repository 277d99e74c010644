"""YAML flow text for plain data: how the tests write inputs with arbitrary strings."""

from __future__ import annotations

from typing import Any

from compiler.emit import yaml_quote


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
