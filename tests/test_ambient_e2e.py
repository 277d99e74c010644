"""The ambient target end to end: ``llmc render --target ambient`` laid out as istiod lays out a
waypoint (tests/support/waypoint_harness.py names the istiod source lines it follows), in a real
Envoy (the Istio release's: 1.38 for Istio 1.30 by default, ``LLMC_ENVOY`` for 1.39), real HTTP.

The oracle is the sidecar target: for every request both renderings of the same sources are sent the
same request, and the provider must receive the same request (path, key, model, body) and the client
the same answer, and the access log the same llmc metadata (provider, rule, models, token usage).
The client of every well-formed request is the official ``openai`` SDK.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import time
from pathlib import Path

import pytest
import trustme

from compiler.translate.trafficextension import route_index
from tests.conftest import TESTDATA
from tests.support.anthropic import AnthropicUpstream
from tests.support.azure import AzureUpstream
from tests.support.envoy_harness import Envoy, access_log, build_bootstrap, envoy_binary, logged_entries
from tests.support.mesh import llmc_render
from tests.support.sdk import APP_KEY, chat, chat_stream
from tests.support.upstream import start_upstreams
from tests.support.waypoint_harness import Waypoint, build_waypoint_bootstrap

pytestmark = pytest.mark.envoy

REPO = Path(__file__).resolve().parents[1]
SEED = "samples/seed"
EXTRAS = str(TESTDATA / "e2e" / "extras.yaml")  # a streaming provider, a 4 KiB limit, a key from a Secret
PROTOCOLS = str(TESTDATA / "e2e" / "providers.yaml")
MODELS = str(TESTDATA / "golden" / "model-routing.in.yaml")
TLS_HOSTS = ("dashscope.aliyuncs.com", "api.moonshot.cn")
PLAIN_HOSTS = ("stream.example.com", "tiny.example.com", "keyed.example.com", "openai.example.com", "gw.example.com",
               "qwen.example.com", "kimi.example.com")
#: what the access log records of each request: llmc's dynamic metadata and the route
LOG_FORMAT = {"llmc": "%DYNAMIC_METADATA(llmc)%", "route": "%ROUTE_NAME%", "status": "%RESPONSE_CODE%"}
PATHS = {"api.moonshot.cn": "/v1/chat/completions", "dashscope.aliyuncs.com": "/compatible-mode/v1/chat/completions"}
CHAT = json.dumps({"messages": [{"role": "user", "content": "Please introduce yourself"}]})


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    authority = trustme.CA()
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    authority.cert_pem.write_to_path(str(path))
    return authority, str(path)


@pytest.fixture(scope="module")
def upstreams(ca):
    ups = start_upstreams(ca[0], TLS_HOSTS, PLAIN_HOSTS, sse_pause=0.05)
    ups["azure.example.com"] = AzureUpstream("azure.example.com", ("dep-mini",), sse_pause=0.05)
    for host in ("claude.example.com", "byok.example.com"):
        ups[host] = AnthropicUpstream(host, sse_pause=0.05)
    yield ups
    for u in ups.values():
        u.stop()


@pytest.fixture(autouse=True)
def _clear(upstreams):
    for u in upstreams.values():
        u.clear()


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("secrets")
    (d / "llm-keys").mkdir()
    (d / "llm-keys" / "keyed").write_text("sk-from-secret-1\n")
    return d


class Pair:
    """The same sources rendered for sidecars and for a waypoint, each running in a real Envoy."""

    def __init__(self, inputs: list[str], namespace: str, services: dict[str, str], upstreams, ca_file: str,
                 secrets_dir: Path, tmp: Path):
        args = [a for i in inputs for a in ("-f", i)] + ["--secrets-dir", str(secrets_dir)]
        self.sidecar_objects = llmc_render(*args)
        self.ambient_objects = llmc_render(*args, "--target", "ambient")
        ports = {h: u.port for h, u in upstreams.items()}
        self.logs = {"sidecar": tmp / "sidecar.log", "ambient": tmp / "ambient.log"}
        side = build_bootstrap(self.sidecar_objects, ports, ca_file, proxy_namespace=namespace,
                               access_logs=[access_log(str(self.logs["sidecar"]), LOG_FORMAT)])
        assert side.unmatched == []
        self.waypoint_layout = build_waypoint_bootstrap(
            self.ambient_objects, ports, ca_file, waypoint_namespace=namespace, services=services,
            access_logs=[access_log(str(self.logs["ambient"]), LOG_FORMAT)])
        self.sidecar = Envoy(side.bootstrap)
        self.waypoint = Waypoint(self.waypoint_layout.bootstrap)

    def port(self, target: str, host: str) -> int:
        if target == "sidecar":
            return self.sidecar.port
        return self.waypoint.ports[next(h for h in self.waypoint.ports if h == host or h.startswith(host + "."))]

    def stop(self) -> None:
        self.sidecar.stop()
        self.waypoint.stop()

    def log_lines(self, target: str) -> list[dict]:
        return logged_entries(self.logs[target])


@pytest.fixture(scope="module")
def seed(upstreams, ca, secrets_dir, tmp_path_factory):
    pair = Pair([SEED, EXTRAS], "default", {"demo-llm-server.default.svc.cluster.local": "default"}, upstreams,
                ca[1], secrets_dir, tmp_path_factory.mktemp("seed"))
    yield pair
    pair.stop()


@pytest.fixture(scope="module")
def models(upstreams, ca, secrets_dir, tmp_path_factory):
    pair = Pair([MODELS], "default", {"models-gateway.default.svc.cluster.local": "default"}, upstreams, ca[1],
                secrets_dir, tmp_path_factory.mktemp("models"))
    yield pair
    pair.stop()


@pytest.fixture(scope="module")
def protocols(upstreams, ca, secrets_dir, tmp_path_factory):
    pair = Pair([PROTOCOLS], "default", {"mixed.example.com": "default"}, upstreams, ca[1], secrets_dir,
                tmp_path_factory.mktemp("protocols"))
    yield pair
    pair.stop()


def raw(port: int, host: str, body: str | None = CHAT, headers: dict | None = None, method: str = "POST",
        path: str = "/") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(method, path, body=body, headers={"host": host, "content-type": "application/json",
                                                   **(headers or {})})
    resp = conn.getresponse()
    out = resp.status, resp.read()
    conn.close()
    return out


def received(upstreams) -> list[tuple]:
    """Every request the providers received: (provider, path, credential headers, body), sorted."""
    out = []
    for host, u in upstreams.items():
        for r in u.requests:
            creds = tuple(sorted((k, v) for k, v in r.headers.items()
                                 if k in ("authorization", "api-key", "x-api-key", "anthropic-version")))
            out.append((host, r.sni, r.path, r.headers.get("host"), creds, r.body))
    return sorted(out)


def normal(body: bytes) -> object:
    """A client answer without what differs per call (ids, timestamps)."""
    try:
        data = json.loads(body)
    except ValueError:
        return body
    if isinstance(data, dict):
        for k in ("id", "created"):
            data.pop(k, None)
    return data


def both(pair: Pair, upstreams, send) -> tuple[list, list]:
    """``send(port)`` on the sidecar and then on the waypoint: (answers, provider requests) of each."""
    answers, requests = [], []
    for target in ("sidecar", "ambient"):
        for u in upstreams.values():
            u.clear()
        answers.append(send(target))
        requests.append(received(upstreams))
    return answers, requests


# --- the proof's structural checks -------------------------------------------------------------

def test_seed_renders_a_traffic_extension_and_no_envoyfilter(seed):
    kinds = sorted({o["kind"] for o in seed.ambient_objects})
    assert kinds == ["DestinationRule", "ServiceEntry", "TrafficExtension", "VirtualService"]
    (ext,) = [o for o in seed.ambient_objects if o["kind"] == "TrafficExtension"]
    assert ext["spec"]["targetRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint"}]
    assert len(ext["spec"]["lua"]["inlineCode"]) <= 65536 and ext["spec"]["lua"]["inlineCode"].isascii()
    for se in (o for o in seed.ambient_objects if o["kind"] == "ServiceEntry"):
        assert se["metadata"]["labels"]["istio.io/use-waypoint"] == "waypoint"
    # the literal keys are in the TrafficExtension (LLMC215 warns), nowhere else
    assert "${API_KEY of Moonshot}" in ext["spec"]["lua"]["inlineCode"]


def test_waypoint_layout_passes_envoy_validate(seed, tmp_path):
    config = tmp_path / "waypoint.json"
    config.write_text(json.dumps(seed.waypoint_layout.bootstrap))
    out = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(config), "--use-dynamic-base-id"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]


def test_every_llmc_route_name_reaches_the_waypoint_unchanged(seed):
    """The Lua finds its rule by route name: every name in the table is a route the waypoint has."""
    listeners = seed.waypoint_layout.bootstrap["static_resources"]["listeners"]
    names = {r["name"] for ls in listeners for vh in ls["filter_chains"][0]["filters"][0]["typed_config"]
             ["route_config"]["virtual_hosts"] for r in vh["routes"]}
    (ext,) = [o for o in seed.ambient_objects if o["kind"] == "TrafficExtension"]
    from compiler.explain import _plain, _runtime

    code = ext["spec"]["lua"]["inlineCode"]
    table = _plain(_runtime(None).lua.execute("return " + code[code.index("end)({contexts=") + 5:].rstrip()
                                                            .removesuffix(")")))
    assert set(route_index(table["contexts"])) == {n for n in names if not n.endswith("/*models")}


# --- same decisions as the sidecar --------------------------------------------------------------

@pytest.mark.parametrize("host,headers,model", [
    ("api.moonshot.cn", None, "moonshot-v1-8k"),  # seed 1: a provider alone
    ("dashscope.aliyuncs.com", {"user-type": "subscriber"}, "qwen-turbo"),  # seed 2: the header rule
    ("dashscope.aliyuncs.com", None, "qwen-1.8b-chat"),  # seed 2: everyone else
])
def test_seed_requests_are_shaped_as_on_a_sidecar(seed, upstreams, host, headers, model):
    def send(target):
        c = chat(seed.port(target, host), host, headers=headers)
        return c.model, c.choices[0].message.content
    answers, requests = both(seed, upstreams, send)
    assert answers[0] == answers[1] == (f"{model}-2026", "hi")
    assert requests[0] == requests[1]
    ((provider, sni, path, host_header, creds, body),) = requests[1]
    assert provider == host == sni == host_header  # HTTPS upgrade: TLS with the provider's SNI
    assert path == PATHS[host] and ("authorization", f"Bearer {APP_KEY}") not in creds  # key injected
    assert json.loads(body)["model"] == model


def test_seed_weighted_rule_sends_both_providers_the_same_shapes(seed, upstreams):
    def send(target):
        return [chat(seed.port(target, "demo-llm-server"), "demo-llm-server").model for _ in range(24)]
    answers, requests = both(seed, upstreams, send)
    for target in (0, 1):
        assert set(answers[target]) == {"qwen-1.8b-chat-2026", "moonshot-v1-8k-2026"}, answers[target]
    assert set(requests[0]) == set(requests[1])  # each provider got the same request on both


@pytest.mark.parametrize("case", ["pin-header", "get", "bad-json", "models"])
def test_llmc_answers_the_client_as_on_a_sidecar(seed, upstreams, case):
    host = "demo-llm-server"
    req = {"pin-header": {"headers": {"x-llmc-provider": "llmc/default/demo-llm-server/migrate-rule/moonshot"}},
           "get": {"method": "GET", "body": None},
           "bad-json": {"body": '{"messages": ['},
           "models": {"method": "GET", "body": None, "path": "/v1/models"}}[case]
    answers, requests = both(seed, upstreams, lambda t: raw(seed.port(t, host), host, **req))
    assert answers[0][0] == answers[1][0] and normal(answers[0][1]) == normal(answers[1][1]), answers
    assert requests == [[], []]
    assert answers[0][0] == {"pin-header": 400, "get": 405, "bad-json": 400, "models": 200}[case]


def _logged(pair: Pair, target: str, route_suffix: str, before: int = 0) -> list[dict]:
    """The access-log lines of routes ending in ``route_suffix`` after the first ``before``, once Envoy
    flushed one (it writes the line when the request ends and flushes every 20 ms; a loaded machine
    may take longer)."""
    deadline = time.monotonic() + 20
    while True:
        lines = [x for x in pair.log_lines(target) if x["route"].endswith(route_suffix)][before:]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_access_log_metadata_is_the_same(seed, upstreams):
    """Usage metadata: the provider, rule, models and token counts the filter records per request."""
    before = {}
    for target in ("sidecar", "ambient"):
        before[target] = len(_logged(seed, target, "/vip-route")) if seed.log_lines(target) else 0
        chat(seed.port(target, "dashscope.aliyuncs.com"), "dashscope.aliyuncs.com", headers={"user-type": "subscriber"})
    side = _logged(seed, "sidecar", "/vip-route", before["sidecar"])
    amb = _logged(seed, "ambient", "/vip-route", before["ambient"])
    assert len(side) == len(amb) == 1, (side, amb)
    assert side[0]["llmc"] == amb[0]["llmc"]
    assert side[0]["llmc"]["provider"] == "dashscope-qwen" and side[0]["llmc"]["request_model"] == "qwen-turbo"
    assert side[0]["llmc"]["request_total_tokens"] > 0


def test_translated_providers_as_on_a_sidecar(protocols, upstreams):
    """Anthropic (translated both ways, with a key and with the client's own), a gateway that takes its
    key in x-api-key, Azure OpenAI (deployment path, api-key), and a 50/50 rule over an OpenAI-protocol
    provider and Anthropic: the same requests reach the providers, the same answers (model, text, token
    usage) the SDK."""
    def send(target, host, n):
        out = set()
        for _ in range(n):
            c = chat(protocols.port(target, host), host)
            out.add((c.model, c.choices[0].message.content, c.usage.total_tokens if c.usage else None))
        return out
    for host in ("claude.example.com", "gw.example.com", "azure.example.com", "byok.example.com"):
        answers, requests = both(protocols, upstreams, lambda t, host=host: send(t, host, 1))
        assert answers[0] == answers[1] and requests[0] == requests[1] and len(requests[1]) == 1, host
        assert requests[1][0][0] == host
    answers, requests = both(protocols, upstreams, lambda t: send(t, "mixed.example.com", 24))
    assert answers[0] == answers[1] and len(answers[1]) == 2, answers
    assert set(requests[0]) == set(requests[1])
    assert {r[0] for r in requests[1]} == {"openai.example.com", "claude.example.com"}


# --- the e2e extras: streaming, a body limit, a key from a Secret --------------------------------

def test_streams_pass_through_as_on_a_sidecar(seed, upstreams):
    def send(target):
        s = chat_stream(seed.port(target, "stream.example.com"), "stream.example.com")
        return s.text, s.usage.total_tokens if s.usage else None, len(s.chunks)
    answers, requests = both(seed, upstreams, send)
    assert answers[0] == answers[1] and answers[1][1]  # the same text, events and usage
    assert requests[0] == requests[1]
    assert json.loads(requests[1][0][5])["stream_options"] == {"include_usage": True}


def test_body_limit_and_secret_key_as_on_a_sidecar(seed, upstreams):
    big = json.dumps({"messages": [{"role": "user", "content": "x" * 5000}]})
    answers, requests = both(seed, upstreams, lambda t: raw(seed.port(t, "tiny.example.com"), "tiny.example.com", big))
    assert answers[0][0] == answers[1][0] == 413 and normal(answers[0][1]) == normal(answers[1][1])
    assert requests == [[], []]
    answers, requests = both(seed, upstreams, lambda t: chat(seed.port(t, "keyed.example.com"), "keyed.example.com").model)
    assert answers[0] == answers[1] and requests[0] == requests[1]
    assert ("authorization", "Bearer sk-from-secret-1") in requests[1][0][4]


# --- routing by the body's model ------------------------------------------------------------------

@pytest.mark.parametrize("model,headers,hosts", [
    ("gpt-4o", None, {"openai.example.com"}),
    ("gpt-4o-mini", None, {"qwen.example.com"}),
    ("kimi-latest", None, {"kimi.example.com", "qwen.example.com"}),  # a 50/50 rule
    ("claude-3.5", {"x-team": "blue"}, {"kimi.example.com"}),
    ("claude-3.5", None, set()),  # no rule matches: llmc's 404
])
def test_model_routing_as_on_a_sidecar(models, upstreams, model, headers, hosts):
    n = 16 if len(hosts) > 1 else 1
    def send(target):
        out = set()
        for _ in range(n):
            status, body = raw(models.port(target, "models-gateway"), "models-gateway",
                               json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}), headers)
            out.add((status, json.dumps(normal(body), sort_keys=True)))
        return out
    answers, requests = both(models, upstreams, send)
    assert answers[0] == answers[1]
    assert set(requests[0]) == set(requests[1])
    assert {r[0] for r in requests[1]} == hosts
    if not hosts:
        assert {status for status, _ in answers[1]} == {404}


# --- one waypoint in another namespace --------------------------------------------------------------

def test_a_shared_waypoint_in_another_namespace_serves_the_sources(upstreams, ca, secrets_dir):
    """``--waypoint llm-egress/egress``: the sources' objects stay in ``default``, exported to and
    enrolled in the waypoint of ``llm-egress`` (``istio.io/use-waypoint-namespace``), whose
    TrafficExtension carries every host; istiod takes the VirtualServices of the service's namespace."""
    objects = llmc_render("-f", SEED, "--secrets-dir", str(secrets_dir), "--target", "ambient",
                          "--waypoint", "llm-egress/egress")
    (ext,) = [o for o in objects if o["kind"] == "TrafficExtension"]
    assert ext["metadata"]["namespace"] == "llm-egress"
    layout = build_waypoint_bootstrap(objects, {h: u.port for h, u in upstreams.items()}, ca[1],
                                      waypoint_namespace="llm-egress", waypoint_name="egress",
                                      services={"demo-llm-server.default.svc.cluster.local": "default"})
    proxy = Waypoint(layout.bootstrap)
    try:
        assert chat(proxy.ports["dashscope.aliyuncs.com"], "dashscope.aliyuncs.com",
                    headers={"user-type": "subscriber"}).model == "qwen-turbo-2026"
        assert chat(proxy.ports["demo-llm-server.default.svc.cluster.local"], "demo-llm-server").model in (
            "qwen-1.8b-chat-2026", "moonshot-v1-8k-2026")
    finally:
        proxy.stop()
    # the waypoint of `default` serves none of these hosts: they are enrolled in the other one
    other = build_waypoint_bootstrap(objects, {h: u.port for h, u in upstreams.items()}, ca[1])
    assert other.bootstrap["static_resources"]["listeners"] == []


# --- why LLMC275 counts every rule's written headers ---------------------------------------------

REWRITTEN_MATCH = """\
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {name: pa}
spec:
  host: openai.example.com
  path: /v1/chat/completions
  tls: {mode: DISABLE}
  configs: {defaultConfig: {openAIConfig: {model: model-a, apiKey: sk-a-0000000000000000}}}
---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {name: pb}
spec:
  host: keyed.example.com
  path: /v1/chat/completions
  tls: {mode: DISABLE}
  configs: {defaultConfig: {openAIConfig: {model: model-b, authHeader: x-b-key, apiKey: sk-b-0000000000000000}}}
---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMRoute
metadata: {name: chat}
spec:
  host: openai.example.com
  rules:
  - matches: [{headers: {x-b-key: {}}}]
    backendRefs: [{providerHost: openai.example.com}]
  - backendRefs: [{providerHost: keyed.example.com}]
"""


def test_an_earlier_rule_matching_a_header_written_for_a_later_rules_provider_is_refused(upstreams, ca, monkeypatch):
    """On a real waypoint Envoy selects the route again on the headers the filter shaped: an earlier
    rule matching the later provider's authHeader takes the request shaped for that provider (its
    model) to the earlier rule's provider. So the ambient target refuses the match (LLMC275, any
    rule's written headers); was: checked only against the rule's own and earlier rules' headers,
    and the render went out."""
    from compiler import compile_text
    from compiler.diagnostics import Severity
    from compiler.options import parse_options
    from compiler.resolve import ambient

    opts = parse_options(target="ambient")[0]
    refused = compile_text(REWRITTEN_MATCH, opts, "rewritten.yaml")
    assert {(d.code, d.path) for d in refused.diagnostics.items if d.severity is Severity.ERROR} == {
        ("LLMC275", "spec.rules[0].matches[0].headers.x-b-key")}, refused.diagnostics.format_text()
    assert refused.objects == []
    # the check's premise, on the render without it: the waypoint sends pb's request to pa
    monkeypatch.setattr(ambient, "written_headers", lambda vh: set(ambient.SHAPED_HEADERS))
    unchecked = compile_text(REWRITTEN_MATCH, opts, "rewritten.yaml")
    assert unchecked.ok, unchecked.diagnostics.format_text()
    layout = build_waypoint_bootstrap(unchecked.objects, {h: u.port for h, u in upstreams.items()}, ca[1],
                                      waypoint_namespace="default", services={})
    proxy = Waypoint(layout.bootstrap)
    try:
        port = proxy.ports[next(h for h in proxy.ports if h.startswith("openai.example.com"))]
        status, _ = raw(port, "openai.example.com")
    finally:
        proxy.stop()
    assert status == 200
    got = [(host, json.loads(r.body)["model"]) for host, u in upstreams.items() for r in u.requests]
    assert got == [("openai.example.com", "model-b")], got
