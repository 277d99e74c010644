"""Gateway modes end to end in real Envoy: an ingress gateway, and sidecar → egress gateway.

The ingress gateway and the egress gateway are laid out by
``tests/support/envoy_harness.build_gateway_bootstrap`` (its docstring lists what it mirrors);
the egress path chains two Envoys on loopback: the app's sidecar, which must hold no key and no
Lua filter, and the gateway, reached over mTLS with the test mesh CA, which shapes and injects.
The official ``openai`` SDK is the client (tests/support/sdk.py); raw HTTP only for broken JSON.
"""

from __future__ import annotations

import json

import pytest
import trustme
from ruamel.yaml import YAML

from tests.conftest import TESTDATA
from tests.support.envoy_harness import Envoy, build_bootstrap, build_gateway_bootstrap
from tests.support.mesh import EXTRAS, llmc_render
from tests.support.sdk import APP_KEY, SENT, chat, chat_stream
from tests.support.upstream import start_upstreams
from tests.test_envoy_e2e import call

pytestmark = pytest.mark.envoy

TLS_HOSTS = ("dashscope.aliyuncs.com", "api.moonshot.cn")
PLAIN_HOSTS = ("stream.example.com", "tiny.example.com", "keyed.example.com")
EGRESS_HOST = "istio-egressgateway.istio-system.svc.cluster.local"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA for provider certificates and the mesh, and one workload certificate for both ends."""
    ca = trustme.CA()
    d = tmp_path_factory.mktemp("pki")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    leaf = ca.issue_cert("istio-egressgateway.istio-system.svc.cluster.local", "sleep.default.svc.cluster.local")
    leaf.cert_chain_pems[0].write_to_path(str(d / "mesh.pem"))
    leaf.private_key_pem.write_to_path(str(d / "mesh-key.pem"))
    return ca, str(d / "ca.pem"), (str(d / "mesh.pem"), str(d / "mesh-key.pem"))


@pytest.fixture(scope="module")
def upstreams(pki):
    ups = start_upstreams(pki[0], TLS_HOSTS, PLAIN_HOSTS)
    yield ups
    for u in ups.values():
        u.stop()


@pytest.fixture(autouse=True)
def _clear(upstreams):
    for u in upstreams.values():
        u.clear()


@pytest.fixture(scope="module")
def secrets(tmp_path_factory):
    d = tmp_path_factory.mktemp("secrets")
    (d / "llm-keys").mkdir()
    for name, value in (("dashscope", "sk-ds-gw"), ("moonshot", "sk-ms-gw"), ("keyed", "sk-keyed-gw")):
        (d / "llm-keys" / name).write_text(value + "\n")
    return d


def shaped(req, host: str, model: str, key: str) -> None:
    path = "/compatible-mode/v1/chat/completions" if host == "dashscope.aliyuncs.com" else "/v1/chat/completions"
    assert (req.path, req.headers["host"], req.sni) == (path, host, host)
    assert req.headers["authorization"] == f"Bearer {key}" != f"Bearer {APP_KEY}"
    assert req.json() == {**SENT, "model": model, "stream": False}


def test_ingress_gateway(upstreams, pki, secrets):
    source = TESTDATA / "golden" / "ingress-gateway.in.yaml"
    gateway = next(d for d in YAML(typ="safe").load_all(source.read_text()) if d["kind"] == "Gateway")
    objects = llmc_render("-f", str(source), "--secrets-dir", str(secrets))
    layout = build_gateway_bootstrap(objects + [gateway], "istio-system", {"istio": "ingressgateway"},
                                     {h: u.port for h, u in upstreams.items()}, pki[1])
    assert layout.unmatched == []
    assert [ls["name"] for ls in layout.bootstrap["static_resources"]["listeners"]] == ["0.0.0.0_8080"]
    envoy = Envoy(layout.bootstrap)
    try:
        assert chat(envoy.port, "dashscope.aliyuncs.com", headers={"user-type": "subscriber"}).model == "qwen-turbo-2026"
        shaped(upstreams["dashscope.aliyuncs.com"].requests[-1], "dashscope.aliyuncs.com", "qwen-turbo", "sk-ds-gw")
        assert chat(envoy.port, "dashscope.aliyuncs.com").model == "qwen-1.8b-chat-2026"
        shaped(upstreams["dashscope.aliyuncs.com"].requests[-1], "dashscope.aliyuncs.com", "qwen-1.8b-chat",
               "sk-ds-gw")
        for h in TLS_HOSTS:
            upstreams[h].clear()
        for _ in range(60):  # weighted rule whose match is limited to this gateway (p < 1e-4 outside 15..45)
            chat(envoy.port, "chat.example.com")
        counts = {h: len(upstreams[h].requests) for h in TLS_HOSTS}
        assert sum(counts.values()) == 60 and all(15 <= c <= 45 for c in counts.values()), counts
        for req in upstreams["api.moonshot.cn"].requests:
            shaped(req, "api.moonshot.cn", "moonshot-v1-8k", "sk-ms-gw")
    finally:
        envoy.stop()


@pytest.fixture(scope="module")
def egress(upstreams, pki, secrets):
    """Sidecar → egress gateway → providers, for samples/seed plus the e2e extras."""
    objects = llmc_render("-f", "samples/seed", "-f", str(EXTRAS), "--secrets-dir", str(secrets),
                          "--egress-gateway", "istio-system/istio-egressgateway")
    ports = {h: u.port for h, u in upstreams.items()}
    gw_layout = build_gateway_bootstrap(objects, "istio-system", {"istio": "egressgateway", "app": "istio-egressgateway"},
                                        ports, pki[1], pki[2])
    assert gw_layout.unmatched == []
    gateway = Envoy(gw_layout.bootstrap)
    sidecar_layout = build_bootstrap(objects, {**ports, EGRESS_HOST: gateway.port}, pki[1], mesh_cert=pki[2])
    assert sidecar_layout.unmatched == []
    sidecar = Envoy(sidecar_layout.bootstrap)
    yield sidecar, sidecar_layout, gateway
    sidecar.stop()
    gateway.stop()


def test_egress_gateway_shapes_and_sidecar_holds_no_key(egress, upstreams):
    sidecar, sidecar_layout, _ = egress
    config = json.dumps(sidecar_layout.bootstrap)
    assert "llmc.lua" not in config and "API_KEY" not in config and "llm-keys" not in config
    assert chat(sidecar.port, "dashscope.aliyuncs.com", headers={"user-type": "subscriber"}).model == "qwen-turbo-2026"
    shaped(upstreams["dashscope.aliyuncs.com"].requests[-1], "dashscope.aliyuncs.com", "qwen-turbo",
           "${API_KEY of dashscope}")
    assert chat(sidecar.port, "keyed.example.com").model == "keyed-model-2026"
    assert upstreams["keyed.example.com"].requests[-1].headers["authorization"] == "Bearer sk-keyed-gw"


def test_egress_gateway_weighted_split(egress, upstreams):
    sidecar = egress[0]
    for _ in range(60):
        chat(sidecar.port, "demo-llm-server")
    counts = {h: len(upstreams[h].requests) for h in TLS_HOSTS}
    assert sum(counts.values()) == 60 and all(15 <= c <= 45 for c in counts.values()), counts
    for req in upstreams["api.moonshot.cn"].requests:
        shaped(req, "api.moonshot.cn", "moonshot-v1-8k", "${API_KEY of Moonshot}")


def test_egress_gateway_rejects_bad_json_at_the_gateway(egress, upstreams):
    status, _, payload = call(egress[0], "dashscope.aliyuncs.com", body="[1]")
    assert status == 400 and json.loads(payload)["error"]["code"] == "invalid_json"
    assert not any(u.requests for u in upstreams.values())


def test_egress_gateway_streams_chunk_by_chunk(egress, upstreams):
    """SSE through two Envoys (sidecar, then the gateway that shapes): events arrive one by one."""
    streamed = chat_stream(egress[0].port, "stream.example.com", hold=upstreams["stream.example.com"])
    pause = upstreams["stream.example.com"].sse_pause
    assert streamed.lead > pause / 2, (streamed.first_at, streamed.total)
    assert streamed.text == "Hello" and streamed.usage.total_tokens == 18
    req = upstreams["stream.example.com"].requests[-1]
    assert req.json() == {**SENT, "model": "stream-model", "stream": True, "stream_options": {"include_usage": True}}
