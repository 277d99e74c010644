"""The Grafana dashboard queries only metrics and labels llmc's telemetry produces (GenAI names)."""

from __future__ import annotations

import json
import re

from compiler.ir import Price
from compiler.telemetry import GENAI_REQUEST_TAGS, cost_metric, genai_metrics
from tests.conftest import REPO

HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")
#: the cost counter as render --telemetry emits it where a proxy reaches priced providers
COST = cost_metric([("p", (Price("*", 1, 1),))], "micro")


def test_dashboard_queries_llmc_metrics():
    dash = json.loads((REPO / "deploy" / "grafana" / "llmc-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert exprs and len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    histograms = {f"istio_{m.definition}{s}" for m in genai_metrics() for s in HISTOGRAM_SERIES}
    known_metrics = histograms | {"istio_requests_total", f"istio_{COST.definition}"} | rate_limit_metrics()
    known_labels = {label for m in [*genai_metrics(), COST] for label in m.dimensions} | set(GENAI_REQUEST_TAGS) | {
        "le", "response_code", "reporter", "response_flags"} | rate_limit_labels()
    variable = next(v for v in dash["templating"]["list"] if v["name"] == "namespace")["query"]
    assert set(re.findall(r"\b(istio_[a-z_]+)\b", variable)) <= known_metrics
    for expr in exprs:
        metrics = set(re.findall(r"\b((?:istio|ratelimit)_[a-z_]+)\b", expr))
        assert metrics and metrics <= known_metrics, expr
        for group in re.findall(r"by \(([^)]*)\)", expr):
            assert {x.strip() for x in group.split(",")} <= known_labels, expr
        for label in re.findall(r"([a-z_]+)(?:=|!=|=~)\"", expr):
            assert label in known_labels, expr
        # a histogram's samples of non-LLM requests, and the cost counter's of unpriced answers, carry
        # "unknown" labels (compiler/telemetry.py)
        if metrics & (histograms | {f"istio_{COST.definition}"}):
            assert 'gen_ai_operation_name!="unknown"' in expr, expr
    titles = " ".join(p["title"] for p in dash["panels"])
    assert "model" in titles and "workload" in titles and "Latency" in titles and "first token" in titles


def _mapper() -> dict:
    import yaml

    cm = yaml.safe_load((REPO / "deploy" / "ratelimit" / "prometheus-mapper.yaml").read_text())
    return yaml.safe_load(cm["data"]["mapper.yaml"])


def rate_limit_metrics() -> set[str]:
    """The metric names deploy/ratelimit's mapper gives the service's stats (STATS of the double)."""
    from tests.support.ratelimit import STATS

    names = {m["name"] for m in _mapper()["mappings"]}
    return {n.replace(f"${i}", stat) for n in names for i in range(1, 4) for stat in STATS if f"${i}" in n}


def rate_limit_labels() -> set[str]:
    return {k for m in _mapper()["mappings"] for k in m.get("labels", {})}


def test_the_dashboard_shows_spend_and_refusals_per_budget():
    """Budgets (issue 31): spend per limit and key (team, workload or model: the key label the
    mapper keeps) from the rate-limit service's own total_hits, in the currency (a cost-unit
    variable), the amounts charged beyond a budget (over_limit, shadow_mode), and the requests
    refused (429 with Envoy's RL flag)."""
    dash = json.loads((REPO / "deploy" / "grafana" / "llmc-dashboard.json").read_text())
    by_title = {p["title"]: [t["expr"] for t in p["targets"]] for p in dash["panels"]}
    spend = [e for t, es in by_title.items() if "Spend" in t for e in es]
    assert spend and all("ratelimit_service_rate_limit_total_hits" in e and "$cost_unit" in e for e in spend)
    assert any("by (limit, key)" in e for e in spend)
    over = [e for es in by_title.values() for e in es if "over_limit" in e or "shadow_mode" in e]
    assert {"ratelimit_service_rate_limit_over_limit", "ratelimit_service_rate_limit_shadow_mode"} <= \
        {m for e in over for m in re.findall(r"ratelimit_[a-z_]+", e)}
    assert any('response_flags="RL"' in e and 'response_code="429"' in e for es in by_title.values() for e in es)
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert {o["value"] for o in variables["cost_unit"]["options"]} == {"1000000", "1000"}


def test_the_dashboard_shows_cost_per_provider_and_model_and_per_workload():
    """The cost counter (issue 34): per provider and model, and per source workload, converted from
    cost units to the prices' currency by the same cost_unit variable as the budget panels."""
    dash = json.loads((REPO / "deploy" / "grafana" / "llmc-dashboard.json").read_text())
    cost = [(p["title"], t["expr"]) for p in dash["panels"] for t in p["targets"]
            if f"istio_{COST.definition}" in t["expr"]]
    groups = {g for _, e in cost for g in re.findall(r"by \(([^)]*)\)", e)}
    assert "gen_ai_provider_name, gen_ai_response_model" in groups
    assert "source_workload_namespace, source_workload" in groups
    assert all(e.rstrip().endswith("/ $cost_unit") and "Cost" in t for t, e in cost), cost
