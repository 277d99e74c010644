"""The local-renaming minifier (compiler/luamin.py): its tokenizer, its scopes, and the proof that
renaming changes nothing a filter does: every module's stripped LuaJIT bytecode
(``string.dump(f, true)``, which drops local and upvalue names) is byte for byte the same before
and after, and so is every tricky snippet's here."""

from __future__ import annotations

import pytest

from compiler import luabundle
from compiler.luamin import KEYWORDS, analyze, minify, rename, tokenize
from tests.support.bytecode import stripped_bytecode
from tests.support.lua import strict_runtime

_LUA = strict_runtime()
_RUN = _LUA.eval("function(src) return assert(loadstring(src))() end")


# ---- tokenizer ---------------------------------------------------------------------------------

@pytest.mark.parametrize("src,expected", [
    ("a = [==[x]]y]=]z]==]", ["a", "=", "[==[x]]y]=]z]==]"]),
    ("--[==[ long\n]] comment ]==] b", ["b"]),
    ("-- line comment\nc", ["c"]),
    ("--[ not long\nd", ["d"]),
    (r'x = "a\"b\\" .. ' + "'\\'' .. \"\\065\\x41\\z\n  \\\nq\"", ["x", "=", r'"a\"b\\"', "..", "'\\''", "..",
                                                                   '"\\065\\x41\\z\n  \\\nq"']),
    ("n = 0x1F + 1e10 + 3.5e-2 + .5 + 0x.8p1 + 1ULL + 2LL + 3i + 4.", ["n", "=", "0x1F", "+", "1e10", "+", "3.5e-2",
                                                                     "+", ".5", "+", "0x.8p1", "+", "1ULL", "+",
                                                                     "2LL", "+", "3i", "+", "4."]),
    ("a...b..c==d~=e<=f>=g::h::", ["a", "...", "b", "..", "c", "==", "d", "~=", "e", "<=", "f", ">=", "g", "::",
                                   "h", "::"]),
])
def test_the_tokenizer_reads_lua_51_and_luajit_tokens(src, expected):
    assert [t.text for t in tokenize(src)] == expected


def test_an_unterminated_string_or_long_bracket_is_refused():
    for src in ('x = "abc\n"', "x = [[abc", "--[=[ abc ]]"):
        with pytest.raises(ValueError, match="unterminated"):
            tokenize(src)


# ---- scopes ------------------------------------------------------------------------------------

def _decl_of_each_use(src: str) -> dict[int, str]:
    """token index -> the name of the declaration it resolves to, with the declaration's own token index."""
    tokens, decls, _ = analyze(src)
    return {u: f"{d.name}@{d.token}" for d in decls for u in d.uses}


def test_local_x_equals_x_reads_the_outer_x():
    src = "local x = 1 do local x = x + 1 return x end"
    uses = _decl_of_each_use(src)
    # tokens: local(0) x(1) =(2) 1(3) do(4) local(5) x(6) =(7) x(8) +(9) 1(10) return(11) x(12) end(13)
    assert uses == {8: "x@1", 12: "x@6"}


def test_globals_fields_keys_labels_and_method_names_are_not_locals():
    tokens, decls, globals_ = analyze(
        "local t = { k = 1, [k2] = 2 } t.f = g(t:m(), t.k) ::top:: goto top function t.a.b:c(x) return self.x, x end")
    assert globals_ == {"k2", "g"}
    assert sorted(d.name for d in decls) == ["self", "t", "x"]
    assert [d.fixed for d in decls if d.name == "self"] == [True]


def test_loop_variables_and_repeat_until():
    src = "for i = 1, i do end for k, v in pairs(k) do x = v end repeat local r = 1 until r"
    tokens, decls, globals_ = analyze(src)
    assert {"i", "k", "pairs", "x"} <= globals_ and "r" not in globals_ and "v" not in globals_
    (r,) = [d for d in decls if d.name == "r"]
    assert [tokens[u].text for u in r.uses] == ["r"] and tokens[r.end].text == "r"  # until's condition


def test_local_function_sees_itself_and_local_statements_do_not():
    tokens, decls, globals_ = analyze("local function f(n) return f(n) end local g = function() return g end")
    assert globals_ == {"g"}
    (f,) = [d for d in decls if d.name == "f"]
    assert len(f.uses) == 1


# ---- renaming: the proof ----------------------------------------------------------------------

SNIPPETS = {
    "shadowing": """
        local a, b = 1, 2
        local function f(a) local b = a * 2 do local a = b + 1 b = a end return a + b end
        return f(a) + f(b)""",
    "local x = x": """
        local x = 10
        do local x = x + 1 local x = x * 2 return x, (function() return x end)() end""",
    "repeat-until": """
        local i, out = 0, {}
        repeat local j = i * i i = i + 1 out[#out + 1] = j until j > 50
        return table.concat(out, ",")""",
    "upvalues": """
        local function counter(start)
          local n = start
          return function(step) n = n + (step or 1) return n end, function() return n end
        end
        local inc, get = counter(5)
        inc() inc(3)
        return get()""",
    "methods and fields": """
        local obj = { count = 0, name = "count" }
        function obj:bump(by) self.count = self.count + by return self end
        function obj.static(count) return { count = count, [count] = "count" } end
        local t = obj.static(3)
        return obj:bump(2):bump(1).count + t.count + #t[3]""",
    "varargs": """
        local function pack(...) return select("#", ...), { ... } end
        local function first(a, ...) local rest = { ... } return a, #rest end
        local n, list = pack(1, nil, 3)
        local a, r = first(unpack(list, 1, n))
        return n + a + r""",
    "long strings and comments naming locals": """
        local value = [==[local value = "x" -- ]] ]==] --[[ value = nil ]]
        local other = "value \\"value\\" \\065" .. 'value'
        return value .. other""",
    "numeric and generic for": """
        local sum, keys = 0, {}
        for i = 1, 10, 3 do local i = i * 2 sum = sum + i end
        for k, v in pairs({ a = 1, b = 2 }) do keys[#keys + 1] = k .. v end
        table.sort(keys)
        return sum .. table.concat(keys)""",
    "goto and labels": """
        local n = 0
        ::again::
        n = n + 1
        if n < 3 then goto again end
        return n""",
    "many locals": "\n".join(f"local v{i} = {i}" for i in range(150)) + "\nreturn v0 + v77 + v149",
    "unused locals share a name": "local a = 1 local b = 2 local c = a + 1 return c",
    "adjacent locals joined": """
        local calls = 0
        local function f() calls = calls + 1 return calls, "extra" end
        local first = f() local second = f() local third, fourth = f()
        local t = { first } local u = #t local v = function() return second end
        return first + second + third + u + v() .. fourth""",
}


@pytest.mark.parametrize("name", sorted(SNIPPETS))
def test_renaming_a_snippet_keeps_its_stripped_bytecode_and_its_results(name):
    src = SNIPPETS[name]
    out = minify(src)
    assert out != src or name == "goto and labels"
    assert stripped_bytecode(out) == stripped_bytecode(src)
    assert _RUN(out) == _RUN(src)


@pytest.mark.parametrize("name", sorted(luabundle.module_names()))
def test_renaming_a_module_keeps_its_stripped_bytecode(name):
    """The proof for what Envoy gets: each module as the bundle carries it (stripped and renamed)
    compiles to the same stripped bytecode as its committed source."""
    src = luabundle.module_source(name)
    out = luabundle.minified(src)
    assert stripped_bytecode(out) == stripped_bytecode(src)
    assert len(out) < 0.85 * len(luabundle.strip(src))  # it did rename


def test_a_capture_would_change_the_bytecode():
    """The proof can fail: renaming a parameter to the upvalue it should not hide changes the code."""
    src = "local a = 1 local function f(b) return a + b end return f"
    assert stripped_bytecode(src.replace("(b)", "(a)").replace("a + b", "a + a")) != stripped_bytecode(src)


def test_new_names_are_short_and_never_a_keyword_or_a_global_the_chunk_uses():
    src = "\n".join(f"local v{i} = {i}" for i in range(200)) + "\nreturn a, b, c, _ENV, " + "+".join(
        f"v{i}" for i in range(200))
    _, decls, globals_ = analyze(src)
    names = set(rename(decls, globals_).values())
    assert len(names) == 200 and not names & (KEYWORDS | {"a", "b", "c", "_ENV"})
    assert max(len(n) for n in names) == 2
    out = minify(src)
    assert out.startswith("local ") and out.count("local ") == 1  # one statement: they were adjacent


@pytest.mark.parametrize("src,expected", [
    ("local a = 1 local b = f() local c = {}", "local a,b,c=1,f(),{}"),
    ("local a = 1 local b = a", "local a = 1 local b = a"),  # b reads a: a must be in scope first
    ("local a = 1 local g = function() return a end", "local a = 1 local g = function() return a end"),
    ("local a, b = f() local c = 1", "local a, b = f() local c = 1"),  # f() gives two values here
    ("local a local b = 1", "local a local b = 1"),
    ("local a = 1\nlocal b = 2 x = a + b", "local a,b=1,2 x = a + b"),
])
def test_adjacent_local_statements_are_joined_where_that_changes_nothing(src, expected):
    """Renaming aside (these names are already short): ``local a = x local b = y`` is one statement."""
    out = minify(src)
    assert _shape(out) == _shape(expected)
    assert stripped_bytecode(out) == stripped_bytecode(src)


def _shape(text: str) -> list[str]:
    """The tokens of ``text``, a local's or global's name as "name" (the renamer chooses them)."""
    return [t.kind if t.kind == "name" else t.text for t in tokenize(text)]


def test_a_method_keeps_self_and_no_local_becomes_self():
    out = minify("local t = {} function t:m(x) local y = x return self, y end return t")
    assert "self" in out and "local y" not in out


def test_the_canonical_dump_orders_table_constants_and_keeps_everything_else():
    """LuaJIT seeds its string hash per state: one source dumps a table constant's keys in varying
    order, which tests/support/bytecode.py sorts; a different key or value still differs."""
    src = "return { alpha = 1, beta = true, gamma = 'x', [3] = 2.5, delta = { 1, 2 } }"
    assert stripped_bytecode(src) == stripped_bytecode(src)
    assert stripped_bytecode(src) != stripped_bytecode(src.replace("2.5", "3.5"))
    assert stripped_bytecode(src) != stripped_bytecode(src.replace("beta", "bets"))
