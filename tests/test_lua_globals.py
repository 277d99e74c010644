"""A static check of every Lua module (templates/lua/llmc/*.lua): which globals its bytecode reads.

The strict runtime of tests/support/lua.py raises on a read of an undefined global, but only on the
paths a test runs: the one-request-path merge left ``failover_accept`` reading an undefined ``endpoint``
(gen_ai.operation.name silently lost) because no unit test took that path. This check compiles each
module with LuaJIT (lupa) and walks every function prototype's bytecode through ``jit.util``: each
GGET (a global read) must name a global of a fresh LuaJIT state, and no module but ``main`` (its two entry
points) may GSET (write a global). Nothing runs, so every path is covered.
"""

from __future__ import annotations

import pytest
from lupa import luajit21

from compiler.luabundle import module_names, module_source

#: Walks the prototypes of a chunk: returns the names its GGET and GSET instructions take. The opcodes
#: are found by compiling a probe (LuaJIT's opcode numbers differ between versions; jit.vmdef, which
#: names them, is not in lupa's LuaJIT).
WALKER = """
local ju = require("jit.util")
local band, rshift = bit.band, bit.rshift

local function ops(fn, out)
  local info = ju.funcinfo(fn)
  for pc = 1, info.bytecodes - 1 do
    local ins = ju.funcbc(fn, pc)
    local d = rshift(ins, 16)
    local k = ju.funck(fn, -d - 1)
    out[#out + 1] = { band(ins, 0xff), type(k) == "string" and k or false }
  end
  for i = 0, info.gcconsts - 1 do
    local k = ju.funck(fn, -i - 1)
    if type(k) == "proto" then ops(k, out) end
  end
  return out
end

local function opcode(src, name)
  for _, op in ipairs(ops(assert(loadstring(src)), {})) do
    if op[2] == name then return op[1] end
  end
  error("probe failed for " .. name)
end

local GGET = opcode("return llmc_probe_get", "llmc_probe_get")
local GSET = opcode("llmc_probe_set = 1", "llmc_probe_set")

return function(src, chunkname)
  local fn, err = loadstring(src, chunkname)
  if not fn then error(err) end
  local reads, writes = {}, {}
  for _, op in ipairs(ops(fn, {})) do
    if op[1] == GGET then reads[#reads + 1] = op[2] end
    if op[1] == GSET then writes[#writes + 1] = op[2] end
  end
  return reads, writes
end
"""

_LUA = luajit21.LuaRuntime(unpack_returned_tuples=True)
_WALK = _LUA.execute(WALKER)
#: What a module may read: the globals of a fresh LuaJIT state, Lua's and LuaJIT's standard library
#: (Envoy's Lua filter opens the same libraries; it defines no globals of its own).
STDLIB = frozenset(str(k) for k in luajit21.LuaRuntime().globals().keys())


def globals_of(source: str, name: str = "=chunk") -> tuple[set[str], set[str]]:
    """The global names ``source``'s bytecode reads and writes (every function, nested ones too)."""
    reads, writes = _WALK(source, name)
    return set(reads.values()), set(writes.values())


def test_the_check_finds_a_read_in_a_nested_function():
    """The defect it is for: a local missing in a function that only one path calls."""
    src = """
local M = {}
function M.accept(md)
  local function inner() return OPERATIONS[endpoint] end
  return inner()
end
return M
"""
    reads, writes = globals_of(src)
    assert reads == {"OPERATIONS", "endpoint"} and writes == set()
    assert globals_of("x = 1; return string.len(y)") == ({"string", "y"}, {"x"})


def test_the_check_finds_the_defect_fixed_on_main():
    """failover.lua as merged (before 0b96a3f) read ``endpoint`` without a local of that name."""
    src = module_source("failover").replace("local usage, first, first_path, endpoint = validate(",
                                            "local usage, first, first_path = validate(")
    assert src != module_source("failover")
    reads, _ = globals_of(src)
    assert "endpoint" in reads


@pytest.mark.parametrize("name", sorted(module_names()))
def test_a_module_reads_only_the_standard_library(name):
    reads, writes = globals_of(module_source(name), "=" + name)
    assert reads - STDLIB == set(), f"llmc.{name} reads undefined globals"
    assert writes == ({"envoy_on_request", "envoy_on_response"} if name == "main" else set())
