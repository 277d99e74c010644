"""Sections "dataplane" and "gate": CPU per request of the proxy, llmc vs the passthrough, per body.

"dataplane" measures the seed mesh's sidecar without llmc's EnvoyFilters (the passthrough) and
with them (the work tree's Lua) per body (``--sizes``, ``tests/bench/bodies.py``): CPU per request
and its per-round ratio (median and spread of interleaved rounds), next to throughput and p50/p99
latency, plus SSE time to first byte. This table is the gate for every change of the Lua.

"gate" compares the work tree's Lua with the Lua of a git revision (``--baseline-lua-rev``) in the
layout as that revision's compiler renders it (the Lua reads the filter context its compiler
writes), interleaved, at 1 KiB by default: the ratio of CPU per request is how a Lua change proves
it stays "within +3%". Both proxies must answer a non-JSON body with llmc's own 400 first: a Lua
that does not recognise its context passes requests on untouched and would look free.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from tests.bench import bodies
from tests.bench.common import fmt_spread, spread
from tests.bench.rig import PATH, SSE_FIRST_TOKEN_S, Load, Rig, interleave, lua_at_rev, ratios, worktree_lua

NAME = "dataplane"
HELP = "CPU per request, throughput and latency of llmc vs the passthrough layout, per body size"


def add_load_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared by the sections that put load on Envoy. --sizes and --rounds default to
    None: each section then uses its own default (see ``sizes_of``/``rounds_of``)."""
    p.add_argument("--sizes", help=f"bodies, SIZE[-cjk|-md] (default: dataplane {bodies.DEFAULT}; calls, gate 1k)")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default: dataplane, calls 3; gate 10)")
    p.add_argument("--seconds", type=float, default=3.0, help="cap on one load run's duration")
    p.add_argument("--max-requests", type=int, default=100_000, help="cap on one load run's requests")
    p.add_argument("--request-timeout", type=float, default=10.0,
                   help="a request slower than this marks the run (and the variant, for that body) timed out")


def sizes_of(args: argparse.Namespace, default: str) -> list[str]:
    return bodies.parse(args.sizes or default)


def rounds_of(args: argparse.Namespace, default: int) -> int:
    return args.rounds or default


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_load_arguments(p)
    p.add_argument("--sse", type=int, default=40, help="SSE time-to-first-byte samples per layout (0: skip)")


def load_of(args: argparse.Namespace) -> Load:
    return Load(seconds=args.seconds, max_requests=args.max_requests, request_timeout=args.request_timeout,
                status=getattr(args, "status", 200), rate=getattr(args, "rate", None))


def summarize(name: str, data: bytes, runs: dict, base: str, other: str) -> dict:
    def med(variant: str, key: str):
        vals = [getattr(r, key) for r in runs[variant] if r and not r.timed_out and getattr(r, key) is not None]
        return statistics.median(vals) if vals else None

    def cpu(variant: str) -> dict:
        return spread([r.cpu_us_per_request if r else None for r in runs[variant]])

    row = {"body": name, "bytes": len(data), "escapes": bodies.escapes(data),
           "cpu_us": {v: cpu(v) for v in (base, other)},
           "cpu_ratio": spread(ratios(runs, other, base)),
           "rps": {v: med(v, "rps") for v in (base, other)},
           "p50_ms": {v: med(v, "p50_ms") for v in (base, other)},
           "p99_ms": {v: med(v, "p99_ms") for v in (base, other)},
           "errors": {v: sum(r.errors for r in runs[v] if r) for v in (base, other)},
           "timed_out": {v: any(r is None or r.timed_out for r in runs[v]) for v in (base, other)}}
    a, b = row["rps"][base], row["rps"][other]
    row["throughput_ratio"] = b / a if a and b else None
    return row


def run(args: argparse.Namespace) -> dict:
    names, rounds = sizes_of(args, bodies.DEFAULT), rounds_of(args, 3)
    rig = Rig()
    try:
        proxies = {"passthrough": rig.proxy("passthrough", None), "llmc": rig.proxy("llmc", worktree_lua())}
        if not rig.shapes(proxies["llmc"]) or rig.shapes(proxies["passthrough"]):
            raise SystemExit("dataplane: llmc's Lua does not shape the bench's requests; the comparison would be void")
        rows = []
        for name in names:
            data, body_file = rig.body(name)
            print(f"  dataplane {name} ({len(data)} bytes)", flush=True)
            runs = interleave(rig, proxies, body_file, rounds, load_of(args))
            rows.append(summarize(name, data, runs, "passthrough", "llmc"))
        sse = _sse_ttfb(proxies, args.sse) if args.sse else None
        return {"envoy": rig.envoy_version, "rounds": rounds, "seconds": args.seconds, "bodies": rows,
                "sse_ttfb": sse}
    finally:
        rig.close()


def _sse_ttfb(proxies: dict, n: int) -> dict:
    """Time to the first byte of a streamed answer (the provider's first token after 20 ms)."""
    import http.client

    body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "stream": True})
    times: dict[str, list[float]] = {k: [] for k in proxies}
    for _ in range(n):
        for name, proxy in proxies.items():
            conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
            start = time.perf_counter()
            conn.request("POST", PATH, body=body, headers={"host": "stream.example.com", "content-type": "application/json"})
            resp = conn.getresponse()
            resp.read1(1)
            times[name].append((time.perf_counter() - start) * 1000)
            resp.read()
            conn.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"passthrough_ms": med["passthrough"], "llmc_ms": med["llmc"], "ratio": med["llmc"] / med["passthrough"],
            "added_ms": med["llmc"] - med["passthrough"], "upstream_first_token_ms": SSE_FIRST_TOKEN_S * 1000}


def _ms(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def _us(s: dict) -> str:
    return "timed out" if s["median"] is None else f"{s['median']:.0f}"


def _rps(v) -> str:
    return "-" if v is None else f"{v:.0f}"


def format(result: dict) -> str:
    lines = [f"Data plane: CPU per request of the proxy (utime+stime / completed requests), llmc vs the passthrough "
             f"layout; wrk -t1 -c4, TLS to a mock provider that reads the whole request; "
             f"{result['rounds']} interleaved rounds of ≤ {result['seconds']:g} s; median (min–max)",
             f"{'body':>13} {'escapes':>8} {'pass µs/req':>12} {'llmc µs/req':>12} {'CPU ratio':>22} "
             f"{'pass rps':>9} {'llmc rps':>9} {'rps ratio':>9} {'p50 ms':>12} {'p99 ms':>13}"]
    for b in result["bodies"]:
        cpu = b["cpu_us"]
        tr = "-" if b["throughput_ratio"] is None else f"{b['throughput_ratio']:.2f}"
        p50 = f"{_ms(b['p50_ms']['passthrough'])}/{_ms(b['p50_ms']['llmc'])}"
        p99 = f"{_ms(b['p99_ms']['passthrough'])}/{_ms(b['p99_ms']['llmc'])}"
        note = "" if not any(b["errors"].values()) else f"  errors {b['errors']}"
        lines.append(f"{bodies.label(b['body']):>13} {b['escapes']:>8} {_us(cpu['passthrough']):>12} "
                     f"{_us(cpu['llmc']):>12} {fmt_spread(b['cpu_ratio']):>22} "
                     f"{_rps(b['rps']['passthrough']):>9} {_rps(b['rps']['llmc']):>9} {tr:>9} {p50:>12} {p99:>13}{note}")
    lines.append("(p50/p99: passthrough/llmc; \"timed out\": a request took longer than the run's limit)")
    s = result.get("sse_ttfb")
    if s:
        lines.append(f"SSE time to first byte (upstream's first token after {s['upstream_first_token_ms']:.0f} ms): "
                     f"passthrough {s['passthrough_ms']:.2f} ms, llmc {s['llmc_ms']:.2f} ms, ratio {s['ratio']:.3f} "
                     f"(+{s['added_ms']:.2f} ms)")
    return "\n".join(lines)


class Gate:
    """Section "gate": the work tree's Lua vs the Lua at ``--baseline-lua-rev``, same layout."""

    NAME = "gate"
    HELP = "CPU per request of the work tree's Lua vs the Lua of a git revision (interleaved), at 1 KiB"

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        add_load_arguments(p)
        p.add_argument("--baseline-lua-rev", default="main", help="git revision of the baseline Lua")
        p.add_argument("--limit", type=float, default=1.03, help="the ratio a change must stay within")
        p.add_argument("--seconds", type=float, default=2.0, help="cap on one load run's duration")

    @staticmethod
    def run(args: argparse.Namespace) -> dict:
        baseline = lua_at_rev(args.baseline_lua_rev)
        rounds = rounds_of(args, 10)
        rig = Rig()
        try:
            layout = rig.llmc_layout_at(args.baseline_lua_rev)
            # "control" is a second Envoy with the baseline: the A/A ratio is this run's noise floor
            proxies = {"baseline": rig.proxy("baseline", baseline, layout),
                       "worktree": rig.proxy("worktree", worktree_lua()),
                       "control": rig.proxy("control", baseline, layout)}
            shaping = {name: rig.shapes(p) for name, p in proxies.items()}
            if not all(shaping.values()):
                raise SystemExit(f"gate: llmc's Lua does not shape requests in {shaping}; the comparison would be void")
            rows = []
            for name in sizes_of(args, "1k"):
                data, body_file = rig.body(name)
                print(f"  gate {name}", flush=True)
                runs = interleave(rig, proxies, body_file, rounds, load_of(args))
                row = summarize(name, data, runs, "baseline", "worktree")
                row["control_ratio"] = spread(ratios(runs, "control", "baseline"))
                rows.append(row)
            return {"envoy": rig.envoy_version, "rev": args.baseline_lua_rev, "limit": args.limit,
                    "rounds": rounds, "seconds": args.seconds, "same_source": baseline == worktree_lua(),
                    "bodies": rows}
        finally:
            rig.close()

    @staticmethod
    def format(result: dict) -> str:
        lines = [f"Gate: CPU per request of the work tree's Lua / the Lua at {result['rev']} "
                 f"({result['rounds']} interleaved rounds of ≤ {result['seconds']:g} s; median (min–max); "
                 f"limit {result['limit']:.2f}×)" + (" — the two sources are identical" if result["same_source"] else "")]
        for b in result["bodies"]:
            r, c = b["cpu_ratio"], b["control_ratio"]
            margin = result["limit"] - 1
            if r["median"] is None or c["median"] is None:
                verdict = "-"
            elif abs(c["median"] - 1) > margin:  # two identical Envoys differ by more than the margin
                verdict = "inconclusive: the noise floor is wider than the limit (a quieter machine or more rounds)"
            else:
                verdict = "within" if r["median"] <= result["limit"] else "OVER"
            lines.append(f"{bodies.label(b['body']):>13}: {fmt_spread(b['cpu_us']['baseline'], 1)} µs → "
                         f"{fmt_spread(b['cpu_us']['worktree'], 1)} µs, ratio {fmt_spread(r, 3)} — {verdict}")
            lines.append(f"{'':>13}  noise floor (a second Envoy with the baseline / the baseline): "
                         f"{fmt_spread(b['control_ratio'], 3)}")
        return "\n".join(lines)
