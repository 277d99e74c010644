"""Protocol translation in templates/lua/llmc.lua under LuaJIT (lupa): JSON values, and OpenAI chat
<-> Anthropic Messages, with Hypothesis properties against Python's json, Anthropic's documented
request schema (tests/support/anthropic.py) and the openai SDK's own response types.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from compiler.protocols import ANTHROPIC
from tests.support.anthropic import body_problems
from tests.support.lua import LuaFilter
from tests.test_lua import JSON_VALUES, ctx

LUA = LuaFilter()
M = LUA.M
TRANSLATOR = LUA.module("anthropic")  # templates/lua/llmc/anthropic.lua: the translator contract
BACKEND = {"model": "claude-test", "max_tokens": 256, "format": "anthropic"}


def to_anthropic(req: dict | str, **backend) -> tuple[dict | None, str | None, str | None, str | None]:
    body = req if isinstance(req, str) else json.dumps(req)
    result = M.shape(body, LUA.table({**BACKEND, **backend}))
    out, err, param, note = (*result, None, None, None)[:4] if isinstance(result, tuple) else (result, None, None, None)
    return (json.loads(out) if out is not None else None), err, param, note


# --- JSON values ----------------------------------------------------------------------------------

@settings(max_examples=300)
@given(value=JSON_VALUES)
def test_decode_encode_agrees_with_python(value):
    compact = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    assert M.encode(M.decode(compact)) == compact  # byte for byte: keys, order, escapes, number text
    pretty = json.dumps(value, ensure_ascii=True, indent=2)
    assert json.loads(M.encode(M.decode(pretty))) == value


@pytest.mark.parametrize("text", ["0.7", "-0.0", "1e400", "12345678901234567890123", "5E-324", "0.10"])
def test_numbers_keep_their_text(text):
    assert M.encode(M.decode(f'{{"n":[{text}]}}')) == f'{{"n":[{text}]}}'


def test_duplicate_keys_as_python():
    text = '{"a":1,"b":2,"a":3}'
    assert json.loads(M.encode(M.decode(text))) == json.loads(text)
    assert M.encode(M.decode(text)) == '{"a":3,"b":2}'


@pytest.mark.parametrize("text", ["", "{", '{"a":}', "[1,]", '"\\x"', "01", "{} {}", "nul"])
def test_invalid_json_is_refused(text):
    result = M.decode(text)
    assert isinstance(result, tuple) and result[0] is None and result[1]


# --- requests -------------------------------------------------------------------------------------

TEXT = st.text(min_size=1, max_size=20)
NUMBER = st.floats(min_value=0, max_value=1, allow_nan=False)
ARGS = st.dictionaries(st.text(max_size=5), JSON_VALUES, max_size=3)
CALL_ID = st.from_regex(r"call_[a-z0-9]{1,8}", fullmatch=True)


@st.composite
def openai_messages(draw):
    msgs = [{"role": r, "content": draw(TEXT)} for r in draw(st.lists(st.sampled_from(["system", "developer"]),
                                                                      max_size=2))]
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["user", "user_parts", "assistant", "tool_round"]))
        if kind == "user":
            msgs.append({"role": "user", "content": draw(TEXT)})
        elif kind == "user_parts":
            parts = [{"type": "text", "text": draw(TEXT)}]
            if draw(st.booleans()):
                parts.append({"type": "image_url", "image_url": {"url": draw(st.sampled_from([
                    "data:image/png;base64,iVBORw0KGgo=", "https://example.com/cat.jpg"]))}})
            msgs.append({"role": "user", "content": parts})
        elif kind == "assistant":
            msgs.append({"role": "assistant", "content": draw(TEXT)})
        else:
            calls = [{"id": draw(CALL_ID), "type": "function",
                      "function": {"name": draw(st.from_regex(r"[a-z_]{1,10}", fullmatch=True)),
                                   "arguments": json.dumps(draw(ARGS))}} for _ in range(draw(st.integers(1, 2)))]
            msgs.append({"role": "assistant", "content": draw(st.none() | TEXT), "tool_calls": calls})
            msgs += [{"role": "tool", "tool_call_id": c["id"], "content": draw(TEXT)} for c in calls]
            msgs.append({"role": "user", "content": draw(TEXT)})
    return msgs


@st.composite
def openai_requests(draw):
    req = {"model": draw(TEXT), "messages": draw(openai_messages())}
    optional = {
        "temperature": NUMBER, "top_p": NUMBER, "max_tokens": st.integers(1, 10**6),
        "max_completion_tokens": st.integers(1, 10**6), "stop": TEXT | st.lists(TEXT, max_size=3),
        "stream": st.booleans(), "user": TEXT, "seed": st.integers(), "presence_penalty": NUMBER,
        "stream_options": st.just({"include_usage": True}), "n": st.just(1),
        "tools": st.lists(st.builds(lambda n, d: {"type": "function", "function": {
            "name": n, "description": d, "parameters": {"type": "object", "properties": {}}}},
            st.from_regex(r"[a-z_]{1,10}", fullmatch=True), TEXT), min_size=1, max_size=3),
        "tool_choice": st.sampled_from(["auto", "none", "required"]), "parallel_tool_calls": st.booleans(),
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            req[key] = draw(strategy)
    return req


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(req=openai_requests())
def test_any_valid_openai_request_becomes_a_valid_anthropic_request(req):
    out, err, _, note = to_anthropic(req)
    assert err is None, err
    assert body_problems(out) == []
    assert out["model"] == "claude-test"
    assert out["max_tokens"] == req.get("max_completion_tokens", req.get("max_tokens", 256))
    system = [m["content"] for m in req["messages"] if m["role"] in ("system", "developer")]
    assert [b["text"] for b in out.get("system", [])] == system
    roles = [m["role"] for m in out["messages"]]
    assert all(a != b for a, b in zip(roles, roles[1:], strict=False))  # alternating: same-role turns merged
    for key in ("temperature", "top_p"):
        assert out.get(key) == req.get(key)
    assert out.get("stream", False) == req.get("stream", False)
    assert note == ("anthropic+usage" if req.get("stream") and "stream_options" in req else "anthropic")
    assert not {"seed", "presence_penalty", "n", "user", "stop", "stream_options"} & set(out)
    calls = [c for m in req["messages"] for c in m.get("tool_calls", [])]
    uses = [b for m in out["messages"] for b in m["content"] if b["type"] == "tool_use"]
    assert [(u["id"], u["name"], u["input"]) for u in uses] == [
        (c["id"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls]


def test_empty_texts_are_not_sent():
    """Agents store ``content: ""`` on a tool-calls-only assistant turn (and empty system prompts, tool
    results): Anthropic refuses empty text blocks (400 "text content blocks must be non-empty")."""
    call = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
    out, err, _, _ = to_anthropic({"messages": [
        {"role": "system", "content": ""}, {"role": "user", "content": [{"type": "text", "text": "hi"},
                                                                       {"type": "text", "text": ""}]},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": ""},
        {"role": "assistant", "content": ""}, {"role": "user", "content": "and tomorrow?"}]})
    assert err is None and body_problems(out) == [], (err, out and body_problems(out))
    assert "system" not in out and [m["role"] for m in out["messages"]] == ["user", "assistant", "user"]
    assert out["messages"][1]["content"] == [{"type": "tool_use", "id": "call_1", "name": "weather", "input": {}}]
    assert out["messages"][2]["content"] == [{"type": "tool_result", "tool_use_id": "call_1"},
                                             {"type": "text", "text": "and tomorrow?"}]


def test_tool_arguments_keep_their_number_text():
    req = {"model": "m", "messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "f", "arguments": '{"big": 12345678901234567890, "t": 0.7}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"}]}
    out, *_ = M.shape(json.dumps(req), LUA.table(BACKEND))
    assert '"input":{"big": 12345678901234567890, "t": 0.7}' in out


@pytest.mark.parametrize("field,value", [("n", 2), ("logprobs", True), ("top_logprobs", 3), ("audio", {"voice": "x"}),
                                         ("response_format", {"type": "json_schema"}), ("modalities", ["audio"])])
def test_fields_that_change_the_answers_shape_are_refused(field, value):
    out, err, param, _ = to_anthropic({"model": "m", "messages": [{"role": "user", "content": "x"}], field: value})
    assert out is None and param == field and "not supported" in err


@pytest.mark.parametrize("req,param", [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "function", "content": "x", "name": "f"}]}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/bmp;base64,AA"}}]}]},
     "messages"),
    ({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "code_interpreter"}]}, "tools"),
])
def test_requests_that_cannot_be_translated_are_refused(req, param):
    out, err, got, _ = to_anthropic(req)
    assert out is None and got == param and err


def test_the_clients_model_is_used_when_none_is_configured():
    out, *_ = to_anthropic({"model": "claude-opus", "messages": [{"role": "user", "content": "x"}]}, model=None)
    assert out["model"] == "claude-opus"
    assert to_anthropic({"messages": [{"role": "user", "content": "x"}]}, model=None)[2] == "model"


def test_full_request_path_sends_anthropics_headers_and_endpoint():
    c = ctx(protocol="anthropic", path="/v1/messages", model="claude-test", max_tokens=64, api_key="sk-ant",
            headers={"anthropic-version": "2023-06-01"})
    c["protocols"] = {"anthropic": ANTHROPIC.context()}
    c["id"] = "anthropic-full"
    r = LUA.request(c, json.dumps({"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}),
                    headers={"authorization": "Bearer app"}, path="/v1/chat/completions")
    assert r.status is None
    assert r.headers[":path"] == "/v1/messages" and r.headers["x-api-key"] == "sk-ant"
    assert r.headers["anthropic-version"] == "2023-06-01" and "authorization" not in r.headers
    assert json.loads(r.body) == {"model": "claude-test", "max_tokens": 64,
                                  "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    assert r.metadata["llmc:translate"] == "anthropic"


# --- responses ------------------------------------------------------------------------------------

BLOCKS = st.lists(st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, st.text(max_size=20)),
    st.builds(lambda i, n, a: {"type": "tool_use", "id": i, "name": n, "input": a},
              st.from_regex(r"toolu_[a-z0-9]{1,6}", fullmatch=True), st.from_regex(r"[a-z]{1,6}", fullmatch=True), ARGS),
    st.builds(lambda t: {"type": "thinking", "thinking": t, "signature": "sig"}, st.text(max_size=10))), max_size=4)
STOP = st.sampled_from(["end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal"])
USAGE = st.fixed_dictionaries({"input_tokens": st.integers(0, 10**6), "output_tokens": st.integers(0, 10**6)},
                              optional={"cache_read_input_tokens": st.integers(0, 1000),
                                        "cache_creation_input_tokens": st.integers(0, 1000)})
FINISH = {"end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop", "max_tokens": "length",
          "tool_use": "tool_calls", "refusal": "content_filter"}


def prompt_of(u: dict) -> int:
    return u["input_tokens"] + u.get("cache_read_input_tokens", 0) + u.get("cache_creation_input_tokens", 0)


@settings(max_examples=200)
@given(blocks=BLOCKS, stop=STOP, usage=USAGE)
def test_any_anthropic_message_becomes_a_valid_chat_completion(blocks, stop, usage):
    msg = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test", "content": blocks,
           "stop_reason": stop, "stop_sequence": None, "usage": usage}
    out, p, c, t, model, status, x = TRANSLATOR.response(json.dumps(msg), 200, 1700000000)
    assert status == 200
    # for accounting (the GenAI details): Anthropic's own stop reason and its cache counts
    assert list(x.finish_reasons.values()) == [stop]
    assert (x.cache_read, x.cache_creation) == (usage.get("cache_read_input_tokens"),
                                                usage.get("cache_creation_input_tokens"))
    completion = ChatCompletion.model_validate_json(out)
    choice = completion.choices[0]
    texts = [b["text"] for b in blocks if b["type"] == "text"]
    assert choice.message.content == ("".join(texts) if texts else None)
    uses = [b for b in blocks if b["type"] == "tool_use"]
    assert [(tc.id, tc.function.name, json.loads(tc.function.arguments)) for tc in choice.message.tool_calls or []] == [
        (u["id"], u["name"], u["input"]) for u in uses]
    assert choice.finish_reason == FINISH[stop]
    assert (p, c, t, model) == (prompt_of(usage), usage["output_tokens"], prompt_of(usage) + usage["output_tokens"],
                                "claude-test")
    assert completion.usage.prompt_tokens == p and completion.usage.total_tokens == t
    assert completion.usage.prompt_tokens_details.cached_tokens == usage.get("cache_read_input_tokens", 0)


@pytest.mark.parametrize("body,status,message,etype", [
    ('{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}}', 400,
     "max_tokens: Field required", "invalid_request_error"),
    ('{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_1"}', 529,
     "Overloaded", "overloaded_error"),
    ("upstream connect error", 503, "llmc: the provider answered 503 without an error message", "api_error"),
])
def test_errors_become_openai_errors(body, status, message, etype):
    out = TRANSLATOR.response(body, status, 1)
    out = out[0] if isinstance(out, tuple) else out
    assert json.loads(out) == {"error": {"message": message, "type": etype, "param": None, "code": None}}


# --- streams --------------------------------------------------------------------------------------

def sse(events: list[dict]) -> str:
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events)


@st.composite
def anthropic_streams(draw):
    usage = draw(USAGE)
    events = [{"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": "claude-test",
        "stop_reason": None, "stop_sequence": None, "usage": {**usage, "output_tokens": 1}}}]
    text, tools = "", []
    for index in range(draw(st.integers(0, 3))):
        if draw(st.booleans()):
            events.append({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}})
            for piece in draw(st.lists(st.text(max_size=8), max_size=3)):
                events.append({"type": "content_block_delta", "index": index,
                               "delta": {"type": "text_delta", "text": piece}})
                text += piece
        else:
            args = json.dumps(draw(ARGS))
            cuts = sorted(draw(st.lists(st.integers(0, len(args)), max_size=3)))
            parts = [args[a:b] for a, b in zip([0, *cuts], [*cuts, len(args)], strict=True)]
            tools.append((f"toolu_{index}", args))
            events.append({"type": "content_block_start", "index": index, "content_block": {
                "type": "tool_use", "id": f"toolu_{index}", "name": "f", "input": {}}})
            events += [{"type": "content_block_delta", "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": p}} for p in parts]
        if draw(st.booleans()):
            events.append({"type": "ping"})
        events.append({"type": "content_block_stop", "index": index})
    stop = draw(STOP)
    events += [{"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]}}, {"type": "message_stop"}]
    body = sse(events).encode()
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=6)))
    chunks = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    return chunks, text, tools, stop, usage


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(stream=anthropic_streams(), include_usage=st.booleans())
def test_any_anthropic_stream_becomes_a_valid_openai_stream(stream, include_usage):
    chunks, text, tools, stop, usage = stream
    st_ = TRANSLATOR.stream(include_usage, 1700000000)
    out = "".join(st_.feed(LUA.lua.eval("function(b) return b end")(c)) for c in chunks)
    assert out.endswith("data: [DONE]\n\n")
    events = [e.removeprefix("data: ") for e in out.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    parsed = [ChatCompletionChunk.model_validate_json(e) for e in events[:-1]]
    with_choices = [c for c in parsed if c.choices]
    assert "".join(c.choices[0].delta.content or "" for c in with_choices) == text
    args: dict[int, str] = {}
    ids = {}
    for c in with_choices:
        for tc in c.choices[0].delta.tool_calls or []:
            args[tc.index] = args.get(tc.index, "") + (tc.function.arguments or "")
            if tc.id:
                ids[tc.index] = tc.id
    assert [(ids[i], args[i]) for i in sorted(args)] == tools
    assert [c.choices[0].finish_reason for c in with_choices][-1] == FINISH[stop]
    usage_chunks = [c for c in parsed if c.usage is not None]
    if include_usage:
        (u,) = usage_chunks
        assert u.usage.prompt_tokens == prompt_of(usage) and u.usage.completion_tokens == usage["output_tokens"]
    else:
        assert usage_chunks == []
    p, c, t, model, x = st_.totals()
    assert list(x.finish_reasons.values()) == [stop]  # the provider's own, for accounting
    assert (p, c, t, model) == (prompt_of(usage), usage["output_tokens"], prompt_of(usage) + usage["output_tokens"],
                                "claude-test")


def test_an_error_event_mid_stream_becomes_an_openai_error_chunk():
    st_ = TRANSLATOR.stream(True, 1)
    out = st_.feed(sse([{"type": "message_start", "message": {"id": "m", "model": "c", "usage": {"input_tokens": 1}}},
                        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
                        {"type": "message_stop"}]))
    last = out.strip().split("\n\n")[-1]
    assert json.loads(last.removeprefix("data: ")) == {"error": {"message": "Overloaded", "type": "overloaded_error",
                                                                 "param": None, "code": None}}
    assert "[DONE]" not in out  # nothing after the error


@pytest.mark.parametrize("name", ["TRANSLATE_HEADER", "FAILOVER_HEADER"])
def test_the_luas_internal_response_headers_are_the_compilers(name):
    import re

    from compiler import names
    from compiler.luabundle import module_source

    assert re.search(rf'^local {name} = "([\w-]+)"', module_source("context"), re.M).group(1) == getattr(names, name)


@pytest.mark.parametrize("body,problem", [
    ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
    ({"model": "m", "max_tokens": 1, "messages": [{"role": "system", "content": "x"}]}, "messages.0"),
    ({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}], "n": 2}, "n: Extra"),
    ({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [{"type": "tool_use"}]}]}, "messages.0.content.0"),
    ({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}], "temperature": 1.5}, "temperature"),
    ({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}],
      "tools": [{"name": "f", "parameters": {}}]}, "tools.0"),
])
def test_the_anthropic_schema_check_can_fail(body, problem):
    """The double's checker is the oracle of the request properties: it must reject bad requests."""
    assert any(p.startswith(problem) for p in body_problems(body)), body_problems(body)


def test_the_anthropic_header_check_can_fail():
    from tests.support.anthropic import request_problems

    body = b'{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"x"}]}'
    assert request_problems("/v1/messages", {"x-api-key": "k", "anthropic-version": "2023-06-01",
                                             "content-type": "application/json"}, body) == []
    assert request_problems("/v1/chat/completions", {"authorization": "Bearer k"}, body) == [
        "path: '/v1/chat/completions' is not /v1/messages", "x-api-key: header is required",
        "anthropic-version: header is required", "content-type: must be application/json"]
