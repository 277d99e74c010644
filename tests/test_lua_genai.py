"""What the Lua filter records for OpenTelemetry's GenAI names (issue 34), under LuaJIT: the
provider's gen_ai.provider.name and the endpoint's operation with the request; cache, reasoning
and finish reasons from JSON answers and streams (OpenAI's, Anthropic's and Gemini's); a stream's first
chunk once. The metadata keys the seed system named stay as they were (tests/test_lua.py)."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.lua import LuaFilter
from tests.test_lua import FIRST, RESPONSE_HANDLE, ctx, stalled_stream
from tests.test_translate_robustness import TRANSLATED_HANDLE

_LUA = LuaFilter()
DETAILS = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18,
           "prompt_tokens_details": {"cached_tokens": 4, "audio_tokens": 0},
           "completion_tokens_details": {"reasoning_tokens": 3, "audio_tokens": 0}}


@pytest.fixture(scope="module")
def lua():
    return LuaFilter()


def test_the_request_records_the_providers_genai_name(lua):
    r = lua.request(ctx(model="m", gen_ai_provider="openai"), '{"messages":[]}')
    assert r.status is None and r.metadata["llmc:gen_ai_provider"] == "openai"
    assert "llmc:operation" not in r.metadata  # chat: the access log's default, no write


@pytest.mark.parametrize("path,operation", [("/v1/embeddings", "embeddings"), ("/v1/completions", "text_completion"),
                                            ("/v1/chat/completions", None)])
def test_the_endpoint_is_the_operation(lua, path, operation):
    r = lua.request(ctx(model="m", base_path="/v1", gen_ai_provider="openai"), '{"input":"x","prompt":"y"}', path=path)
    assert r.status is None, r.response_body
    assert r.metadata.get("llmc:operation") == operation


def test_an_error_reply_after_the_pick_carries_the_genai_name(lua):
    r = lua.request(ctx(model="m", gen_ai_provider="deepseek"), "not json")
    assert r.status == 400 and r.metadata["llmc:gen_ai_provider"] == "deepseek"


def test_usage_details_and_finish_reasons_from_a_json_answer():
    body = json.dumps({"model": "m", "choices": [
        {"index": 0, "message": {"content": 'a "finish_reason": "fake" in text'}, "finish_reason": "stop"},
        {"index": 1, "message": {"content": "b"}, "finish_reason": "length"},
        {"index": 2, "message": {"content": "c"}, "finish_reason": None}], "usage": DETAILS})
    p, c, t, model, x = _LUA.M.usage_of(body, True)
    assert (p, c, t, model) == (11, 7, 18, "m")
    assert (x.cache_read, x.reasoning) == (4, 3)
    assert list(x.finish_reasons.values()) == ["stop", "length"]  # text inside a string never counts
    # without asking for finish reasons (a stream's events): the details only
    assert _LUA.M.usage_of(body)[4].finish_reasons is None
    # no details member: nothing more is looked for
    assert _LUA.M.usage_of('{"usage":{"prompt_tokens":1,"cached_tokens":9}}')[4] is None


def respond(status: str, ctype: str, chunks: list[str], clen: str | None = None):
    f = LuaFilter()
    h = f.lua.execute(RESPONSE_HANDLE)(status, ctype, f.table(chunks), clen)
    f.lua.globals().envoy_on_response(h)
    assert h.err is None
    return dict(h.md.items()), h


def test_a_json_answer_records_details_and_finish_reasons():
    body = json.dumps({"model": "m", "choices": [{"index": 0, "finish_reason": "stop"}], "usage": DETAILS})
    md, _ = respond("200", "application/json", [body], str(len(body)))
    assert md["llmc:cache_read_tokens"] == 4 and md["llmc:reasoning_tokens"] == 3
    assert list(md["llmc:finish_reasons"].values()) == ["stop"]
    assert "llmc:cache_creation_tokens" not in md and "llmc:first_chunk_ms" not in md  # not a stream


def test_a_large_json_answer_read_by_chunks_records_them_too():
    body = json.dumps({"model": "m", "choices": [{"index": 0, "finish_reason": "length"}], "usage": DETAILS})
    md, _ = respond("200", "application/json", [body[:30], body[30:]])  # no Content-Length: read by chunks
    assert list(md["llmc:finish_reasons"].values()) == ["length"] and md["llmc:cache_read_tokens"] == 4


def openai_stream(n_choices: int = 1) -> list[dict]:
    events = [{"choices": [{"index": i, "delta": {"content": "x"}, "finish_reason": None} for i in range(n_choices)],
               "model": "m-1", "usage": None}]
    events += [{"choices": [{"index": i, "delta": {}, "finish_reason": "stop" if i == 0 else "length"}], "model": "m-1",
                "usage": None} for i in range(n_choices)]
    events.append({"choices": [], "model": "m-1", "usage": DETAILS})
    return events


def test_a_stream_records_details_finish_reasons_and_its_first_chunk_once():
    h = stalled_stream(openai_stream(2), "events")
    md = dict(h.md.items())
    assert md["llmc:first_chunk_ms"] == FIRST["llmc:first_chunk_ms"]
    assert (md["llmc:cache_read_tokens"], md["llmc:reasoning_tokens"]) == (4, 3)
    assert list(md["llmc:finish_reasons"].values()) == ["stop", "length"]
    # first chunk, model, each finish reason as it came (the list grows), the usage with its two details
    assert h.md_writes == 1 + 1 + 2 + 3 + 2


@given(cuts=st.lists(st.integers(1, 900), max_size=8))
def test_a_stream_split_anywhere_records_the_same(cuts):
    h = stalled_stream(openai_stream(), cuts)
    md = dict(h.md.items())
    assert list(md["llmc:finish_reasons"].values()) == ["stop"]
    assert (md["llmc:cache_read_tokens"], md["llmc:reasoning_tokens"], md["llmc:request_prompt_tokens"]) == (4, 3, 11)
    assert md["llmc:first_chunk_ms"] == FIRST["llmc:first_chunk_ms"]


ANTHROPIC_USAGE = {"input_tokens": 21, "cache_creation_input_tokens": 3, "cache_read_input_tokens": 5,
                   "output_tokens": 9}


def translated(status: str, headers: dict, chunks: list[str], note: str = "anthropic"):
    f = LuaFilter()
    h = f.lua.execute(TRANSLATED_HANDLE)(status, f.table(headers), f.table(chunks), note)
    f.lua.globals().envoy_on_response(h)
    return dict(h.md.items())


def test_anthropic_answers_record_cache_reads_writes_and_the_stop_reason():
    message = {"type": "message", "id": "m", "role": "assistant", "model": "claude-x", "stop_reason": "max_tokens",
               "content": [{"type": "text", "text": "hi"}], "usage": ANTHROPIC_USAGE}
    md = translated("200", {"content-type": "application/json"}, [json.dumps(message)])
    assert md["llmc:request_prompt_tokens"] == 29  # input + cache writes + cache reads
    assert (md["llmc:cache_read_tokens"], md["llmc:cache_creation_tokens"]) == (5, 3)
    assert list(md["llmc:finish_reasons"].values()) == ["max_tokens"]  # Anthropic's own reason
    assert "llmc:first_chunk_ms" not in md and "llmc:reasoning_tokens" not in md


def test_anthropic_streams_record_them_as_they_pass():
    start = {"type": "message", "id": "m", "role": "assistant", "model": "claude-x", "content": [],
             "stop_reason": None, "usage": {**ANTHROPIC_USAGE, "output_tokens": 1}}
    events = [("message_start", {"type": "message_start", "message": start}),
              ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                       "delta": {"type": "text_delta", "text": "hi"}}),
              ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                 "usage": {"output_tokens": 9}}),
              ("message_stop", {"type": "message_stop"})]
    text = "".join(f"event: {e}\ndata: {json.dumps(d)}\n\n" for e, d in events)
    chunks = [text[a:b] for a, b in itertools.pairwise([0, 100, 400, len(text)])]
    md = translated("200", {"content-type": "text/event-stream"}, chunks)
    assert (md["llmc:request_prompt_tokens"], md["llmc:request_completion_tokens"]) == (29, 9)
    assert (md["llmc:cache_read_tokens"], md["llmc:cache_creation_tokens"]) == (5, 3)
    assert list(md["llmc:finish_reasons"].values()) == ["end_turn"]
    assert md["llmc:first_chunk_ms"] == FIRST["llmc:first_chunk_ms"]


GEMINI_USAGE = {"promptTokenCount": 21, "candidatesTokenCount": 9, "thoughtsTokenCount": 4,
                "cachedContentTokenCount": 5, "totalTokenCount": 34}


def test_gemini_answers_record_cache_reads_thinking_and_the_finish_reason():
    answer = {"candidates": [{"content": {"role": "model", "parts": [{"text": "hi"}]}, "finishReason": "MAX_TOKENS"}],
              "usageMetadata": GEMINI_USAGE, "modelVersion": "gemini-x", "responseId": "r"}
    md = translated("200", {"content-type": "application/json"}, [json.dumps(answer)], note="gemini")
    assert (md["llmc:request_prompt_tokens"], md["llmc:request_completion_tokens"]) == (21, 13)  # + thinking
    assert (md["llmc:cache_read_tokens"], md["llmc:reasoning_tokens"]) == (5, 4)
    assert list(md["llmc:finish_reasons"].values()) == ["MAX_TOKENS"]  # Gemini's own reason
    assert "llmc:cache_creation_tokens" not in md and "llmc:first_chunk_ms" not in md


def test_gemini_streams_record_them_as_they_pass():
    def event(text: str, **extra) -> dict:
        return {"candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, **extra}],
                "usageMetadata": {"promptTokenCount": 21, "totalTokenCount": 21}, "modelVersion": "gemini-x"}
    events = [event("Hel"), event("lo"), {**event("", finishReason="STOP"), "usageMetadata": GEMINI_USAGE}]
    text = "".join(f"data: {json.dumps(e)}\r\n\r\n" for e in events)
    chunks = [text[a:b] for a, b in itertools.pairwise([0, 90, 250, len(text)])]
    md = translated("200", {"content-type": "text/event-stream"}, chunks, note="gemini")
    assert (md["llmc:request_prompt_tokens"], md["llmc:request_completion_tokens"]) == (21, 13)
    assert (md["llmc:cache_read_tokens"], md["llmc:reasoning_tokens"]) == (5, 4)
    assert list(md["llmc:finish_reasons"].values()) == ["STOP"]
    assert md["llmc:first_chunk_ms"] == FIRST["llmc:first_chunk_ms"]
