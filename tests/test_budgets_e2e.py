"""Money budgets end to end (issue 31): the real ``llmc render`` output in a real Envoy, the official
``openai`` SDK as the client, the rate-limit service double loaded with the ConfigMap llmc emitted,
counting in a real redis-server (or, with ``LLMC_RLS``, the real service: tests/support/realrls.py).

tests/testdata/e2e/budgets.yaml: two providers with different prices, a namespace-wide budget per
team across both (500 micro units a day) and a rule's own budget. Each answer is charged at the
price of the provider and model that answered, in micro units, rounded up; the counters in Redis
are asserted exactly (the charge is sent once the stream is done: awaited, never timed).
"""

from __future__ import annotations

import openai
import pytest
import yaml

from tests.conftest import REPO, TESTDATA
from tests.support.envoy_harness import envoy_minor
from tests.support.mesh import llmc_render, running_envoy
from tests.support.ratelimit import (
    RedisServer,
    counter,
    prometheus,
    rls_cluster,
)
from tests.support.realrls import ExternalRedis, rate_limit_service, real_service
from tests.support.upstream import serving as serving_upstreams
from tests.test_token_limits_e2e import MESSAGES, eventually, for_istiod, sdk, settle

pytestmark = pytest.mark.envoy

INPUT = TESTDATA / "e2e" / "budgets.yaml"
RLS = "llmc-system/ratelimit:8081"
TEAM = "namespace/team-a/team-daily"
DEAR_RULE = "route/team-a/chat/dear/dear-hourly"
#: micro units per answer (11 prompt + 7 completion tokens; see the input's header)
CHEAP, DEAR, DEAR_MINI = 11 * 1 + 7 * 2, 11 * 10 + 7 * 30, 11 * 3 + 7 * 6
REAL = real_service()


def team(name: str) -> str:
    return counter(TEAM, ("header.x-team", name))


@pytest.fixture(scope="module")
def redis_server():
    server = ExternalRedis(*REAL.redis) if REAL else RedisServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def objects():
    return llmc_render("-f", str(INPUT), "--rate-limit-service", RLS, "--rate-limit-timeout", "10s")


@pytest.fixture(scope="module")
def rls(redis_server, objects):
    yield from rate_limit_service(REAL, redis_server.client, objects)


@pytest.fixture(scope="module")
def proxy(objects, rls):
    with serving_upstreams(("cheap.example.com", "dear.example.com")) as ups, \
            running_envoy(for_istiod(objects), ups, proxy_namespace="team-a",
                          extra_clusters=[rls_cluster(rls.port)]) as envoy:
        envoy.upstreams = ups  # type: ignore[attr-defined]
        yield envoy


@pytest.fixture(autouse=True)
def _fresh(redis_server, proxy):
    redis_server.flush()
    for u in proxy.upstreams.values():
        u.clear()


MAPPER = yaml.safe_load((REPO / "deploy" / "ratelimit" / "prometheus-mapper.yaml").read_text())["data"]["mapper.yaml"]


def spend(rls, team_name: str) -> int:
    """What the dashboard's spend panel reads for a team: the service's total_hits of the team's
    budget, through deploy/ratelimit's Prometheus mapper (the double keeps the service's stats)."""
    labels = (("domain", "llmc"), ("key", f"header.x-team_{team_name}"), ("limit", TEAM))
    return prometheus(dict(rls.stats), MAPPER).get(("ratelimit_service_rate_limit_total_hits", labels), 0)


def ask(proxy, team_name: str, tier: str | None = None, model: str = "dear-1", stream: bool = False):
    headers = {"x-team": team_name, **({"x-tier": tier} if tier else {})}
    client = sdk(proxy, **headers)
    if not stream:
        return client.chat.completions.create(model=model, messages=MESSAGES)
    return "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=model, messages=MESSAGES, stream=True) if c.choices)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_a_budget_across_two_providers_is_charged_each_answer_at_its_price_then_refuses(proxy, redis_server, rls,
                                                                                      stream):
    """One team's budget across both providers (500 micro units): cheap (25), dear at dear-1's price
    (320) — 345 charged, exactly; a third request is admitted (345 < 500) and brings it to 665; the
    next one gets the OpenAI-format 429 that the SDK raises as RateLimitError, and reaches no provider."""
    spent = spend(rls, "blue") if not REAL else 0
    ask(proxy, "blue", "cheap", stream=stream)
    eventually(redis_server, team("blue"), CHEAP)
    ask(proxy, "blue", stream=stream)
    eventually(redis_server, team("blue"), CHEAP + DEAR)
    eventually(redis_server, counter(DEAR_RULE), DEAR)  # the rule's own budget: only its answers
    ask(proxy, "blue", stream=stream)
    eventually(redis_server, team("blue"), CHEAP + 2 * DEAR)
    sent = sum(len(u.requests) for u in proxy.upstreams.values())
    with pytest.raises(openai.RateLimitError) as err:
        ask(proxy, "blue", "cheap", stream=stream)
    assert err.value.code == "rate_limit_exceeded" and err.value.response.headers["retry-after"].isdigit()
    assert sum(len(u.requests) for u in proxy.upstreams.values()) == sent
    assert ask(proxy, "green", "cheap", stream=stream)  # another team has its own bucket
    if not REAL:  # the dashboard's spend: charges only (the checks and the refused request add 0)
        assert spend(rls, "blue") - spent == CHEAP + 2 * DEAR


def test_the_price_is_the_answering_models(proxy, redis_server):
    """The same provider, two models: each answer at its model's price (the provider reports dated
    snapshots, dear-1-mini-2026, matched to the price of dear-1-mini, not dear-1)."""
    ask(proxy, "red", model="dear-1-mini")
    eventually(redis_server, team("red"), DEAR_MINI)
    ask(proxy, "red", model="dear-1")
    eventually(redis_server, team("red"), DEAR_MINI + DEAR)


def test_cache_reads_are_charged_at_the_cached_prompt_price(proxy, redis_server):
    """dear-1-mini's cachedPrompt (1.5 per 1M, prompt 3): an answer reporting 4 of its 11 prompt
    tokens as cached (``prompt_tokens_details.cached_tokens``) is charged 4 × 1.5 less than 4 × 3 —
    the same arithmetic as the cost counter (compiler/cost.py); dear-1 has no cachedPrompt: full price."""
    client = sdk(proxy, **{"x-team": "amber", "x-test-usage": "details"})
    client.chat.completions.create(model="dear-1-mini", messages=MESSAGES)
    eventually(redis_server, team("amber"), DEAR_MINI - 4 * (3 - 1.5))
    client.chat.completions.create(model="dear-1", messages=MESSAGES)
    eventually(redis_server, team("amber"), DEAR_MINI - 4 * (3 - 1.5) + DEAR)


def test_an_error_is_charged_nothing(proxy, redis_server, rls):
    before = len(rls.requests)
    with pytest.raises(openai.InternalServerError):
        sdk(proxy, **{"x-team": "grey", "x-tier": "cheap", "x-test-status": "500"}).chat.completions.create(
            model="any", messages=MESSAGES)
    settle(rls, before + 2)  # the check, then the charge (of 0)
    assert redis_server.counters().get(team("grey"), 0) == 0


def test_failover_charges_the_answering_providers_price(proxy, redis_server, rls):
    """dear fails, cheap answers: charged once, at cheap's price (25), not dear's."""
    if envoy_minor() < (1, 39):
        pytest.skip("failover needs Envoy 1.39+ (Istio 1.31); `python -m tests.envoy_versions 1.39.3` runs it")
    proxy.upstreams["dear.example.com"].fail = "503"
    before = len(rls.requests)
    ask(proxy, "violet", "failover")
    assert proxy.upstreams["dear.example.com"].requests and proxy.upstreams["cheap.example.com"].requests
    eventually(redis_server, team("violet"), CHEAP)
    settle(rls, before + 2)
    assert redis_server.counters()[team("violet")] == CHEAP
