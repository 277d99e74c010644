"""Data-plane hardening, end to end through a real Envoy (tests/support/envoy_harness.py).

Each test here pins a defect found by driving the filter with the official ``openai`` SDK and
hostile inputs: a key reaching the wrong provider, colliding route names, a body format the
client did not ask for, compressed responses losing usage, limits answered in plain text.
"""

from __future__ import annotations

import json

import openai
import pytest

from tests.conftest import TESTDATA
from tests.support.envoy_harness import Envoy
from tests.support.mesh import llmc_render, running_envoy
from tests.support.sdk import chat, chat_stream
from tests.support.upstream import serving
from tests.test_envoy_e2e import call

pytestmark = pytest.mark.envoy

HOSTS = ("one.example.com", "two.example.com", "three.example.com", "four.example.com")
KEYS = {"one.example.com": "sk-one-0000000000000000", "two.example.com": "sk-two-0000000000000000",
        "three.example.com": "sk-three-000000000000000", "four.example.com": "sk-four-00000000000000000"}
PATHS = {h: f"/{h.split('.')[0]}/chat/completions" for h in HOSTS}
MODELS = {h: f"{h.split('.')[0]}-model" for h in HOSTS}
MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def upstreams():
    with serving(HOSTS) as ups:
        yield ups


@pytest.fixture(scope="module")
def envoy(upstreams):
    with running_envoy(llmc_render("-f", str(TESTDATA / "e2e" / "hardening.yaml")), upstreams) as proxy:
        yield proxy


@pytest.fixture(autouse=True)
def _clear(upstreams):
    for u in upstreams.values():
        u.clear()


def client(envoy: Envoy, host: str, api_key: str = "sk-app-own-key") -> openai.OpenAI:
    """The SDK as an app in the mesh uses it: plain HTTP to the provider's (or route's) host."""
    return openai.OpenAI(base_url=f"http://127.0.0.1:{envoy.port}/v1", api_key=api_key, max_retries=0,
                         timeout=30, default_headers={"Host": host})


def received(upstreams) -> list[tuple[str, object]]:
    return [(h, r) for h, u in upstreams.items() for r in u.requests]


def assert_shaped_for_receiver(upstreams) -> None:
    for host, req in received(upstreams):
        assert req.headers["authorization"] == f"Bearer {KEYS[host]}", (host, req.headers["authorization"])
        assert req.path == PATHS[host]
        assert req.json()["model"] == MODELS[host]


def test_weighted_rule_matching_a_rewritten_header_keeps_its_providers(envoy, upstreams):
    """Rule `gold` matches `authorization`, which the filter replaces by the provider's key: the
    request must still reach p-one or p-two (pinned route), never fall through to rule `others`."""
    sdk = client(envoy, "teams.example.com", api_key="team-gold")
    for _ in range(40):
        sdk.chat.completions.create(model="any", messages=MESSAGES)
    got = received(upstreams)
    assert len(got) == 40
    assert not upstreams["three.example.com"].requests, "gold requests fell through to rule `others`"
    assert {h for h, _ in got} == {"one.example.com", "two.example.com"}
    assert_shaped_for_receiver(upstreams)


def test_other_callers_reach_the_next_rule(envoy, upstreams):
    client(envoy, "teams.example.com", api_key="team-silver").chat.completions.create(model="m", messages=MESSAGES)
    assert [h for h, _ in received(upstreams)] == ["three.example.com"]
    assert_shaped_for_receiver(upstreams)


def test_route_names_do_not_collide(envoy, upstreams):
    """Rule `canary.p-one` and the pinned route of weighted rule `canary` for p-one were both named
    `llmc.names.canary.p-one`; each must be shaped for the provider it reaches."""
    sdk = client(envoy, "names.example.com")
    for _ in range(30):
        sdk.chat.completions.create(model="m", messages=MESSAGES)
    got = received(upstreams)
    assert len(got) == 30 and not upstreams["three.example.com"].requests
    assert_shaped_for_receiver(upstreams)
    for u in upstreams.values():
        u.clear()
    sdk = openai.OpenAI(base_url=f"http://127.0.0.1:{envoy.port}/v1", api_key="k", max_retries=0,
                        default_headers={"Host": "names.example.com", "x-team": "dotted"})
    for _ in range(5):
        sdk.chat.completions.create(model="m", messages=MESSAGES)
    assert [h for h, _ in received(upstreams)] == ["three.example.com"] * 5
    assert_shaped_for_receiver(upstreams)


@pytest.mark.parametrize("pin", ["p-one", "p-two", "one.example.com", "llmc/default/teams/gold"])
def test_client_sent_routing_header_neither_steers_nor_leaks(envoy, upstreams, pin):
    """A caller that matches rule `others` sends the internal routing header with values that name
    no pinned route: it still reaches p-three, and the header does not reach the provider."""
    sdk = openai.OpenAI(base_url=f"http://127.0.0.1:{envoy.port}/v1", api_key="team-silver", max_retries=0,
                        default_headers={"Host": "teams.example.com", "x-llmc-provider": pin})
    for _ in range(5):
        sdk.chat.completions.create(model="m", messages=MESSAGES)
    assert [h for h, _ in received(upstreams)] == ["three.example.com"] * 5
    assert_shaped_for_receiver(upstreams)
    for _, req in received(upstreams):
        assert "x-llmc-provider" not in req.headers


@pytest.mark.parametrize("key", ["team-silver", "team-gold"])
def test_client_sent_pin_of_a_pinned_route_is_refused(envoy, upstreams, key):
    """Naming a pinned route in the routing header would skip the rule's conditions (and its
    weights): refused with an OpenAI-format 400, nothing forwarded."""
    sdk = openai.OpenAI(base_url=f"http://127.0.0.1:{envoy.port}/v1", api_key=key, max_retries=0,
                        default_headers={"Host": "teams.example.com",
                                         "x-llmc-provider": "llmc/default/teams/gold/p-one"})
    with pytest.raises(openai.BadRequestError) as err:
        sdk.chat.completions.create(model="m", messages=MESSAGES)
    assert err.value.code == "reserved_header"
    assert not received(upstreams)


def test_a_pinned_route_that_is_not_selected_fails_closed(upstreams):
    """If Envoy does not select the pinned route the filter chose (a VirtualService out of step with
    the filter's context), nothing is sent: OpenAI-format 500."""
    objects = llmc_render("-f", str(TESTDATA / "e2e" / "hardening.yaml"))
    for o in objects:
        if o["kind"] == "VirtualService" and o["metadata"]["name"] == "llmc-route-teams":
            for route in o["spec"]["http"]:
                for m in route["match"]:
                    if "x-llmc-provider" in m.get("headers", {}):
                        m["headers"]["x-llmc-provider"] = {"exact": "stale"}
    with running_envoy(objects, upstreams) as proxy:
        sdk = client(proxy, "teams.example.com", api_key="team-gold")
        for _ in range(4):
            with pytest.raises(openai.InternalServerError) as err:
                sdk.chat.completions.create(model="m", messages=MESSAGES)
            assert err.value.code == "llmc_route_mismatch"
    assert not received(upstreams)


def test_sdk_streaming_call_to_a_provider_configured_not_to_stream_gets_a_stream(envoy, upstreams):
    """Config `stream: false`; the app asks for a stream with usage: the app's explicit choice wins
    (it gets a stream, not a silently empty one), and the provider gets a request it accepts."""
    streamed = chat_stream(envoy.port, "four.example.com")
    assert streamed.text == "Hello" and streamed.usage.total_tokens == 18
    (_, req), = received(upstreams)
    sent = req.json()
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert_shaped_for_receiver(upstreams)


def test_stream_options_without_streaming_never_reach_the_provider(envoy, upstreams):
    """A non-streaming call that still carries stream_options (OpenAI answers that with a 400)."""
    completion = chat(envoy.port, "four.example.com", stream_options={"include_usage": True})
    assert completion.choices[0].message.content
    (_, req), = received(upstreams)
    assert req.json()["stream"] is False and "stream_options" not in req.json()


def test_compressed_responses_keep_usage(envoy, upstreams):
    """The SDK asks for gzip; llmc asks the provider for identity so usage can be read."""
    completion = chat(envoy.port, "one.example.com")
    assert completion.usage.total_tokens == 18
    (_, req), = received(upstreams)
    assert req.headers["accept-encoding"] == "identity"


LIMIT = 1 << 20  # p-four's maxRequestBytes


@pytest.mark.parametrize("size", [LIMIT - 40, LIMIT])
def test_bodies_up_to_the_limit_are_shaped_not_refused(envoy, upstreams, size):
    """A body just under or at maxRequestBytes grows by model/stream: still within Envoy's buffer
    (without headroom, Envoy answered a plain-text 413 the SDK cannot parse)."""
    head, tail = '{"messages":[{"role":"user","content":"', '"}]}'
    body = head + "x" * (size - len(head) - len(tail)) + tail
    assert len(body) == size
    status, _, payload = call(envoy, "four.example.com", body=body)
    assert status == 200, payload
    (_, req), = received(upstreams)
    assert req.json()["model"] == "four-model" and len(req.body) > size


def test_a_body_over_the_limit_gets_openai_413(envoy, upstreams):
    body = '{"messages":[{"role":"user","content":"' + "x" * LIMIT + '"}]}'
    status, headers, payload = call(envoy, "four.example.com", body=body)
    assert status == 413 and headers["content-type"] == "application/json"
    assert json.loads(payload)["error"]["code"] == "request_too_large"
    assert not received(upstreams)


def test_invalid_utf8_inside_a_string_is_refused(envoy, upstreams):
    status, headers, payload = call(envoy, "one.example.com", body=b'{"messages":[{"role":"user","content":"caf\xe9"}]}')
    assert status == 400 and headers["content-type"] == "application/json"
    assert "invalid UTF-8" in json.loads(payload)["error"]["message"]
    assert not received(upstreams)
