"""Section "compile": `llmc render` time and memory, in a subprocess, on synthetic meshes and the samples.

Inputs: N providers + N LLMRoutes (``tests/bench/synthetic.py``) whose providers name their key
with ``apiKeySecretRef``, the same with literal ``apiKey`` values (each draws warning LLMC215,
so this input measures the cost of diagnostics with positions), and the seed samples. Each
round runs every input once in a rotated order (the literal-key input right after its
``apiKeySecretRef`` twin), next to the baseline of the same input (a process that reads it with
libyaml and writes it as JSON); ratios are per round, then median and spread. Times are CPU
seconds (user + system) of the child: on a shared machine wall time mostly measures the
neighbours (it is shown too). ``llmc --help`` is measured against ``python -c pass``.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.bench.common import REPO, fmt_spread, rotate, spread
from tests.bench.synthetic import write_inputs

NAME = "compile"
HELP = "llmc render time/memory on synthetic meshes (apiKeySecretRef vs literal apiKey) and the samples"
SAMPLES = ("samples/seed", "samples/secret-ref")

BASELINE_CODE = ("import sys, json, yaml; from pathlib import Path; p = Path(sys.argv[1]); "
                 "files = sorted(p.rglob('*.yaml')) if p.is_dir() else [p]; "
                 "docs = [d for f in files for d in yaml.load_all(f.read_text(), Loader=yaml.CSafeLoader)]; "
                 "sys.stdout.write(json.dumps(docs))")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compile-sizes", default="10,100,1000,5000", help="N for N providers + N routes")
    p.add_argument("--compile-rounds", type=int, default=3)


def _run(cmd: list[str], stdout=subprocess.DEVNULL) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds (user + system) and peak RSS (MB) of a child process. CPU time
    is what the ratios use: wall time on a shared machine measures the neighbours. The peak
    comes from GNU time, which forks
    the child from its own small process: a child forked from this (large) process inherits its
    RSS high-water mark in ``ru_maxrss``."""
    with tempfile.NamedTemporaryFile("r") as peak:
        timed = ["/usr/bin/time", "-f", "%M", "-o", peak.name, *cmd] if Path("/usr/bin/time").exists() else cmd
        start = time.perf_counter()
        proc = subprocess.Popen(timed, stdout=stdout, stderr=subprocess.DEVNULL, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"{cmd} failed")
        text = peak.read().strip().splitlines()
    kib = int(text[-1]) if timed is not cmd and text else usage.ru_maxrss
    return elapsed, usage.ru_utime + usage.ru_stime, kib / 1024


def run(args: argparse.Namespace) -> dict:
    llmc = str(Path(sys.executable).with_name("llmc"))
    sizes = [int(s) for s in args.compile_sizes.split(",") if s]
    with tempfile.TemporaryDirectory() as tmp:
        inputs: dict[str, dict] = {}
        for n in sizes:
            for style in ("secretRef", "literal"):
                src = write_inputs(Path(tmp, f"{style}{n}"), n, literal=style == "literal")
                inputs[f"{n}+{n} {style}"] = {"path": str(src), "n": n, "style": style}
        for s in SAMPLES:
            inputs[s] = {"path": str(REPO / s), "n": None, "style": "sample"}
        samples = {k: {"wall": [], "t": [], "mem": [], "bt": [], "bmem": []} for k in inputs}
        out_bytes = {}
        for r in range(args.compile_rounds):
            for key in rotate(list(inputs), r):
                print(f"  compile round {r + 1}: {key}", flush=True)
                out = Path(tmp, "out.yaml")
                with out.open("w") as f:
                    wall, t, mem = _run([llmc, "render", "-f", inputs[key]["path"]], stdout=f)
                out_bytes[key] = out.stat().st_size
                _, bt, bmem = _run([sys.executable, "-c", BASELINE_CODE, inputs[key]["path"]])
                for k, v in (("wall", wall), ("t", t), ("mem", mem), ("bt", bt), ("bmem", bmem)):
                    samples[key][k].append(v)
    rows = []
    for key, meta in inputs.items():
        s = samples[key]
        row = {"input": key, "n": meta["n"], "style": meta["style"], "seconds": spread(s["t"]),
               "wall_seconds": spread(s["wall"]),
               "peak_mb": max(s["mem"]), "output_bytes": out_bytes[key],
               "time_ratio": spread([a / b for a, b in zip(s["t"], s["bt"], strict=True)]),
               "memory_ratio": max(s["mem"]) / max(s["bmem"])}
        if meta["style"] == "literal":
            ref = samples[f"{meta['n']}+{meta['n']} secretRef"]["t"]
            row["literal_ratio"] = spread([a / b for a, b in zip(s["t"], ref, strict=True)])
        rows.append(row)
    refs = [r for r in rows if r["style"] == "secretRef"]
    for prev, row in zip(refs, refs[1:], strict=False):
        factor = row["n"] / prev["n"]
        row["growth_per_10x"] = (row["seconds"]["median"] / prev["seconds"]["median"]) ** (1 / math.log10(factor))
    help_runs, pass_runs = [], []
    for _ in range(10):
        help_runs.append(_run([llmc, "--help"])[1])
        pass_runs.append(_run([sys.executable, "-c", "pass"])[1])
    return {"rounds": args.compile_rounds, "rows": rows, "help_seconds": statistics.median(help_runs),
            "python_startup_seconds": statistics.median(pass_runs),
            "help_ratio": statistics.median(help_runs) / statistics.median(pass_runs)}


def format(result: dict) -> str:
    lines = [f"Compile (llmc render in a subprocess; CPU seconds = user+sys; baseline: libyaml read + JSON write "
             f"of the same input; {result['rounds']} interleaved rounds; median (min–max))",
             f"{'input':>22} {'CPU seconds':>20} {'× baseline':>18} {'wall s':>6} {'peak MB':>8} {'×base':>6} "
             f"{'output MB':>9} {'growth/10×':>10} {'literal/secretRef':>20}"]
    for r in result["rows"]:
        g = f"{r['growth_per_10x']:.1f}×" if "growth_per_10x" in r else "-"
        lit = fmt_spread(r["literal_ratio"]) if "literal_ratio" in r else "-"
        lines.append(f"{r['input']:>22} {fmt_spread(r['seconds']):>20} {fmt_spread(r['time_ratio'], 1):>18} "
                     f"{r['wall_seconds']['median']:>6.2f} "
                     f"{r['peak_mb']:>8.0f} {r['memory_ratio']:>6.1f} {r['output_bytes'] / 1e6:>9.2f} {g:>10} {lit:>20}")
    lines.append(f"llmc --help: {result['help_seconds'] * 1000:.0f} ms CPU ({result['help_ratio']:.1f}× python -c pass "
                 f"= {result['python_startup_seconds'] * 1000:.0f} ms)")
    return "\n".join(lines)
