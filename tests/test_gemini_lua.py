"""Unit tests (LuaJIT via lupa) for the Gemini translator, templates/lua/llmc/gemini.lua: OpenAI chat
requests become GenerateContentRequests that Gemini's documented schema accepts (the checker of
tests/support/gemini.py, which the e2e double uses too), and Gemini's answers, streams and errors
become OpenAI's."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.gemini import USAGE, body_problems, response, signature, stream_events
from tests.support.lua import load_translator

G = load_translator("gemini")
BACKEND = {"path": "/v1beta/models/{model}:generateContent", "model": "gemini-2.5-flash"}
TOOLS = [{"type": "function", "function": {"name": "weather", "description": "Weather forecast",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "additionalProperties": False}}}]


def request(body: dict | str, **backend) -> tuple:
    """(body as dict or None, error, param, note, path) of G.request."""
    text = body if isinstance(body, str) else json.dumps(body)
    out = G.call("request", text, {**BACKEND, **backend})
    out = (list(out) + [None] * 5)[:5]
    if out[0] is not None:
        out[0] = json.loads(out[0])
    return tuple(out)


def sent(body: dict, **backend) -> dict:
    out, err, _, _, _ = request(body, **backend)
    assert err is None, err
    assert body_problems(out) == [], body_problems(out)
    return out


def test_messages_system_and_generation_config():
    out, _, _, note, path = request({
        "model": "ignored", "temperature": 0.7, "top_p": 0.9, "max_tokens": 50, "stop": "END", "seed": 3,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "developer", "content": "No lists."},
                     {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                     {"role": "user", "content": [{"type": "text", "text": "again"}]}]})
    assert body_problems(out) == []
    assert out["systemInstruction"] == {"parts": [{"text": "Be brief."}, {"text": "No lists."}]}
    assert out["contents"] == [{"role": "user", "parts": [{"text": "hi"}]},
                               {"role": "model", "parts": [{"text": "hello"}]},
                               {"role": "user", "parts": [{"text": "again"}]}]
    assert out["generationConfig"] == {"stopSequences": ["END"], "maxOutputTokens": 50, "temperature": 0.7,
                                       "topP": 0.9, "seed": 3}
    assert note == "gemini" and path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert "model" not in out and "messages" not in out and "stream" not in out


def test_number_text_is_kept():
    text, *_ = G.call("request", '{"messages":[{"role":"user","content":"x"}],"temperature":0.70}', BACKEND)
    assert '"temperature":0.70' in text


@pytest.mark.parametrize("client, configured, want", [
    ({"max_completion_tokens": 5, "max_tokens": 6}, 7, 5),
    ({"max_tokens": 6}, 7, 6),
    ({}, 7, 7),
    ({}, None, None),
])
def test_max_output_tokens(client, configured, want):
    backend = {"max_tokens": configured} if configured else {}
    out = sent({"messages": [{"role": "user", "content": "x"}], **client}, **backend)
    assert (out.get("generationConfig") or {}).get("maxOutputTokens") == want


@pytest.mark.parametrize("client_model, configured, stream, want", [
    ("gemini-2.0-flash", None, None, "/v1beta/models/gemini-2.0-flash:generateContent"),
    ("models/gemini-2.0-flash", None, None, "/v1beta/models/gemini-2.0-flash:generateContent"),
    ("other", "gemini-2.5-pro", None, "/v1beta/models/gemini-2.5-pro:generateContent"),
    ("gemini-2.0-flash", None, True, "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"),
])
def test_model_in_the_path(client_model, configured, stream, want):
    backend = {"model": configured} if configured else {"model": None}
    body = {"model": client_model, "messages": [{"role": "user", "content": "x"}]}
    if stream is not None:
        body["stream"] = stream
    *_, path = request(body, **backend)
    assert path == want


def test_configured_stream_and_usage_note():
    *_, note, path = request({"messages": [{"role": "user", "content": "x"}]}, stream=True)
    assert path.endswith(":streamGenerateContent?alt=sse") and note == "gemini"
    *_, note, path = request({"stream": True, "stream_options": {"include_usage": True},
                              "messages": [{"role": "user", "content": "x"}]})
    assert note == "gemini+usage"
    *_, path = request({"stream": False, "messages": [{"role": "user", "content": "x"}]}, stream=True)
    assert path.endswith(":generateContent")  # the client's explicit stream wins


def test_a_path_template_of_a_proxy():
    assert G.call("path", "/google/v1beta/models/{model}:generateContent", "m-1", True) == \
        "/google/v1beta/models/m-1:streamGenerateContent?alt=sse"


@pytest.mark.parametrize("body, param", [
    ({"messages": [{"role": "user", "content": "x"}]}, "model"),  # no model anywhere
    ({"model": "../../v1/files", "messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": "a?key=1", "messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": "g", "messages": []}, "messages"),
    ({"model": "g", "n": 2, "messages": [{"role": "user", "content": "x"}]}, "n"),
    ({"model": "g", "stream": "yes", "messages": [{"role": "user", "content": "x"}]}, "stream"),
    ({"model": "g", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]}, "messages"),
    ({"model": "g", "messages": [{"role": "tool", "tool_call_id": "nope", "content": "1"}]}, "messages"),
    ({"model": "g", "tools": [{"type": "web"}], "messages": [{"role": "user", "content": "x"}]}, "tools"),
    ({"model": "g", "tool_choice": "sometimes", "messages": [{"role": "user", "content": "x"}]}, "tool_choice"),
])
def test_refused_requests_name_the_field(body, param):
    out, err, got, *_ = request(body, model=None)
    assert out is None and err and got == param


def test_tools_and_a_tool_round_trip():
    calls = [{"id": f"call_{i}", "type": "function", "function": {"name": "weather", "arguments": f'{{"city":"{c}"}}'}}
             for i, c in enumerate(("Paris", "Rome"))]
    out = sent({"tools": TOOLS, "tool_choice": "required", "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "call_0", "content": '{"temp": 21}'},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]})
    assert out["tools"] == [{"functionDeclarations": [{"name": "weather", "description": "Weather forecast",
                                                       "parametersJsonSchema": TOOLS[0]["function"]["parameters"]}]}]
    assert out["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    # calls Gemini did not sign (another model's history): the first gets the signature Google documents
    # for them, as Gemini 3 requires one on the first call of a step
    assert out["contents"][1] == {"role": "model", "parts": [
        {"functionCall": {"name": "weather", "args": {"city": "Paris"}},
         "thoughtSignature": "skip_thought_signature_validator"},
        {"functionCall": {"name": "weather", "args": {"city": "Rome"}}}]}
    assert out["contents"][2] == {"role": "user", "parts": [
        {"functionResponse": {"name": "weather", "response": {"temp": 21}}},
        {"functionResponse": {"name": "weather", "response": {"output": "sunny"}}}]}


def next_turn(calls: list[dict]) -> dict:
    """The GenerateContentRequest of the client's next turn: the answer's tool calls sent back, answered."""
    return sent({"tools": TOOLS, "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": calls},
        *({"role": "tool", "tool_call_id": c["id"], "content": "sunny"} for c in calls)]})


def signed(sig: str) -> dict:
    """Where a tool call carries its signature: Gemini's OpenAI-compatible endpoint's place for it."""
    return {"extra_content": {"google": {"thought_signature": sig}}}


def test_a_signed_call_goes_back_with_its_signature():
    """Gemini 3 answers a function call with a thoughtSignature and refuses (400) the next turn when the
    call comes back without it (ai.google.dev/gemini-api/docs/thought-signatures): the signature rides
    in the tool call's extra_content, as Gemini's OpenAI-compatible endpoint sends it, and a client that
    sends the message back as it got it (the openai SDK's message object) returns it."""
    out, _, _ = answer(response("gemini-3-flash", "7", {"name": "weather"}))
    calls = out["choices"][0]["message"]["tool_calls"]
    assert calls == [{"id": "call_resp_7_0", "type": "function", "function": {
        "name": "weather", "arguments": '{"city": "Paris", "days": 2}'}, **signed(signature("weather"))}]
    sent_back = next_turn(calls)  # body_problems: the double's Gemini 3 check
    assert sent_back["contents"][1]["parts"] == [
        {"functionCall": {"name": "weather", "args": {"city": "Paris", "days": 2}},
         "thoughtSignature": signature("weather")}]
    assert sent_back["contents"][2]["parts"] == [
        {"functionResponse": {"name": "weather", "response": {"output": "sunny"}}}]


def test_parallel_calls_keep_the_signature_of_the_first_only():
    """Gemini signs the first call of parallel calls only; the others go back unsigned, no placeholder."""
    body = response("g", "8", {"name": "weather"})
    parts = body["candidates"][0]["content"]["parts"]
    parts.append({"functionCall": {"name": "weather", "args": {"city": "Rome"}}})
    calls = answer(body)[0]["choices"][0]["message"]["tool_calls"]
    assert [c["id"] for c in calls] == ["call_resp_8_0", "call_resp_8_1"]
    assert [c.get("extra_content") for c in calls] == [signed(signature("weather"))["extra_content"], None]
    got = next_turn(calls)["contents"][1]["parts"]
    assert [p.get("thoughtSignature") for p in got] == [signature("weather"), None]


def test_a_client_that_drops_the_signature_gets_the_placeholder():
    """A client that rebuilds its messages from id, name and arguments: the step's first call gets
    Google's placeholder for calls Gemini did not sign (accepted, at some cost to the model's reasoning)."""
    calls = [{k: v for k, v in c.items() if k != "extra_content"}
             for c in answer(response("g", "9", {"name": "weather"}))[0]["choices"][0]["message"]["tool_calls"]]
    got = next_turn(calls)["contents"][1]["parts"]
    assert got[0]["thoughtSignature"] == "skip_thought_signature_validator"


def test_a_streamed_signed_call_goes_back_with_its_signature():
    events, _ = translate_stream(sse(stream_events("gemini-3-flash", "3", {"name": "weather"})), False)
    calls = [c for e in events[:-1] if e["choices"] for c in e["choices"][0]["delta"].get("tool_calls") or []]
    assert [(c["id"], c.get("extra_content")) for c in calls] == [
        ("call_resp_3_0", signed(signature("weather"))["extra_content"])]
    got = next_turn([{k: v for k, v in c.items() if k != "index"} for c in calls])
    assert got["contents"][1]["parts"][0]["thoughtSignature"] == signature("weather")


def test_empty_texts_are_not_sent():
    """Clients send an assistant turn that calls tools with ``content: ""`` (AutoGen, LangChain); Gemini
    refuses an empty text part (400 "Unable to submit request because it has an empty text parameter")."""
    call = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
    out = sent({"tools": TOOLS, "messages": [
        {"role": "system", "content": ""}, {"role": "user", "content": [{"type": "text", "text": "hi"},
                                                                       {"type": "text", "text": ""}]},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "assistant", "content": ""}, {"role": "user", "content": "and tomorrow?"}]})
    assert "systemInstruction" not in out
    assert [c["role"] for c in out["contents"]] == ["user", "model", "user"]
    assert out["contents"][0]["parts"] == [{"text": "hi"}]
    assert [list(p) for p in out["contents"][1]["parts"]] == [["functionCall", "thoughtSignature"]]
    assert out["contents"][2]["parts"][1] == {"text": "and tomorrow?"}


@pytest.mark.parametrize("choice, want", [
    ("none", {"mode": "NONE"}), ("auto", {"mode": "AUTO"}),
    ({"type": "function", "function": {"name": "weather"}}, {"mode": "ANY", "allowedFunctionNames": ["weather"]}),
])
def test_tool_choice(choice, want):
    out = sent({"tools": TOOLS, "tool_choice": choice, "messages": [{"role": "user", "content": "x"}]})
    assert out["toolConfig"] == {"functionCallingConfig": want}


def test_images_and_response_format():
    out = sent({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
                "messages": [{"role": "user", "content": [
                    {"type": "text", "text": "what?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}}]}]})
    assert out["contents"][0]["parts"][1] == {"inlineData": {"mimeType": "image/png", "data": "iVBORw0K"}}
    assert out["generationConfig"] == {"responseMimeType": "application/json", "responseJsonSchema": {"type": "object"}}


# ------------------------------------------------------------------------------------------------
# Answers


def answer(body: dict | str, status: int = 200) -> tuple[dict, int, tuple]:
    text = body if isinstance(body, str) else json.dumps(body)
    out, p, c, t, model, got = G.call("response", text, status, 1700000000)[:6]
    return json.loads(out), got, (p, c, t, model)


def as_details(x) -> dict | None:
    """A translator's GenAI details (a Lua table, or nil) as a dict, finish_reasons as a list."""
    if x is None:
        return None
    out = dict(x.items())
    if "finish_reasons" in out:
        out["finish_reasons"] = list(out["finish_reasons"].values())
    return out


def details(body: dict | str, status: int = 200) -> dict | None:
    """The seventh result of G.response: the GenAI details llmc.usage records (issue 34)."""
    res = G.call("response", body if isinstance(body, str) else json.dumps(body), status, 1700000000)
    return as_details(res[6]) if len(res) > 6 else None


def test_a_response_with_a_tool_call_and_usage():
    out, status, accounting = answer(response("gemini-2.5-flash", "7", {"name": "weather"}))
    msg = out["choices"][0]["message"]
    assert status == 200 and out["object"] == "chat.completion" and out["model"] == "gemini-2.5-flash"
    assert msg["content"] == "Hello from Gemini" and out["choices"][0]["finish_reason"] == "tool_calls"
    assert msg["tool_calls"] == [{"id": "call_resp_7_0", **signed(signature("weather")), "type": "function", "function": {
        "name": "weather", "arguments": '{"city": "Paris", "days": 2}'}}]
    prompt, completion = USAGE["promptTokenCount"], USAGE["candidatesTokenCount"] + USAGE["thoughtsTokenCount"]
    assert out["usage"] == {"prompt_tokens": prompt, "completion_tokens": completion,
                            "total_tokens": prompt + completion, "prompt_tokens_details": {"cached_tokens": 5},
                            "completion_tokens_details": {"reasoning_tokens": 4}}
    assert accounting == (prompt, completion, prompt + completion, "gemini-2.5-flash")


def test_a_response_gives_the_genai_details():
    """Issue 34 for Gemini: usageMetadata's cachedContentTokenCount (a part of the prompt tokens) and
    thoughtsTokenCount (a part of the completion tokens), and Gemini's own finish reason."""
    assert details(response("g", "1", None)) == {"cache_read": 5, "reasoning": 4, "finish_reasons": ["STOP"]}
    body = response("g", "1", None)
    body["usageMetadata"] = {"promptTokenCount": 3, "candidatesTokenCount": 2, "totalTokenCount": 5}
    body["candidates"][0]["finishReason"] = "MAX_TOKENS"
    assert details(body) == {"finish_reasons": ["MAX_TOKENS"]}  # no cache, no thinking: not reported
    del body["usageMetadata"]
    assert details(body) == {"finish_reasons": ["MAX_TOKENS"]}


def test_no_details_without_a_generation():
    """A blocked prompt (no candidate), an unspecified reason and errors report no finish reason."""
    assert details({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 3}}) is None
    body = response("g", "1", None)
    body["usageMetadata"] = {"promptTokenCount": 3, "candidatesTokenCount": 2, "totalTokenCount": 5}
    body["candidates"][0]["finishReason"] = "FINISH_REASON_UNSPECIFIED"
    assert details(body) is None
    assert details({"error": {"code": 429, "message": "slow down", "status": "RESOURCE_EXHAUSTED"}}, 429) is None


@pytest.mark.parametrize("reason, want", [("STOP", "stop"), ("MAX_TOKENS", "length"), ("SAFETY", "content_filter"),
                                          ("RECITATION", "content_filter"), ("OTHER", "stop")])
def test_finish_reasons(reason, want):
    body = response("g", "1", None)
    body["candidates"][0]["finishReason"] = reason
    assert answer(body)[0]["choices"][0]["finish_reason"] == want


def test_thoughts_are_not_the_answer_and_a_blocked_prompt_is_filtered():
    body = response("g", "1", None)
    body["candidates"][0]["content"]["parts"].insert(0, {"text": "thinking...", "thought": True})
    assert answer(body)[0]["choices"][0]["message"]["content"] == "Hello from Gemini"
    out, status, _ = answer({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 3}})
    assert status == 200 and out["choices"][0]["finish_reason"] == "content_filter"
    assert out["choices"][0]["message"]["content"] is None


@pytest.mark.parametrize("status, gstatus, etype", [(429, "RESOURCE_EXHAUSTED", "rate_limit_error"),
                                                    (400, "INVALID_ARGUMENT", "invalid_request_error"),
                                                    (403, "PERMISSION_DENIED", "permission_error"),
                                                    (503, "UNAVAILABLE", "server_error")])
def test_errors_keep_their_status(status, gstatus, etype):
    out, got, _ = answer({"error": {"code": status, "message": "boom", "status": gstatus}}, status)
    assert got == status and out == {"error": {"message": "boom", "type": etype, "param": None, "code": gstatus}}
    out, got, _ = answer("<html>bad gateway</html>", status)
    assert got == status and "without an error message" in out["error"]["message"]


def test_an_untranslatable_2xx_is_502():
    out, status, _ = answer({"hello": "world"})
    assert status == 502 and out["error"]["code"] == "llmc_untranslatable_answer"


# ------------------------------------------------------------------------------------------------
# Streams


def sse(events: list[dict]) -> str:
    return "".join(f"data: {json.dumps(e, separators=(',', ':'))}\r\n\r\n" for e in events)


def translate_stream(text: str, include_usage: bool, cuts: list[int] = ()) -> tuple[list, tuple]:
    state = G.call("stream", include_usage, 1700000000)
    pieces, start = [], 0
    for cut in sorted(set(cuts)):
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    out = "".join(state.feed(p) for p in pieces if p)
    events = [line[6:] for line in out.split("\n\n") if line]
    totals = state.totals()
    totals = (*tuple(totals)[:4], as_details(tuple(totals)[4] if len(tuple(totals)) > 4 else None)) if totals else ()
    return [e if e == "[DONE]" else json.loads(e) for e in events], totals


def test_a_stream_with_usage():
    events, totals = translate_stream(sse(stream_events("gemini-2.5-flash", "3", {"name": "weather"})), True)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-2] if e["choices"])
    assert text == "Hello"
    calls = [c for e in events[:-2] if e["choices"] for c in e["choices"][0]["delta"].get("tool_calls") or []]
    assert calls == [{"index": 0, "id": "call_resp_3_0", **signed(signature("weather")), "type": "function",
                      "function": {"name": "weather", "arguments": '{"city":"Paris","days":2}'}}]  # as sent
    finishes = [e["choices"][0]["finish_reason"] for e in events[:-1] if e["choices"]]
    assert finishes[-1] == "tool_calls" and all(f is None for f in finishes[:-1])
    assert events[-2]["choices"] == [] and events[-2]["usage"]["total_tokens"] == 34 and events[-1] == "[DONE]"
    assert totals == (21, 13, 34, "gemini-2.5-flash", {"cache_read": 5, "reasoning": 4, "finish_reasons": ["STOP"]})


def test_a_stream_records_its_finish_reason_when_the_last_event_has_no_usage():
    """st.usage is replaced when the finish reason arrives (the response path records on a new usage
    table only), even in an event without usageMetadata."""
    events = stream_events("g", "3", None)
    last = events[-1]
    events[-2]["usageMetadata"] = last.pop("usageMetadata")
    state = G.call("stream", False, 1700000000)
    state.feed(sse(events[:-1]))
    before = state.usage
    state.feed(sse(events[-1:]))
    assert not G.lua.eval("function(a, b) return rawequal(a, b) end")(before, state.usage)
    assert as_details(tuple(state.totals())[4]) == {"cache_read": 5, "reasoning": 4, "finish_reasons": ["STOP"]}


def test_a_stream_without_usage_still_counts():
    events, totals = translate_stream(sse(stream_events("g", "3", None)), False)
    assert all("usage" not in e for e in events if e != "[DONE]") and events[-1] == "[DONE]"
    assert totals[:3] == (21, 13, 34)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=600), max_size=8))
def test_a_stream_translates_the_same_however_it_is_cut(cuts):
    text = sse(stream_events("gemini-2.5-flash", "3", {"name": "weather"}))
    assert translate_stream(text, True, [c % len(text) for c in cuts]) == translate_stream(text, True)


def test_an_error_event_ends_the_stream():
    events, _ = translate_stream(sse([stream_events("g", "1", None)[0],
                                      {"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}},
                                      stream_events("g", "1", None)[-1]]), True)
    assert events[-1]["error"] == {"message": "overloaded", "type": "server_error", "param": None, "code": "UNAVAILABLE"}


def test_an_event_over_the_limit_ends_the_stream_with_an_error():
    big = stream_events("g", "1", None)[0]
    big["candidates"][0]["content"]["parts"][0]["text"] = "x" * (1024 * 1024 + 10)
    events, _ = translate_stream(sse([big]), True, list(range(0, 1100000, 65536)))
    assert events[-1]["error"]["code"] == "llmc_event_too_large"
