"""One endpoint, many models: routing by the body's `model`, `GET /v1/models`, and the OpenAI API
beyond chat — end to end through a real Envoy, with the official `openai` SDK as the client.

The route `models-gateway` (tests/testdata/e2e/models.yaml) sends `gpt-4o` to an OpenAI-like
provider (the client's model passes: none is configured), maps the alias `gpt-4o-mini` to a
DashScope-like provider's `qwen-plus`, splits `kimi*` 50/50, needs header `x-team: blue` for
`claude-*`, and sends `text-embedding-*` to the OpenAI-like provider's embeddings endpoint.
"""

from __future__ import annotations

import json

import openai
import pytest

from tests.conftest import TESTDATA
from tests.support.envoy_harness import Envoy
from tests.support.mesh import llmc_render, running_envoy
from tests.support.upstream import serving
from tests.test_envoy_e2e import call

pytestmark = pytest.mark.envoy

HOST = "models-gateway"
SHAPE = {  # host → (chat path, key, configured model or None)
    "openai.example.com": ("/v1/chat/completions", "sk-openai-000000000000000", None),
    "qwen.example.com": ("/compatible-mode/v1/chat/completions", "sk-qwen-00000000000000000", "qwen-plus"),
    "kimi.example.com": ("/kimi/v1/chat/completions", "sk-kimi-00000000000000000", "kimi-k2"),
}
MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def upstreams():
    with serving(tuple(SHAPE)) as ups:
        yield ups


@pytest.fixture(scope="module")
def envoy(upstreams):
    with running_envoy(llmc_render("-f", str(TESTDATA / "e2e" / "models.yaml")), upstreams) as proxy:
        yield proxy


@pytest.fixture(autouse=True)
def _clear(upstreams):
    for u in upstreams.values():
        u.clear()


def sdk(envoy: Envoy, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{envoy.port}/v1", api_key="sk-app-own-key", max_retries=0,
                         timeout=30, default_headers={"Host": HOST, **headers})


def received(upstreams) -> list[tuple[str, object]]:
    return [(h, r) for h, u in upstreams.items() for r in u.requests]


def assert_chat_shaped(host: str, req, client_model: str) -> None:
    path, key, model = SHAPE[host]
    assert req.path == path and req.headers["authorization"] == f"Bearer {key}"
    assert req.json()["model"] == (model or client_model)
    assert not [h for h in req.headers if h.startswith("x-llmc-")]


@pytest.mark.parametrize("model,host", [("gpt-4o", "openai.example.com"), ("gpt-4o-mini", "qwen.example.com")])
def test_models_on_one_host_reach_their_providers(envoy, upstreams, model, host):
    completion = sdk(envoy).chat.completions.create(model=model, messages=MESSAGES)
    (got, req), = received(upstreams)
    assert got == host
    assert_chat_shaped(host, req, model)
    assert completion.model == f"{req.json()['model']}-2026"


def test_an_alias_is_rewritten_to_the_providers_model(envoy, upstreams):
    sdk(envoy).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    (_, req), = received(upstreams)
    assert req.json() == {"model": "qwen-plus", "messages": MESSAGES}


def test_weights_inside_a_model_matched_rule(envoy, upstreams):
    client = sdk(envoy)
    for _ in range(40):
        client.chat.completions.create(model="kimi-latest", messages=MESSAGES)
    got = received(upstreams)
    assert len(got) == 40 and {h for h, _ in got} == {"kimi.example.com", "qwen.example.com"}
    for host, req in got:
        assert_chat_shaped(host, req, "kimi-latest")


def test_header_and_model_conditions_must_both_hold(envoy, upstreams):
    sdk(envoy, **{"x-team": "blue"}).chat.completions.create(model="claude-3.5", messages=MESSAGES)
    (host, req), = received(upstreams)
    assert host == "kimi.example.com"
    assert_chat_shaped(host, req, "claude-3.5")
    with pytest.raises(openai.NotFoundError) as err:
        sdk(envoy).chat.completions.create(model="claude-3.5", messages=MESSAGES)
    assert err.value.code == "model_not_found" and len(received(upstreams)) == 1


def test_a_model_no_rule_serves_gets_openai_404(envoy, upstreams):
    with pytest.raises(openai.NotFoundError) as err:
        sdk(envoy).chat.completions.create(model="mistral-large", messages=MESSAGES)
    assert err.value.code == "model_not_found" and "mistral-large" in err.value.message
    assert not received(upstreams)


def test_client_sent_internal_headers_do_not_choose_the_route(envoy, upstreams):
    """The body's model decides; a client-sent x-llmc-model or x-llmc-provider is overwritten."""
    client = sdk(envoy, **{"x-llmc-model": "gpt-4o",
                           "x-llmc-provider": "x llmc/default/models-gateway/kimi-split/m-kimi y"})
    for _ in range(6):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    got = received(upstreams)
    assert [h for h, _ in got] == ["qwen.example.com"] * 6
    for host, req in got:
        assert_chat_shaped(host, req, "gpt-4o-mini")


def test_the_last_duplicate_model_routes_and_is_the_one_sent(envoy, upstreams):
    body = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}],"model":"gpt-4o"}'
    status, _, payload = call(envoy, HOST, body=body)
    assert status == 200, payload
    (host, req), = received(upstreams)
    assert host == "openai.example.com"
    assert req.body == b'{"model":"gpt-4o","messages":[{"role":"user","content":"x"}]}'


def test_the_last_duplicate_model_of_an_embeddings_request_routes_and_is_the_one_sent(envoy, upstreams):
    """On every endpoint the duplicates collapse to the model that routed (was: chat only, so an
    embeddings provider got both members, and one that reads the first took a model no rule chose)."""
    body = '{"model":"gpt-4o","input":["a","b"],"model":"text-embedding-3-small"}'
    status, _, payload = call(envoy, HOST, body=body, path="/v1/embeddings")
    assert status == 200, payload
    (host, req), = received(upstreams)
    assert host == "openai.example.com" and req.path == "/v1/embeddings"
    assert req.body == b'{"model":"text-embedding-3-small","input":["a","b"]}'


def test_models_list_answers_without_reaching_a_provider(envoy, upstreams):
    models = sdk(envoy).models.list()
    assert [(m.id, m.owned_by) for m in models.data] == [
        ("gpt-4o", "m-openai"), ("gpt-4o-mini", "m-qwen"), ("kimi-k2", "m-kimi"), ("qwen-plus", "m-qwen")]
    assert not received(upstreams)


def test_embeddings_reach_the_embeddings_endpoint_with_the_right_key(envoy, upstreams):
    result = sdk(envoy).embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert len(result.data) == 2 and result.usage.total_tokens == 5
    (host, req), = received(upstreams)
    assert host == "openai.example.com" and req.path == "/v1/embeddings"
    assert req.headers["authorization"] == "Bearer sk-openai-000000000000000"
    assert req.json()["model"] == "text-embedding-3-small" and "stream" not in req.json()


@pytest.mark.parametrize("path", ["/v1/files", "/v1/audio/speech", "/v1/models/gpt-4o"])
def test_unknown_endpoints_never_reach_a_provider(envoy, upstreams, path):
    status, headers, payload = call(envoy, HOST, body='{"model":"gpt-4o","input":"x"}', path=path)
    assert status == 404 and headers["content-type"] == "application/json"
    assert json.loads(payload)["error"]["code"] == "unknown_url"
    assert not received(upstreams)


def test_provider_host_lists_its_model_too(envoy, upstreams):
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{envoy.port}/v1", api_key="k", max_retries=0,
                           default_headers={"Host": "qwen.example.com"})
    assert [m.id for m in client.models.list().data] == ["qwen-plus"]
    assert not received(upstreams)


def test_a_model_with_a_lone_surrogate_gets_a_utf8_404(envoy, upstreams):
    """A JSON escape of a lone surrogate decodes to U+FFFD: never invalid UTF-8 in an answer or a header."""
    status, headers, payload = call(envoy, HOST, body='{"model":"gpt\\ud800","messages":[]}')
    assert status == 404 and headers["content-type"] == "application/json"
    error = json.loads(payload.decode("utf-8"))["error"]  # strict UTF-8
    assert error["code"] == "model_not_found" and "gpt\ufffd" in error["message"]
    assert not received(upstreams)
