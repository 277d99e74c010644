"""A serializer from plain data (what :func:`json.loads` returns) to a Lua table constructor.

On a waypoint the Lua filter has no per-route context (istiod's ``BuildHTTPLuaFilter`` sets only the
default source code), so the route table reaches the script as one generated expression inside its
source. Only data is generated, never code: every string is a quoted literal whose bytes outside
printable ASCII (and ``"`` and ``\\``) are decimal escapes, so the output is ASCII whatever the input
holds and reads back as the same bytes (``tests/test_ambient.py`` round-trips it through LuaJIT).
Keys are bare when they are Lua names that are not reserved words (``model=``), else ``["key"]=``,
so no key can be mistaken for syntax; lists are array constructors
(Lua's 1-based sequence, as Envoy hands a protobuf list to a filter); ``None`` is left out (nil).
"""

from __future__ import annotations

import math
import re

_PLAIN = re.compile(rb'[ !#-\[\]-~]*')  # printable ASCII but " and \
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Lua 5.1's reserved words: never a bare key
KEYWORDS = frozenset("and break do else elseif end false for function if in local nil not or repeat return then "
                     "true until while".split())


def lua_key(key: str) -> str:
    """A table key: bare when it is a Lua name (``model=``), else bracketed and quoted (``["x-y"]=``)."""
    return key if _NAME.fullmatch(key) and key not in KEYWORDS else f"[{lua_string(key)}]"


def lua_string(text: str) -> str:
    raw = text.encode("utf-8")
    if _PLAIN.fullmatch(raw):
        return '"' + raw.decode("ascii") + '"'
    out = []
    for b in raw:
        c = chr(b)
        out.append(c if 32 <= b < 127 and c not in '"\\' else f"\\{b:03d}")
    return '"' + "".join(out) + '"'


def lua_value(value: object) -> str:
    if value is None:
        raise ValueError("None has no Lua table value (leave the key out)")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if abs(value) > 2 ** 53:
            raise ValueError(f"{value} is beyond a Lua number's exact range")
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value} has no Lua literal")
        return repr(value)
    if isinstance(value, str):
        return lua_string(value)
    if isinstance(value, list | tuple):
        return "{" + ",".join(lua_value(v) for v in value) + "}"
    if isinstance(value, dict):
        items = [f"{lua_key(str(k))}={lua_value(v)}" for k, v in sorted(value.items()) if v is not None]
        return "{" + ",".join(items) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as Lua data")
