"""Section "steps": the Lua of several git revisions side by side, per body, with the passthrough.

    python -m tests.bench steps --revs 0a0b010,9bae89f,7d01af6 --sizes 1k,64k,1m --rounds 6

Each revision's Lua runs in the layout that revision's compiler renders and its harness lays out
(as in "gate"), all in one set of interleaved rounds with the passthrough layout, so every row of
the table is measured under the same load as the rows next to it. A row gives the CPU per request,
its ratio to the passthrough, and its ratio to its "before": the row of its parent commit when that
revision is listed (so an experiment made on top of a step compares with that step), else the row
above; each as the median and spread of per-round ratios. This is how docs/performance.md records what each change
of the data plane bought; every revision must first answer a non-JSON body with llmc's own 400.
"""

from __future__ import annotations

import argparse
import subprocess

from tests.bench import bodies
from tests.bench.common import REPO, fmt_spread, spread
from tests.bench.dataplane import add_load_arguments, load_of, rounds_of, sizes_of
from tests.bench.rig import Rig, interleave, lua_at_rev, ratios

NAME = "steps"
HELP = "CPU per request of the Lua at several git revisions (--revs), interleaved, vs the passthrough"
PASS = "passthrough"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_load_arguments(p)
    p.add_argument("--revs", default="HEAD", help="comma-separated git revisions, oldest first")
    p.add_argument("--status", type=int, choices=(200, 429), default=200,
                   help="the mock provider's answer: a completion with usage (200) or OpenAI's 429 error")


def subject(rev: str) -> str:
    out = subprocess.run(["git", "log", "-1", "--format=%h %s", rev], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.strip()
    return out if len(out) <= 72 else out[:71] + "…"


def parent_of(rev: str, listed: list[str]) -> str | None:
    """The listed revision that is ``rev``'s parent commit, if any."""
    def full(r: str) -> str:
        return subprocess.run(["git", "rev-parse", r], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    parent = subprocess.run(["git", "rev-parse", f"{rev}^"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    return next((r for r in listed if r != rev and full(r) == parent), None)


def run(args: argparse.Namespace) -> dict:
    revs = [r.strip() for r in args.revs.split(",") if r.strip()]
    if not revs:
        raise SystemExit("steps: --revs names no revision")
    rounds = rounds_of(args, 5)
    rig = Rig()
    try:
        proxies = {PASS: rig.proxy(PASS, None)}
        for rev in revs:
            proxies[rev] = rig.proxy(rev, lua_at_rev(rev), rig.llmc_layout_at(rev))
            if not rig.shapes(proxies[rev]):
                raise SystemExit(f"steps: the Lua at {rev} does not shape requests; its row would be void")
        rows = []
        for name in sizes_of(args, "1k"):
            data, body_file = rig.body(name)
            print(f"  steps {name}", flush=True)
            runs = interleave(rig, proxies, body_file, rounds, load_of(args))
            steps = []
            for i, rev in enumerate(revs):
                cpu = [r.cpu_us_per_request if r else None for r in runs[rev]]
                before = parent_of(rev, revs) or (revs[i - 1] if i else None)
                steps.append({"rev": rev, "subject": subject(rev), "cpu_us": spread(cpu), "before": before,
                              "vs_passthrough": spread(ratios(runs, rev, PASS)),
                              "vs_previous": spread(ratios(runs, rev, before)) if before else None,
                              "rps_vs_passthrough": spread([a.rps / b.rps if a and b and b.rps else None
                                                            for a, b in zip(runs[rev], runs[PASS], strict=True)])})
            rows.append({"body": name, "bytes": len(data),
                         "passthrough_cpu_us": spread([r.cpu_us_per_request if r else None for r in runs[PASS]]),
                         "steps": steps})
        return {"envoy": rig.envoy_version, "rounds": rounds, "seconds": args.seconds, "status": args.status,
                "bodies": rows}
    finally:
        rig.close()


def format(result: dict) -> str:
    answer = "OpenAI's 429 error" if result.get("status") == 429 else "a completion with usage"
    lines = [f"Steps: CPU per request of the Lua at each revision ({result['rounds']} interleaved rounds of "
             f"≤ {result['seconds']:g} s, with the passthrough; the provider answers {answer}; ratios per round, "
             f"median (min–max))"]
    for b in result["bodies"]:
        lines.append(f"{bodies.label(b['body'])}: passthrough {fmt_spread(b['passthrough_cpu_us'], 1)} µs/request")
        lines.append(f"  {'revision':<50} {'CPU µs/req':>22} {'× passthrough':>20} {'× before':>20} "
                     f"{'rps × pass':>10}")
        for s in b["steps"]:
            prev = f"{fmt_spread(s['vs_previous'], 3)}" if s["vs_previous"] else "-"
            rps = s["rps_vs_passthrough"]["median"]
            lines.append(f"  {s['subject'][:50]:<50} {fmt_spread(s['cpu_us'], 1):>22} "
                         f"{fmt_spread(s['vs_passthrough'], 2):>20} {prev:>20} "
                         f"{'-' if rps is None else f'{rps:.2f}':>10}")
    return "\n".join(lines)
