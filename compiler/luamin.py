"""Local renaming for the Lua bundle: every local variable of a chunk gets a short name.

Why: Istio's ``TrafficExtension`` caps ``lua.inlineCode`` at 65,536 characters and issue 28 wants
every bundle a non-failover filter needs within 56 KiB (docs/performance.md, "Bundle sizes").
Comments and spaces are gone already (:func:`compiler.luabundle.strip`); the long, readable local
names are what is left to shrink. Local and upvalue names are debug information in LuaJIT:
``string.dump(f, true)`` drops them, so renaming them leaves a chunk's stripped bytecode byte for
byte the same (tests/test_luamin.py proves it for every module and for tricky snippets). What the
filter does cannot change; only the text of a Lua runtime error that names a local (``attempt to
index local 'a'``) does, and no output of llmc is built from such a text (the filter answers
with its own messages and logs ``tostring`` of caught errors only; docs/performance.md).

How: a Lua 5.1/LuaJIT tokenizer (:func:`tokenize`: long strings and comments ``[==[ ]==]``, every
escape form, numbers with hex, exponents and LuaJIT's ``LL``/``ULL``/``i`` suffixes) and a parser
that only tracks scopes (:func:`analyze`): every name token that reads or writes a variable is tied
to its declaration (``local`` statements, whose names are in scope only after the statement, so
``local x = x`` reads the outer ``x``; ``local function f``, visible in its own body; parameters;
numeric and generic ``for`` variables, visible only in the body; ``repeat ... until c``, where ``c``
sees the body's locals) or, with no declaration, is a global. Field names after ``.``/``:``,
table-constructor keys ``{name = ...}``, ``goto``/label names and globals are never renamed;
the implicit ``self`` of ``function t:m()`` keeps its name.

Names (:func:`rename`): declarations, most-used first, take the first short name that is not a
keyword, not a global (or any other name) the chunk keeps, and not held by a declaration it
conflicts with. A scope is a token range, from where the name becomes visible to the end of its
block; two declarations may share a name when their scopes are disjoint (``function(a) end``
beside ``function(a) end``), or when one holds the other and the outer one is not used inside the
inner one's scope (a function's locals take the names of module-level locals it does not use;
``local a = 1 local a = a + 1``).

Then adjacent ``local`` statements with as many expressions as names join into one
(``local a = x local b = y`` becomes ``local a,b=x,y``) where no expression reads a local the run
declares: LuaJIT compiles both to the same instructions, which the same proof checks.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from dataclasses import dataclass, field
from itertools import product

__all__ = ["KEYWORDS", "Decl", "Token", "analyze", "minify", "minify_chunk", "rename", "tokenize"]

#: Lua 5.1's reserved words and LuaJIT's ``goto``.
KEYWORDS = frozenset(
    "and break do else elseif end false for function goto if in local nil not or repeat return then true "
    "until while".split())

# hex with optional fraction and binary exponent, or decimal with exponent; LuaJIT's suffixes
_NUMBER = re.compile(r"(?:0[xX](?:[0-9a-fA-F]*\.?[0-9a-fA-F]*)(?:[pP][+-]?[0-9]+)?"
                     r"|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)(?:[uU]?[lL][lL]|[iI])?")
_LONG_OPEN = re.compile(r"\[(=*)\[")


@dataclass(frozen=True)
class Token:
    kind: str  # name, keyword, number, string, op
    text: str
    pos: int


# One pass over the source: white space, comments (long ones with their level of ``=``), names,
# numbers, quoted strings (a backslash escapes any character, a newline included; ``\z`` skips
# the white space after it, line breaks included: Lua 5.2, LuaJIT), long strings, operators.
_TOKEN = re.compile(r"""
    (?P<ws>[ \t\r\n\f\v]+)
  | (?P<long_comment>--\[(?P<ceq>=*)\[.*?\](?P=ceq)\])
  | (?P<comment>--[^\n]*)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<number>""" + _NUMBER.pattern + r""")
  | (?P<string>"(?:[^"\\\n]|\\z\s*|\\[\s\S])*"|'(?:[^'\\\n]|\\z\s*|\\[\s\S])*')
  | (?P<long_string>\[(?P<seq>=*)\[.*?\](?P=seq)\])
  | (?P<op>\.\.\.|\.\.|==|~=|<=|>=|::|.)
""", re.S | re.X)


def tokenize(src: str) -> list[Token]:
    """The tokens of Lua source ``src`` (comments and white space dropped); an unterminated
    string, long string or long comment is refused."""
    out: list[Token] = []
    for m in _TOKEN.finditer(src):
        kind, text = m.lastgroup, m.group(m.lastgroup or 0)
        if kind in ("ws", "long_comment"):
            continue
        if kind == "comment":
            if _LONG_OPEN.match(src, m.start() + 2):
                raise ValueError(f"unterminated long comment at offset {m.start()}")
            continue
        if kind == "op" and (text in "\"'" or (text == "[" and _LONG_OPEN.match(src, m.start()))):
            what = "string" if text in "\"'" else "long string"
            raise ValueError(f"unterminated {what} at offset {m.start()}")
        if kind == "name":
            out.append(Token("keyword" if text in KEYWORDS else "name", text, m.start()))
        elif kind == "long_string":
            out.append(Token("string", text, m.start()))
        else:
            out.append(Token(kind or "op", text, m.start()))
    return out


@dataclass
class Decl:
    """One declared local: its name, the token range where it is visible (``start`` to ``end``,
    token indices, inclusive) and the tokens that name it (its declaration first)."""
    name: str
    start: int
    end: int = -1
    token: int | None = None  # the declaring token (none for the implicit ``self``)
    uses: list[int] = field(default_factory=list)  # the tokens that read or write it, in order
    fixed: bool = False  # the implicit ``self``: its name cannot change

    @property
    def refs(self) -> list[int]:
        """Every token naming it: its declaration and its uses."""
        return ([] if self.token is None else [self.token]) + self.uses


@dataclass
class _Local:
    """A ``local`` statement with as many expressions as names (``local a, b = x, y``): its first
    token (``local``), its ``=``, its last token, and what it declares."""
    first: int
    eq: int
    last: int
    decls: list[Decl]


class _Parser:
    """A recursive-descent Lua 5.1 (+ ``goto``) parser that records scopes, not a syntax tree."""

    def __init__(self, tokens: list[Token]) -> None:
        self.t = tokens
        self.i = 0
        self.scopes: list[list[Decl]] = []
        self.decls: list[Decl] = []
        self.globals: set[str] = set()
        self.locals: list[_Local] = []
        # each token's text where it is an operator or keyword (what check compares), then an end
        self.keys: list[str | None] = [t.text if t.kind in ("op", "keyword") else None for t in tokens] + [None, None]

    # -- tokens
    def peek(self, k: int = 0) -> Token | None:
        j = self.i + k
        return self.t[j] if j < len(self.t) else None

    def check(self, text: str) -> bool:
        return self.keys[self.i] == text

    def accept(self, text: str) -> bool:
        if self.keys[self.i] == text:
            self.i += 1
            return True
        return False

    def expect(self, text: str) -> None:
        if not self.accept(text):
            tok = self.peek()
            raise ValueError(f"expected {text!r} near {tok.text if tok else '<eof>'!r} "
                             f"(offset {tok.pos if tok else -1})")

    def name(self) -> int:
        tok = self.peek()
        if tok is None or tok.kind != "name":
            raise ValueError(f"expected a name near {tok.text if tok else '<eof>'!r}")
        self.i += 1
        return self.i - 1

    # -- scopes
    def open(self) -> None:
        self.scopes.append([])

    def close(self, end: int) -> None:
        for d in self.scopes.pop():
            d.end = end

    def declare(self, index: int, start: int, fixed: bool = False) -> Decl:
        d = Decl(self.t[index].text, start, token=index, fixed=fixed)
        self.scopes[-1].append(d)
        self.decls.append(d)
        return d

    def use(self, index: int) -> None:
        text = self.t[index].text
        for scope in reversed(self.scopes):
            for d in reversed(scope):
                if d.name == text and d.start <= index:
                    d.uses.append(index)
                    return
        self.globals.add(text)

    # -- grammar
    def chunk(self) -> None:
        self.open()
        self.block()
        if self.peek() is not None:
            raise ValueError(f"unexpected {self.peek().text!r} (offset {self.peek().pos})")  # type: ignore[union-attr]
        self.close(len(self.t) - 1)

    def block(self) -> None:
        while True:
            tok = self.peek()
            if tok is None or (tok.kind == "keyword" and tok.text in ("end", "else", "elseif", "until")):
                return
            if self.accept("return"):
                if not (self.peek() is None or self.check(";") or self.check("end") or self.check("else")
                        or self.check("elseif") or self.check("until")):
                    self.explist()
                self.accept(";")
                continue
            self.statement()

    def scoped_block(self, closer: str) -> None:
        self.open()
        self.block()
        self.close(self.i)
        self.expect(closer)

    def statement(self) -> None:
        if self.accept(";") or self.accept("break"):
            return
        if self.accept("::"):
            self.name()  # a label: its own namespace, never renamed
            self.expect("::")
        elif self.accept("goto"):
            self.name()
        elif self.accept("do"):
            self.scoped_block("end")
        elif self.accept("while"):
            self.expr()
            self.expect("do")
            self.scoped_block("end")
        elif self.accept("repeat"):
            self.open()  # until's condition sees the body's locals
            self.block()
            self.expect("until")
            self.expr()
            self.close(self.i - 1)
        elif self.accept("if"):
            self.expr()
            self.expect("then")
            self.open()
            self.block()
            self.close(self.i)
            while self.accept("elseif"):
                self.expr()
                self.expect("then")
                self.open()
                self.block()
                self.close(self.i)
            if self.accept("else"):
                self.open()
                self.block()
                self.close(self.i)
            self.expect("end")
        elif self.accept("for"):
            self.for_statement()
        elif self.accept("function"):
            self.use(self.name())
            method = False
            while self.check(".") or self.check(":"):
                method = self.peek().text == ":"  # type: ignore[union-attr]
                self.i += 1
                self.name()  # a field
                if method:
                    break
            self.funcbody(method)
        elif self.accept("local"):
            if self.accept("function"):
                n = self.name()
                self.declare(n, n)  # visible in its own body
                self.funcbody(False)
            else:
                first = self.i - 1
                names = [self.name()]
                while self.accept(","):
                    names.append(self.name())
                eq, count = self.i, 0
                if self.accept("="):
                    count = self.explist()
                decls = [self.declare(n, self.i) for n in names]  # in scope only after it: ``local x = x``
                if count == len(names):
                    self.locals.append(_Local(first, eq, self.i - 1, decls))
        else:
            self.suffixedexp()
            if self.check(",") or self.check("="):
                while self.accept(","):
                    self.suffixedexp()
                self.expect("=")
                self.explist()

    def for_statement(self) -> None:
        names = [self.name()]
        if self.accept("="):
            self.expr()
            self.expect(",")
            self.expr()
            if self.accept(","):
                self.expr()
        else:
            while self.accept(","):
                names.append(self.name())
            self.expect("in")
            self.explist()
        self.expect("do")
        self.open()  # the loop variables: in the body only
        for n in names:
            self.declare(n, self.i)
        self.scoped_block("end")
        self.close(self.i - 1)

    def funcbody(self, method: bool) -> None:
        self.expect("(")
        self.open()
        params: list[int] = []
        if not self.check(")"):
            while True:
                if self.accept("..."):
                    break
                params.append(self.name())
                if not self.accept(","):
                    break
        self.expect(")")
        if method:
            self_decl = Decl("self", self.i, fixed=True)
            self.scopes[-1].append(self_decl)
            self.decls.append(self_decl)
        for p in params:
            self.declare(p, self.i)
        self.block()
        self.close(self.i)
        self.expect("end")

    def explist(self) -> int:
        self.expr()
        count = 1
        while self.accept(","):
            self.expr()
            count += 1
        return count

    _BINOPS = frozenset(["+", "-", "*", "/", "%", "^", "..", "==", "~=", "<", "<=", ">", ">=", "and", "or"])

    def expr(self) -> None:
        while self.accept("not") or self.accept("-") or self.accept("#"):
            pass
        self.simpleexp()
        while True:
            tok = self.peek()
            if tok is None or tok.kind not in ("op", "keyword") or tok.text not in self._BINOPS:
                return
            self.i += 1
            while self.accept("not") or self.accept("-") or self.accept("#"):
                pass
            self.simpleexp()

    def simpleexp(self) -> None:
        tok = self.peek()
        if tok is None:
            raise ValueError("unexpected end of chunk in an expression")
        if tok.kind in ("number", "string") or (tok.kind == "keyword" and tok.text in ("nil", "true", "false")):
            self.i += 1
        elif self.accept("..."):
            pass
        elif self.accept("function"):
            self.funcbody(False)
        elif self.check("{"):
            self.table()
        else:
            self.suffixedexp()

    def suffixedexp(self) -> None:
        if self.accept("("):
            self.expr()
            self.expect(")")
        else:
            self.use(self.name())
        while True:
            if self.accept("."):
                self.name()  # a field
            elif self.accept("["):
                self.expr()
                self.expect("]")
            elif self.accept(":"):
                self.name()  # a method: a field
                self.args()
            elif self.check("(") or self.check("{") or (self.peek() is not None and self.peek().kind == "string"):  # type: ignore[union-attr]
                self.args()
            else:
                return

    def args(self) -> None:
        if self.check("{"):
            self.table()
        elif self.peek() is not None and self.peek().kind == "string":  # type: ignore[union-attr]
            self.i += 1
        else:
            self.expect("(")
            if not self.check(")"):
                self.explist()
            self.expect(")")

    def table(self) -> None:
        self.expect("{")
        while not self.check("}"):
            if self.accept("["):
                self.expr()
                self.expect("]")
                self.expect("=")
                self.expr()
            elif (self.peek() is not None and self.peek().kind == "name"  # type: ignore[union-attr]
                  and self.peek(1) is not None and self.peek(1).text == "=" and self.peek(1).kind == "op"):  # type: ignore[union-attr]
                self.i += 2  # ``{name = ...}``: a key, never renamed
                self.expr()
            else:
                self.expr()
            if not (self.accept(",") or self.accept(";")):
                break
        self.expect("}")


def analyze(src: str) -> tuple[list[Token], list[Decl], frozenset[str]]:
    """The tokens of chunk ``src``, its declarations (each with the tokens naming it) and the global
    names it reads or writes."""
    tokens = tokenize(src)
    p = _Parser(tokens)
    p.chunk()
    return tokens, p.decls, frozenset(p.globals)


def _short_names():
    """a, b, ..., Z, then two characters and more (never a digit first)."""
    first = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_"
    rest = first + "0123456789"
    yield from first
    size = 1
    while True:
        for head in first:
            for tail in product(rest, repeat=size):
                yield head + "".join(tail)
        size += 1


def _conflict(d: Decl, e: Decl) -> bool:
    """Whether ``d`` and ``e`` cannot share a name. Scopes follow blocks, so two of them are
    disjoint (no conflict) or one holds the other; the inner one then hides the outer one in its
    range, which is harmless unless the outer one is used there (that use would resolve to the
    inner one). ``local a = 1 local a = a + 1`` is fine: the second ``a``'s scope starts after
    its statement. Equal scopes (``local a, b``) share a name only when neither is used."""
    if d.end < e.start or e.end < d.start:
        return False
    d_holds_e = d.start <= e.start and e.end <= d.end
    e_holds_d = e.start <= d.start and d.end <= e.end
    if not (d_holds_e or e_holds_d):
        return True  # not nested: cannot happen for Lua's blocks; never share
    return (d_holds_e and _any_in(d.uses, e.start, e.end)) or (e_holds_d and _any_in(e.uses, d.start, d.end))


def _any_in(uses: list[int], lo: int, hi: int) -> bool:
    k = bisect_left(uses, lo)
    return k < len(uses) and uses[k] <= hi


def rename(decls: list[Decl], keep: frozenset[str]) -> dict[int, str]:
    """A new name for each renamable declaration (by its index in ``decls``): most-referenced
    first, the first short name that is not in ``keep`` (keywords, globals, fixed names) and that
    no declaration it conflicts with (:func:`_conflict`) already has."""
    holders: dict[str, list[Decl]] = {}
    for d in decls:
        if d.fixed:
            holders.setdefault(d.name, []).append(d)
    order = sorted((i for i, d in enumerate(decls) if not d.fixed),
                   key=lambda i: (-len(decls[i].uses), decls[i].start))
    out: dict[int, str] = {}
    for i in order:
        d = decls[i]
        for name in _short_names():
            if name in keep or name in KEYWORDS:
                continue
            if any(_conflict(d, e) for e in holders.get(name, ())):
                continue
            holders.setdefault(name, []).append(d)
            out[i] = name
            break
    return out


def minify(src: str) -> str:
    """``src`` with every local renamed (:func:`rename`) and adjacent ``local`` statements joined
    (:func:`_mergeable`); everything else, white space included, kept as it is."""
    return minify_chunk(src)[0]


def minify_chunk(src: str) -> tuple[str, frozenset[str]]:
    """:func:`minify` of ``src``, and the global names it reads or writes (unchanged)."""
    tokens = tokenize(src)
    p = _Parser(tokens)
    p.chunk()
    keep = frozenset(p.globals) | {d.name for d in p.decls if d.fixed}
    names = rename(p.decls, keep)
    edits = sorted((tokens[r].pos, len(tokens[r].text), names[i]) for i, d in enumerate(p.decls) if i in names
                   for r in d.refs)

    def renamed(start: int, end: int) -> str:
        """``src[start:end]`` with the renames inside it applied."""
        out, last = [], start
        for pos, size, new in edits[bisect_left(edits, (start, 0, "")):]:
            if pos >= end:
                break
            out += [src[last:pos], new]
            last = pos + size
        return "".join(out) + src[last:end]

    def end_of(t: int) -> int:
        return tokens[t].pos + len(tokens[t].text)

    out, last = [], 0
    for group in _mergeable(p.locals):
        start = tokens[group[0].first].pos
        out.append(renamed(last, start))
        out.append("local " + ",".join(renamed(tokens[st.first + 1].pos, end_of(st.eq - 1)) for st in group) + "="
                   + ",".join(renamed(tokens[st.eq + 1].pos, end_of(st.last)) for st in group))
        last = end_of(group[-1].last)
    out.append(renamed(last, len(src)))
    return "".join(out), frozenset(p.globals)


def _mergeable(statements: list[_Local]) -> list[list[_Local]]:
    """Runs of adjacent ``local`` statements, each with as many expressions as names, none of whose
    expressions reads a local an earlier one of the run declares: ``local a = x local b = y``
    becomes ``local a, b = x, y``, which LuaJIT compiles to the same bytecode (each value to the next
    register, calls truncated to one value, left to right); ``local a = x local b = a`` stays."""
    runs: list[list[_Local]] = []
    for st in statements:
        run = runs[-1] if runs else None
        if (run is not None and st.first == run[-1].last + 1
                and not any(_any_in(d.uses, st.first, st.last) for prev in run for d in prev.decls)):
            run.append(st)
        else:
            runs.append([st])
    return [run for run in runs if len(run) > 1]
