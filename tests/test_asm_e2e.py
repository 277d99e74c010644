"""ASM's mesh topologies end to end in real Envoy (issue 13), laid out by
``tests/support/envoy_harness`` (its docstring says how it models ``exportTo`` visibility, root-namespace
EnvoyFilters and the merging of ``*`` VirtualServices on a Gateway). The official ``openai`` SDK is
the client.

* A route in ``team-a`` reaches providers defined (and exported) in ``platform``: the sidecar of
  ``team-a`` shapes, and a proxy of another namespace sees none of it.
* ASM's ingress guide: providers in ``istio-system``, a route in ``default`` with host ``*`` on the
  ingress Gateway, merged by Istio with another team's ``*`` VirtualService: llmc's rules are
  shaped (``hostRewrite`` included), the other team's route passes untouched.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import TESTDATA
from tests.support.envoy_harness import Envoy, build_bootstrap, build_gateway_bootstrap
from tests.support.mesh import llmc_render
from tests.support.sdk import APP_KEY, chat, status_error
from tests.test_envoy_e2e import call

pytestmark = pytest.mark.envoy

SOURCE = TESTDATA / "e2e" / "asm-topologies.yaml"
HOSTS = ("one.example.com", "two.example.com", "three.example.com", "four.example.com", "other.example.com")
KEYS = {"one.example.com": "sk-one-0000000000000000", "two.example.com": "sk-two-0000000000000000",
        "three.example.com": "sk-three-000000000000000", "four.example.com": "sk-four-00000000000000000"}
GATEWAY = {"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
           "metadata": {"name": "ingress-gw", "namespace": "istio-system"},
           "spec": {"selector": {"istio": "ingressgateway"},
                    "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]}}
# Another team's plain service on the same Gateway, host "*" too (written by hand, not by llmc).
OTHER_TEAM = [
    {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
     "metadata": {"name": "other", "namespace": "team-b"},
     "spec": {"hosts": ["other.example.com"], "location": "MESH_EXTERNAL", "resolution": "DNS",
              "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}]}},
    {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
     "metadata": {"name": "aaa-other", "namespace": "team-b"},  # sorts first: its routes come first
     "spec": {"hosts": ["*"], "gateways": ["istio-system/ingress-gw"],
              "http": [{"name": "other-api", "match": [{"uri": {"prefix": "/other"}}],
                        "route": [{"destination": {"host": "other.example.com", "port": {"number": 80}}}]}]}},
]


@pytest.fixture(scope="module")
def upstreams():
    from tests.support.upstream import start_upstreams

    ups = start_upstreams(None, (), HOSTS)
    yield ups
    for u in ups.values():
        u.stop()


@pytest.fixture(autouse=True)
def _clear(upstreams):
    for u in upstreams.values():
        u.clear()


@pytest.fixture(scope="module")
def objects():
    return llmc_render("-f", str(SOURCE))


def shaped(req, host: str, host_header: str | None = None) -> None:
    name = host.split(".")[0]
    assert req.path == f"/{name}/chat/completions"
    assert req.headers["host"] == (host_header or host)
    assert req.headers["authorization"] == f"Bearer {KEYS[host]}" != f"Bearer {APP_KEY}"
    assert req.json()["model"] == f"{name}-model"


def test_objects_stay_in_their_source_namespaces(objects):
    where = {(o["kind"], o["metadata"]["name"]): o["metadata"]["namespace"] for o in objects}
    assert where[("ServiceEntry", "llmc-provider-p-one")] == "platform"
    assert where[("VirtualService", "llmc-route-chat")] == "team-a"
    assert where[("EnvoyFilter", "llmc-route-chat")] == "team-a"
    assert {ns for (kind, _), ns in where.items() if kind == "EnvoyFilter"} == {"team-a", "istio-system", "platform"}


def test_route_in_one_namespace_reaches_providers_of_another(objects, upstreams):
    layout = build_bootstrap(objects, {h: u.port for h, u in upstreams.items()}, None, proxy_namespace="team-a")
    assert layout.unmatched == []
    envoy = Envoy(layout.bootstrap)
    try:
        host = "chat.team-a.svc.cluster.local"
        assert chat(envoy.port, host, headers={"x-tier": "premium"}).model == "one-model-2026"
        shaped(upstreams["one.example.com"].requests[-1], "one.example.com")
        upstreams["one.example.com"].clear()
        assert chat(envoy.port, host, headers={"x-debug": "any value"}).model == "two-model-2026"  # `{}`: present
        shaped(upstreams["two.example.com"].requests[-1], "two.example.com")
        upstreams["two.example.com"].clear()
        for _ in range(40):  # weighted over a provider exported to team-a and one exported to "*"
            chat(envoy.port, host)
        counts = {h: len(upstreams[h].requests) for h in ("one.example.com", "two.example.com")}
        assert sum(counts.values()) == 40 and all(counts.values()), counts
        for h in counts:
            for req in upstreams[h].requests:
                shaped(req, h)
    finally:
        envoy.stop()


def test_other_namespaces_see_nothing_not_exported_to_them(objects, upstreams):
    layout = build_bootstrap(objects, {h: u.port for h, u in upstreams.items()}, None, proxy_namespace="team-c")
    config = json.dumps(layout.bootstrap)
    assert "one.example.com" not in config  # exported to team-a only
    assert "two.example.com" in config  # exported to "*"
    assert "chat.team-a" not in config and "llmc.lua" not in config


def test_star_host_on_a_shared_gateway(objects, upstreams):
    layout = build_gateway_bootstrap(objects + [GATEWAY] + OTHER_TEAM, "istio-system", {"istio": "ingressgateway"},
                                     {h: u.port for h, u in upstreams.items()}, None)
    assert layout.unmatched == []
    vhosts = layout.bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"]["route_config"]["virtual_hosts"]
    assert [v["name"] for v in vhosts] == ["*:80"]  # one virtual host: both teams' routes
    envoy = Envoy(layout.bootstrap)
    try:
        # the other team's route: no LuaPerRoute on it, so the body and headers pass untouched
        status, _, _ = call(envoy, "anything.example.org", body="not json", path="/other/x",
                            headers={"authorization": "Bearer team-b"})
        assert status == 200
        req = upstreams["other.example.com"].requests[-1]
        assert (req.path, req.body, req.headers["authorization"]) == ("/other/x", b"not json", "Bearer team-b")
        # a JSON POST that matches no route at all: an OpenAI-format 404 the SDK understands;
        # anything else keeps Envoy's plain 404
        err = status_error(chat, envoy.port, "llm.example.org")
        assert err.status_code == 404 and err.code == "route_not_found"
        status, headers, body = call(envoy, "llm.example.org", body=None, method="GET", path="/nothing")
        assert (status, body) == (404, b"")
        # llmc's rules, on any host the Gateway serves
        assert chat(envoy.port, "llm.example.org", headers={"user-type": "subscriber"}).model == "three-model-2026"
        shaped(upstreams["three.example.com"].requests[-1], "three.example.com", "llm.three.example.com")
        upstreams["three.example.com"].clear()
        for _ in range(40):
            chat(envoy.port, "llm.example.org", headers={"x-llm": "yes"})
        counts = {h: len(upstreams[h].requests) for h in ("three.example.com", "four.example.com")}
        assert sum(counts.values()) == 40 and all(counts.values()), counts
        for h in counts:
            for req in upstreams[h].requests:
                shaped(req, h)
    finally:
        envoy.stop()


@pytest.mark.parametrize("moved", [True, False])
def test_gateway_pods_outside_the_gateway_namespace(upstreams, moved):
    """The Gateway lives in `llm`, its pods in istio-system. Told so, llmc writes the gateway's
    EnvoyFilters into istio-system and exports the VirtualService there: requests are shaped.
    Not told, the gateway pods see neither (what the option exists for)."""
    flags = ["--gateway-workload-namespace", "llm/llm-gateway=istio-system"] if moved else []
    objects = llmc_render("-f", str(TESTDATA / "e2e" / "gateway-workload.yaml"), *flags)
    gateway = {**GATEWAY, "metadata": {"name": "llm-gateway", "namespace": "llm"}}
    layout = build_gateway_bootstrap(objects + [gateway], "istio-system", {"istio": "ingressgateway"},
                                     {h: u.port for h, u in upstreams.items()}, None)
    assert layout.unmatched == []
    assert ("llmc.lua" in json.dumps(layout.bootstrap)) is moved
    envoy = Envoy(layout.bootstrap)
    try:
        status, _, _ = call(envoy, "chat.example.com", path="/v1/chat/completions")
        assert status == (200 if moved else 404)
        if moved:
            for _ in range(20):
                chat(envoy.port, "chat.example.com")
            got = [(h, r) for h in ("one.example.com", "two.example.com") for r in upstreams[h].requests]
            assert len(got) == 21 and {h for h, _ in got} == {"one.example.com", "two.example.com"}
            for h, req in got:
                shaped(req, h)
    finally:
        envoy.stop()


@pytest.mark.parametrize("headers,host", [({"x-tier": "premium"}, "one.example.com"),
                                          ({"x-debug": "any value"}, "two.example.com")])
def test_explain_predicts_the_cross_namespace_route(objects, upstreams, headers, host):
    """`llmc explain --namespace team-a` sees what a team-a sidecar sees (exportTo), and predicts the
    request the provider of the other namespace receives."""
    import json

    from compiler.explain import Request, explain
    from tests.test_envoy_e2e import call

    layout = build_bootstrap(objects, {h: u.port for h, u in upstreams.items()}, None, proxy_namespace="team-a")
    envoy = Envoy(layout.bootstrap)
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    req_headers = {"content-type": "application/json", **headers}
    try:
        status, _, payload = call(envoy, "chat.team-a.svc.cluster.local", body=body, headers=req_headers)
        assert status == 200, payload
    finally:
        envoy.stop()
    got = upstreams[host].requests[-1]
    x = explain(objects, Request(host="chat.team-a.svc.cluster.local", headers=req_headers, body=body.encode(),
                                 path="/", namespace="team-a"))
    assert x["upstream"]["url"] == f"http://{host}{got.path}"  # the providers here are plain HTTP
    assert json.loads(x["upstream"]["body"]) == got.json()
    assert x["upstream"]["headers"]["authorization"] == got.headers["authorization"].replace(KEYS[host], "***")
