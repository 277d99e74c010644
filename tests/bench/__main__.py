"""llmc benchmarks: `task bench` (python -m tests.bench [SECTION ...] [options]). Not part of the tests.

A thin dispatcher over a registry of sections; each section is a module (or object) with
``NAME``, ``HELP``, ``add_arguments(parser)``, ``run(args) -> dict`` and ``format(result) -> str``.
A new section is one module plus one line in :data:`SECTIONS`.

    python -m tests.bench                          # the default sections, default sizes
    python -m tests.bench dataplane --sizes 1k,64k --rounds 3
    python -m tests.bench gate --baseline-lua-rev main
    python -m tests.bench steps --revs 0a0b010,9bae89f,7d01af6 --sizes 1k,64k,1m
    python -m tests.bench calls compile --compile-sizes 1000

Every figure has a baseline measured in the same run, over interleaved rounds where it is a
timing: these machines are shared and noisy. Results also go to ``.cache/bench/results.json``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import signal
import sys
from pathlib import Path

from tests.bench.common import OUT_DIR, machine

#: name -> "module[:attribute]" of the section; imported only when selected.
SECTIONS: dict[str, str] = {
    "compile": "tests.bench.compile",
    "dataplane": "tests.bench.dataplane",
    "calls": "tests.bench.calls",
    "memory": "tests.bench.memory",
    "lua": "tests.bench.luarate",
    "gate": "tests.bench.dataplane:Gate",
    "models": "tests.bench.models",
    "steps": "tests.bench.steps",
    "diff": "tests.bench.diff",
    "limits": "tests.bench.limits",
    "size": "tests.bench.size",
    "ambient": "tests.bench.ambient",
}
# `python -m tests.bench controller` (tests/bench/controller.py) runs on its own: see the end of this file.
DEFAULT = ["compile", "dataplane", "calls", "memory", "size", "lua", "models", "diff", "limits"]


def section(name: str):
    module, _, attr = SECTIONS[name].partition(":")
    obj = importlib.import_module(module)
    return getattr(obj, attr) if attr else obj


def available() -> list[str]:
    """Registered sections whose module exists in this checkout."""
    out = []
    for name, target in SECTIONS.items():
        module = target.partition(":")[0]
        if importlib.util.find_spec(module) is not None:
            out.append(name)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    names = available()
    leading = []
    for token in argv:  # the section names come first; they decide which options exist
        if token.startswith("-"):
            break
        leading.append(token)
    unknown = [n for n in leading if n not in names]
    chosen = leading or [n for n in DEFAULT if n in names]
    # "resolve": sections may share options (--sizes, --rounds); the first chosen section's win
    ap = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, conflict_handler="resolve",
                                 epilog="sections: " + "; ".join(f"{n}: {section(n).HELP}" for n in names))
    ap.add_argument("sections", nargs="*", metavar="SECTION", help=f"any of {', '.join(names)} "
                    f"(default: {' '.join(n for n in DEFAULT if n in names)})")
    ap.add_argument("--out", default=str(OUT_DIR / "results.json"))
    for n in reversed([n for n in chosen if n in names]):
        section(n).add_arguments(ap.add_argument_group(n))
    if unknown:
        ap.error(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(names)}")
    args = ap.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so sections stop the Envoys they started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results = machine()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tables = []
    for n in chosen:
        print(f"== {n}", file=sys.stderr, flush=True)
        sec = section(n)
        results[n] = sec.run(args)
        tables.append(sec.format(results[n]))
        print(tables[-1], file=sys.stderr, flush=True)  # each table as soon as it exists
        out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    envoy = next((r["envoy"] for r in results.values() if isinstance(r, dict) and "envoy" in r), "-")
    print(f"llmc benchmarks — {results['date']} — {results['machine']} — Envoy {envoy}\n")
    print("\n\n".join(tables))
    print(f"\nresults written to {out}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["controller"]:  # the controller section runs on its own (tests/bench/controller.py)
        from tests.bench.controller import main as controller_main

        sys.exit(controller_main(sys.argv[2:]))
    sys.exit(main())
