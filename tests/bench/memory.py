"""Section "memory": Envoy memory and config size per provider+route, at 1,000 providers.

N providers + N LLMRoutes in one namespace (``tests/bench/synthetic.py``) are rendered by the real
CLI and laid out for one sidecar of that namespace (``tests/support/envoy_harness.py``), with
llmc's EnvoyFilters and without them (the same ServiceEntries, DestinationRules and
VirtualServices: what a mesh without llmc would need for the same routes). Each layout runs in
Envoy; its resident memory after start-up and the size of its configuration are measured at a
small and a large N, and reported per provider+route as the slope between the two.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.bench.common import REPO, rss_mb
from tests.bench.synthetic import write_inputs

NAME = "memory"
HELP = "Envoy RSS and config bytes per provider+route (slope between two mesh sizes), with and without llmc"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--memory-sizes", default="10,1000", help="two N (providers = routes = N, one namespace)")


def _measure(n: int, tmp: Path, ca_file: str) -> dict:
    from ruamel.yaml import YAML

    from tests.support.envoy_harness import Envoy, build_bootstrap

    src = write_inputs(tmp / f"in{n}", n, per_namespace=n)
    out = subprocess.run([sys.executable, "-m", "compiler.cli", "render", "-f", str(src)], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    objects = [d for d in YAML(typ="safe").load_all(out) if d]
    upstreams = {f"p{i}.example.com": 9 for i in range(n)}  # never connected to
    row = {"n": n, "yaml_bytes": len(out.encode())}
    for name, apply in (("without", False), ("llmc", True)):
        layout = build_bootstrap(objects, upstreams, ca_file, proxy_namespace="team-0", apply_envoyfilters=apply)
        assert not layout.unmatched, layout.unmatched
        row[f"{name}_config_bytes"] = len(json.dumps(layout.bootstrap).encode())
        env = Envoy(layout.bootstrap, concurrency=1)
        try:
            time.sleep(1.0)
            row[f"{name}_rss_mb"] = rss_mb(env.proc.pid)
            # one request per route (its provider is never reached: port 9 refuses; the filter has
            # done its work by then), then the RSS again: what the first pass over every route keeps
            for i in range(n):
                _one_request(env.port, f"chat-{i}")
            time.sleep(0.5)
            row[f"{name}_rss_after_mb"] = rss_mb(env.proc.pid)
        finally:
            env.stop()
    return row


def _one_request(port: int, host: str) -> None:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/v1/chat/completions", body=b'{"messages":[{"role":"user","content":"hi"}]}',
                     headers={"Host": host, "Content-Type": "application/json"})
        conn.getresponse().read()
    finally:
        conn.close()


def run(args: argparse.Namespace) -> dict:
    import trustme

    from tests.support.envoy_harness import envoy_binary, envoy_version

    small, large = (int(s) for s in args.memory_sizes.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        ca_file = Path(tmp, "ca.pem")
        trustme.CA().cert_pem.write_to_path(str(ca_file))
        rows = [_measure(n, Path(tmp), str(ca_file)) for n in (small, large)]
    a, b = rows
    dn = b["n"] - a["n"]
    slope = {k: (b[k] - a[k]) / dn for k in a if k != "n"}
    return {"envoy": envoy_version(envoy_binary()), "rows": rows, "per_provider_route": slope}


def format(result: dict) -> str:
    s = result["per_provider_route"]
    a, b = result["rows"]
    lines = [f"Envoy memory and config per provider+route (slope {a['n']} → {b['n']} providers + routes, one sidecar "
             f"that sees all of them; 'without' = same ServiceEntries/DestinationRules/VirtualServices, no EnvoyFilters)",
             f"{'N':>6} {'emitted YAML':>13} {'config w/o':>11} {'config llmc':>12} {'RSS w/o MB':>11} {'RSS llmc MB':>12}"]
    for r in result["rows"]:
        lines.append(f"{r['n']:>6} {r['yaml_bytes'] / 1e6:>11.2f}MB {r['without_config_bytes'] / 1e6:>9.2f}MB "
                     f"{r['llmc_config_bytes'] / 1e6:>10.2f}MB {r['without_rss_mb']:>11.1f} {r['llmc_rss_mb']:>12.1f}")
    lines.append(f"per provider+route: emitted YAML {s['yaml_bytes'] / 1024:.1f} KiB; Envoy config "
                 f"{s['without_config_bytes'] / 1024:.1f} KiB without llmc, {s['llmc_config_bytes'] / 1024:.1f} KiB with "
                 f"(+{(s['llmc_config_bytes'] - s['without_config_bytes']) / 1024:.1f} KiB); RSS "
                 f"{s['without_rss_mb'] * 1024:.0f} KiB without, {s['llmc_rss_mb'] * 1024:.0f} KiB with "
                 f"(+{(s['llmc_rss_mb'] - s['without_rss_mb']) * 1024:.0f} KiB)")
    if "llmc_rss_after_mb" in b:
        lines.append(f"after one request per route ({b['n']} routes): RSS {b['without_rss_after_mb']:.1f} MB without, "
                     f"{b['llmc_rss_after_mb']:.1f} MB with llmc (+{b['llmc_rss_after_mb'] - b['without_rss_after_mb']:.1f}"
                     f" MB; +{(s['llmc_rss_after_mb'] - s['without_rss_after_mb']) * 1024:.0f} KiB per route)")
    return "\n".join(lines)
