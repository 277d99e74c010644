"""`llmc diff --requests` on an access log a real Envoy wrote (issue 36): the format `llmc meshconfig`
prints, from the sidecar layout of the seed sample (tests/test_observability_e2e.py's environment)."""

from __future__ import annotations

import json
import shutil
import time

import pytest
from typer.testing import CliRunner

from compiler.cli import app
from tests.conftest import REPO
from tests.support.envoy_harness import logged_lines
from tests.support.mesh import EXTRAS
from tests.support.sdk import chat
from tests.test_observability_e2e import env  # noqa: F401  (the module's Envoy, upstreams and logs)

pytestmark = pytest.mark.envoy
runner = CliRunner()


def sources(tmp_path, name: str, weights: tuple[int, int] | None = None):
    """The configuration the Envoy runs (samples/seed and the e2e extras) in one folder; with
    ``weights`` the seed's 50/50 route gets those instead."""
    out = tmp_path / name
    shutil.copytree(REPO / "samples" / "seed", out)
    shutil.copy(EXTRAS, out / "extras.yaml")
    if weights:
        route = out / "demo-llm-server-route.yaml"
        text = route.read_text().replace("weight: 50", f"weight: {weights[0]}", 1)
        route.write_text(text.replace("weight: 50", f"weight: {weights[1]}", 1))
    return out


def test_the_access_log_of_a_real_envoy_is_replayed(env, tmp_path):  # noqa: F811
    envoy, d = env[0], env[1]
    log, legacy_log = d / "access.log", d / "legacy.log"
    before = len(log.read_text().splitlines()) if log.exists() else 0
    legacy_before = len(legacy_log.read_text().splitlines()) if legacy_log.exists() else 0
    chat(envoy.port, "demo-llm-server")
    chat(envoy.port, "dashscope.aliyuncs.com")
    chat(envoy.port, "dashscope.aliyuncs.com", headers={"user-type": "subscriber"})
    for _ in range(1000):  # Envoy flushes its access log on its own schedule (every second); 20 s at most
        lines = logged_lines(log)[before:]  # complete lines: Envoy may be mid-write
        if len(lines) >= 3:
            break
        time.sleep(0.02)
    assert len(lines) == 3, lines
    assert all("route_name" in json.loads(line) for line in lines)
    mine = tmp_path / "access.log"
    mine.write_text("\n".join(lines) + "\n")
    base = sources(tmp_path, "base")

    same = runner.invoke(app, ["diff", "--base", str(base), "--head", str(base), "--requests", str(mine), "-o", "json"])
    assert same.exit_code == 0, same.output
    report = json.loads(same.stdout)
    status = sorted(r["status"] for r in report["requests"])
    # the subscriber's rule matched a header the log does not hold: replayed without it, it reaches
    # the default rule, so it is reported as not reproducible, never compared
    assert status == ["not reproducible", "unchanged", "unchanged"], report
    (odd,) = [r for r in report["requests"] if r["status"] == "not reproducible"]
    assert "vip-route" in odd["why"] and odd["unknown"] == ["headers", "model"]

    head = sources(tmp_path, "head", weights=(90, 10))
    moved = runner.invoke(app, ["diff", "--base", str(base), "--head", str(head), "--requests", str(mine)])
    assert moved.exit_code == 1, moved.output
    assert "dashscope-qwen: share 50% → 90%" in moved.stdout and "moonshot: share 50% → 10%" in moved.stdout
    assert moved.stdout.strip().endswith("3 requests: 1 changed, 1 unchanged, 1 not reproducible")

    # the same requests logged in the legacy names (--legacy-telemetry-names) replay the same way
    for _ in range(1000):
        legacy = logged_lines(legacy_log)[legacy_before:]
        if len(legacy) >= 3:
            break
        time.sleep(0.02)
    assert len(legacy) == 3 and all("request_model" in json.loads(line) for line in legacy), legacy
    old = tmp_path / "legacy.log"
    old.write_text("\n".join(legacy) + "\n")
    replayed = runner.invoke(app, ["diff", "--base", str(base), "--head", str(head), "--requests", str(old)])
    assert replayed.exit_code == 1, replayed.output
    assert replayed.stdout.replace("legacy.log", "access.log") == moved.stdout, replayed.stdout
