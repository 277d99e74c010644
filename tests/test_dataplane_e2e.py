"""Data-plane hardening, end to end through a real Envoy (tests/support/envoy_harness.py).

Each test here pins a defect found by driving the filter with the official ``openai`` SDK and
hostile inputs: a key reaching the wrong provider, colliding route names, a body format the
client did not ask for, compressed responses losing usage, limits answered in plain text.
"""

from __future__ import annotations

import openai
import pytest

from tests.conftest import TESTDATA
from tests.support.envoy_harness import Envoy, build_bootstrap
from tests.support.mesh import llmc_render
from tests.support.upstream import start_upstreams

pytestmark = pytest.mark.envoy

HOSTS = ("one.example.com", "two.example.com", "three.example.com")
KEYS = {"one.example.com": "sk-one-0000000000000000", "two.example.com": "sk-two-0000000000000000",
        "three.example.com": "sk-three-000000000000000"}
PATHS = {"one.example.com": "/one/chat/completions", "two.example.com": "/two/chat/completions",
         "three.example.com": "/three/chat/completions"}
MODELS = {"one.example.com": "one-model", "two.example.com": "two-model", "three.example.com": "three-model"}
MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def upstreams():
    ups = start_upstreams(None, (), HOSTS)
    yield ups
    for u in ups.values():
        u.stop()


@pytest.fixture(scope="module")
def envoy(upstreams):
    objects = llmc_render("-f", str(TESTDATA / "e2e" / "hardening.yaml"))
    layout = build_bootstrap(objects, {h: u.port for h, u in upstreams.items()}, None)
    assert layout.unmatched == []
    proxy = Envoy(layout.bootstrap)
    yield proxy
    proxy.stop()


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
    layout = build_bootstrap(objects, {h: u.port for h, u in upstreams.items()}, None)
    proxy = Envoy(layout.bootstrap)
    try:
        sdk = client(proxy, "teams.example.com", api_key="team-gold")
        for _ in range(4):
            with pytest.raises(openai.InternalServerError) as err:
                sdk.chat.completions.create(model="m", messages=MESSAGES)
            assert err.value.code == "llmc_route_mismatch"
    finally:
        proxy.stop()
    assert not received(upstreams)
