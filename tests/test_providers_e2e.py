"""Provider protocols through a real Envoy, with the official ``openai`` SDK as the app.

Anthropic (tests/support/anthropic.py: requests checked against the Messages API's documented
schema, documented answers and event sequences) is translated both ways: non-streaming, streaming
with usage (rewritten chunk by chunk while it streams: the double pauses after its first event and
the SDK must see that event before the pause ends), a tool-calling round trip, errors with their
status, an error event in the middle of a stream, and a 50/50 split with an OpenAI-protocol
provider. Azure OpenAI and a gateway with its own key header need only headers and a path.
A broken or surprising provider (README, "Answers llmc cannot translate"): an event over 256 KiB
or over the 1 MiB limit, a gzip answer, an error without a JSON body, a message without "type", an
HTML 200; a client's ``http://`` image and lone surrogate escape; Azure's first chunk without a model.
"""

from __future__ import annotations

import json
import time

import openai
import pytest

from tests.conftest import TESTDATA
from tests.support.anthropic import USAGE, AnthropicUpstream
from tests.support.azure import AzureUpstream
from tests.support.envoy_harness import access_log, logged_entries, logged_lines
from tests.support.mesh import llmc_render, running_envoy
from tests.support.sdk import APP_KEY, chat, chat_stream, status_error
from tests.support.upstream import Upstream
from tests.test_envoy_e2e import call
from tests.test_observability_e2e import meshconfig_labels, metric_expressions

pytestmark = pytest.mark.envoy

OPENAI_HOSTS = ("openai.example.com", "gw.example.com")
ANTHROPIC_HOSTS = ("claude.example.com", "byok.example.com")
PROMPT = USAGE["input_tokens"] + USAGE["cache_creation_input_tokens"] + USAGE["cache_read_input_tokens"]
TOOLS = [{"type": "function", "function": {"name": "weather", "description": "Weather forecast",
                                           "parameters": {"type": "object", "properties": {
                                               "city": {"type": "string"}, "days": {"type": "integer"}},
                                               "required": ["city"]}}}]


@pytest.fixture(scope="module")
def upstreams():
    ups = {h: Upstream(h, sse_pause=0.6) for h in OPENAI_HOSTS}
    ups["azure.example.com"] = AzureUpstream("azure.example.com", ("dep-mini",), sse_pause=0.6)
    ups.update({h: AnthropicUpstream(h, sse_pause=0.6) for h in ANTHROPIC_HOSTS})
    yield ups
    for u in ups.values():
        u.stop()


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    return tmp_path_factory.mktemp("providers")


@pytest.fixture(scope="module")
def envoy(upstreams, logs):
    objects = llmc_render("-f", str(TESTDATA / "e2e" / "providers.yaml"))
    # the access log `llmc meshconfig` defines, and the token metrics' CEL expressions (as in
    # test_observability_e2e.py): the same names for every protocol
    access = [access_log(str(logs / "access.log"), meshconfig_labels()),
              access_log(str(logs / "metrics.log"), {**metric_expressions(), "path": "%REQ(:PATH)%"})]
    with running_envoy(objects, upstreams, access_logs=access) as proxy:
        yield proxy


@pytest.fixture(autouse=True)
def _clear(upstreams):
    for u in upstreams.values():
        u.clear()


def claude_request(upstreams, host="claude.example.com"):
    up = upstreams[host]
    assert len(up.requests) == 1 and up.problems == [[]], up.problems
    return up.requests[0]


def test_anthropic_non_streaming(envoy, upstreams):
    completion = chat(envoy.port, "claude.example.com", temperature=0.7, stop=["END"], max_tokens=100)
    req = claude_request(upstreams)
    sent = req.json()
    assert req.path == "/v1/messages" and req.headers["x-api-key"] == "sk-ant-000000000000000000"
    assert req.headers["anthropic-version"] == "2023-06-01" and "authorization" not in req.headers
    assert sent["model"] == "claude-test" and sent["max_tokens"] == 100 and sent["stop_sequences"] == ["END"]
    assert b'"temperature":0.7' in req.body  # the client's number text, not a double's
    assert completion.choices[0].message.content == "Hello from Claude"
    assert completion.choices[0].finish_reason == "stop" and completion.model == "claude-test"
    assert completion.usage.prompt_tokens == PROMPT and completion.usage.completion_tokens == USAGE["output_tokens"]
    assert completion.usage.total_tokens == PROMPT + USAGE["output_tokens"]


def test_anthropic_max_tokens_default_and_system(envoy, upstreams):
    chat(envoy.port, "claude.example.com", messages=[{"role": "system", "content": "Be brief."},
                                                     {"role": "user", "content": "hi"}])
    sent = claude_request(upstreams).json()
    assert sent["max_tokens"] == 512 and sent["system"] == [{"type": "text", "text": "Be brief."}]
    assert sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]


def test_anthropic_streaming_with_usage(envoy, upstreams):
    streamed = chat_stream(envoy.port, "claude.example.com", hold=upstreams["claude.example.com"])
    sent = claude_request(upstreams).json()
    assert sent["stream"] is True and "stream_options" not in sent
    assert streamed.text == "Hello"
    assert streamed.usage.prompt_tokens == PROMPT and streamed.usage.total_tokens == PROMPT + USAGE["output_tokens"]
    finishes = [c.choices[0].finish_reason for c in streamed.chunks if c.choices]
    assert finishes[-1] == "stop" and all(f is None for f in finishes[:-1])
    # Streamed, not buffered: the first event reached the SDK well before the end (the double pauses 0.6 s after it)
    assert streamed.lead > upstreams["claude.example.com"].sse_pause / 2, (streamed.first_at, streamed.total)


def test_anthropic_streaming_without_usage(envoy, upstreams):
    streamed = chat_stream(envoy.port, "claude.example.com", stream_options={})
    assert streamed.text == "Hello" and all(c.usage is None for c in streamed.chunks)


def test_anthropic_tool_calling_round_trip(envoy, upstreams):
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    first = chat(envoy.port, "claude.example.com", messages=messages, tools=TOOLS, tool_choice="auto")
    call_ = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls" and call_.function.name == "weather"
    assert json.loads(call_.function.arguments) == {"city": "Paris", "days": 2}
    sent = claude_request(upstreams).json()
    assert sent["tools"] == [{"name": "weather", "description": "Weather forecast",
                              "input_schema": TOOLS[0]["function"]["parameters"]}]
    assert sent["tool_choice"] == {"type": "auto"}
    upstreams["claude.example.com"].clear()
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call_.id, "content": "sunny, 21°C"}]
    second = chat(envoy.port, "claude.example.com", messages=messages, tools=TOOLS)
    assert second.choices[0].message.content == "Hello from Claude" and second.choices[0].finish_reason == "stop"
    sent = claude_request(upstreams).json()
    assert sent["messages"][1]["content"][-1] == {"type": "tool_use", "id": call_.id, "name": "weather",
                                                  "input": {"city": "Paris", "days": 2}}
    assert sent["messages"][2] == {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call_.id,
                                                                "content": [{"type": "text", "text": "sunny, 21°C"}]}]}


def test_anthropic_streamed_tool_call(envoy, upstreams):
    streamed = chat_stream(envoy.port, "claude.example.com", tools=TOOLS,
                           messages=[{"role": "user", "content": "Weather in Paris?"}])
    calls = [tc for c in streamed.chunks if c.choices and c.choices[0].delta.tool_calls
             for tc in c.choices[0].delta.tool_calls]
    assert calls[0].id and calls[0].function.name == "weather"
    assert json.loads("".join(tc.function.arguments or "" for tc in calls)) == {"city": "Paris", "days": 2}
    assert [c.choices[0].finish_reason for c in streamed.chunks if c.choices][-1] == "tool_calls"


@pytest.mark.parametrize("status,etype", [(429, "rate_limit_error"), (529, "overloaded_error"),
                                          (401, "authentication_error")])
def test_anthropic_errors_keep_their_status(envoy, upstreams, status, etype):
    err = status_error(chat, envoy.port, "claude.example.com", headers={"x-test-status": str(status)})
    assert err.status_code == status
    assert err.body == {"message": f"test error {status}", "type": etype, "param": None, "code": None}


def test_anthropic_error_event_mid_stream_becomes_an_openai_error(envoy, upstreams):
    with pytest.raises(openai.APIError) as err:
        chat_stream(envoy.port, "claude.example.com", headers={"x-test-stream-error": "1"})
    assert "Overloaded" in str(err.value)


@pytest.mark.parametrize("params,field", [({"n": 2}, "n"), ({"logprobs": True}, "logprobs"),
                                          ({"response_format": {"type": "json_object"}}, "response_format")])
def test_shape_changing_fields_are_refused(envoy, upstreams, params, field):
    err = status_error(chat, envoy.port, "claude.example.com", **params)
    assert err.status_code == 400 and err.body["param"] == field
    assert not upstreams["claude.example.com"].requests


def test_tuning_fields_without_a_mapping_are_dropped(envoy, upstreams):
    chat(envoy.port, "claude.example.com", seed=7, presence_penalty=0.5, frequency_penalty=0.1)
    sent = claude_request(upstreams).json()
    assert not {"seed", "presence_penalty", "frequency_penalty"} & set(sent)


def test_anthropic_without_a_configured_key_uses_the_clients(envoy, upstreams):
    chat(envoy.port, "byok.example.com")
    req = claude_request(upstreams, "byok.example.com")
    assert req.headers["x-api-key"] == APP_KEY and "authorization" not in req.headers


def test_azure_openai(envoy, upstreams):
    completion = chat(envoy.port, "azure.example.com")
    (req,) = upstreams["azure.example.com"].requests
    assert req.path == "/openai/deployments/dep-mini/chat/completions?api-version=2024-10-21"
    assert req.headers["api-key"] == "sk-azure-0000000000000000" and "authorization" not in req.headers
    assert completion.choices[0].message.content == "hi"
    streamed = chat_stream(envoy.port, "azure.example.com")
    assert streamed.text == "Hello" and streamed.usage.total_tokens == 18


def test_azure_double_refuses_what_azure_refuses(upstreams):
    """The double is an oracle only if it can fail: wrong deployment, no api-version, no key."""
    import http.client

    port = upstreams["azure.example.com"].port
    cases = [("/openai/deployments/other/chat/completions?api-version=2024-10-21", {"api-key": "k"}, 404),
             ("/openai/deployments/dep-mini/chat/completions", {"api-key": "k"}, 404),
             ("/openai/deployments/dep-mini/chat/completions?api-version=2024-10-21", {}, 401)]
    for path, headers, status in cases:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", path, body='{"messages":[]}', headers={"content-type": "application/json", **headers})
        assert conn.getresponse().status == status, path
        conn.close()


def test_gateway_with_its_own_key_header(envoy, upstreams):
    chat(envoy.port, "gw.example.com")
    (req,) = upstreams["gw.example.com"].requests
    assert req.path == "/gw/chat/completions" and req.headers["x-api-key"] == "sk-gw-00000000000000000000"
    assert "authorization" not in req.headers and req.json()["model"] == "gw-model"


def test_fifty_fifty_between_openai_and_anthropic(envoy, upstreams):
    for _ in range(30):
        completion = chat(envoy.port, "mixed.example.com")
        assert completion.choices[0].message.content in ("hi", "Hello from Claude")
        assert completion.usage.total_tokens > 0
    openai_reqs, claude_reqs = upstreams["openai.example.com"].requests, upstreams["claude.example.com"].requests
    assert len(openai_reqs) + len(claude_reqs) == 30 and openai_reqs and claude_reqs
    assert upstreams["claude.example.com"].problems == [[]] * len(claude_reqs)
    for r in openai_reqs:
        assert r.path == "/v1/chat/completions" and r.headers["authorization"] == "Bearer sk-openai-00000000000000"
        assert r.json()["model"] == "gpt-test" and "x-api-key" not in r.headers
    for r in claude_reqs:
        assert r.json()["model"] == "claude-test" and "authorization" not in r.headers


def test_streaming_split_translates_each_stream_for_its_provider(envoy, upstreams):
    for _ in range(12):
        streamed = chat_stream(envoy.port, "mixed.example.com")
        assert streamed.text == "Hello" and streamed.usage.total_tokens > 0
    assert upstreams["openai.example.com"].requests and upstreams["claude.example.com"].requests


def test_raw_invalid_body_to_anthropic_is_an_openai_400(envoy, upstreams):
    status, headers, payload = call(envoy, "claude.example.com", body='{"messages": [}')
    assert status == 400 and json.loads(payload)["error"]["code"] == "invalid_json"
    assert not upstreams["claude.example.com"].requests


def test_runs_on_the_envoy_it_names():
    """tests/envoy_versions.py runs this file on other releases: it must really run that one."""
    import os

    from tests.support.envoy_harness import envoy_binary, envoy_version

    assert envoy_version(envoy_binary()).startswith(os.environ.get("LLMC_EXPECT_ENVOY", "1.38."))


def test_the_internal_translate_header_never_reaches_the_client(envoy, upstreams):
    for host in ("claude.example.com", "openai.example.com"):
        status, headers, payload = call(envoy, host, body='{"messages":[{"role":"user","content":"hi"}]}')
        assert status == 200 and "x-llmc-translate" not in headers, (host, headers)
    assert json.loads(payload)["choices"][0]["message"]["content"] == "hi"


def line_with(path, marker: str, timeout: float = 20.0) -> dict:
    """The access-log line of the request whose query string carries ``marker`` (lines of earlier
    requests may still be arriving)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in logged_lines(path):
            if marker in line:
                return json.loads(line)
        time.sleep(0.02)
    raise AssertionError(f"no access-log line for {marker} in {path}")


@pytest.mark.parametrize("stream", [False, True, "client-leaves-at-done"])
def test_anthropic_usage_reaches_access_logs_and_metrics_like_openai(envoy, upstreams, logs, stream):
    """Streamed usage is recorded as it passes: the official SDK closes the connection at ``data:
    [DONE]`` (which llmc writes on ``message_stop``), and Anthropic's stream may end after that.
    In GenAI names: provider ``anthropic``, input tokens with the cache reads and writes included
    and each beside it, Anthropic's own stop reason, and a stream's time to first chunk."""
    marker = f"obs-{stream}"
    if stream:  # usage recorded though the client did not ask for it
        linger = {"x-test-linger": "10"} if stream == "client-leaves-at-done" else None
        chat_stream(envoy.port, "claude.example.com", headers=linger, stream_options={}, extra_query={"t": marker})
    else:
        chat(envoy.port, "claude.example.com", extra_query={"t": marker})
    entry = line_with(logs / "access.log", marker)
    if stream == "client-leaves-at-done":  # the double ends its stream only once Envoy closed its connection
        assert "DC" in entry["response_flags"]
    assert entry["llm_provider"] == "claude" and entry["gen_ai.provider.name"] == "anthropic"
    assert entry["gen_ai.operation.name"] == "chat"
    assert entry["gen_ai.request.model"] == "claude-test" and entry["gen_ai.response.model"] == "claude-test"
    assert (entry["gen_ai.usage.input_tokens"], entry["gen_ai.usage.output_tokens"]) == (PROMPT, USAGE["output_tokens"])
    assert entry["gen_ai.usage.cache_read.input_tokens"] == USAGE["cache_read_input_tokens"]
    assert entry["gen_ai.usage.cache_creation.input_tokens"] == USAGE["cache_creation_input_tokens"]
    assert entry["gen_ai.response.finish_reasons"] == ["end_turn"]
    assert (entry["gen_ai.response.time_to_first_chunk"] is not None) is bool(stream)
    metrics = line_with(logs / "metrics.log", marker)
    assert int(metrics["gen_ai_client_token_usage.input"]) == PROMPT
    assert int(metrics["gen_ai_client_token_usage.output"]) == USAGE["output_tokens"]
    for sample in ("input", "output"):
        assert metrics[f"gen_ai_client_token_usage.{sample}/gen_ai_provider_name"] == "anthropic"
        assert metrics[f"gen_ai_client_token_usage.{sample}/gen_ai_request_model"] == "claude-test"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_azure_and_openai_usage_in_genai_names(envoy, upstreams, logs, stream):
    """Azure's provider name is the convention's ``azure.ai.openai`` (from the protocol); a provider
    on a host with no well-known name keeps its LLMProvider name."""
    for host, name, provider in (("azure.example.com", "azure.ai.openai", "azure"), ("openai.example.com", "openai",
                                                                                       "openai")):
        path, metrics_path = logs / "access.log", logs / "metrics.log"
        before = len(path.read_text().splitlines()) if path.exists() else 0
        metrics_before = len(metrics_path.read_text().splitlines()) if metrics_path.exists() else 0
        if stream:
            chat_stream(envoy.port, host)
        else:
            chat(envoy.port, host)
        # the path is the provider's (a query the client adds does not reach the log): by authority
        entry = line_for(path, before, host)
        metrics = line_for(metrics_path, metrics_before, name, key="gen_ai_client_token_usage.input/gen_ai_provider_name")
        assert (int(metrics["gen_ai_client_token_usage.input"]), int(metrics["gen_ai_client_token_usage.output"])) == (
            11, 7)
        assert metrics["gen_ai_client_token_usage.output/gen_ai_provider_name"] == name
        assert entry["llm_provider"] == provider and entry["gen_ai.provider.name"] == name, entry
        assert (entry["gen_ai.usage.input_tokens"], entry["gen_ai.usage.output_tokens"]) == (11, 7)
        assert entry["gen_ai.response.finish_reasons"] == ["stop"] and entry["gen_ai.operation.name"] == "chat"
        assert (entry["gen_ai.response.time_to_first_chunk"] is not None) is stream


# --- a broken or surprising provider (issue 24, items 8 and 9) ------------------------------------

CHAT_BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
STREAM_BODY = json.dumps({"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]})


def sse_events(payload: bytes) -> list[str]:
    return [e.removeprefix("data: ") for e in payload.decode().split("\n\n") if e.startswith("data: ")]


def test_a_stream_event_over_256_kib_reaches_the_client_whole(envoy, upstreams):
    pad = 300 * 1024
    streamed = chat_stream(envoy.port, "claude.example.com", headers={"x-test-pad": str(pad)})
    assert streamed.text == "Hel" + "." * pad + "lo"
    assert [c.choices[0].finish_reason for c in streamed.chunks if c.choices][-1] == "stop"


def test_a_stream_event_over_the_limit_ends_in_an_error_never_in_done(envoy, upstreams):
    status, headers, payload = call(envoy, "claude.example.com", body=STREAM_BODY,
                                    headers={"x-test-pad": str(1024 * 1024 + 1)})
    events = sse_events(payload)
    assert status == 200 and "[DONE]" not in events, events[-3:]
    assert json.loads(events[-1])["error"]["code"] == "llmc_event_too_large"
    assert all(json.loads(e)["choices"][0]["finish_reason"] is None for e in events[:-1])
    with pytest.raises(openai.APIError, match="over 1 MiB"):
        chat_stream(envoy.port, "claude.example.com", headers={"x-test-pad": str(1024 * 1024 + 1)})


@pytest.mark.parametrize("body", [CHAT_BODY, STREAM_BODY], ids=["json", "stream"])
def test_a_compressed_answer_becomes_a_502_openai_error(envoy, upstreams, body):
    status, headers, payload = call(envoy, "claude.example.com", body=body, headers={"x-test-gzip": "1"})
    assert claude_request(upstreams).headers["accept-encoding"] == "identity"
    assert status == 502 and "content-encoding" not in headers and headers["content-type"] == "application/json"
    assert json.loads(payload)["error"]["code"] == "llmc_compressed_answer"


@pytest.mark.parametrize("status,kind,etype", [(529, "empty", "overloaded_error"), (503, "empty", "api_error"),
                                               (502, "html", "api_error")])
def test_an_error_without_a_json_body_becomes_an_openai_error(envoy, upstreams, status, kind, etype):
    err = status_error(chat, envoy.port, "claude.example.com",
                       headers={"x-test-status": str(status), "x-test-error-body": kind})
    assert err.status_code == status and err.response.headers["content-type"] == "application/json"
    assert err.body["type"] == etype and str(status) in err.body["message"]


def test_http_image_urls_are_refused(envoy, upstreams):
    parts = [{"type": "text", "text": "what is it?"}, {"type": "image_url", "image_url": {"url": "http://x.test/a.png"}}]
    err = status_error(chat, envoy.port, "claude.example.com", messages=[{"role": "user", "content": parts}])
    assert err.status_code == 400 and err.body["param"] == "messages" and "https://" in err.body["message"]
    assert not upstreams["claude.example.com"].requests


def test_a_lone_surrogate_reaches_anthropic_as_valid_utf8(envoy, upstreams):
    status, _, payload = call(envoy, "claude.example.com",
                              body='{"model":"m","messages":[{"role":"user","content":"a\\ud800b"}]}')
    assert status == 200, payload
    sent = claude_request(upstreams).json()  # the double refuses a body that is not UTF-8 (problems)
    assert sent["messages"][0]["content"][0]["text"] == "a\ufffdb"


def test_a_message_without_type_is_translated(envoy, upstreams):
    completion = chat(envoy.port, "claude.example.com", headers={"x-test-message": "untyped"})
    assert completion.choices[0].message.content == "Hello from Claude" and completion.usage.total_tokens > 0


def test_a_2xx_that_cannot_be_translated_is_a_502_openai_error(envoy, upstreams):
    err = status_error(chat, envoy.port, "claude.example.com", headers={"x-test-message": "html"})
    assert err.status_code == 502 and err.body["code"] == "llmc_untranslatable_answer"


def line_for(path, before: int, value: str, key: str = "authority", timeout: float = 20.0) -> dict:
    """The first log line after the first ``before`` whose ``key`` is ``value``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = logged_entries(path)[before:]
        found = [e for e in lines if e.get(key) == value]
        if found:
            return found[0]
        time.sleep(0.02)
    raise AssertionError(f"no log line with {key} {value} in {path}")


def test_azure_streams_record_the_first_non_empty_model(envoy, upstreams, logs):
    """Azure's first chunk (content filtering, on by default) says "model": ""; the next ones name it."""
    path = logs / "access.log"
    before = len(path.read_text().splitlines()) if path.exists() else 0
    streamed = chat_stream(envoy.port, "azure.example.com")
    assert streamed.chunks[0].model == "" and streamed.text == "Hello"
    deadline = time.monotonic() + 20  # bounded wait for Envoy's flush on a loaded machine
    while True:
        lines = logged_entries(path)[before:]
        entries = [e for e in lines if e["authority"] == "azure.example.com"]
        if entries or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    (entry,) = entries
    assert entry["gen_ai.response.model"] == "gpt-4o-mini-2026" and entry["gen_ai.usage.input_tokens"] == 11
