"""The Grafana dashboard queries only metrics and labels llmc's telemetry produces."""

from __future__ import annotations

import json
import re

from compiler.telemetry import REQUEST_TAGS, TOKEN_DIMENSIONS, TOKEN_METRICS
from tests.conftest import REPO


def test_dashboard_queries_llmc_metrics():
    dash = json.loads((REPO / "deploy" / "grafana" / "llmc-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert exprs and len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    known_metrics = {f"istio_{m}" for m in TOKEN_METRICS} | {"istio_requests_total", "istio_request_duration_milliseconds_bucket"}
    known_labels = set(TOKEN_DIMENSIONS) | set(REQUEST_TAGS) | {"le", "response_code", "reporter"}
    for expr in exprs:
        metrics = set(re.findall(r"\b(istio_[a-z_]+)\b", expr))
        assert metrics and metrics <= known_metrics, expr
        labels = set(re.findall(r"by \(([^)]*)\)", expr))
        for group in labels:
            assert {x.strip() for x in group.split(",")} <= known_labels, expr
    titles = " ".join(p["title"] for p in dash["panels"])
    assert "model" in titles and "workload" in titles and "Latency" in titles
