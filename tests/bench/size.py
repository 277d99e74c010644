"""`task bench -- size`: what llmc delivers, in bytes (issue 28's targets). No timing but compile time.

* the Lua bundle each kind of filter carries (characters = bytes: the bundle is ASCII), against
  Istio's ``TrafficExtension`` limit (``lua.inlineCode``: 65,536 characters; llmc's target: 56 KiB
  for a filter without failover);
* the README's failover example (tests/testdata/golden/failover.in.yaml): every EnvoyFilter's size
  (target < 64 KiB each), and what one more failover provider adds to the proxy's config (the
  harness's Envoy config of the rule with one backend more, Istio 1.31 layout; target < 8 KiB);
* a synthetic mesh of ``--size-providers`` providers and as many LLMRoutes in namespaces of 50
  (tests/bench/synthetic.py; 1,000 = 20 namespaces): the render's bytes, the Lua's share of them and
  the compile time (median of ``--size-runs`` runs of ``llmc render`` in a fresh process).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.bench.common import REPO

NAME = "size"
HELP = "bytes llmc delivers: Lua bundles, the failover example's objects and proxy config, a 1,000-provider render"
TRAFFIC_EXTENSION_LIMIT = 65536
_BLOCK = re.compile(r"^( *)inline_string: \|[-+]?\n((?:\1  .*\n|\n)+)", re.M)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size-providers", type=int, default=1000, help="providers (= routes) of the synthetic render")
    p.add_argument("--size-runs", type=int, default=3, help="compile runs (median)")


def bundles() -> dict[str, int]:
    from compiler.translate.envoyfilter import lua_source

    return {"OpenAI only, no failover": len(lua_source(["openai"], False)),
            "with Anthropic, no failover": len(lua_source(["openai", "anthropic"], False)),
            "OpenAI only, with failover": len(lua_source(["openai"], True)),
            "every module": len(lua_source())}


def _render(path: Path, *args: str) -> str:
    return subprocess.run([sys.executable, "-m", "compiler.cli", "render", "-f", str(path), *args], cwd=REPO,
                          capture_output=True, text=True, check=True).stdout


def _objects(text: str) -> list[dict]:
    from ruamel.yaml import YAML

    return [d for d in YAML(typ="safe").load_all(text) if d]


def failover_mesh(n: int) -> str:
    """The README's failover example (tests/testdata/golden/failover.in.yaml) with ``n`` providers:
    one rule, each further provider one priority lower, ``attempts: n``."""
    providers = [f"""apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {{name: p{i}}}
spec:
  host: p{i}.example.com
  path: /v1/chat/completions
  configs:
    defaultConfig:
      openAIConfig: {{model: model-{i}, apiKeySecretRef: {{name: llm-keys, key: p{i}}}}}
""" for i in range(n)]
    refs = "\n".join(f"    - {{providerHost: p{i}.example.com, priority: {i}}}" for i in range(n))
    route = f"""apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMRoute
metadata: {{name: demo-llm-server}}
spec:
  host: demo-llm-server
  rules:
  - name: default
    backendRefs:
{refs}
    retries: {{attempts: {n}, perTryTimeout: 30s}}
"""
    return "---\n".join([*providers, route])


def failover_example(tmp: Path) -> dict:
    """Object sizes of the README's failover example, and the proxy-config slope per failover provider
    (the harness's Envoy config, Istio 1.31 layout, of the rule with 2, 3 and 4 providers)."""
    from tests.support.envoy_harness import build_bootstrap

    golden = REPO / "tests" / "testdata" / "golden" / "failover.in.yaml"
    sizes = {o["metadata"]["name"]: len(json.dumps(o, separators=(",", ":")))
             for o in _objects(_render(golden, "--istio-version", "1.31")) if o["kind"] == "EnvoyFilter"}
    configs = []
    for n in (2, 3, 4):
        path = tmp / f"failover-{n}.yaml"
        path.write_text(failover_mesh(n))
        objs = _objects(_render(path, "--istio-version", "1.31"))
        layout = build_bootstrap(objs, {f"p{i}.example.com": 9 for i in range(n)}, None, proxy_version="1.31.0")
        assert not layout.unmatched, layout.unmatched
        configs.append(len(json.dumps(layout.bootstrap, separators=(",", ":"))))
    return {"envoyfilters": sizes, "config_bytes": configs, "per_provider": (configs[2] - configs[0]) / 2}


def synthetic(n: int, runs: int, tmp: Path) -> dict:
    from tests.bench.synthetic import write_inputs

    src = write_inputs(tmp / f"syn{n}", n, per_namespace=50)
    times, out = [], ""
    for _ in range(runs):
        t = time.perf_counter()
        out = _render(src)
        times.append(time.perf_counter() - t)
    lua = sum(len(m.group(2)) for m in _BLOCK.finditer(out))
    return {"providers": n, "bytes": len(out.encode()), "lua_bytes": lua, "lua_copies": len(_BLOCK.findall(out)),
            "compile_s": statistics.median(times)}


def run(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        return {"bundles": bundles(), "failover": failover_example(Path(tmp)),
                "synthetic": synthetic(args.size_providers, args.size_runs, Path(tmp))}


def format(result: dict) -> str:
    lines = ["Lua bundles (characters; TrafficExtension lua.inlineCode holds 65,536; target for a filter "
             "without failover: <= 56 KiB = 57,344)"]
    lines += [f"  {k:<30} {v:>7}" for k, v in result["bundles"].items()]
    f = result["failover"]
    lines.append("README failover example: EnvoyFilters (compact JSON bytes; target < 64 KiB each)")
    lines += [f"  {k:<30} {v:>7}" for k, v in sorted(f["envoyfilters"].items())]
    lines.append(f"  one more failover provider adds {f['per_provider'] / 1024:.1f} KiB to the proxy's config "
                 f"(2, 3, 4 providers: {', '.join(str(c) for c in f['config_bytes'])} bytes; target < 8 KiB)")
    s = result["synthetic"]
    lines.append(f"synthetic render, {s['providers']} providers + routes in namespaces of 50: "
                 f"{s['bytes'] / 1e6:.2f} MB, of which Lua {s['lua_bytes'] / 1e6:.2f} MB in {s['lua_copies']} copies; "
                 f"compile {s['compile_s']:.2f} s (median)")
    return "\n".join(lines)
