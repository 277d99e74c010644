"""Gemini through a real Envoy with the official ``openai`` SDK as the app (issue 27).

The double (tests/support/gemini.py) checks every request against Gemini's documented API and answers
as it documents: ``generateContent``, ``streamGenerateContent?alt=sse`` (a pause after the first event,
so a buffered stream fails the test), function calls, ``usageMetadata`` and Google's errors. The model
goes in the path: the configured one, or the client's (also when it routed the request), and
``llmc explain`` predicts the URL, headers and body the double received.
"""

from __future__ import annotations

import json
import time

import httpx2 as httpx
import pytest

from compiler.explain import Request, explain
from tests.conftest import TESTDATA
from tests.support import gemini
from tests.support.envoy_harness import access_log, logged_entries
from tests.support.gemini import GeminiUpstream
from tests.support.mesh import llmc_render, running_envoy
from tests.support.sdk import APP_KEY, chat, chat_stream, status_error
from tests.support.upstream import Upstream

pytestmark = pytest.mark.envoy

KEY = "sk-gemini-0000000000000000"
TOOLS = [{"type": "function", "function": {"name": "weather", "description": "Weather forecast",
                                           "parameters": {"type": "object", "properties": {
                                               "city": {"type": "string"}, "days": {"type": "integer"}},
                                               "required": ["city"]}}}]
LOG_FORMAT = {"case": "%REQ(x-case)%", "provider": "%DYNAMIC_METADATA(llmc:provider)%",
              "total": "%DYNAMIC_METADATA(llmc:request_total_tokens)%",
              "model": "%DYNAMIC_METADATA(llmc:response_model)%"}


@pytest.fixture(scope="module")
def objects():
    return llmc_render("-f", str(TESTDATA / "e2e" / "gemini.yaml"))


@pytest.fixture(scope="module")
def upstreams():
    ups = {h: GeminiUpstream(h, sse_pause=0.6) for h in ("gemini.example.com", "gemini-any.example.com")}
    ups["openai.example.com"] = Upstream("openai.example.com", sse_pause=0.6)
    yield ups
    for u in ups.values():
        u.stop()


@pytest.fixture(scope="module")
def log_path(tmp_path_factory):
    return tmp_path_factory.mktemp("gemini") / "access.log"


@pytest.fixture(scope="module")
def envoy(objects, upstreams, log_path):
    with running_envoy(objects, upstreams, access_logs=[access_log(str(log_path), LOG_FORMAT)]) as proxy:
        yield proxy


@pytest.fixture(autouse=True)
def _clear(upstreams):
    for u in upstreams.values():
        u.clear()


def one_request(upstreams, host="gemini.example.com"):
    up = upstreams[host]
    assert len(up.requests) == 1 and up.problems == [[]], up.problems
    return up.requests[0]


def test_non_streaming(envoy, upstreams):
    completion = chat(envoy.port, "gemini.example.com", temperature=0.7, stop=["END"])
    req = one_request(upstreams)
    assert req.path == "/v1beta/models/gemini-test:generateContent"
    assert req.headers["x-goog-api-key"] == KEY and "authorization" not in req.headers
    assert APP_KEY not in json.dumps(req.headers)
    sent = req.json()
    assert sent["generationConfig"] == {"stopSequences": ["END"], "maxOutputTokens": 512, "temperature": 0.7}
    assert sent["contents"] == [{"role": "user", "parts": [{"text": "Please introduce yourself"}]}]
    assert completion.choices[0].message.content == "Hello from Gemini" and completion.model == "gemini-test"
    assert completion.choices[0].finish_reason == "stop"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (gemini.PROMPT, gemini.COMPLETION)
    assert completion.usage.total_tokens == gemini.PROMPT + gemini.COMPLETION


@pytest.mark.parametrize("stream", [False, True])
def test_the_clients_query_string_stays_off_geminis_path(envoy, upstreams, stream):
    """An Azure-style client's ``?api-version=`` reached generateContent, a query Google's APIs refuse
    (the double answers 400 as Gemini does); the path is the translator's, whole."""
    query = {"api-version": "2024-10-21"}
    if stream:
        assert chat_stream(envoy.port, "gemini.example.com", extra_query=query).text == "Hello"
    else:
        assert chat(envoy.port, "gemini.example.com", extra_query=query).choices[0].message.content
    want = ":streamGenerateContent?alt=sse" if stream else ":generateContent"
    assert one_request(upstreams).path == f"/v1beta/models/gemini-test{want}"


def test_streaming_with_usage(envoy, upstreams):
    streamed = chat_stream(envoy.port, "gemini.example.com", hold=upstreams["gemini.example.com"])
    req = one_request(upstreams)
    assert req.path == "/v1beta/models/gemini-test:streamGenerateContent?alt=sse"
    assert streamed.text == "Hello" and streamed.usage.total_tokens == gemini.PROMPT + gemini.COMPLETION
    finishes = [c.choices[0].finish_reason for c in streamed.chunks if c.choices]
    assert finishes[-1] == "stop" and all(f is None for f in finishes[:-1])
    # streamed through, not buffered: the first event reached the SDK well before the end
    assert streamed.lead > upstreams["gemini.example.com"].sse_pause / 2, (streamed.first_at, streamed.total)


def test_streaming_without_usage(envoy, upstreams):
    streamed = chat_stream(envoy.port, "gemini.example.com", stream_options={})
    assert streamed.text == "Hello" and all(c.usage is None for c in streamed.chunks)


def test_tool_calling_round_trip(envoy, upstreams):
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    first = chat(envoy.port, "gemini.example.com", messages=messages, tools=TOOLS, tool_choice="auto")
    call_ = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls" and call_.function.name == "weather"
    assert json.loads(call_.function.arguments) == {"city": "Paris", "days": 2}
    sent = one_request(upstreams).json()
    assert sent["tools"] == [{"functionDeclarations": [{"name": "weather", "description": "Weather forecast",
                                                        "parametersJsonSchema": TOOLS[0]["function"]["parameters"]}]}]
    assert sent["toolConfig"] == {"functionCallingConfig": {"mode": "AUTO"}}
    upstreams["gemini.example.com"].clear()
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call_.id, "content": "sunny, 21°C"}]
    second = chat(envoy.port, "gemini.example.com", messages=messages, tools=TOOLS)
    assert second.choices[0].message.content == "Hello from Gemini" and second.choices[0].finish_reason == "stop"
    sent = one_request(upstreams).json()  # the double checks the response answers the call
    assert sent["contents"][2] == {"role": "user", "parts": [{"functionResponse": {
        "name": "weather", "response": {"output": "sunny, 21°C"}}}]}
    # the call's thought signature went back as Gemini issued it (the SDK's message keeps extra_content)
    (call_part,) = [p for p in sent["contents"][1]["parts"] if "functionCall" in p]
    assert call_part["thoughtSignature"] == gemini.signature("weather")


def test_streamed_tool_call(envoy, upstreams):
    streamed = chat_stream(envoy.port, "gemini.example.com", tools=TOOLS,
                           messages=[{"role": "user", "content": "Weather in Paris?"}])
    calls = [tc for c in streamed.chunks if c.choices and c.choices[0].delta.tool_calls
             for tc in c.choices[0].delta.tool_calls]
    assert calls[0].id and calls[0].function.name == "weather"
    assert json.loads("".join(tc.function.arguments or "" for tc in calls)) == {"city": "Paris", "days": 2}
    assert [c.choices[0].finish_reason for c in streamed.chunks if c.choices][-1] == "tool_calls"


@pytest.mark.parametrize("status, etype, gstatus", [(429, "rate_limit_error", "RESOURCE_EXHAUSTED"),
                                                    (403, "permission_error", "PERMISSION_DENIED"),
                                                    (503, "server_error", "UNAVAILABLE")])
def test_errors_keep_their_status(envoy, upstreams, status, etype, gstatus):
    err = status_error(chat, envoy.port, "gemini.example.com", headers={"x-test-status": str(status)})
    assert err.status_code == status
    assert err.body == {"message": f"test error {status}", "type": etype, "param": None, "code": gstatus}


def test_the_clients_model_and_key(envoy, upstreams):
    """No model configured: the client's goes in the path; no key: the client's bearer key moves to
    x-goog-api-key."""
    chat(envoy.port, "gemini-any.example.com", model="gemini-2.0-flash")
    req = one_request(upstreams, "gemini-any.example.com")
    assert req.path == "/v1beta/models/gemini-2.0-flash:generateContent"
    assert req.headers["x-goog-api-key"] == APP_KEY and "authorization" not in req.headers


@pytest.mark.parametrize("model", ["../files", "gemini?key=x", "a/b"])
def test_a_model_that_is_no_model_name_is_refused(envoy, upstreams, model):
    err = status_error(chat, envoy.port, "gemini-any.example.com", model=model)
    assert err.status_code == 400 and err.body["param"] == "model"
    assert not upstreams["gemini-any.example.com"].requests


def test_the_model_that_routed_goes_in_the_path(envoy, upstreams):
    completion = chat(envoy.port, "models.example.com", model="gemini-2.5-pro")
    req = one_request(upstreams, "gemini-any.example.com")
    assert req.path == "/v1beta/models/gemini-2.5-pro:generateContent"
    assert completion.choices[0].message.content == "Hello from Gemini"
    chat(envoy.port, "models.example.com", model="gpt-4o")
    assert len(upstreams["openai.example.com"].requests) == 1


def test_usage_is_recorded(envoy, upstreams, log_path):
    chat(envoy.port, "gemini.example.com", headers={"x-case": "usage"})
    chat_stream(envoy.port, "gemini.example.com", headers={"x-case": "usage"}, stream_options={})
    deadline = time.monotonic() + 20
    while True:
        lines = [x for x in logged_entries(log_path) if x["case"] == "usage"]
        if len(lines) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.02)  # not a busy loop: Envoy needs the CPU to write the line
    assert [str(x["total"]) for x in lines] == [str(gemini.PROMPT + gemini.COMPLETION)] * 2
    assert {x["provider"] for x in lines} == {"gemini"} and {x["model"] for x in lines} == {"gemini-test"}


def test_fifty_fifty_between_openai_and_gemini(envoy, upstreams):
    for _ in range(20):
        completion = chat(envoy.port, "mixed.example.com")
        assert completion.choices[0].message.content in ("hi", "Hello from Gemini")
    ours, theirs = upstreams["openai.example.com"].requests, upstreams["gemini.example.com"].requests
    assert len(ours) + len(theirs) == 20 and ours and theirs
    assert upstreams["gemini.example.com"].problems == [[]] * len(theirs)
    assert all("x-goog-api-key" not in r.headers for r in ours)


@pytest.mark.parametrize("stream", [False, True])
def test_explain_predicts_what_gemini_received(envoy, upstreams, objects, stream):
    body = {"model": "gemini-2.0-flash", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    headers = {"host": "gemini-any.example.com", "content-type": "application/json",
               "authorization": f"Bearer {APP_KEY}"}
    data = json.dumps(body).encode()
    httpx.post(f"http://127.0.0.1:{envoy.port}/v1/chat/completions", headers=headers, content=data, timeout=30)
    req = one_request(upstreams, "gemini-any.example.com")
    x = explain(objects, Request(host="gemini-any.example.com", method="POST", path="/v1/chat/completions",
                                 headers={k: v for k, v in headers.items() if k != "host"}, body=data))
    up = x["upstream"]
    assert up["url"] == f"http://gemini-any.example.com{req.path}"
    assert json.loads(up["body"]) == req.json()
