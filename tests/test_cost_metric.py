"""The cost counter of ``render --telemetry`` (issue 34, from issue 31's prices): where it is
emitted, its name outside the GenAI conventions, and its value — the arithmetic money budgets
charge with (compiler/cost.py), evaluated here with cel-python; tests/test_cost_metric_e2e.py
evaluates the same expressions in real Envoy."""

from __future__ import annotations

import celpy
import pytest
from ruamel.yaml import YAML

from compiler import Options, compile_text
from compiler.ir import Price
from compiler.telemetry import COST_DEFINITION, COST_NAME, KEY_ID, WORKLOAD, cost_metric, prometheus_name
from tests.conftest import REPO, TESTDATA
from tests.test_budgets import E2E, PROVIDERS, RLS, per_route, route

REGISTRY = YAML(typ="safe").load((REPO / "tests" / "testdata" / "otel" / "genai-registry.yaml").read_text())


def render(text: str, **opts) -> list[dict]:
    result = compile_text(text, Options(telemetry=True, **opts), "in.yaml")
    assert result.ok, [d.format() for d in result.diagnostics.items]
    return result.objects


def cost_definitions(objects: list[dict]) -> list[tuple[str, dict, dict]]:
    """(patch operation, definition, its metric's dimensions) of every cost counter emitted."""
    out = []
    for o in objects:
        for patch in o["spec"].get("configPatches", []) if o["kind"] == "EnvoyFilter" else []:
            cfg = patch["patch"]["value"].get("typed_config", {})
            dims = {m["name"]: m.get("dimensions") for m in cfg.get("metrics", [])}
            out += [(patch["patch"]["operation"], d, dims[d["name"]]) for d in cfg.get("definitions", [])
                    if d["name"] == COST_DEFINITION]
    return out


def evaluate(expr: str, llmc: dict, code: int = 200, size: int = 400):
    env = celpy.Environment()
    activation = {"metadata": celpy.json_to_cel({"filter_metadata": {"llmc": llmc}}),
                  "response": celpy.json_to_cel({"code": code}), "request": celpy.json_to_cel({"size": size}),
                  "xds": celpy.json_to_cel({"node": {"metadata": {"WORKLOAD_NAME": "app", "NAMESPACE": "team-a"}}})}
    return env.program(env.compile(expr)).evaluate(activation)


def test_the_cost_counter_is_llmcs_own_name_not_a_convention_name():
    """Cost is not in OpenTelemetry's GenAI conventions: the counter has llmc's name, outside the
    ``gen_ai.`` namespace and absent from the vendored registry, so the registry test cannot pass it
    as a convention name; the labels that are convention names are the registry's."""
    assert COST_NAME not in REGISTRY["metrics"] and not COST_NAME.startswith("gen_ai.")
    assert not any(COST_NAME in str(v) for v in REGISTRY["metrics"].values())
    (op, definition, dims), = cost_definitions(render(PROVIDERS + route("[]")))
    assert op == "MERGE" and definition["type"] == "COUNTER"  # in Istio's own stats filter
    metric = cost_metric([("openai", (Price("*", 1, 2),))], "micro")
    assert metric.name is None and metric.llmc_name == COST_NAME and metric.definition == COST_DEFINITION
    for label, attribute in metric.attributes.items():
        assert attribute in REGISTRY["attributes"] and label == prometheus_name(attribute)
    assert set(dims) - set(metric.attributes) == {"llm_provider", *KEY_ID, *WORKLOAD}
    assert set(metric.attributes) == {"gen_ai_provider_name", "gen_ai_request_model", "gen_ai_response_model",
                                      "gen_ai_operation_name"}


def test_no_prices_no_cost_counter():
    """A proxy that reaches no priced provider gets no cost counter at all (not a 0 price)."""
    text = PROVIDERS.replace("  prices: [{model: gpt-4o, prompt: 2.5, completion: 10}, {model: gpt-4o-mini, "
                             "prompt: 0.15, completion: 0.6}]\n", "") + route("[]")
    objects = render(text)
    assert any(o["kind"] == "EnvoyFilter" and "token-metrics" in o["metadata"]["name"] for o in objects)
    assert cost_definitions(objects) == []
    seed = compile_text("\n---\n".join(p.read_text() for p in sorted((REPO / "samples" / "seed").glob("*.yaml"))),
                        Options(telemetry=True), "seed.yaml")
    assert seed.ok and cost_definitions(seed.objects) == []


OPENAI = {"provider": "openai", "gen_ai_provider": "openai", "request_model": "gpt-4o", "request_prompt_tokens": 1234,
          "request_completion_tokens": 567}


@pytest.mark.parametrize("llmc,code,expected", [
    # ceil((1234 × 2.5 + 567 × 10) micro units) = ceil(8755) micro units
    ({**OPENAI, "response_model": "gpt-4o-2024-08-06"}, 200, 8755),
    # the answering model's price: gpt-4o-mini (0.15, 0.6): 185.1 + 340.2 → 526 (rounded up)
    ({**OPENAI, "response_model": "gpt-4o-mini"}, 200, 526),
    # no reported model: the requested one's
    (OPENAI, 200, 8755),
    # prompt tokens only (an embeddings answer): those, at the prompt price (1234 × 2.5)
    ({"provider": "openai", "gen_ai_provider": "openai", "request_model": "gpt-4o", "request_prompt_tokens": 1234},
     200, 3085),
    # no usage, an error, an unpriced provider: no cost
    ({"provider": "openai", "request_model": "gpt-4o"}, 200, 0),
    ({**OPENAI, "response_model": "gpt-4o"}, 503, 0),
    ({**OPENAI, "provider": "qwen"}, 200, 0),
    # not an LLM request: no llmc metadata at all (istio.stats would count an evaluation error as 0)
    ({}, 200, 0),
])
def test_the_counter_adds_the_answers_price(llmc, code, expected):
    (_, definition, dims), = cost_definitions(render(PROVIDERS + route("[]")))
    assert evaluate(definition["value"], llmc, code) == expected
    priced = expected > 0
    assert (evaluate(dims["gen_ai_provider_name"], llmc, code) == "openai") is priced
    assert (evaluate(dims["gen_ai_provider_name"], llmc, code) == "unknown") is not priced
    assert (evaluate(dims["llm_provider"], llmc, code) == "openai") is priced


@pytest.mark.parametrize("llmc", [
    {"provider": "dear", "response_model": "dear-1", "request_prompt_tokens": 11, "request_completion_tokens": 7},
    # dear-1-mini has a cachedPrompt: its cache reads cost less (and cache reads above the prompt
    # count, impossible, are ignored rather than make the charge negative)
    {"provider": "dear", "response_model": "dear-1-mini", "request_prompt_tokens": 11, "request_completion_tokens": 7,
     "cache_read_tokens": 4},
    {"provider": "dear", "response_model": "dear-1-mini", "request_prompt_tokens": 11, "request_completion_tokens": 7,
     "cache_read_tokens": 40},
    {"provider": "dear", "response_model": "dear-1", "request_prompt_tokens": 11, "request_completion_tokens": 7,
     "cache_read_tokens": 4},
    {"provider": "dear", "response_model": "dear-1-mini", "request_prompt_tokens": 1000, "request_completion_tokens": 3},
    {"provider": "cheap", "response_model": "cheap-1", "request_prompt_tokens": 5, "request_completion_tokens": 9},
    {"provider": "cheap", "request_model": "x", "request_prompt_tokens": 123457, "request_completion_tokens": 1},
])
def test_the_counter_and_a_money_budget_charge_the_same(llmc):
    """One arithmetic: for every answer with usage, the counter adds exactly what a money budget on
    the route charges (the failover route of the budgets' e2e input: provider switch and model
    switch both)."""
    result = compile_text(E2E, Options(rate_limit_service=RLS, telemetry=True), "budgets.yaml")
    assert result.ok
    (failover,) = [v for k, v in per_route(result).items() if "/failover" in k]
    charge = failover["rate_limits"][1]["hits_addend"]["format"].removeprefix("%CEL(").removesuffix(")%")
    (_, definition, _), *rest = cost_definitions(result.objects)
    assert all(d == definition for _, d, _ in rest)  # every group of a namespace defines it alike
    assert evaluate(definition["value"], llmc) == evaluate(charge, llmc) > 0


def test_the_counter_counts_in_the_cost_unit():
    text = PROVIDERS + route("[]")
    micro = cost_definitions(render(text))[0][1]["value"]
    milli = cost_definitions(render(text, cost_unit="milli"))[0][1]["value"]
    llmc = {**OPENAI, "response_model": "gpt-4o"}
    assert evaluate(micro, llmc) == 8755 and evaluate(milli, llmc) == 9  # 8.755 milli, rounded up


def test_the_golden_cost_case_prices_only_the_priced_providers():
    text = (TESTDATA / "golden" / "telemetry-cost.out.yaml").read_text()
    (_, definition, _), = cost_definitions([o for o in YAML(typ="safe").load_all(text) if o])
    assert '"gpt"' in definition["value"] and '"claude"' in definition["value"]
    assert '"local"' not in definition["value"]


CACHED = PROVIDERS.replace("{model: gpt-4o, prompt: 2.5, completion: 10}",
                           "{model: gpt-4o, prompt: 2.5, completion: 10, cachedPrompt: 1.25}")


@pytest.mark.parametrize("cache_read,expected", [
    (1000, 7505),  # 234 × 2.5 + 1000 × 1.25 + 567 × 10: cache reads at cachedPrompt
    (0, 8755),  # 1234 × 2.5 + 567 × 10: none read from the cache, the prompt price
    (None, 8755),  # not reported: the prompt price
])
def test_cache_reads_cost_the_cached_prompt_price(cache_read, expected):
    """``cachedPrompt``: the prompt tokens the provider read from its cache (``cache_read_tokens``,
    which the filter records for OpenAI, Anthropic and Gemini; they are part of the prompt tokens)
    cost the cached price, in the counter and in a budget alike; a model without one (gpt-4o-mini)
    pays the prompt price for them."""
    llmc = {**OPENAI, "response_model": "gpt-4o", **({"cache_read_tokens": cache_read} if cache_read is not None else {})}
    (_, definition, _), = cost_definitions(render(CACHED + route("[]")))
    assert evaluate(definition["value"], llmc) == expected
    result = compile_text(CACHED + route("[{name: x, budget: {cost: 1}, per: Day}]"),
                          Options(rate_limit_service=RLS), "in.yaml")
    (entries,) = per_route(result).values()
    charge = entries["rate_limits"][1]["hits_addend"]["format"].removeprefix("%CEL(").removesuffix(")%")
    assert evaluate(charge, llmc) == expected
    mini = {**llmc, "response_model": "gpt-4o-mini"}
    assert evaluate(definition["value"], mini) == -(-(1234 * 150_000 + 567 * 600_000) // 1_000_000)


def test_no_cached_prompt_no_cache_term():
    """Prices without cachedPrompt keep the charge as it was (no cache term: the goldens of budgets
    without it did not change)."""
    (_, definition, _), = cost_definitions(render(PROVIDERS + route("[]")))
    assert "cache_read_tokens" not in definition["value"]
    (_, cached, _), = cost_definitions(render(CACHED + route("[]")))
    assert "cache_read_tokens" in cached["value"]


def test_the_legacy_names_keep_the_cost_counter():
    """The counter is new, so it has no legacy name: ``--legacy-telemetry-names`` emits it the same,
    in Istio's filter beside the legacy token counters."""
    text = PROVIDERS + route("[]")
    legacy = cost_definitions(render(text, legacy_telemetry_names=True))
    assert [(op, d) for op, d, _ in legacy] == [(op, d) for op, d, _ in cost_definitions(render(text))]
    assert legacy and legacy[0][0] == "MERGE"


def test_the_counter_does_not_depend_on_input_order():
    docs = [d for d in (CACHED + route("[]")).split("---") if d.strip()]
    forward = cost_definitions(render("---".join(docs)))
    backward = cost_definitions(render("---".join(reversed(docs))))
    assert forward and forward == backward
