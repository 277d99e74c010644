"""End to end through a real Envoy: `llmc render` output, laid out as istiod would, real HTTP.

The emitted YAML comes from running the `llmc` CLI in a subprocess; tests/support/envoy_harness.py
turns it into the sidecar's Envoy config (its docstring lists which istiod behaviours it mirrors).
Providers are local recording servers (TLS with a throwaway CA where the DestinationRule asks for
TLS origination). Each assertion checks what the provider actually received.
"""

from __future__ import annotations

import http.client
import json
import os
import time

import pytest
import trustme

from tests.conftest import TESTDATA
from tests.support.envoy_harness import Envoy, build_bootstrap, envoy_binary, envoy_version
from tests.support.mesh import llmc_render, seed_mesh
from tests.support.upstream import start_upstreams

pytestmark = pytest.mark.envoy

TLS_HOSTS = ("dashscope.aliyuncs.com", "api.moonshot.cn")
PLAIN_HOSTS = ("stream.example.com", "tiny.example.com", "keyed.example.com", "other.example.com")
DASHSCOPE_KEY = "${API_KEY of dashscope}"  # the seed's placeholder, injected verbatim
MOONSHOT_KEY = "${API_KEY of Moonshot}"
CHAT = json.dumps({"messages": [{"role": "user", "content": "Please introduce yourself"}]})


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    authority = trustme.CA()
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    authority.cert_pem.write_to_path(str(path))
    return authority, str(path)


@pytest.fixture(scope="module")
def upstreams(ca):
    ups = start_upstreams(ca[0], TLS_HOSTS, PLAIN_HOSTS)
    yield ups
    for u in ups.values():
        u.stop()


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("secrets")
    (d / "llm-keys").mkdir()
    (d / "llm-keys" / "keyed").write_text("sk-from-secret-1\n")
    return d


@pytest.fixture(scope="module")
def mesh(upstreams, ca, secrets_dir):
    """One sidecar with the seed's end state plus the e2e extras, and a non-LLM service."""
    ports = {h: u.port for h, u in upstreams.items()}
    layout = seed_mesh(ports, ca[1], secrets_dir)
    assert layout.unmatched == [], f"EnvoyFilter patches that match nothing: {layout.unmatched}"
    envoy = Envoy(layout.bootstrap)
    yield envoy
    envoy.stop()


@pytest.fixture(autouse=True)
def _clear(upstreams):
    for u in upstreams.values():
        u.clear()


def call(envoy: Envoy, host: str, body: str | bytes | None = CHAT, headers: dict | None = None,
         method: str = "POST", path: str = "/", chunked: bool = False) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", envoy.port, timeout=30)
    hdrs = {"host": host, "content-type": "application/json", **(headers or {})}
    data = body.encode() if isinstance(body, str) else body
    if chunked:
        hdrs["transfer-encoding"] = "chunked"
        conn.request(method, path, body=iter([data[i:i + 1000] for i in range(0, len(data), 1000)]),
                     headers=hdrs, encode_chunked=True)
    else:
        conn.request(method, path, body=data, headers=hdrs)
    resp = conn.getresponse()
    payload = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, payload


def only_request(upstreams, host):
    reqs = [r for h, u in upstreams.items() for r in u.requests]
    assert len(reqs) == 1 and len(upstreams[host].requests) == 1, [(h, len(u.requests)) for h, u in upstreams.items()]
    return upstreams[host].requests[0]


def test_envoy_is_the_one_istio_1_30_ships():
    assert envoy_version(envoy_binary()).startswith(os.environ.get("LLMC_EXPECT_ENVOY", "1.38."))


def test_seed_scenario_1_provider_alone(upstreams, ca):
    objects = llmc_render("-f", str(TESTDATA / "golden" / "seed-1-provider.in.yaml"))
    layout = build_bootstrap(objects, {h: u.port for h, u in upstreams.items()}, ca[1])
    assert layout.unmatched == []
    envoy = Envoy(layout.bootstrap)
    try:
        status, _, body = call(envoy, "dashscope.aliyuncs.com")
        assert status == 200, body
        req = only_request(upstreams, "dashscope.aliyuncs.com")
        assert req.sni == "dashscope.aliyuncs.com"  # reached over TLS, SNI set by the DestinationRule
        assert req.path == "/compatible-mode/v1/chat/completions"
        assert req.headers["host"] == "dashscope.aliyuncs.com"
        assert req.headers["authorization"] == "Bearer ${ API_KEY of dashscope}"
        assert req.json() == {**json.loads(CHAT), "model": "qwen-1.8b-chat", "stream": False}
        assert json.loads(body)["model"] == "qwen-1.8b-chat-2026"  # the provider's own model name
    finally:
        envoy.stop()


def test_seed_scenario_2_header_rule(mesh, upstreams):
    status, _, _ = call(mesh, "dashscope.aliyuncs.com", headers={"user-type": "subscriber"})
    assert status == 200
    vip = only_request(upstreams, "dashscope.aliyuncs.com")
    assert vip.json()["model"] == "qwen-turbo"
    assert vip.headers["authorization"] == f"Bearer {DASHSCOPE_KEY}"
    upstreams["dashscope.aliyuncs.com"].clear()
    status, _, _ = call(mesh, "dashscope.aliyuncs.com", headers={"user-type": "visitor"})
    assert status == 200
    assert only_request(upstreams, "dashscope.aliyuncs.com").json()["model"] == "qwen-1.8b-chat"


SHAPES = {
    "dashscope.aliyuncs.com": ("/compatible-mode/v1/chat/completions", "qwen-1.8b-chat", DASHSCOPE_KEY),
    "api.moonshot.cn": ("/v1/chat/completions", "moonshot-v1-8k", MOONSHOT_KEY),
}


def assert_shaped_for_receiver(upstreams):
    for host, (path, model, key) in SHAPES.items():
        for req in upstreams[host].requests:
            assert req.path == path and req.headers["host"] == host and req.sni == host
            assert req.headers["authorization"] == f"Bearer {key}"
            assert req.json() == {**json.loads(CHAT), "model": model, "stream": False}
            assert "x-llmc-provider" not in req.headers


def test_seed_scenario_3_weighted_50_50(mesh, upstreams):
    """200 requests; each provider gets 70..130 (a fair coin leaves that range with p < 3e-5)."""
    for _ in range(200):
        status, _, body = call(mesh, "demo-llm-server")
        assert status == 200, body
    counts = {h: len(upstreams[h].requests) for h in SHAPES}
    assert sum(counts.values()) == 200
    assert all(70 <= c <= 130 for c in counts.values()), counts
    assert_shaped_for_receiver(upstreams)


def test_clients_cannot_steer_the_provider(mesh, upstreams):
    """A client-sent x-llmc-provider neither picks the provider nor reaches it (p < 6e-5)."""
    for _ in range(100):
        status, _, _ = call(mesh, "demo-llm-server.default.svc.cluster.local",
                            headers={"x-llmc-provider": "moonshot"})
        assert status == 200
    counts = {h: len(upstreams[h].requests) for h in SHAPES}
    assert sum(counts.values()) == 100 and 30 <= counts["api.moonshot.cn"] <= 70, counts
    assert_shaped_for_receiver(upstreams)


@pytest.mark.parametrize("body,status", [
    ("{not json", 400), ("[1, 2, 3]", 400), ('"just a string"', 400), ("", 400),
    ('{"messages": [1,]}', 400),
])
def test_bad_bodies_get_openai_errors(mesh, upstreams, body, status):
    code, headers, payload = call(mesh, "dashscope.aliyuncs.com", body=body)
    assert code == status
    assert headers["content-type"] == "application/json"
    err = json.loads(payload)["error"]
    assert err["code"] == "invalid_json" and err["type"] == "invalid_request_error"
    assert "stack traceback" not in payload.decode() and DASHSCOPE_KEY not in payload.decode()
    assert all(not u.requests for u in upstreams.values()), "a bad request must not be forwarded"


def test_oversize_body_with_content_length_gets_json_413(mesh, upstreams):
    body = json.dumps({"messages": [{"role": "user", "content": "x" * 8000}]})
    code, headers, payload = call(mesh, "tiny.example.com", body=body)
    assert code == 413 and json.loads(payload)["error"]["code"] == "request_too_large"
    assert not upstreams["tiny.example.com"].requests


def test_oversize_chunked_body_is_rejected_by_envoy(mesh, upstreams):
    """Without Content-Length, Envoy's route buffer limit answers 413 before the script can."""
    body = json.dumps({"messages": [{"role": "user", "content": "x" * 8000}]})
    code, _, _ = call(mesh, "tiny.example.com", body=body, chunked=True)
    assert code == 413
    assert not upstreams["tiny.example.com"].requests


def test_chunked_body_is_rewritten_with_content_length(mesh, upstreams):
    body = json.dumps({"messages": [{"role": "user", "content": "y" * 3000}]})
    code, _, _ = call(mesh, "dashscope.aliyuncs.com", body=body, chunked=True)
    assert code == 200
    req = only_request(upstreams, "dashscope.aliyuncs.com")
    assert "transfer-encoding" not in req.headers
    assert int(req.headers["content-length"]) == len(req.body)
    assert req.json() == {**json.loads(body), "model": "qwen-1.8b-chat", "stream": False}


def test_one_mib_body_and_unicode_bytes_are_preserved(mesh, upstreams):
    content = "\u4f60\u597d \\u4f60 \U0001F600 " * 70000
    raw = '{"messages":[{"role":"user","content":' + json.dumps(content, ensure_ascii=False) + \
          '}],"temperature":0.5e-1,"n":1E2,"meta":{"model":"nested"}}'
    assert len(raw.encode()) > 1 << 20
    code, _, _ = call(mesh, "dashscope.aliyuncs.com", body=raw)
    assert code == 200
    req = only_request(upstreams, "dashscope.aliyuncs.com")
    assert req.body == (raw[:-1] + ',"model":"qwen-1.8b-chat","stream":false}').encode()


def test_sse_streams_through_chunk_by_chunk(mesh, upstreams):
    conn = http.client.HTTPConnection("127.0.0.1", mesh.port, timeout=30)
    start = time.monotonic()
    conn.request("POST", "/", body=CHAT, headers={"host": "stream.example.com"})
    resp = conn.getresponse()
    first = resp.read1(65536)  # whatever arrived first (chunked decoding by http.client)
    first_at = time.monotonic() - start
    rest = resp.read()
    total = time.monotonic() - start
    conn.close()
    pause = upstreams["stream.example.com"].sse_pause
    assert resp.status == 200 and resp.getheader("content-type") == "text/event-stream"
    assert first.startswith(b"data: ")
    assert total >= pause and first_at < pause * 0.7, (first_at, total)
    assert b"[DONE]" in rest
    assert only_request(upstreams, "stream.example.com").json()["stream"] is True


def test_key_from_mounted_secret_and_rotation(mesh, upstreams, secrets_dir):
    call(mesh, "keyed.example.com")
    assert only_request(upstreams, "keyed.example.com").headers["authorization"] == "Bearer sk-from-secret-1"
    # kubelet updates Secret volumes by swapping files atomically
    tmp = secrets_dir / "llm-keys" / ".keyed.new"
    tmp.write_text("sk-from-secret-2")
    os.replace(tmp, secrets_dir / "llm-keys" / "keyed")
    deadline = time.monotonic() + 10
    seen = None
    while time.monotonic() < deadline:
        upstreams["keyed.example.com"].clear()
        call(mesh, "keyed.example.com")
        seen = upstreams["keyed.example.com"].requests[0].headers["authorization"]
        if seen == "Bearer sk-from-secret-2":
            break
        time.sleep(0.2)
    assert seen == "Bearer sk-from-secret-2"


def test_other_services_are_untouched(mesh, upstreams):
    body = b"\xff not json, and large " + b"z" * 200_000
    code, _, _ = call(mesh, "other", body=body, method="PUT", path="/raw?x=1",
                      headers={"authorization": "Bearer app", "content-type": "text/plain"})
    assert code == 200
    req = only_request(upstreams, "other.example.com")
    assert req.body == body and req.path == "/raw?x=1" and req.method == "PUT"
    assert req.headers["authorization"] == "Bearer app" and req.headers["content-type"] == "text/plain"


def test_non_post_is_rejected(mesh, upstreams):
    code, _, payload = call(mesh, "dashscope.aliyuncs.com", body=None, method="GET")
    assert code == 405 and json.loads(payload)["error"]["code"] == "method_not_allowed"


def test_harness_reports_patches_that_match_nothing(upstreams, ca):
    """A wrong virtual host name in a patch must fail tests, as it silently does nothing in istiod."""
    objects = llmc_render("-f", "samples/seed")
    for o in objects:
        if o["kind"] == "EnvoyFilter" and o["metadata"]["name"] == "llmc-route-demo-llm-server":
            o["spec"]["configPatches"][0]["match"]["routeConfiguration"]["vhost"]["name"] = "demo-llm-server:80"
    layout = build_bootstrap(objects, {h: u.port for h, u in upstreams.items()}, ca[1])
    assert layout.unmatched == ["llmc-route-demo-llm-server.configPatches[0]"]
