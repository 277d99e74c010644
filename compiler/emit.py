"""Stage 7, emit: objects → a deterministic multi-document YAML (or JSON List) stream.

A small block-style YAML writer for the plain data the pipeline produces (dicts, lists, strings,
ints, floats, bools, None). It is ~30× faster than ruamel's pure-Python emitter, which dominated
render time on large meshes, and its rules are few enough to state:

* key order is the templates' order (what Istio's docs show); objects are sorted by the caller;
* a string is written plain only when it is unambiguously a string in YAML 1.1 *and* 1.2 (a
  conservative pattern, minus words like ``yes``/``null``); otherwise double-quoted with
  :func:`yaml_quote`'s escapes; multi-line text without special characters (the Lua
  source) is a literal block, so ``kubectl get -o yaml`` diffs stay readable;
* empty mappings and lists are ``{}`` and ``[]``.

Every emitted document is loaded back in the tests and must equal the object (property-tested).
"""

from __future__ import annotations

import json
import re
from typing import Any

_PLAIN = re.compile(r"^[A-Za-z_/][A-Za-z0-9_./@-]*(?: [A-Za-z0-9_./@()-]+)*$")
_RESERVED = frozenset(
    "y n yes no on off true false null ~ .nan .inf -.inf".split()
)
_NEEDS_ESCAPE = frozenset("\x85\u2028\u2029\ufeff") | frozenset(
    chr(c) for c in [*range(0x20), *range(0x7F, 0xA0)] if c != 0x0A)


_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r", "\0": "\\0"}
#: printable ASCII without '"' and '\\': the same text in a YAML or JSON double-quoted string
SIMPLE_QUOTED = re.compile(r'^[ !#-\[\]-~]*$')


def yaml_quote(text: str) -> str:
    """A YAML double-quoted scalar that loads back as exactly ``text``."""
    if SIMPLE_QUOTED.fullmatch(text):
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


def _string(text: str, cache: dict[str, str]) -> str:
    out = cache.get(text)
    if out is None:
        plain = _PLAIN.fullmatch(text) and text.lower() not in _RESERVED
        out = cache[text] = text if plain else yaml_quote(text)
    return out


def _scalar(value: Any, cache: dict[str, str]) -> str:
    if isinstance(value, str):
        return _string(value, cache)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    return _string(str(value), cache)


def _literal_ok(text: str) -> bool:
    """Literal blocks hold no escapes: no tabs, no trailing blanks, no special characters."""
    if "\t" in text or text.startswith((" ", "\n")) or text.endswith("\n\n") or not text.endswith("\n"):
        return False
    if any(line != line.rstrip(" ") for line in text.split("\n")):
        return False
    return _NEEDS_ESCAPE.isdisjoint(text.replace("\n", ""))


def _literal(text: str, indent: int) -> list[str]:
    pad = " " * indent
    return [(pad + line) if line else "" for line in text[:-1].split("\n")]


def _node(value: Any, indent: int, out: list[str], prefix: str, cache: dict[str, str]) -> None:
    """Append ``value`` as block YAML at column ``indent`` (a mapping's keys, a list's dashes);
    ``prefix`` is the text before it on its first line."""
    if isinstance(value, dict) and value:
        pad = " " * indent
        head = prefix
        for key, item in value.items():
            _entry(_string(key, cache) if isinstance(key, str) else _scalar(key, cache),
                   item, indent, out, head, cache)
            head = pad
    elif isinstance(value, list) and value:
        head = prefix
        pad = " " * indent
        for item in value:  # the dash at `indent`, the item's content two columns right of it
            _node(item, indent + 2, out, head + "- ", cache)
            head = pad
    elif isinstance(value, str) and "\n" in value and _literal_ok(value):
        out.append(prefix + "|")
        out.extend(_literal(value, indent))
    else:
        out.append(prefix + ("{}" if isinstance(value, dict) else "[]" if isinstance(value, list)
                             else _scalar(value, cache)))


def _entry(key: str, item: Any, indent: int, out: list[str], head: str, cache: dict[str, str]) -> None:
    """One ``key: item`` of a mapping at ``indent``; ``head`` precedes the key on its line."""
    if isinstance(item, dict) and item:
        out.append(f"{head}{key}:")
        _node(item, indent + 2, out, " " * (indent + 2), cache)
    elif isinstance(item, list) and item:
        out.append(f"{head}{key}:")
        _node(item, indent, out, " " * indent, cache)
    elif isinstance(item, str) and "\n" in item and _literal_ok(item):
        out.append(f"{head}{key}: |")
        out.extend(_literal(item, indent + 2))
    else:
        out.append(f"{head}{key}: " + ("{}" if isinstance(item, dict) else "[]" if isinstance(item, list)
                                        else _scalar(item, cache)))


def iter_yaml(objects: list[dict]):
    """One YAML document (``---`` first) per object, so large outputs can be written as they go."""
    cache: dict[str, str] = {}
    for obj in objects:
        out: list[str] = ["---"]
        _node(obj, 0, out, "", cache)
        yield "\n".join(out) + "\n"


def dump_yaml(objects: list[dict]) -> str:
    return "".join(iter_yaml(objects))


def dump_json(objects: list[dict]) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}, indent=2,
                      ensure_ascii=False, default=_json_default) + "\n"


def _json_default(value: Any) -> Any:
    """Timestamps in passed-through objects (YAML 1.1 reads ``2024-01-01`` as a date): ISO 8601
    text, as kubectl's YAML-to-JSON conversion writes them."""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
