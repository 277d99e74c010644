"""Money budgets in the compiler (issue 31): prices, ``budget: {cost}``, ``--cost-unit``, the charge
formula, namespace-wide budgets and their diagnostics (the end-to-end proof through a real Envoy is
tests/test_budgets_e2e.py)."""

from __future__ import annotations

import json

import pytest
import yaml

from compiler import Options, Severity, compile_text
from compiler.options import parse_options
from compiler.translate.ratelimit import RATE_LIMIT_FILTER
from tests.conftest import TESTDATA

RLS = ("llmc-system", "ratelimit", 8081)
E2E = (TESTDATA / "e2e" / "budgets.yaml").read_text()

PROVIDERS = """
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {name: openai, namespace: team-a}
spec:
  host: api.openai.com
  path: /v1/chat/completions
  prices: [{model: gpt-4o, prompt: 2.5, completion: 10}, {model: gpt-4o-mini, prompt: 0.15, completion: 0.6}]
---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {name: qwen, namespace: team-a}
spec: {host: qwen.example.com, path: /v1/chat/completions}
"""


def route(limits: str, backend: str = "api.openai.com", ns: str = "team-a", extra: str = "") -> str:
    return f"""---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMRoute
metadata: {{name: chat, namespace: {ns}}}
spec:
  host: chat-gateway
  {extra}
  rules:
  - name: r
    backendRefs: [{{providerHost: {backend}}}]
    tokenLimits: {limits}
"""


def compile_(text: str, **opts):
    return compile_text(text, Options(rate_limit_service=RLS, **opts), "in.yaml")


def diags(text: str, **opts) -> set[tuple[str, str]]:
    return {(d.code, d.path) for d in compile_(text, **opts).diagnostics.items if d.severity is Severity.ERROR}


def config(result) -> dict:
    (cm,) = [o for o in result.objects if o["kind"] == "ConfigMap"]
    return yaml.safe_load(cm["data"]["llmc.yaml"])


def per_route(result) -> dict[str, dict]:
    """{Envoy route name: its RateLimitPerRoute} from the EnvoyFilters' HTTP_ROUTE patches."""
    out = {}
    for o in result.objects:
        for patch in o["spec"].get("configPatches", []) if o["kind"] == "EnvoyFilter" else []:
            route_ = patch["match"].get("routeConfiguration", {}).get("vhost", {}).get("route", {})
            rl = patch["patch"].get("value", {}).get("typed_per_filter_config", {}).get(RATE_LIMIT_FILTER)
            if patch["applyTo"] == "HTTP_ROUTE" and rl:
                out[route_["name"]] = rl
    return out


@pytest.mark.parametrize("unit,budget", [("micro", 50_000_000), ("milli", 50_000)])
def test_a_budget_is_counted_in_cost_units(unit, budget):
    result = compile_(PROVIDERS + route("[{name: daily, budget: {cost: 50}, per: Day}]"), cost_unit=unit)
    assert result.ok
    (desc,) = config(result)["descriptors"]
    assert desc["rate_limit"] == {"unit": "day", "requests_per_unit": budget}
    assert desc["detailed_metric"] is True  # spend per key value in the service's stats


def test_a_budget_beyond_uint32_after_conversion_is_a_located_error():
    text = PROVIDERS + route("[{name: daily, budget: {cost: 5000}, per: Day}]")
    result = compile_(text)
    (d,) = [d for d in result.diagnostics.items if d.severity is Severity.ERROR]
    assert (d.code, d.path, d.file, d.line) == ("LLMC264", "spec.rules[0].tokenLimits[0].budget.cost", "in.yaml", 24)
    assert "5000000000 micro units" in d.message and "--cost-unit milli" in (d.hint or "")
    assert result.objects == []  # nothing half-written
    assert compile_(text, cost_unit="milli").ok


def test_exactly_one_of_tokens_and_budget_and_no_weights_on_money():
    assert diags(PROVIDERS + route("[{name: x, tokens: 10, budget: {cost: 1}, per: Day}]")) == {
        ("LLMC267", "spec.rules[0].tokenLimits[0]")}
    assert diags(PROVIDERS + route("[{name: x, per: Day}]")) == {("LLMC267", "spec.rules[0].tokenLimits[0]")}
    assert diags(PROVIDERS + route("[{name: x, budget: {cost: 1}, per: Day, cost: {total: 2}}]")) == {
        ("LLMC268", "spec.rules[0].tokenLimits[0].cost")}


def test_a_budget_needs_prices_on_every_provider_that_may_answer():
    assert diags(PROVIDERS + route("[{name: x, budget: {cost: 1}, per: Day}]", backend="qwen.example.com")) == {
        ("LLMC269", "spec.rules[0].tokenLimits[0].budget")}
    text = PROVIDERS + route("[]", extra="namespaceLimits: [{name: team, budget: {cost: 1}, per: Day}]")
    assert "LLMC269" in {code for code, _ in diags(text)}  # qwen's implicit route is in the namespace too


def test_the_cost_unit_option_is_in_the_options_table():
    opts, problems = parse_options(cost_unit="milli")
    assert problems == [] and opts is not None and opts.cost_unit == "milli"
    assert parse_options(cost_unit="cents")[1] == [("cost-unit", "expected one of micro, milli, got 'cents'")]


def test_prices_are_cost_units_per_million_tokens_rounded_up():
    text = PROVIDERS.replace("prompt: 0.15", "prompt: 0.0000001") + route("[{name: x, budget: {cost: 1}, per: Day}]")
    result = compile_(text)
    assert result.ok
    charge = json.dumps(per_route(result))
    assert "2500000u" in charge and "10000000u" in charge  # gpt-4o: 2.5 and 10 per 1M, in micro units
    assert "? 1u :" in charge  # 0.0000001 per 1M is rounded up to one micro unit, never to 0


def test_the_charge_is_the_answering_models_price_longest_name_first():
    result = compile_(PROVIDERS + route("[{name: x, budget: {cost: 1}, per: Day}]"))
    (entries,) = per_route(result).values()
    check, charge = entries["rate_limits"]
    assert check["hits_addend"] == {"number": 0}
    cel = charge["hits_addend"]["format"]
    # gpt-4o-mini is tested before gpt-4o (a dated gpt-4o-mini-2024-07-18 also starts with "gpt-4o-")
    assert cel.index('"gpt-4o-mini"') < cel.index('"gpt-4o"')
    assert "response_model" in cel and "response.code >= 400 ? 0u" in cel and "uint(request.size) / 4u" in cel
    assert cel.startswith("%CEL(") and cel.endswith(")%")


def test_failover_charges_by_the_provider_that_answered():
    result = compile_text(E2E, Options(rate_limit_service=RLS), "budgets.yaml")
    assert result.ok
    routes = per_route(result)
    (failover,) = [v for k, v in routes.items() if "/failover" in k]
    cel = failover["rate_limits"][1]["hits_addend"]["format"]
    assert 'metadata.filter_metadata.llmc.provider == "dear"' in cel
    assert 'metadata.filter_metadata.llmc.provider == "cheap"' in cel


PRICED = PROVIDERS.replace("spec: {host: qwen.example.com, path: /v1/chat/completions}",
                           "spec: {host: qwen.example.com, path: /v1/chat/completions, prices: "
                           "[{model: '*', prompt: 1, completion: 1}]}")


def test_a_namespace_budget_is_one_bucket_for_every_route_of_the_namespace_only():
    other = route("[]", ns="team-b").replace("tokenLimits: []", "")
    text = PRICED + route("[]", extra="namespaceLimits: [{name: team, budget: {cost: 1}, per: Day, "
                             "key: [{header: x-team}]}]").replace("tokenLimits: []", "") + other + """---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {name: openai, namespace: team-b}
spec: {host: api.openai.com, path: /v1/chat/completions}
"""
    result = compile_(text.replace("backendRefs: [{providerHost: api.openai.com}]\n    \n",
                                   "backendRefs: [{providerHost: api.openai.com}]\n"))
    assert result.ok, [d.format() for d in result.diagnostics.items]
    routes = per_route(result)
    limited = {name for name, cfg in routes.items() if any(
        a.get("generic_key", {}).get("descriptor_value") == "namespace/team-a/team"
        for e in cfg["rate_limits"] for a in e["actions"])}
    assert limited and all("team-a" in n for n in limited) and not any("team-b" in n for n in routes)
    assert [d["value"] for d in config(result)["descriptors"]] == ["namespace/team-a/team"]


def test_a_namespace_limit_is_declared_once_per_namespace():
    decl = "namespaceLimits: [{name: team, budget: {cost: 1}, per: Day}]"
    second = route("[]", extra=decl).replace("name: chat", "name: chat2").replace("chat-gateway", "other-gateway")
    text = PRICED + route("[]", extra=decl) + second
    assert diags(text) == {("LLMC265", "spec.namespaceLimits[0].name")}


def test_explain_shows_the_limits_of_a_limited_route(update_golden):
    """`llmc explain` on limited routes (a golden): per request, every limit and budget it counts
    against, its descriptor for this request, the charge formula (prices of the answering provider
    and model; weights for tokens) and that the charge itself is unknown offline."""
    from typer.testing import CliRunner

    from compiler.cli import app
    from tests.support.golden import check_golden

    runner, out = CliRunner(), []
    for source, args in (
            ("budgets.yaml", ["--host", "chat-gateway", "-H", "x-team:blue", "-d",
                              '{"model":"dear-1-mini","messages":[{"role":"user","content":"hi"}]}']),
            ("budgets.yaml", ["--host", "chat-gateway", "-H", "x-team:blue", "-H", "x-tier:failover", "-d",
                              '{"model":"dear-1","messages":[]}']),
            ("token-limits.yaml", ["--host", "chat-gateway", "-H", "x-tier:free", "-H", "x-user-id:alice",
                                   "--labels", "app=web", "-d", '{"messages":[]}'])):
        res = runner.invoke(app, ["explain", "-f", str(TESTDATA / "e2e" / source), "--rate-limit-service",
                                  "llmc-system/ratelimit:8081", "--namespace", "team-a", *args])
        assert res.exit_code == 0, res.output
        out.append(f"$ llmc explain -f tests/testdata/e2e/{source} … {' '.join(args[2:-2])}\n{res.stdout}")
    text = "\n".join(out)
    assert "sk-" not in text  # keys stay masked
    check_golden(TESTDATA / "explain" / "limits.txt", text, update_golden)


def test_the_ambient_target_refuses_a_namespace_budget():
    """A waypoint cannot run Envoy's rate-limit filter: a namespace's budgets are refused there like
    any limit (LLMC274), at their field."""
    from compiler.options import parse_options

    opts, problems = parse_options(target="ambient", rate_limit_service="llmc-system/ratelimit:8081")
    assert not problems and opts is not None
    text = PRICED + route("[]", extra="namespaceLimits: [{name: team, budget: {cost: 1}, per: Day}]").replace(
        "    tokenLimits: []\n", "")
    result = compile_text(text, opts, "in.yaml")
    assert ("LLMC274", "spec.namespaceLimits") in {(d.code, d.path) for d in result.diagnostics.items}
