"""Section "models": what routing by the body's ``model`` costs against routing by a header.

Two layouts of one provider host (TLS to the bench's mock provider), each running the work tree's
Lua: an LLMRoute whose rule matches a header (``content-type``, which every bench request sends),
and one whose rule matches the body's ``model`` (the filter reads the body before Envoy picks the
rule, then makes Envoy select the route once). The same 1 KiB chat body with ``"model": "gpt-4o"``
goes to both, interleaved; the table gives CPU per request and throughput, model-routed / header-routed.
"""

from __future__ import annotations

import argparse
import json

from tests.bench.common import fmt_spread
from tests.bench.dataplane import add_load_arguments, load_of, rounds_of, summarize
from tests.bench.rig import HOST, Rig, interleave, worktree_lua

NAME = "models"
HELP = "CPU per request and throughput of a model-routed request vs a header-routed one, at 1 KiB"

PROVIDER = f"""
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {{name: dashscope-qwen}}
spec:
  host: {HOST}
  path: /compatible-mode/v1/chat/completions
  configs: {{defaultConfig: {{openAIConfig: {{model: qwen-plus, apiKey: sk-bench-0000000000000000}}}}}}
"""
ROUTE = f"""
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMRoute
metadata: {{name: bench}}
spec:
  host: {HOST}
  rules:
  - name: r
    matches: [MATCH]
    backendRefs: [{{providerHost: {HOST}}}]
"""
MATCHES = {"header": "{headers: {content-type: {exact: application/json}}}", "model": "{model: {exact: gpt-4o}}"}


def body() -> bytes:
    """A 1 KiB chat request that names its model."""
    messages, n = [], 0
    while True:
        messages.append({"role": "user", "content": f"message {n}: " + "lorem ipsum " * 5})
        data = json.dumps({"model": "gpt-4o", "messages": messages}).encode()
        if len(data) > 1024:
            messages.pop()
            return json.dumps({"model": "gpt-4o", "messages": messages}).encode()
        n += 1


def layout(rig: Rig, variant: str) -> dict:
    from tests.support.envoy_harness import build_bootstrap
    from tests.support.mesh import llmc_render

    source = rig.tmp / f"models-{variant}.yaml"
    source.write_text(PROVIDER + "---" + ROUTE.replace("MATCH", MATCHES[variant]))
    built = build_bootstrap(llmc_render("-f", str(source)), rig.ports, str(rig.ca_file))
    assert not built.unmatched, built.unmatched
    return built.bootstrap


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_load_arguments(p)
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5)")


def run(args: argparse.Namespace) -> dict:
    rounds = rounds_of(args, 5)
    rig = Rig()
    try:
        lua = worktree_lua()
        proxies = {v: rig.proxy(v, lua, layout(rig, v)) for v in ("header", "model")}
        shaping = {v: rig.shapes(p) for v, p in proxies.items()}
        if not all(shaping.values()):
            raise SystemExit(f"models: llmc's Lua does not shape requests in {shaping}; the comparison would be void")
        data = body()
        body_file = rig.tmp / "body-models.json"
        body_file.write_bytes(data)
        print(f"  models ({len(data)} bytes)", flush=True)
        runs = interleave(rig, proxies, body_file, rounds, load_of(args))
        row = summarize("1k", data, runs, "header", "model")
        return {"envoy": rig.envoy_version, "rounds": rounds, "seconds": args.seconds, "row": row}
    finally:
        rig.close()


def format(result: dict) -> str:
    r = result["row"]
    tr = "-" if r["throughput_ratio"] is None else f"{r['throughput_ratio']:.2f}"
    return "\n".join([
        f"Model routing vs header routing at 1 KiB ({result['rounds']} interleaved rounds of ≤ "
        f"{result['seconds']:g} s; CPU per request of the proxy, median (min–max))",
        f"  header-routed {r['cpu_us']['header']['median']:.0f} µs/req, {r['rps']['header']:.0f} rps; "
        f"model-routed {r['cpu_us']['model']['median']:.0f} µs/req, {r['rps']['model']:.0f} rps",
        f"  model / header: CPU {fmt_spread(r['cpu_ratio'])}, throughput {tr}"])
