"""Token limits end to end (issue 30): the real ``llmc render`` output in a real Envoy, the official
``openai`` SDK as the client, the rate-limit service double (tests/support/ratelimit.py) loaded with
the ConfigMap llmc emitted, counting in a real redis-server.

Every provider double answers with usage 11 prompt + 7 completion tokens (18 in all).
tests/testdata/e2e/token-limits.yaml says which rule has which limit. The charge is sent when the
stream is done, after the client has its answer, so counters are awaited (never timed).
"""

from __future__ import annotations

import json
import time
import urllib.request
from contextlib import ExitStack

import openai
import pytest

from tests.conftest import TESTDATA
from tests.support.envoy_harness import Envoy, envoy_minor, envoy_version
from tests.support.mesh import llmc_render, running_envoy
from tests.support.ratelimit import (
    RateLimitDouble,
    RedisServer,
    Settings,
    configmap_files,
    counter,
    free_port,
    rls_cluster,
    serving,
)
from tests.support.realrls import ExternalRedis, rate_limit_service, real_service
from tests.support.upstream import serving as serving_upstreams

pytestmark = pytest.mark.envoy

INPUT = TESTDATA / "e2e" / "token-limits.yaml"
RLS = "llmc-system/ratelimit:8081"
#: The tests count the service's calls exactly, so none may be given up: with the default timeout
#: (100 ms) a starved CI machine's Python double can take longer to pick a call up, and Envoy then
#: cancels it before the double counts it (fail-open lets the request pass). The "service down"
#: tests keep the default: a refused connection fails at once.
RLS_ARGS = ("--rate-limit-service", RLS, "--rate-limit-timeout", "10s")
HOSTS = ("qwen.example.com", "kimi.example.com", "openai.example.com", "any.example.com")
CHAT = "chat-gateway"
MESSAGES = [{"role": "user", "content": "hello"}]
WEIGHTED = 11 + 4 * 7  # cost {prompt: 1, completion: 4}
TOTAL = 18


def for_istiod(objects: list[dict]) -> list[dict]:
    """What istiod reads: the Istio objects (the ConfigMap is the rate-limit service's)."""
    return [o for o in objects if o["kind"] != "ConfigMap"]


#: LLMC_RLS=host:port: the real envoyproxy/ratelimit these tests run against (tests/support/realrls.py);
#: unset, the double does
REAL = real_service()


@pytest.fixture(scope="module")
def redis_server():
    server = ExternalRedis(*REAL.redis) if REAL else RedisServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def objects():
    return llmc_render("-f", str(INPUT), *RLS_ARGS)


@pytest.fixture(scope="module")
def rls(redis_server, objects):
    """The service the sidecars call: the double, or (LLMC_RLS) a recording proxy to the real one,
    loaded with the ConfigMap llmc emitted."""
    yield from rate_limit_service(REAL, redis_server.client, objects)


@pytest.fixture(scope="module")
def upstreams():
    from tests.support.anthropic import AnthropicUpstream
    from tests.support.azure import AzureUpstream

    with serving_upstreams(HOSTS) as ups:
        ups["claude.example.com"] = AnthropicUpstream("claude.example.com", sse_pause=0.1)
        ups["azure.example.com"] = AzureUpstream("azure.example.com", ("dep-x",), sse_pause=0.1)
        yield ups
        ups.pop("claude.example.com").stop()
        ups.pop("azure.example.com").stop()


@pytest.fixture(scope="module")
def proxies(objects, rls, upstreams):
    """A sidecar in team-a and one in team-b, both using the one rate-limit service."""
    with ExitStack() as stack:
        yield {ns: stack.enter_context(running_envoy(for_istiod(objects), upstreams, proxy_namespace=ns,
                                                     extra_clusters=[rls_cluster(rls.port)]))
               for ns in ("team-a", "team-b")}


@pytest.fixture(autouse=True)
def _fresh(redis_server, upstreams, rls):
    # A request to a limited route makes two calls, the check and (when its stream is done) the
    # charge: wait until the previous test's charges arrived, so none lands in this test's counters.
    deadline = time.monotonic() + 60  # generous: past it, a late charge would land in this test's counters
    while len(rls.requests) % 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    redis_server.flush()
    for u in upstreams.values():
        u.clear()


def sdk(proxy: Envoy, host: str = CHAT, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{proxy.port}/v1", api_key="sk-app-own-key", max_retries=0,
                         timeout=30, default_headers={"Host": host, **headers})


def eventually(redis_server: RedisServer, name: str, value: int) -> dict[str, int]:
    """The counters once ``name`` reached ``value`` (the charge is sent when the stream is done).
    The deadline only matters when the value never comes: generous, for a loaded 2-core machine."""
    deadline = time.monotonic() + 60
    while True:
        got = redis_server.counters()
        if got.get(name) == value or time.monotonic() > deadline:
            assert got.get(name) == value, got
            return got
        time.sleep(0.02)


def settle(rls: RateLimitDouble, count: int) -> None:
    """Wait until the service has received ``count`` calls in all (a refused request's charge, of 0,
    is sent too), so no call of one test lands in the next."""
    deadline = time.monotonic() + 60
    while len(rls.requests) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(rls.requests) == count, [r.descriptors for r in rls.requests[count - 4:]]


USER = "route/team-a/chat/per-user/user-tph"


def test_json_answers_are_charged_exactly_then_the_next_request_gets_an_openai_429(proxies, redis_server, upstreams,
                                                                                   rls):
    before = len(rls.requests)
    client = sdk(proxies["team-a"], **{"x-tier": "free", "x-user-id": "alice"})
    client.chat.completions.create(model="any", messages=MESSAGES)
    eventually(redis_server, counter(USER, ("header.x-user-id", "alice")), WEIGHTED)
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(model="any", messages=MESSAGES)
    assert err.value.status_code == 429 and err.value.code == "rate_limit_exceeded"
    assert err.value.body["type"] == "tokens"
    headers = err.value.response.headers
    assert headers["content-type"] == "application/json" and headers["x-ratelimit-limit"].startswith("30")
    assert int(headers["retry-after"]) > 0 and headers["x-ratelimit-remaining"] == "0"
    assert len(upstreams["qwen.example.com"].requests) == 1, "the refused request never reached the provider"
    settle(rls, before + 4)  # check + charge for each request
    # the refusal charged nothing: llmc's own 429 costs 0
    assert redis_server.counters()[counter(USER, ("header.x-user-id", "alice"))] == WEIGHTED
    assert [d.hits_addend.value for d in rls.requests[before + 3].descriptors] == [0]


def test_each_header_value_has_its_own_bucket_and_absent_headers_share_one(proxies, redis_server):
    for user in ("bob", "carol"):
        sdk(proxies["team-a"], **{"x-tier": "free", "x-user-id": user}).chat.completions.create(
            model="any", messages=MESSAGES)
    sdk(proxies["team-a"], **{"x-tier": "free"}).chat.completions.create(model="any", messages=MESSAGES)
    for user in ("bob", "carol", "-"):  # "-": the requests without the header
        eventually(redis_server, counter(USER, ("header.x-user-id", user)), WEIGHTED)


def test_sse_answers_are_charged_exactly(proxies, redis_server):
    client = sdk(proxies["team-a"], **{"x-tier": "free", "x-user-id": "dave"})
    stream = client.chat.completions.create(model="any", messages=MESSAGES, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].usage.total_tokens == TOTAL
    eventually(redis_server, counter(USER, ("header.x-user-id", "dave")), WEIGHTED)


def test_a_plain_stream_is_charged_exactly_and_the_client_sees_no_usage_event(proxies, redis_server, upstreams):
    """A client that streams without asking for usage: the filter asks for it (the charge needs it)
    and drops the usage event before the client, which did not ask, sees it."""
    client = sdk(proxies["team-a"], **{"x-tier": "free", "x-user-id": "ivan"})
    chunks = list(client.chat.completions.create(model="any", messages=MESSAGES, stream=True))
    assert chunks and all(c.choices for c in chunks) and "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello"
    (sent,) = upstreams["qwen.example.com"].requests
    assert sent.json()["stream_options"] == {"include_usage": True}
    eventually(redis_server, counter(USER, ("header.x-user-id", "ivan")), WEIGHTED)


def test_a_stream_without_usage_is_charged_the_request_size_estimate(proxies, redis_server, upstreams):
    """The notes' fallback: the provider reported no usage → request.size / 4 on a 2xx, the size of
    the body as shaped for the provider (its model written in, usage asked)."""
    body = json.dumps({"model": "any", "messages": MESSAGES, "stream": True}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{proxies['team-a'].port}/v1/chat/completions", data=body,
                                     headers={"Host": CHAT, "content-type": "application/json", "x-tier": "free",
                                              "x-user-id": "erin", "x-test-usage": "none"})
    with urllib.request.urlopen(request, timeout=30) as r:
        assert b"data: [DONE]" in r.read()
    (sent,) = upstreams["qwen.example.com"].requests
    assert len(sent.body) != len(body)
    eventually(redis_server, counter(USER, ("header.x-user-id", "erin")), len(sent.body) // 4)


def test_a_client_that_goes_away_mid_stream_is_charged_the_estimate(proxies, redis_server, upstreams):
    """The client closes the connection after the first event: no usage ever arrives, the stream
    ends with a 200 and is charged request.size / 4."""
    import http.client

    body = json.dumps({"model": "any", "messages": MESSAGES, "stream": True}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", proxies["team-a"].port, timeout=30)
    conn.request("POST", "/v1/chat/completions", body=body, headers={
        "Host": CHAT, "content-type": "application/json", "x-tier": "free", "x-user-id": "quinn"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.fp.readline()  # the first event's chunk size line
    conn.sock.close()  # gone, while the provider pauses after its first event
    conn.close()
    (sent,) = upstreams["qwen.example.com"].requests
    eventually(redis_server, counter(USER, ("header.x-user-id", "quinn")), len(sent.body) // 4)


def test_shadow_limits_count_but_never_refuse(proxies, redis_server):
    client = sdk(proxies["team-a"], **{"x-tier": "shadow"})
    for n in range(1, 4):  # 18, 36, 54 tokens against a budget of 10
        client.chat.completions.create(model="any", messages=MESSAGES)
        eventually(redis_server, counter("route/team-a/chat/shadow/audit"), n * TOTAL)


def test_a_weighted_rule_is_charged_on_the_pinned_route_keyed_by_model(proxies, redis_server, upstreams):
    client = sdk(proxies["team-a"], **{"x-tier": "split"})
    for _ in range(12):
        client.chat.completions.create(model="any", messages=MESSAGES)
    by_provider = {h: len(upstreams[h].requests) for h in ("qwen.example.com", "kimi.example.com")}
    assert sum(by_provider.values()) == 12 and all(by_provider.values()), by_provider
    limit = "route/team-a/chat/split/model-tpd"
    eventually(redis_server, counter(limit, ("model", "qwen-plus")), by_provider["qwen.example.com"] * TOTAL)
    eventually(redis_server, counter(limit, ("model", "kimi-k2")), by_provider["kimi.example.com"] * TOTAL)


def test_a_failover_rule_is_charged_once_for_the_answer(proxies, redis_server, upstreams, rls):
    if envoy_minor() < (1, 39):
        pytest.skip("failover needs Envoy 1.39+ (Istio 1.31); `python -m tests.envoy_versions 1.39.3` runs it")
    upstreams["qwen.example.com"].fail = "500"
    before = len(rls.requests)
    sdk(proxies["team-a"], **{"x-tier": "failover"}).chat.completions.create(model="any", messages=MESSAGES)
    assert [len(upstreams[h].requests) for h in ("qwen.example.com", "kimi.example.com")] == [1, 1]
    eventually(redis_server, counter("route/team-a/chat/failover/failover-tph"), TOTAL)
    settle(rls, before + 2)  # one check, one charge: the failed try costs nothing


def test_the_clients_model_keys_the_bucket_on_a_route_that_matches_on_it(proxies, redis_server, upstreams):
    for model in ("gpt-4o", "gpt-4o-mini", "gpt-4o"):
        sdk(proxies["team-a"], host="models-gateway").chat.completions.create(model=model, messages=MESSAGES)
    limit = "route/team-a/models/gpt/per-model-tph"
    eventually(redis_server, counter(limit, ("model", "gpt-4o")), 2 * TOTAL)
    eventually(redis_server, counter(limit, ("model", "gpt-4o-mini")), TOTAL)
    assert not [h for r in upstreams["any.example.com"].requests for h in r.headers if h.startswith("x-llmc-")]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_a_translated_providers_answers_are_charged_exactly(proxies, redis_server, stream):
    """Anthropic's usage (input, cache creation and cache reads; output), read from the translated
    answer; a stream reports it whether or not the client asked."""
    from tests.support.anthropic import USAGE

    client = sdk(proxies["team-a"], host="claude.example.com")
    if stream:
        chunks = list(client.chat.completions.create(model="any", messages=MESSAGES, stream=True))
        assert all(c.choices for c in chunks)
    else:
        client.chat.completions.create(model="any", messages=MESSAGES)
    total = USAGE["input_tokens"] + USAGE["cache_creation_input_tokens"] + USAGE["cache_read_input_tokens"] \
        + USAGE["output_tokens"]
    eventually(redis_server, counter("provider/team-a/claude/claude-tph"), total)


def test_an_azure_stream_keeps_its_filter_event_and_loses_only_the_usage_event(proxies, redis_server, upstreams):
    client = sdk(proxies["team-a"], host="azure.example.com")
    chunks = list(client.chat.completions.create(model="any", messages=MESSAGES, stream=True))
    assert chunks[0].choices == [] and chunks[0].id == ""  # Azure's prompt_filter_results, as Azure sent it
    assert all(c.choices for c in chunks[1:]) and all(c.usage is None for c in chunks)
    (sent,) = upstreams["azure.example.com"].requests
    assert sent.json()["stream_options"] == {"include_usage": True}
    eventually(redis_server, counter("provider/team-a/azure/azure-tph"), TOTAL)


def test_source_workload_keys(proxies, redis_server):
    sdk(proxies["team-a"], **{"x-tier": "workload"}).chat.completions.create(model="any", messages=MESSAGES)
    eventually(redis_server, counter("route/team-a/chat/workload/workload-tpd", ("source_cluster", "sleep.team-a")),
               TOTAL)


def test_a_provider_limit_is_one_bucket_across_namespaces(proxies, redis_server, upstreams, rls):
    before = len(rls.requests)
    provider = counter("provider/platform/shared-openai/provider-tph")
    sdk(proxies["team-a"], host="openai.example.com").chat.completions.create(model="any", messages=MESSAGES)
    eventually(redis_server, provider, TOTAL)
    sdk(proxies["team-b"], host="openai.example.com").chat.completions.create(model="any", messages=MESSAGES)
    eventually(redis_server, provider, 2 * TOTAL)
    sdk(proxies["team-b"], host="openai.example.com").chat.completions.create(model="any", messages=MESSAGES)
    eventually(redis_server, provider, 3 * TOTAL)  # 54 > 50: spent, for both namespaces
    for ns in ("team-a", "team-b"):
        with pytest.raises(openai.RateLimitError):
            sdk(proxies[ns], host="openai.example.com").chat.completions.create(model="any", messages=MESSAGES)
    assert len(upstreams["openai.example.com"].requests) == 3
    settle(rls, before + 10)


def test_unlimited_routes_make_no_call_to_the_service(proxies, rls, redis_server):
    before = len(rls.requests)
    sdk(proxies["team-a"]).chat.completions.create(model="any", messages=MESSAGES)
    # then a limited request: once its check and charge arrived, the unlimited one's would have too
    sdk(proxies["team-a"], **{"x-tier": "shadow"}).chat.completions.create(model="any", messages=MESSAGES)
    eventually(redis_server, counter("route/team-a/chat/shadow/audit"), TOTAL)
    settle(rls, before + 2)
    assert all(d.entries[0].value == "route/team-a/chat/shadow/audit" for r in rls.requests[before:]
               for d in r.descriptors)


def test_a_provider_error_is_charged_nothing(proxies, redis_server, rls):
    client = sdk(proxies["team-a"], **{"x-tier": "free", "x-user-id": "frank", "x-test-status": "500"})
    before = len(rls.requests)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="any", messages=MESSAGES)
    deadline = time.monotonic() + 60
    while len(rls.requests) < before + 2 and time.monotonic() < deadline:  # the check, then the charge
        time.sleep(0.02)
    charge = rls.requests[before + 1]
    assert [d.hits_addend.value for d in charge.descriptors] == [0]
    assert redis_server.counters().get(counter(USER, ("header.x-user-id", "frank")), 0) == 0


def _down_supported() -> None:
    major, minor, patch = (int(x) for x in envoy_version().split(".")[:3])
    if (major, minor, patch) < (1, 38, 3):
        pytest.skip("Envoy < 1.38.3 (Istio < 1.29.1) may crash when the rate-limit service fails with "
                    "apply_on_stream_done (CVE-2026-26330)")


@pytest.mark.parametrize("fail_closed", [False, True], ids=["fail-open", "fail-closed"])
def test_service_down(fail_closed, upstreams, redis_server):
    _down_supported()
    args = ["--rate-limit-fail-closed"] if fail_closed else []
    objects = llmc_render("-f", str(INPUT), "--rate-limit-service", RLS, *args)
    dead = rls_cluster(free_port())  # nothing listens there
    with running_envoy(for_istiod(objects), upstreams, proxy_namespace="team-a", extra_clusters=[dead]) as proxy:
        client = sdk(proxy, **{"x-tier": "free", "x-user-id": "gina"})
        if not fail_closed:
            assert client.chat.completions.create(model="any", messages=MESSAGES).usage.total_tokens == TOTAL
            return
        with pytest.raises(openai.InternalServerError) as err:
            client.chat.completions.create(model="any", messages=MESSAGES)
        assert err.value.status_code == 503 and err.value.code == "rate_limit_service_unavailable"
        assert not upstreams["qwen.example.com"].requests
        # unlimited routes do not depend on the service
        assert sdk(proxy).chat.completions.create(model="any", messages=MESSAGES).usage.total_tokens == TOTAL


@pytest.mark.parametrize("fail_closed", [False, True], ids=["fail-open", "fail-closed"])
def test_redis_down(fail_closed, upstreams):
    """The service answers with an error when its Redis is gone: Envoy lets the request pass, or
    (fail-closed) refuses it with the OpenAI-format 503."""
    _down_supported()
    import redis

    args = ["--rate-limit-fail-closed"] if fail_closed else []
    objects = llmc_render("-f", str(INPUT), "--rate-limit-service", RLS, *args)
    double = RateLimitDouble(redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2),
                             configmap_files(objects))
    with serving(double) as port, running_envoy(for_istiod(objects), upstreams, proxy_namespace="team-a",
                                                extra_clusters=[rls_cluster(port)]) as proxy:
        client = sdk(proxy, **{"x-tier": "free", "x-user-id": "hal"})
        if fail_closed:
            with pytest.raises(openai.InternalServerError) as err:
                client.chat.completions.create(model="any", messages=MESSAGES)
            assert err.value.status_code == 503 and err.value.code == "rate_limit_service_unavailable"
        else:
            assert client.chat.completions.create(model="any", messages=MESSAGES).usage.total_tokens == TOTAL
        settle(double, 1)  # the check reached the service (kept once answered: Envoy may move on first)


def test_an_image_before_per_descriptor_hits_addend_counts_requests_not_tokens(objects, upstreams, redis_server):
    """Trap 2 of the notes: envoyproxy/ratelimit before 38500fe (Istio's sample image) ignores the
    per-descriptor hits_addend: the check counts 1 and the charge counts 1, whatever the usage."""
    double = RateLimitDouble(redis_server.client, configmap_files(objects), Settings(legacy=True))
    with serving(double) as port, running_envoy(for_istiod(objects), upstreams, proxy_namespace="team-a",
                                                extra_clusters=[rls_cluster(port)]) as proxy:
        sdk(proxy, **{"x-tier": "free", "x-user-id": "old"}).chat.completions.create(model="any", messages=MESSAGES)
        eventually(redis_server, counter(USER, ("header.x-user-id", "old")), 2)  # not 39


def test_concurrent_requests_overshoot_by_at_most_their_number(proxies, redis_server, rls, capsys):
    """Charging after the fact (notes §5.5): requests in flight all pass the check. 10 at once against
    a budget of 30 (39 per answer): each admitted one is charged in full, at most 10 are, and once
    the charges are in, the next request is refused."""
    from concurrent.futures import ThreadPoolExecutor

    before = len(rls.requests)
    client = sdk(proxies["team-a"], **{"x-tier": "free", "x-user-id": "zed"})

    def one(_):
        try:
            client.chat.completions.create(model="any", messages=MESSAGES)
            return "ok"
        except openai.RateLimitError:
            return "429"

    with ThreadPoolExecutor(10) as pool:
        outcomes = list(pool.map(one, range(10)))
    admitted = outcomes.count("ok")
    assert 1 <= admitted <= 10 and admitted + outcomes.count("429") == 10
    settle(rls, before + 20)
    assert redis_server.counters()[counter(USER, ("header.x-user-id", "zed"))] == admitted * WEIGHTED
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="any", messages=MESSAGES)
    with capsys.disabled():
        print(f"\n[token limits] 10 concurrent requests, budget 30, 39 per answer: {admitted} admitted, "
              f"{admitted * WEIGHTED} tokens charged")


def test_an_ingress_gateway_enforces_limits_on_a_shared_virtual_host(upstreams, redis_server):
    """GATEWAY context: the filter and the 429 mapper on every HTTP listener of the gateway pods, the
    limits on llmc's own routes of the ``*`` virtual host it shares with other teams' routes."""
    from ruamel.yaml import YAML

    from tests.support.envoy_harness import build_gateway_bootstrap

    source = TESTDATA / "e2e" / "token-limits-gateway.yaml"
    gateway = next(d for d in YAML(typ="safe").load_all(source.read_text()) if d["kind"] == "Gateway")
    objects = llmc_render("-f", str(source), *RLS_ARGS)
    double = RateLimitDouble(redis_server.client, configmap_files(objects))
    with serving(double) as port:
        layout = build_gateway_bootstrap(for_istiod(objects) + [gateway], "istio-system", {"istio": "ingressgateway"},
                                         {h: u.port for h, u in upstreams.items()}, None)
        assert layout.unmatched == []
        layout.bootstrap["static_resources"]["clusters"].append(rls_cluster(port))
        proxy = Envoy(layout.bootstrap)
        try:
            client = sdk(proxy, host="any.host.example", **{"x-team": "blue"})
            client.chat.completions.create(model="any", messages=MESSAGES)
            eventually(redis_server, counter("route/llm/public/metered/team-tph", ("header.x-team", "blue")), TOTAL)
            client.chat.completions.create(model="any", messages=MESSAGES)  # 18 of 30: still admitted
            eventually(redis_server, counter("route/llm/public/metered/team-tph", ("header.x-team", "blue")),
                       2 * TOTAL)
            with pytest.raises(openai.RateLimitError) as err:
                client.chat.completions.create(model="any", messages=MESSAGES)
            assert err.value.code == "rate_limit_exceeded"
            assert sdk(proxy, host="any.host.example", **{"x-team": "red"}).chat.completions.create(
                model="any", messages=MESSAGES).usage.total_tokens == TOTAL
        finally:
            proxy.stop()


@pytest.mark.parametrize("stage", ["llmc", "0"])
def test_other_teams_route_rate_limits_never_reach_llmcs_service(objects, upstreams, redis_server, stage):
    """Another team's ``rate_limits`` on a route (stage 0, for their own rate-limit filter) are not
    llmc's: llmc's filter runs at its own stage and ignores them. The control (the filter moved to
    stage 0) shows the test can fail: there the other team's descriptor reaches llmc's service."""
    from tests.support.envoy_harness import build_bootstrap

    double = RateLimitDouble(redis_server.client, configmap_files(objects))
    with serving(double) as port:
        built = build_bootstrap(for_istiod(objects), {h: u.port for h, u in upstreams.items()}, None,
                                proxy_namespace="team-a", extra_clusters=[rls_cluster(port)])
        listener = built.bootstrap["static_resources"]["listeners"][0]
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        (rl,) = [f for f in hcm["http_filters"] if f["name"] == "llmc.ratelimit"]
        if stage == "0":
            del rl["typed_config"]["stage"]
        for vh in hcm["route_config"]["virtual_hosts"]:
            for route in vh["routes"]:
                if route.get("name") == "llmc/team-a/chat/open":
                    route["route"]["rate_limits"] = [{"actions": [{"generic_key": {"descriptor_value": "other-team"}}]}]
        proxy = Envoy(built.bootstrap)
        try:
            sdk(proxy).chat.completions.create(model="any", messages=MESSAGES)
            if stage == "0":
                deadline = time.monotonic() + 60
                while not double.requests and time.monotonic() < deadline:
                    time.sleep(0.02)
                assert double.requests[0].descriptors[0].entries[0].value == "other-team"
            else:
                # a limited request after it: once its calls arrived, the other team's would have too
                sdk(proxy, **{"x-tier": "shadow"}).chat.completions.create(model="any", messages=MESSAGES)
                eventually(redis_server, counter("route/team-a/chat/shadow/audit"), TOTAL)
                settle(double, 2)
        finally:
            proxy.stop()
