"""End to end through a real Envoy: `llmc render` output, laid out as istiod would, real HTTP.

The emitted YAML comes from running the `llmc` CLI in a subprocess; tests/support/envoy_harness.py
turns it into the sidecar's Envoy config (its docstring lists which istiod behaviours it mirrors).
Providers are local recording servers (TLS with a throwaway CA where the DestinationRule asks for
TLS origination). Each assertion checks what the provider actually received.

The client of every well-formed request is the official ``openai`` SDK (tests/support/sdk.py), the
way an app in the mesh calls a provider; raw ``http.client`` is used only for what the SDK cannot
send (broken JSON, chunked bodies, exact bytes, a non-LLM service).
"""

from __future__ import annotations

import http.client
import json
import os
import time

import openai
import pytest
import trustme

from tests.conftest import TESTDATA
from tests.support.envoy_harness import Envoy, build_bootstrap, envoy_binary, envoy_version
from tests.support.mesh import llmc_render, seed_mesh
from tests.support.sdk import APP_KEY, SDK_PATH, SENT, chat, chat_stream, client, status_error
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
        completion = chat(envoy.port, "dashscope.aliyuncs.com")
        req = only_request(upstreams, "dashscope.aliyuncs.com")
        assert req.headers["user-agent"].startswith("OpenAI/Python")  # the SDK is the client
        assert req.sni == "dashscope.aliyuncs.com"  # reached over TLS, SNI set by the DestinationRule
        # the SDK's own path and the app's own key are replaced by the provider's
        assert req.path == "/compatible-mode/v1/chat/completions" != SDK_PATH
        assert req.headers["host"] == "dashscope.aliyuncs.com"
        assert req.headers["authorization"] == "Bearer ${ API_KEY of dashscope}" != f"Bearer {APP_KEY}"
        assert req.json() == {**SENT, "model": "qwen-1.8b-chat", "stream": False}
        assert completion.model == "qwen-1.8b-chat-2026"  # the provider's own model name
        assert completion.choices[0].message.content == "hi" and completion.usage.total_tokens == 18
    finally:
        envoy.stop()


def test_seed_scenario_2_header_rule(mesh, upstreams):
    chat(mesh.port, "dashscope.aliyuncs.com", headers={"user-type": "subscriber"})
    vip = only_request(upstreams, "dashscope.aliyuncs.com")
    assert vip.json()["model"] == "qwen-turbo"
    assert vip.headers["authorization"] == f"Bearer {DASHSCOPE_KEY}"
    upstreams["dashscope.aliyuncs.com"].clear()
    chat(mesh.port, "dashscope.aliyuncs.com", headers={"user-type": "visitor"})
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
            assert req.json() == {**SENT, "model": model, "stream": False}
            assert "x-llmc-provider" not in req.headers


def test_seed_scenario_3_weighted_50_50(mesh, upstreams):
    """200 requests; each provider gets 70..130 (a fair coin leaves that range with p < 3e-5)."""
    models = {chat(mesh.port, "demo-llm-server").model for _ in range(200)}
    assert models == {"qwen-1.8b-chat-2026", "moonshot-v1-8k-2026"}
    counts = {h: len(upstreams[h].requests) for h in SHAPES}
    assert sum(counts.values()) == 200
    assert all(70 <= c <= 130 for c in counts.values()), counts
    assert_shaped_for_receiver(upstreams)


def test_clients_cannot_steer_the_provider(mesh, upstreams):
    """A client-sent x-llmc-provider neither picks the provider nor reaches it (p < 6e-5)."""
    for _ in range(100):
        chat(mesh.port, "demo-llm-server.default.svc.cluster.local", headers={"x-llmc-provider": "moonshot"})
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


def test_json_nested_too_deep_is_a_bad_request_for_the_sdk(mesh, upstreams):
    """Valid JSON the SDK sends, refused by llmc's scanner (depth > 128): BadRequestError, invalid_json."""
    nested: dict = {}
    for _ in range(200):
        nested = {"n": nested}
    err = status_error(chat, mesh.port, "dashscope.aliyuncs.com", extra_body={"llmc_test": nested})
    assert type(err) is openai.BadRequestError and err.status_code == 400
    assert (err.code, err.type) == ("invalid_json", "invalid_request_error") and "too deep" in err.message
    assert all(not u.requests for u in upstreams.values()), "a bad request must not be forwarded"


def test_oversize_body_with_content_length_gets_json_413(mesh, upstreams):
    messages = [{"role": "user", "content": "x" * 8000}]
    err = status_error(chat, mesh.port, "tiny.example.com", messages=messages)
    # the SDK has no class of its own for 413: the base APIStatusError
    assert type(err) is openai.APIStatusError and err.status_code == 413
    assert (err.code, err.type) == ("request_too_large", "invalid_request_error")
    assert "4096 bytes" in err.message
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
    streamed = chat_stream(mesh.port, "stream.example.com", hold=upstreams["stream.example.com"])
    pause = upstreams["stream.example.com"].sse_pause
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert streamed.lead > pause / 2, (streamed.first_at, streamed.total)
    assert streamed.text == "Hello" and streamed.chunks[0].model == "stream-model-2026"
    assert streamed.chunks[-2].choices[0].finish_reason == "stop"
    usage = streamed.usage  # the last event: empty choices and the usage the SDK asked for
    assert streamed.chunks[-1].choices == [] and (usage.prompt_tokens, usage.total_tokens) == (11, 18)
    req = only_request(upstreams, "stream.example.com")
    # the streamer provider configures no key: llmc leaves the app's own Authorization as it is
    assert req.path == "/v1/chat/completions" and req.headers["authorization"] == f"Bearer {APP_KEY}"
    assert req.json() == {**SENT, "model": "stream-model", "stream": True, "stream_options": {"include_usage": True}}


def _set_key_file(secrets_dir, value: str | None) -> None:
    path = secrets_dir / "llm-keys" / "keyed"
    if value is None:
        path.unlink()
        return
    # kubelet updates Secret volumes by swapping files atomically
    tmp = secrets_dir / "llm-keys" / ".keyed.new"
    tmp.write_text(value)
    os.replace(tmp, path)


def _until(probe, want, timeout: float = 30.0):
    """Calls ``probe`` until it returns ``want`` (the key file is re-read at most once a second; the
    bound only matters when it never comes, and a loaded machine can take several seconds)."""
    deadline = time.monotonic() + timeout
    seen = probe()
    while seen != want and time.monotonic() < deadline:
        time.sleep(0.2)
        seen = probe()
    return seen


def test_key_from_mounted_secret_and_rotation(mesh, upstreams, secrets_dir):
    def key_received() -> str:
        upstreams["keyed.example.com"].clear()
        chat(mesh.port, "keyed.example.com")
        return only_request(upstreams, "keyed.example.com").headers["authorization"]

    assert key_received() == "Bearer sk-from-secret-1"
    _set_key_file(secrets_dir, "sk-from-secret-2")
    assert _until(key_received, "Bearer sk-from-secret-2") == "Bearer sk-from-secret-2"


def test_missing_key_file_is_a_503_for_the_sdk(mesh, upstreams, secrets_dir):
    def outcome():
        upstreams["keyed.example.com"].clear()
        try:
            chat(mesh.port, "keyed.example.com")
        except openai.APIStatusError as err:
            return type(err), err.status_code, err.code
        return "ok"

    previous = (secrets_dir / "llm-keys" / "keyed").read_text()
    _set_key_file(secrets_dir, None)
    try:
        want = (openai.InternalServerError, 503, "api_key_unavailable")
        assert _until(outcome, want) == want
        assert not upstreams["keyed.example.com"].requests, "never forwarded without the provider's key"
    finally:
        _set_key_file(secrets_dir, previous)
    assert _until(outcome, "ok") == "ok"


@pytest.mark.parametrize("status,exc,code", [
    (429, openai.RateLimitError, "rate_limit_exceeded"),
    (500, openai.InternalServerError, None),
    (503, openai.InternalServerError, None),
])
def test_provider_errors_reach_the_sdk_with_their_headers(mesh, upstreams, status, exc, code):
    err = status_error(chat, mesh.port, "dashscope.aliyuncs.com", headers={"x-test-status": str(status)})
    assert type(err) is exc and err.status_code == status and err.code == code
    assert err.type == ("requests" if status == 429 else "server_error")
    only_request(upstreams, "dashscope.aliyuncs.com")  # exactly one attempt: no retry by Envoy or the SDK
    assert err.request_id.startswith("req_dashscope-")  # the provider's x-request-id, not Envoy's
    assert err.response.headers["retry-after"] == "1"
    if status == 429:
        assert err.response.headers["x-ratelimit-remaining-requests"] == "0"
        assert err.response.headers["x-ratelimit-reset-tokens"] == "2ms"



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


def test_sdk_get_is_rejected_with_405(mesh, upstreams):
    """The SDK's own GET (files.list) on a provider host: llmc serves POSTs only (and GET /v1/models)."""
    with client(mesh.port, "api.moonshot.cn") as sdk:
        err = status_error(sdk.files.list)
    assert type(err) is openai.APIStatusError and err.status_code == 405
    assert (err.code, err.type) == ("method_not_allowed", "invalid_request_error")
    assert all(not u.requests for u in upstreams.values())


def test_sdk_models_list_on_a_provider_host(mesh, upstreams):
    """GET /v1/models is the one non-POST path: Envoy answers it from the compiled configuration."""
    with client(mesh.port, "api.moonshot.cn") as sdk:
        assert [(m.id, m.owned_by) for m in sdk.models.list().data] == [("moonshot-v1-8k", "moonshot")]
    assert all(not u.requests for u in upstreams.values())


def test_route_missing_from_the_context_is_a_500_for_the_sdk(upstreams, ca):
    """A VirtualService route that llmc's context does not know (a stale or hand-edited VirtualService)
    is answered 500, never forwarded unshaped."""
    objects = llmc_render("-f", str(TESTDATA / "golden" / "seed-1-provider.in.yaml"))
    (vs,) = [o for o in objects if o["kind"] == "VirtualService"]
    for rule in vs["spec"]["http"]:
        rule["name"] = "hand-edited"
    layout = build_bootstrap(objects, {h: u.port for h, u in upstreams.items()}, ca[1])
    envoy = Envoy(layout.bootstrap)
    try:
        err = status_error(chat, envoy.port, "dashscope.aliyuncs.com")
    finally:
        envoy.stop()
    assert type(err) is openai.InternalServerError and err.status_code == 500
    assert (err.code, err.type) == ("llmc_route_unknown", "server_error")
    assert all(not u.requests for u in upstreams.values())


def test_harness_reports_patches_that_match_nothing(upstreams, ca):
    """A wrong virtual host name in a patch must fail tests, as it silently does nothing in istiod."""
    objects = llmc_render("-f", "samples/seed")
    for o in objects:
        if o["kind"] == "EnvoyFilter" and o["metadata"]["name"] == "llmc-route-demo-llm-server":
            o["spec"]["configPatches"][0]["match"]["routeConfiguration"]["vhost"]["name"] = "demo-llm-server:80"
    layout = build_bootstrap(objects, {h: u.port for h, u in upstreams.items()}, ca[1])
    assert layout.unmatched == ["llmc-route-demo-llm-server.configPatches[0]"]
