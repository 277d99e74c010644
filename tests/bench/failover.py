"""Failover cost: ``python -m tests.bench.failover`` (needs Envoy 1.39+: ``LLMC_ENVOY=...``).

Not part of the test suite or of ``python -m tests.bench``; run it on its own:

    LLMC_ENVOY=.cache/envoy/1.39.3/envoy/_bin/envoy .venv/bin/python -m tests.bench.failover

Measures, in a real Envoy laid out by the test harness (tests/testdata/e2e/failover.yaml, rule
``backup``: p-one, then p-two):

1. latency of a failed-over request (p-one answers 503, p-two answers) against a direct one (p-one
   answers), requests alternating, medians and p90 over ``--requests`` each; the difference is the
   added latency of one failed try (Envoy's retry back-off, 25 ms base by default, dominates it);
2. config size per failover provider: the bytes of the Envoy config with and without the failover
   patches (``proxy_version`` 1.31 vs 1.30), divided by the number of failover provider clusters;
3. proxy memory per failover provider: Envoy's ``server.memory_allocated`` after start, with and
   without the failover patches (one Lua filter, i.e. one Lua VM per worker, per provider cluster);
4. CPU of a failover rule whose first try answers against a plain rule to the same provider (issue
   27's target: <= 1.1x at 1 KiB): Envoy's own CPU time (/proc/<pid>/stat) per request over
   interleaved batches of ``--cpu-batch`` 1 KiB requests, ``--cpu-rounds`` rounds; median and range
   of the per-round ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from tests.conftest import TESTDATA
from tests.support.envoy_harness import Envoy, build_bootstrap, envoy_minor
from tests.support.mesh import llmc_render
from tests.support.upstream import start_upstreams

HOSTS = ("one.example.com", "two.example.com", "three.example.com")
BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hello"}]}).encode()


def _post(port: int) -> float:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=BODY, method="POST",
                                 headers={"Host": "chat.example.com", "x-case": "backup",
                                          "content-type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(req, timeout=30) as r:
        r.read()
        assert r.status == 200
    return (time.perf_counter() - start) * 1000


#: the bench's input: failover.yaml with a plain rule to p-one (x-case: plain) before its catch-all
PLAIN_RULE = """  - name: plain             # no failover: the CPU baseline
    matches: [{headers: {x-case: {exact: plain}}}]
    backendRefs:
    - {providerHost: one.example.com}
  - name: chain"""
BODY_1K = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * 960}]}).encode()


def _cpu_seconds(envoy: Envoy) -> float:
    """Envoy's user + system CPU time so far (clock ticks of /proc/<pid>/stat)."""
    import os

    fields = open(f"/proc/{envoy.proc.pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _batch(port: int, case: str, n: int) -> None:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for _ in range(n):
        conn.request("POST", "/v1/chat/completions", body=BODY_1K,
                     headers={"Host": "chat.example.com", "x-case": case, "content-type": "application/json"})
        r = conn.getresponse()
        r.read()
        assert r.status == 200, r.status
    conn.close()


def cpu_ratio(rounds: int, batch: int) -> list[float]:
    """Per round: Envoy CPU per request of the failover rule (first try answers) / of the plain rule."""
    text = (TESTDATA / "e2e" / "failover.yaml").read_text().replace("  - name: chain", PLAIN_RULE)
    path = Path(tempfile.mkdtemp()) / "failover-cpu.yaml"
    path.write_text(text)
    objects = llmc_render("-f", str(path))
    ups = start_upstreams(None, (), HOSTS)
    ratios = []
    try:
        proxy = Envoy(build_bootstrap(objects, {h: u.port for h, u in ups.items()}, None).bootstrap)
        try:
            for case in ("plain", "backup"):
                _batch(proxy.port, case, 50)  # warm up connections and Lua VMs
            for _ in range(rounds):
                cost = {}
                for case in ("plain", "backup"):
                    before = _cpu_seconds(proxy)
                    _batch(proxy.port, case, batch)
                    cost[case] = (_cpu_seconds(proxy) - before) / batch
                ratios.append(cost["backup"] / cost["plain"])
        finally:
            proxy.stop()
    finally:
        for u in ups.values():
            u.stop()
    return ratios


def _memory(envoy: Envoy) -> int:
    with urllib.request.urlopen(f"http://{envoy.admin}/stats?filter=server.memory_allocated&format=json") as r:
        return next(s["value"] for s in json.load(r)["stats"] if s["name"] == "server.memory_allocated")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--cpu-rounds", type=int, default=6)
    ap.add_argument("--cpu-batch", type=int, default=400)
    ap.add_argument("--cpu-only", action="store_true", help="only the CPU comparison (4.)")
    args = ap.parse_args(argv)
    if envoy_minor() < (1, 39):
        print("failover needs Envoy 1.39+: set LLMC_ENVOY to an Envoy 1.39 binary")
        return 2
    ratios = cpu_ratio(args.cpu_rounds, args.cpu_batch)
    print(f"CPU per request, failover rule (first try answers) / plain rule, 1 KiB: "
          f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}, {len(ratios)} rounds "
          f"of {args.cpu_batch})")
    if args.cpu_only:
        return 0
    objects = llmc_render("-f", str(TESTDATA / "e2e" / "failover.yaml"))
    ups = start_upstreams(None, (), HOSTS)
    ports = {h: u.port for h, u in ups.items()}
    try:
        with_fo = build_bootstrap(objects, ports, None)
        without = build_bootstrap(objects, ports, None, proxy_version="1.30.0")
        n = len(HOSTS)
        size_delta = len(json.dumps(with_fo.bootstrap)) - len(json.dumps(without.bootstrap))
        proxy = Envoy(with_fo.bootstrap)
        mem_with = _memory(proxy)
        direct, failed_over = [], []
        try:
            for _ in range(10):
                _post(proxy.port)  # warm up connections and Lua VMs
            for _ in range(args.requests):
                ups["one.example.com"].fail = None
                direct.append(_post(proxy.port))
                ups["one.example.com"].fail = "503"
                failed_over.append(_post(proxy.port))
        finally:
            proxy.stop()
        plain = Envoy(without.bootstrap)
        mem_without = _memory(plain)
        plain.stop()
    finally:
        for u in ups.values():
            u.stop()

    def p90(xs):
        return statistics.quantiles(xs, n=10)[-1]

    print(f"requests: {args.requests} each, alternating")
    print(f"direct       median {statistics.median(direct):7.2f} ms  p90 {p90(direct):7.2f} ms")
    print(f"failed over  median {statistics.median(failed_over):7.2f} ms  p90 {p90(failed_over):7.2f} ms")
    print(f"added by one failed try: median {statistics.median(failed_over) - statistics.median(direct):.2f} ms")
    print(f"config size per failover provider: {size_delta / n / 1024:.1f} KiB ({n} provider clusters)")
    print(f"proxy memory per failover provider: {(mem_with - mem_without) / n / 1024:.0f} KiB "
          f"(server.memory_allocated {mem_without} -> {mem_with} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
