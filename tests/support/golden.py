"""Golden file comparison with one update switch and a unified diff on mismatch."""

from __future__ import annotations

import difflib
import hashlib
import re
from pathlib import Path

import pytest

from compiler.translate.envoyfilter import lua_source

_BLOCK = re.compile(r"^( *)inline_string: \|[-+]?\n((?:\1  .*\n|\n)+)", re.M)
_INLINE = re.compile(r"^( *)inlineCode: \|[-+]?\n((?:\1  .*\n|\n)+)", re.M)


def lua_marker() -> str:
    return f"<llmc.lua sha256:{hashlib.sha256(lua_source().encode()).hexdigest()[:16]}>"


def mask_lua(text: str) -> str:
    """Replace each emitted copy of templates/lua/llmc.lua by one marker line, so goldens pin the
    configuration around it (a one-line Lua change rewrites no golden). A block that is not exactly
    today's source is left as it is, so the golden comparison shows it."""
    def sub(m: re.Match) -> str:
        indent = m.group(1) + "  "
        body = "".join(line[len(indent):] if line.strip() else "\n" for line in m.group(2).splitlines(True))
        if body.rstrip("\n") != lua_source().rstrip("\n"):
            return m.group(0)
        return f"{m.group(1)}inline_string: {lua_marker()}\n"
    return _INLINE.sub(_mask_inline_code, _BLOCK.sub(sub, text))


def _mask_inline_code(m: re.Match) -> str:
    """A TrafficExtension's inline code (ambient target): the bundle and ``ambient.lua`` become markers,
    the generated route table stays (it is what the golden pins). Left as it is unless both are today's."""
    from compiler.translate.trafficextension import ambient_source, bundle

    indent = m.group(1) + "  "
    body = "".join(line[len(indent):] if line.strip() else "\n" for line in m.group(2).splitlines(True))
    head, tail = "local llmc_bundle = (function()\n", "\nend)()\nreturn (function(...)\n"
    code = bundle() + tail + ambient_source() + "\nend)("
    if not body.startswith(head + code):
        return m.group(0)
    table = body[len(head + code):]
    digest = hashlib.sha256(code.encode()).hexdigest()[:16]
    return f"{m.group(1)}inlineCode: |\n{indent}<llmc bundle and ambient.lua sha256:{digest}>\n" + "".join(
        f"{indent}{line}\n" for line in table.splitlines())


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
