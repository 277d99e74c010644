"""Section "limits": what a token limit costs the proxy, against the same route without one.

Two layouts of one provider host (TLS to the bench's mock provider, which answers with usage), each
running the work tree's Lua: a rule without limits, and the same rule with a token limit (one
bucket, a budget that the bench never spends), rendered with ``--rate-limit-service``. The limited
proxy makes both calls per request to the rate-limit service double (tests/support/ratelimit.py,
counting in a real redis-server): the check before forwarding and the charge when the stream is
done. The same 1 KiB chat body goes to both, interleaved; the table gives the proxy's CPU per
request (both calls included), throughput and p50, limited / unlimited, and — reported apart —
the CPU the double and Redis spent per request (a Python stand-in for envoyproxy/ratelimit: its
number says nothing about the Go service's).

Both variants are offered the same rate (``--rate``, default :data:`RATE` requests per second,
paced by wrk: ``tests/bench/rig.py`` ``WRK_PACE``). In a closed loop (``--rate 0``) the Python
double holds the limited route to a fraction of the unlimited one's rate, and a proxy's CPU per
request grows as its rate falls (fixed wake-up costs spread over fewer requests), so that ratio
mixes the double's speed into the proxy's cost. A variant that does not reach the offered rate
is flagged: its ratio is then not a like-for-like one.
"""

from __future__ import annotations

import argparse

from tests.bench.common import cpu_seconds, fmt_spread
from tests.bench.dataplane import add_load_arguments, load_of, rounds_of, summarize
from tests.bench.models import body
from tests.bench.rig import HOST, Rig, interleave, worktree_lua

NAME = "limits"
HELP = "CPU per request of a token-limited route vs the same route unlimited, at 1 KiB (both RLS calls included)"
RLS = "llmc-system/ratelimit:8081"
#: The rate both variants are offered: well under what the Python double serves on two busy cores.
RATE = 300.0

SOURCE = f"""
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {{name: dashscope-qwen}}
spec:
  host: {HOST}
  path: /compatible-mode/v1/chat/completions
  configs: {{defaultConfig: {{openAIConfig: {{model: qwen-plus, apiKey: sk-bench-0000000000000000}}}}}}
  prices:  # money budgets (issue 31): a table of a few models, as a real provider has
  - {{model: qwen-max, prompt: 1.6, completion: 6.4}}
  - {{model: qwen-plus, prompt: 0.4, completion: 1.2}}
  - {{model: qwen-turbo, prompt: 0.05, completion: 0.2}}
  - {{model: "*", prompt: 1.6, completion: 6.4}}
---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMRoute
metadata: {{name: bench}}
spec:
  host: {HOST}
  rules:
  - name: r
    backendRefs: [{{providerHost: {HOST}}}]
    LIMITS
"""
LIMITS = {"unlimited": "", "limited": "tokenLimits: [{name: tpy, tokens: 4294967295, per: Year}]",
          # the same calls, a charge priced per provider and model (a longer CEL expression)
          "budget": "tokenLimits: [{name: money, budget: {cost: 4000}, per: Year}]"}


def layout(rig: Rig, variant: str, rls_port: int) -> tuple[dict, list[dict]]:
    from tests.support.envoy_harness import build_bootstrap
    from tests.support.mesh import llmc_render
    from tests.support.ratelimit import rls_cluster
    from tests.test_token_limits_e2e import for_istiod

    source = rig.tmp / f"limits-{variant}.yaml"
    source.write_text(SOURCE.replace("LIMITS", LIMITS[variant]))
    objects = llmc_render("-f", str(source), "--rate-limit-service", RLS)
    built = build_bootstrap(for_istiod(objects), rig.ports, str(rig.ca_file), extra_clusters=[rls_cluster(rls_port)])
    assert not built.unmatched, built.unmatched
    return built.bootstrap, objects


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_load_arguments(p)
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5)")
    p.add_argument("--rate", type=float, default=RATE, help=f"requests per second offered to both variants "
                   f"(default {RATE:g}; 0: a closed loop, each at its own rate)")
    p.add_argument("--limits-budget", action="store_true", help="compare a money-budgeted route with the token-limited "
                   "one instead (the cost of pricing the charge)")


def run(args: argparse.Namespace) -> dict:
    import resource

    from tests.support.ratelimit import RateLimitDouble, RedisServer, configmap_files, serving

    rounds = rounds_of(args, 5)
    args.rate = args.rate or None
    rig = Rig()
    redis_server = RedisServer()
    try:
        _, objects = layout(rig, "limited", 1)
        double = RateLimitDouble(redis_server.client, configmap_files(objects))
        with serving(double) as port:
            lua = worktree_lua()
            base, variant = ("limited", "budget") if getattr(args, "limits_budget", False) else ("unlimited", "limited")
            proxies = {v: rig.proxy(v, lua, layout(rig, v, port)[0]) for v in (base, variant)}
            if not all(rig.shapes(p) for p in proxies.values()):
                raise SystemExit("limits: llmc's Lua does not shape the bench's requests; the comparison would be void")
            data = body()
            body_file = rig.tmp / "body-limits.json"
            body_file.write_bytes(data)
            print(f"  limits ({len(data)} bytes)", flush=True)
            calls0, self0 = len(double.requests), resource.getrusage(resource.RUSAGE_SELF)
            redis0 = cpu_seconds(redis_server.proc.pid)
            runs = interleave(rig, proxies, body_file, rounds, load_of(args))
            self1 = resource.getrusage(resource.RUSAGE_SELF)
            calls = len(double.requests) - calls0
            # the requests that called the service: the variant's, and the base's when it is limited too
            limited = sum(r.completed for v in {variant, base} - {"unlimited"} for r in runs[v] if r)
            # the bench process runs the double's threads; wrk and the proxies are other processes
            double_s = (self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime)
            redis_s = cpu_seconds(redis_server.proc.pid) - redis0
        row = summarize("1k", data, runs, base, variant)
        row["rls_calls_per_request"] = calls / limited if limited else None
        row["double_cpu_us"] = 1e6 * double_s / limited if limited else None
        row["redis_cpu_us"] = 1e6 * redis_s / limited if limited else None
        return {"envoy": rig.envoy_version, "rounds": rounds, "seconds": args.seconds, "row": row,
                "variants": [base, variant], "rate": args.rate}
    finally:
        redis_server.stop()
        rig.close()


def format(result: dict) -> str:
    r = result["row"]
    base, variant = result.get("variants", ["unlimited", "limited"])
    tr = "-" if r["throughput_ratio"] is None else f"{r['throughput_ratio']:.2f}"

    def us(v):
        return "-" if v is None else f"{v:.0f} µs"

    rate = result.get("rate")
    offered = "each in a closed loop" if not rate else f"both offered {rate:g} rps"
    short = [v for v in (base, variant) if rate and r["rps"][v] < 0.95 * rate]
    return "\n".join([
        f"{variant} vs {base} route at 1 KiB ({result['rounds']} interleaved rounds of ≤ "
        f"{result['seconds']:g} s, {offered}; CPU per request of the proxy, median (min–max); both RLS calls "
        "included)",
        f"  {base} {r['cpu_us'][base]['median']:.0f} µs/req, {r['rps'][base]:.0f} rps; "
        f"{variant} {r['cpu_us'][variant]['median']:.0f} µs/req, {r['rps'][variant]:.0f} rps",
        f"  {variant} / {base}: CPU {fmt_spread(r['cpu_ratio'])}, throughput {tr}",
        f"  rate-limit calls per limited request: {r['rls_calls_per_request'] or 0:.2f}; apart from the proxy: "
        f"the Python double {us(r['double_cpu_us'])}/req, Redis {us(r['redis_cpu_us'])}/req",
        *([f"  NOT LIKE FOR LIKE: {', '.join(short)} did not reach the offered rate"] if short else [])])
