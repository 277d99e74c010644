"""Golden file comparison with one update switch and a unified diff on mismatch."""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import pytest

from compiler.luabundle import bundle

_BLOCK = re.compile(r"^( *)inline_string: \|[-+]?\n((?:\1  .*\n|\n)+)", re.M)
_INLINE = re.compile(r"^( *)inlineCode: \|[-+]?\n((?:\1  .*\n|\n)+)", re.M)
_MODULE = re.compile(r'^M\("(\w+)",function', re.M)
MARKER = re.compile(r"<llmc\.lua modules=([\w,]+)>")


def lua_marker(modules) -> str:
    """The line a golden shows for a Lua bundle of ``modules``: which modules the filter carries."""
    return f"<llmc.lua modules={','.join(sorted(modules))}>"


def mask_lua(text: str) -> str:
    """Replace each emitted Lua bundle (compiler/luabundle.py) by one marker line naming its modules,
    so goldens pin the configuration around it and which modules each filter gets (a Lua change
    rewrites no golden). A block that is not exactly today's bundle of those modules is left as it
    is, so the golden comparison shows it."""
    def sub(m: re.Match) -> str:
        indent = m.group(1) + "  "
        body = "".join(line[len(indent):] if line.strip() else "\n" for line in m.group(2).splitlines(True))
        modules = frozenset(_MODULE.findall(body))
        if not modules or body.rstrip("\n") != bundle(modules).rstrip("\n"):
            return m.group(0)
        return f"{m.group(1)}inline_string: {lua_marker(modules)}\n"
    return _INLINE.sub(_mask_inline_code, _BLOCK.sub(sub, text))


def _mask_inline_code(m: re.Match) -> str:
    """A TrafficExtension's inline code (ambient target): the bundle becomes its marker (the modules it
    carries) and ``ambient.lua`` one of its own; the generated route table stays (it is what the golden
    pins). Left as it is unless both are today's."""
    from compiler.translate.trafficextension import TABLE_CALL, WRAP_HEAD, WRAP_TAIL, ambient_source

    indent = m.group(1) + "  "
    body = "".join(line[len(indent):] if line.strip() else "\n" for line in m.group(2).splitlines(True))
    if not body.startswith(WRAP_HEAD) or WRAP_TAIL not in body:
        return m.group(0)
    lua, rest = body[len(WRAP_HEAD):].split(WRAP_TAIL, 1)
    modules = frozenset(_MODULE.findall(lua))
    head = ambient_source() + TABLE_CALL
    if lua != bundle(modules) or not rest.startswith(head):
        return m.group(0)
    table = rest[len(head):]
    return (f"{m.group(1)}inlineCode: |\n{indent}{lua_marker(modules)}\n{indent}<ambient.lua>\n"
            + "".join(f"{indent}{line}\n" for line in table.splitlines()))


def check_golden(path: Path, actual: str, update: bool) -> None:
    if update:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual, encoding="utf-8")
        return
    if not path.exists():
        pytest.fail(f"missing golden file {path}; run `task golden:update` (pytest --update-golden)")
    expected = path.read_text(encoding="utf-8")
    if expected != actual:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), actual.splitlines(True),
                                            str(path), "actual"))
        pytest.fail(f"output differs from {path} (update with `task golden:update`):\n{diff[:20000]}")
