"""The Lua filter's source: the modules under ``templates/lua/llmc/`` bundled into one string.

Envoy's Lua filter runs one inline source per filter config, so the modules (each a file returning a
table, loaded with ``require("llmc.<name>")``) are joined at render time: each becomes a
``package.preload`` function, and the bundle returns ``require("llmc.main")`` (the public surface
``M``; ``main`` also defines the globals ``envoy_on_request``/``envoy_on_response``). Running the
bundle again in the same Lua state loads every module afresh (it clears ``package.loaded``), as
executing the old single file did.

A filter gets only what it needs (:func:`modules_for`): ``main`` and its static ``require`` closure
(scanner, context, request, usage); ``failover`` only where a rule fails over; ``keys`` only where a
provider has several keys; a translator module
(``llmc.<format>``, with ``values``) only for the formats of the providers it serves. ``main`` and
``request`` find the optional modules through ``package.preload`` at load time, never by name of a
protocol.

The bundle drops comments, blank lines, indentation, and the spaces and line breaks that separate no
tokens (a line break stays where a space would have to), gives every local a short name and joins
adjacent ``local`` statements (:func:`compiler.luamin.minify`: the stripped bytecode is
unchanged, tests/test_luamin.py proves it) and is ASCII only, so its size in bytes is its size in characters (Istio's
``TrafficExtension`` caps ``lua.inlineCode`` in characters; issue 28 wants every bundle a filter
without failover needs within 56 KiB). Both are checked here, for every module, every time.

There is one bundle: the minified one Envoy gets is what ``llmc render`` emits and what
``llmc explain`` runs (it reads the emitted filter). No switch renders a readable variant: renaming
changes no bytecode, so the committed modules are the readable form, and nothing user-visible
names a local (docs/performance.md, "Bundle sizes"). Each module is minified once per process
(:func:`minified`, cached by source), each bundle once per module set (:func:`bundle`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cache
from importlib import resources

from . import luamin

__all__ = ["ENTRY", "bundle", "bundle_modules", "closure", "minified", "module_names", "module_source",
           "modules_for", "requires", "requires_of", "strip"]

#: The entry module: envoy_on_request / envoy_on_response and the public surface.
ENTRY = "main"
_REQUIRE = re.compile(r'\brequire\("llmc\.(\w+)"\)')


@cache
def module_names() -> tuple[str, ...]:
    """Every module under templates/lua/llmc/, sorted."""
    root = resources.files("llmc_templates.lua").joinpath("llmc")
    return tuple(sorted(p.name.removesuffix(".lua") for p in root.iterdir() if p.name.endswith(".lua")))


@cache
def module_source(name: str) -> str:
    """The source of module ``name`` as committed (comments included)."""
    return resources.files("llmc_templates.lua").joinpath("llmc", f"{name}.lua").read_text(encoding="utf-8")


def requires_of(source: str) -> frozenset[str]:
    """The modules a module's ``source`` loads with a literal ``require("llmc.x")`` (when it loads)."""
    return frozenset(_REQUIRE.findall(strip(source)))


@cache
def requires(name: str) -> frozenset[str]:
    """The modules module ``name`` requires (:func:`requires_of`)."""
    return requires_of(module_source(name))


def closure(names: Iterable[str]) -> frozenset[str]:
    """``names`` and everything they require, transitively."""
    todo, seen = list(names), set()
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        if n not in module_names():
            raise ValueError(f"no Lua module llmc.{n} (templates/lua/llmc/{n}.lua)")
        seen.add(n)
        todo.extend(requires(n))
    return frozenset(seen)


def modules_for(formats: Iterable[str] = (), failover: bool = False, keys: bool = False) -> frozenset[str]:
    """The modules a filter needs: ``main`` with its closure, the translator of each translated
    ``format`` its providers speak (a module named like the format; OpenAI's is spliced by the
    scanner, so it has none), ``failover`` when one of its rules fails over, and ``keys`` when one of
    its providers has several keys (docs/api-keys.md)."""
    wanted = {ENTRY}
    wanted.update(f for f in formats if f in module_names() and f not in (ENTRY, "keys"))
    if failover:
        wanted.add("failover")
    if keys:
        wanted.add("keys")
    return closure(wanted)


# ---- stripping ---------------------------------------------------------------------------------

_LONG_OPEN = re.compile(r"\[(=*)\[")


def _word(c: str) -> bool:
    return c.isascii() and (c.isalnum() or c == "_")


def _needs_space(prev: str, nxt: str) -> bool:
    """Whether a space between two characters of code separates tokens: two word characters
    (``local x``), ``- -`` (not a comment), ``.`` beside a digit or ``.`` (``1 ..``), ``[ [``/``[ =``."""
    if _word(prev) and _word(nxt):
        return True
    if prev == "-" and nxt == "-":
        return True
    if prev in ".0123456789" and nxt in ".0123456789" and "." in (prev, nxt):
        return True
    return prev == "[" and nxt in "[="


def strip(source: str) -> str:
    """``source`` without comments, blank lines, indentation and the spaces and line breaks between
    tokens that separate nothing (``a = f(x, y)`` becomes ``a=f(x,y)``, and ``f(x)`` on one line and ``end`` on the next
    ``f(x)end``). Strings are kept byte for byte;
    a string that spans lines (a long bracket or a backslash-newline) is refused, since stripping
    indentation would change it (no module has one)."""
    out: list[str] = []
    i, n = 0, len(source)
    line: list[str] = []

    def end_line() -> None:
        text = "".join(line).strip()
        if text:
            out.append(text)
        line.clear()

    while i < n:
        c = source[i]
        if c == "\n":
            end_line()
            i += 1
        elif c == "-" and source.startswith("--", i):
            m = _LONG_OPEN.match(source, i + 2)
            if m:  # --[[ ... ]] / --[==[ ... ]==]
                close = source.find("]" + m.group(1) + "]", m.end())
                if close < 0:
                    raise ValueError("unterminated long comment")
                i = close + len(m.group(1)) + 2
            else:
                nl = source.find("\n", i)
                i = n if nl < 0 else nl
        elif c in "\"'":
            j = i + 1
            while j < n and source[j] != c:
                if source[j] == "\\":
                    if j + 1 < n and source[j + 1] == "\n":
                        raise ValueError("a string continued over a line break")
                    j += 2
                    continue
                if source[j] == "\n":
                    raise ValueError("unterminated string")
                j += 1
            line.append(source[i:j + 1])
            i = j + 1
        elif c == "[" and _LONG_OPEN.match(source, i):
            raise ValueError("a long string ([[...]]) in a module: stripping would change it")
        elif c in " \t":
            j = i
            while j < n and source[j] in " \t":
                j += 1
            prev = line[-1][-1] if line else ""
            if prev and j < n and _needs_space(prev, source[j]):
                line.append(" ")
            i = j
        else:
            line.append(c)
            i += 1
    end_line()
    # a line break separates tokens only where a space would have to (``end`` / ``local``); elsewhere
    # (``)`` / ``end``) the statements join: Lua needs no separator between statements, and a line
    # starting with ``(`` after an expression does not compile, so no join makes a new call
    text = out[0] if out else ""
    for piece in out[1:]:
        text += ("\n" if _needs_space(text[-1], piece[0]) else "") + piece
    return text + "\n"


@cache
def _minified(source: str) -> tuple[str, frozenset[str]]:
    text, free = luamin.minify_chunk(strip(source))
    return text, free


def minified(source: str) -> str:
    """``source`` stripped (:func:`strip`) and with its locals renamed (:func:`compiler.luamin.minify`):
    what the bundle carries of a module. Cached: each module is minified once per process."""
    return _minified(source)[0]


# ---- bundling ----------------------------------------------------------------------------------

#: The bundle's own locals (the preload table, the loaded table, the function that registers a
#: module): a module's chunk must not read a global of these names, or it would read these.
_WRAPPER = ("P", "L", "M")
_HEAD = 'local P,L=package.preload,package.loaded\nlocal function M(n,f)n="llmc."..n P[n],L[n]=f,nil end'


def bundle_modules(sources: dict[str, str]) -> str:
    """The bundle of the given module sources (name -> source, comments included), in name order:
    each module's minified chunk becomes the body of a ``package.preload`` function (registered
    by ``M``, which also clears the module from ``package.loaded``)."""
    parts = [_HEAD]
    for name in sorted(sources):
        text, free = _minified(sources[name])
        clash = sorted(free & set(_WRAPPER))
        if clash:
            raise ValueError(f"module llmc.{name} reads the global(s) {clash}, which the bundle's own locals would hide")
        parts.append(f'M("{name}",function(...)\n{text}end)')
    parts.append(f'return require("llmc.{ENTRY}")\n')
    text = "\n".join(parts)
    bad = sorted({c for c in text if ord(c) > 127})
    if bad:
        raise ValueError(f"the Lua bundle must be ASCII (bytes = characters); found {bad!r}")
    return text


@cache
def bundle(modules: frozenset[str] | None = None) -> str:
    """The source a filter carries: ``modules`` (default: every module) with their requires."""
    names = closure(module_names() if modules is None else modules | {ENTRY})
    text = bundle_modules({n: module_source(n) for n in names})
    assert len(text.encode("ascii")) == len(text)
    return text
