"""Section "lua": scan rates of the Lua filter's JSON code under LuaJIT (lupa), plain vs escaped.

* Request side: MB/s of ``M.rewrite`` (validate the body, splice ``model``) on plain and escaped
  bodies of 1 and 8 MiB (``tests/bench/bodies.py``), next to a LuaJIT copy of the same body.
* Response side: MB/s of the usage scan (``M.new_usage`` ``feed`` in 16 KiB chunks, then
  ``finish``) on a non-streaming chat.completion of ~1 MiB (the scan's limit) whose content is
  plain, ``\\uXXXX``-escaped Chinese, or a markdown list.

Each measurement runs in a child process with a time limit, so a scanner that is quadratic in
escapes shows up as "timed out" (a rate below size/limit) instead of hanging the bench.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.bench import bodies
from tests.bench.common import REPO

NAME = "lua"
HELP = "MB/s of the Lua body rewrite and the response usage scan under LuaJIT, plain vs escaped"
REQUEST_BODIES = "1m,1m-cjk,1m-md,8m,8m-cjk,8m-md"
RESPONSES = ("plain", "cjk", "md")
RESPONSE_SIZE = 1000 * 1000  # below the filter's MAX_JSON_SCAN (1 MiB): larger responses are not read


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lua-bodies", default=REQUEST_BODIES, help=f"request bodies (default {REQUEST_BODIES})")
    p.add_argument("--lua-timeout", type=float, default=30.0, help="seconds allowed for one measurement")
    p.add_argument("--lua-file", default=None, help="a Lua source returning M (default: the work tree's bundle "
                   "for an OpenAI-only filter)")


def response_body(kind: str, size: int = RESPONSE_SIZE) -> bytes:
    def build(n: int) -> bytes:
        content = bodies.document(kind, n) if kind != "plain" else ("lorem ipsum dolor sit amet " * (n // 27 + 1))[:n]
        return json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "model": "qwen-turbo",
                           "choices": [{"index": 0, "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": content}}],
                           "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}}).encode()
    return bodies.largest(build, size)


# Runs in the child: measures one (what, file) pair and prints {"mb_s": ..., "copy_mb_s": ...}.
_TIMER = """
local M, s, mode = ...
local clock = os.clock
local fields = {{"model", '"qwen-turbo"'}}
local function once()
  if mode == "rewrite" then
    local out, err = M.rewrite(s, fields)
    assert(out, err)
  else
    local u = M.new_usage(false)
    for i = 1, #s, 16384 do u.feed(s:sub(i, i + 16383)) end
    local p = u.finish()
    assert(p == 11, "usage not found")
  end
end
local n, t0 = 0, clock()
repeat once(); n = n + 1 until clock() - t0 > 0.3 and n >= 2
local elapsed = clock() - t0
local c0, m = clock(), 0
repeat local c = s:sub(1, -2) .. ',"model":"x"}'; m = m + 1 until clock() - c0 > 0.1
return n, elapsed, m, clock() - c0
"""


def _child(lua_file: str, body_file: str, mode: str) -> dict:
    from lupa import luajit21

    lua = luajit21.LuaRuntime(unpack_returned_tuples=True)
    module = lua.execute(Path(lua_file).read_text(encoding="utf-8"))
    s = Path(body_file).read_bytes()
    n, elapsed, m, copy_s = lua.execute(_TIMER, module, s, mode)
    mb = len(s) / 1e6
    return {"mb_s": mb * n / elapsed, "copy_mb_s": mb * m / copy_s, "passes": n}


def measure(lua_file: str, body_file: Path, mode: str, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "tests.bench.luarate", "--child", lua_file, str(body_file), mode]
    try:
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=True).stdout
    except subprocess.TimeoutExpired:
        return {"timed_out": True, "limit_s": timeout}
    return json.loads(out)


def _row(lua_file: str, tmp: Path, name: str, data: bytes, mode: str, timeout: float) -> dict:
    path = tmp / f"{mode}-{name}.json"
    path.write_bytes(data)
    r = measure(lua_file, path, mode, timeout)
    return {"name": name, "mode": mode, "bytes": len(data), "escapes": bodies.escapes(data), **r}


def run(args: argparse.Namespace) -> dict:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.lua_file is None:
            from tests.bench.rig import worktree_lua

            args.lua_file = str(Path(tmp) / "llmc.lua")
            Path(args.lua_file).write_text(worktree_lua(), encoding="utf-8")
        for name in bodies.parse(args.lua_bodies):
            rows.append(_row(args.lua_file, Path(tmp), name, bodies.body(name), "rewrite", args.lua_timeout))
        for kind in RESPONSES:
            rows.append(_row(args.lua_file, Path(tmp), kind, response_body(kind), "usage", args.lua_timeout))
    for r in rows:  # escaped vs the plain row of the same size and mode
        size = r["name"].partition("-")[0]
        plain = next((p for p in rows if p["mode"] == r["mode"] and p["name"] == (size if r["mode"] == "rewrite"
                                                                                   else "plain")), None)
        if plain and not r.get("timed_out") and not plain.get("timed_out"):
            r["vs_plain"] = r["mb_s"] / plain["mb_s"]
        elif plain and r.get("timed_out") and not plain.get("timed_out"):
            r["vs_plain_below"] = (r["bytes"] / 1e6 / r["limit_s"]) / plain["mb_s"]
    return {"rows": rows, "lua_file": args.lua_file}


def format(result: dict) -> str:
    lines = ["Lua scan rate under LuaJIT (lupa); request: M.rewrite, response: M.new_usage feed(16 KiB)+finish",
             f"{'side':>8} {'body':>14} {'bytes':>9} {'escapes':>8} {'MB/s':>10} {'× plain':>9} {'copy MB/s':>10}"]
    for r in result["rows"]:
        side = "request" if r["mode"] == "rewrite" else "response"
        label = bodies.label(r["name"]) if r["mode"] == "rewrite" else f"~1 MB {r['name']}"
        if r.get("timed_out"):
            rate = f"<{r['bytes'] / 1e6 / r['limit_s']:.2f}"
            ratio = f"<{r['vs_plain_below']:.4f}" if "vs_plain_below" in r else "-"
            copy = f"(>{r['limit_s']:.0f} s)"
        else:
            rate, copy = f"{r['mb_s']:.1f}", f"{r['copy_mb_s']:.0f}"
            ratio = f"{r['vs_plain']:.3f}" if "vs_plain" in r else "-"
        lines.append(f"{side:>8} {label:>14} {r['bytes']:>9} {r['escapes']:>8} {rate:>10} {ratio:>9} {copy:>10}")
    return "\n".join(lines)


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "--child":
    print(json.dumps(_child(sys.argv[2], sys.argv[3], sys.argv[4])))
