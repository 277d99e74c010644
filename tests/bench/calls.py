"""Section "calls": what llmc's Lua filter costs per request, piece by piece, at 1 KiB.

The bench's own copies of the filter: each variant loads the work tree's Lua bundle unchanged
(so the module and its globals exist as in production) and then replaces ``envoy_on_request`` /
``envoy_on_response`` with a stub that does one more piece of the real work. Every variant runs
in its own Envoy with llmc's layout; the passthrough layout (no EnvoyFilter) is the baseline.
CPU per request (proxy utime+stime / completed requests) of all variants is measured in
interleaved rounds; the table gives each variant's added CPU over the passthrough, and the costs
derived from pairs of variants (per round, then median and spread):

* the Lua filter with an empty ``envoy_on_request`` (Envoy creates a coroutine and a stream
  handle for the script per request), the first call into Envoy, each later call;
* reading the per-route context (``streamInfo``, ``filterContext``, ``ctx:get``, ``routeName``);
* buffering the body (``body()``), copying it out (``getBytes``), scanning it (``M.rewrite``) and
  writing it back (``setBytes``);
* an empty response hook, and the response hook's work (``bodyChunks`` + usage scan + metadata).
"""

from __future__ import annotations

import argparse

from tests.bench import bodies
from tests.bench.common import fmt_spread, spread
from tests.bench.dataplane import add_load_arguments, load_of, rounds_of, sizes_of
from tests.bench.rig import Rig, deltas, interleave, worktree_lua

NAME = "calls"
HELP = "added CPU per request of each piece of the Lua filter (bench-only variants of the filter), at 1 KiB"

NO_RESPONSE = "envoy_on_response = nil\n"
REQUEST_STUBS: dict[str, str] = {
    "empty request hook": "function envoy_on_request(h) end",
    "1 call (headers)": "function envoy_on_request(h) h:headers() end",
    "11 calls (headers + 10 get)": """function envoy_on_request(h)
  local hd = h:headers()
  for _ = 1, 10 do hd:get(":path") end
end""",
    "read context (4 calls)": """function envoy_on_request(h)
  local info = h:streamInfo()
  local ctx = h:filterContext()
  local id = ctx:get("id")
  local route = info:routeName()
end""",
    "body() + length": """function envoy_on_request(h)
  local b = h:body()
  local n = b:length()
end""",
    "+ getBytes": """function envoy_on_request(h)
  local b = h:body()
  local s = b:getBytes(0, b:length())
end""",
    "+ scan (M.rewrite)": """local FIELDS = { { "model", '"qwen-turbo"' } }
function envoy_on_request(h)
  local b = h:body()
  local s = b:getBytes(0, b:length())
  local out = assert(M.rewrite(s, FIELDS))
end""",
    "+ setBytes": """local FIELDS = { { "model", '"qwen-turbo"' } }
function envoy_on_request(h)
  local b = h:body()
  local s = b:getBytes(0, b:length())
  local out = assert(M.rewrite(s, FIELDS))
  b:setBytes(out)
end""",
}
VARIANTS: dict[str, str | None] = {
    "passthrough (no filter)": None,
    **{name: NO_RESPONSE + stub for name, stub in REQUEST_STUBS.items()},
    "llmc request hook only": NO_RESPONSE,
    "+ empty response hook": "function envoy_on_response(h) end\n",
    "llmc as shipped": "",
}
BASE = "passthrough (no filter)"
#: derived cost -> (variant, minus variant, divided by)
DERIVED: dict[str, tuple[str, str, int]] = {
    "Lua filter + empty envoy_on_request": ("empty request hook", BASE, 1),
    "first call into Envoy (h:headers())": ("1 call (headers)", "empty request hook", 1),
    "each later call (headers:get)": ("11 calls (headers + 10 get)", "1 call (headers)", 10),
    "reading the context (4 calls)": ("read context (4 calls)", "empty request hook", 1),
    "buffering the body (body(), length())": ("body() + length", "empty request hook", 1),
    "body copy out (getBytes)": ("+ getBytes", "body() + length", 1),
    "scan and splice (M.rewrite)": ("+ scan (M.rewrite)", "+ getBytes", 1),
    "body copy in (setBytes)": ("+ setBytes", "+ scan (M.rewrite)", 1),
    "llmc request hook, all of it": ("llmc request hook only", "empty request hook", 1),
    "empty response hook": ("+ empty response hook", "llmc request hook only", 1),
    "response hook's work (bodyChunks, usage, metadata)": ("llmc as shipped", "+ empty response hook", 1),
    "llmc as shipped, total": ("llmc as shipped", BASE, 1),
}


def variant_source(lua: str, tail: str) -> str:
    """``lua`` loaded as a module (its globals defined as in production), then ``tail`` with ``M`` in scope."""
    if not tail:
        return lua
    return f"local M = (function(...)\n{lua}\nend)()\n{tail}\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_load_arguments(p)


def run(args: argparse.Namespace) -> dict:
    lua = worktree_lua()
    rounds = rounds_of(args, 3)
    rig = Rig()
    try:
        proxies = {name: rig.proxy(name, None if tail is None else variant_source(lua, tail))
                   for name, tail in VARIANTS.items()}
        out = {"envoy": rig.envoy_version, "rounds": rounds, "bodies": []}
        for name in sizes_of(args, "1k"):
            data, body_file = rig.body(name)
            print(f"  calls {name}", flush=True)
            runs = interleave(rig, proxies, body_file, rounds, load_of(args))
            rows = [{"variant": v, "cpu_us": spread([r.cpu_us_per_request if r else None for r in runs[v]]),
                     "added_us": spread(deltas(runs, v, BASE)) if v != BASE else None} for v in VARIANTS]
            derived = []
            for label, (a, b, div) in DERIVED.items():
                per_round = [None if d is None else d / div for d in deltas(runs, a, b)]
                derived.append({"cost": label, "us": spread(per_round)})
            out["bodies"].append({"body": name, "variants": rows, "derived": derived,
                                  "errors": {v: sum(r.errors for r in runs[v] if r) for v in VARIANTS}})
        return out
    finally:
        rig.close()


def format(result: dict) -> str:
    lines = []
    for b in result["bodies"]:
        lines += [f"Call costs at {bodies.label(b['body'])}: CPU per request of the proxy with bench-only variants of "
                  f"the filter ({result['rounds']} interleaved rounds; µs, median (min–max))",
                  f"{'variant':>32} {'CPU µs/req':>11} {'added over passthrough':>26}"]
        for v in b["variants"]:
            added = "-" if v["added_us"] is None else fmt_spread(v["added_us"], 1)
            err = f"  ({b['errors'][v['variant']]} errors)" if b["errors"][v["variant"]] else ""
            lines.append(f"{v['variant']:>32} {fmt_spread(v['cpu_us'], 1).split(' ')[0]:>11} {added:>26}{err}")
        lines += ["", f"{'cost':>52} {'µs per request':>24}"]
        for d in b["derived"]:
            lines.append(f"{d['cost']:>52} {fmt_spread(d['us'], 1):>24}")
    return "\n".join(lines)
