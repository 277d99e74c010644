"""LuaJIT's stripped bytecode of a chunk, in a canonical form: what the proof that renaming locals
changes no code (tests/test_luamin.py) compares.

``string.dump(f, true)`` drops the debug information (line numbers, local and upvalue names), so
two chunks that differ only in local names dump the same bytes, with one exception: a table
constant (``{ a = 1, b = true }``) is written in the order of its hash part, and LuaJIT 2.1 seeds
its string hash per Lua state, so even one source dumps its table constants' keys in different
orders from run to run. :func:`stripped_bytecode` reads the dump (lj_bcdump.h's format, version 2)
and writes every table constant's hash part sorted; every other byte is kept as dumped."""

from __future__ import annotations

from lupa import luajit21

_DUMP = """function(src)
  return (string.dump(assert(loadstring(src)), true):gsub(".", function(c) return string.format("%02x", c:byte()) end))
end"""
_KGC_CHILD, _KGC_TAB, _KGC_STR = 0, 1, 5
_KTAB_INT, _KTAB_NUM, _KTAB_STR = 3, 4, 5
_FLAG_STRIP = 2


class _Reader:
    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data, self.pos = data, pos

    def take(self, n: int) -> bytes:
        out = self.data[self.pos:self.pos + n]
        if len(out) != n:
            raise ValueError("truncated LuaJIT dump")
        self.pos += n
        return out

    def uleb(self) -> int:
        value, shift = 0, 0
        while True:
            b = self.take(1)[0]
            value |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return value

    def span(self, read) -> bytes:  # type: ignore[no-untyped-def]
        start = self.pos
        read()
        return self.data[start:self.pos]


def _ktabk(r: _Reader) -> None:
    t = r.uleb()
    if t >= _KTAB_STR:
        r.take(t - _KTAB_STR)
    elif t == _KTAB_INT:
        r.uleb()
    elif t == _KTAB_NUM:
        r.uleb()
        r.uleb()


def _proto(body: bytes) -> bytes:
    """One prototype's bytes (stripped) with its table constants' hash parts sorted."""
    r = _Reader(body)
    _flags, _params, _frame, numuv = r.take(4)
    numkgc, _numkn, numbc = r.uleb(), r.uleb(), r.uleb()
    out = bytearray(body[:r.pos])
    out += r.take(4 * numbc + 2 * numuv)
    for _ in range(numkgc):
        kind = r.uleb()
        out += bytes(_uleb(kind))
        if kind >= _KGC_STR:
            out += r.take(kind - _KGC_STR)
        elif kind == _KGC_TAB:
            narray, nhash = r.uleb(), r.uleb()
            out += _uleb(narray) + _uleb(nhash)
            for _ in range(narray):
                out += r.span(lambda: _ktabk(r))
            pairs = [r.span(lambda: (_ktabk(r), _ktabk(r))) for _ in range(nhash)]
            out += b"".join(sorted(pairs))
        elif kind != _KGC_CHILD:  # I64, U64: two words; COMPLEX: four
            words = 2 if kind < 4 else 4
            out += r.span(lambda: [r.uleb() for _ in range(words)])  # noqa: B023 (called at once)
    # the rest: the numkn number constants, nothing else (a stripped dump has no debug part)
    return bytes(out + body[r.pos:])


def _uleb(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def canonical(dump: bytes) -> bytes:
    """A stripped LuaJIT dump with every table constant's hash part in sorted order."""
    r = _Reader(dump)
    if r.take(3) != b"\x1bLJ":
        raise ValueError("not a LuaJIT dump")
    out = bytearray(dump[:4])
    r.take(1)  # version
    flags = r.uleb()
    if not flags & _FLAG_STRIP:
        raise ValueError("the dump keeps its debug information (string.dump(f, true) drops it)")
    out += _uleb(flags)
    while True:
        size = r.uleb()
        out += _uleb(size)
        if size == 0:
            return bytes(out)
        out += _proto(r.take(size))


_RUNTIME = None


def stripped_bytecode(src: str) -> bytes:
    """The canonical (:func:`canonical`) stripped LuaJIT bytecode of chunk ``src``."""
    global _RUNTIME
    if _RUNTIME is None:
        _RUNTIME = luajit21.LuaRuntime().eval(_DUMP)
    return canonical(bytes.fromhex(_RUNTIME(src)))
