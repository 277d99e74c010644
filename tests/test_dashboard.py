"""The Grafana dashboard queries only metrics and labels llmc's telemetry produces (GenAI names)."""

from __future__ import annotations

import json
import re

from compiler.telemetry import GENAI_REQUEST_TAGS, genai_metrics
from tests.conftest import REPO

HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")


def test_dashboard_queries_llmc_metrics():
    dash = json.loads((REPO / "deploy" / "grafana" / "llmc-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert exprs and len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    histograms = {f"istio_{m.definition}{s}" for m in genai_metrics() for s in HISTOGRAM_SERIES}
    known_metrics = histograms | {"istio_requests_total"}
    known_labels = {label for m in genai_metrics() for label in m.dimensions} | set(GENAI_REQUEST_TAGS) | {
        "le", "response_code", "reporter"}
    variable = dash["templating"]["list"][1]["query"]
    assert set(re.findall(r"\b(istio_[a-z_]+)\b", variable)) <= known_metrics
    for expr in exprs:
        metrics = set(re.findall(r"\b(istio_[a-z_]+)\b", expr))
        assert metrics and metrics <= known_metrics, expr
        for group in re.findall(r"by \(([^)]*)\)", expr):
            assert {x.strip() for x in group.split(",")} <= known_labels, expr
        for label in re.findall(r"([a-z_]+)(?:=|!=|=~)\"", expr):
            assert label in known_labels, expr
        # a histogram's samples of non-LLM requests carry "unknown" labels (compiler/telemetry.py)
        if metrics & histograms:
            assert 'gen_ai_operation_name!="unknown"' in expr, expr
    titles = " ".join(p["title"] for p in dash["panels"])
    assert "model" in titles and "workload" in titles and "Latency" in titles and "first token" in titles
