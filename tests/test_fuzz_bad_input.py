"""Seeded fuzzing of the request and response paths (review 9), under LuaJIT with the real bundles.

Requests: OpenAI bodies with wrong JSON types at every field a translator reads, deep nesting,
duplicate keys, invalid UTF-8 and cut bodies, through ``llmc explain`` (Istio's route selection and
the filter, failover tries included) to OpenAI, Azure, Anthropic and Gemini providers with literal
keys. Each ends as an OpenAI-format 4xx error from the filter, or as a request in the shape of the
provider it reaches, carrying that provider's key and no other's, and no client credential beside it.

Answers: Anthropic and Gemini answers (JSON and SSE) with fields replaced by wrong types, cut, and
error bodies under 2xx, through the response path: never a Lua error, an error is an OpenAI error
with a 4xx/5xx status, and a 2xx is a chat.completion (or chunks) without an ``error`` member.

Plain seeded ``random`` (reproducible: a failure names its seed and case). The volume here is what a
test run affords; review 9 ran 30,000 requests and 35,000 answers of the same generators.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

import compiler.explain as explain_module
from compiler.explain import Request, explain
from compiler.pipeline import compile_paths
from compiler.resolve import Options
from tests.conftest import TESTDATA
from tests.test_translate_robustness import translated_response

WEIRD: list[Any] = [None, True, False, 0, -1, 1e308, 2**64, -2**63, 1.5, "", "x", "\u0000", [], {}, [None],
                    {"a": 1}, [[[]]], "gemini-x", "A" * 300, {"type": None}, [{"type": 5}], {"text": 5}]


def weird(r: random.Random) -> Any:
    return r.choice(WEIRD)


def part(r: random.Random) -> Any:
    return r.choice([{"type": "text", "text": weird(r)}, {"type": "image_url", "image_url": weird(r)},
                     {"type": "image_url", "image_url": {"url": weird(r)}}, {"type": weird(r)}, weird(r),
                     {"type": "input_audio", "input_audio": weird(r)}, {"type": "text"}])


def message(r: random.Random) -> dict:
    m: dict[str, Any] = {"role": r.choice(["user", "assistant", "system", "tool", "developer", "function", weird(r)]),
                         "content": r.choice(["hi", weird(r), [part(r) for _ in range(r.randint(0, 3))]])}
    if r.random() < .3:
        m["tool_calls"] = r.choice([weird(r), [r.choice([weird(r), {"id": weird(r), "type": "function", "function": weird(r)},
                                   {"id": "c", "type": "function", "function": {"name": weird(r), "arguments": weird(r)}}])]])
    if r.random() < .2:
        m["tool_call_id"] = weird(r)
    return m


FIELDS = {
    "messages": lambda r: r.choice([weird(r), [message(r) for _ in range(r.randint(0, 4))], [weird(r)]]),
    "tools": lambda r: r.choice([weird(r), [r.choice([weird(r), {"type": "function", "function": weird(r)},
                                 {"type": "function", "function": {"name": weird(r), "parameters": weird(r)}}])]]),
    "tool_choice": lambda r: r.choice([weird(r), "auto", "required", {"type": "function", "function": {"name": weird(r)}}]),
    "response_format": lambda r: r.choice([weird(r), {"type": weird(r)}, {"type": "json_schema", "json_schema": weird(r)}]),
    "stop": lambda r: r.choice([weird(r), ["a", weird(r)]]),
    "max_tokens": weird, "max_completion_tokens": weird, "stream": weird, "model": weird, "n": weird,
    "stream_options": lambda r: r.choice([weird(r), {"include_usage": weird(r)}]),
    "temperature": weird, "user": weird, "logprobs": weird,
}


def request_body(r: random.Random) -> bytes:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]} if r.random() < .9 else {}
    for k in r.sample(sorted(FIELDS), r.randint(1, 5)):
        body[k] = FIELDS[k](r)
    if r.random() < .05:
        deep: Any = "x"
        for _ in range(r.randint(50, 300)):
            deep = [deep] if r.random() < .5 else {"a": deep}
        body[r.choice(sorted(FIELDS))] = deep
    raw = json.dumps(body, ensure_ascii=r.random() < .5).encode()
    t = r.random()
    if t < .05:  # a duplicate member
        k = r.choice(sorted(FIELDS))
        raw = raw[:-1] + (b"," if body else b"") + json.dumps(k).encode() + b":" + json.dumps(FIELDS[k](r)).encode() + b"}"
    elif t < .08:
        at = r.randint(0, len(raw))
        raw = raw[:at] + r.choice([b"\xff", b"\xed\xa0\x80", b"\xc0\xaf", b"\\ud800"]) + raw[at:]
    elif t < .10:
        raw = raw[: r.randint(0, len(raw))]
    return raw


# the host each literal key belongs to (tests/testdata/e2e/*.yaml)
OWNER = {"sk-openai-00000000000000": "openai.example.com", "sk-ant-000000000000000000": "claude.example.com",
         "sk-azure-0000000000000000": "azure.example.com", "sk-gw-00000000000000000000": "gw.example.com",
         "sk-gemini-0000000000000000": "gemini.example.com", "sk-ant-claude-0000000000": "claude.example.com",
         "sk-gemini-00000000000000": "gemini.example.com", "sk-ant-open-000000000000": "claude-open.example.com"}
CREDENTIAL_HEADERS = ("authorization", "api-key", "x-api-key", "x-goog-api-key")
ANTHROPIC_FIELDS = {"model", "messages", "max_tokens", "system", "stop_sequences", "stream", "temperature", "top_p",
                    "top_k", "tools", "tool_choice", "metadata", "thinking", "service_tier"}
GEMINI_FIELDS = {"contents", "systemInstruction", "generationConfig", "tools", "toolConfig", "safetySettings"}


@pytest.fixture(scope="module")
def targets() -> list[tuple[list[dict], str, dict]]:
    def objects(name: str) -> list[dict]:
        return compile_paths([str(TESTDATA / "e2e" / name)], Options()).objects

    providers, gemini, failover = objects("providers.yaml"), objects("gemini.yaml"), objects("failover-protocols.yaml")
    out = [(providers, h, {}) for h in ("openai.example.com", "claude.example.com", "byok.example.com",
                                        "azure.example.com", "gw.example.com", "mixed.example.com")]
    out += [(gemini, h, {}) for h in ("gemini.example.com", "gemini-any.example.com", "models.example.com")]
    out += [(failover, "chat.example.com", {"x-case": c})
            for c in ("to-claude", "to-gemini", "to-openai", "gemini-to-openai", "claude-to-open")]
    return out


def openai_error(payload: str | bytes) -> dict:
    body = json.loads(payload)
    assert set(body) == {"error"} and {"message", "type"} <= set(body["error"]), body
    return body["error"]


def check_upstream(up: dict) -> None:
    host = up["url"].split("//", 1)[1].split("/", 1)[0].split(":")[0]
    text = json.dumps(up)
    for key, owner in OWNER.items():
        if key in text:
            assert owner == host, f"{owner}'s key sent to {host}"
    if any(key in text for key in OWNER):  # the platform's key: no client credential beside it
        assert not [h for h in CREDENTIAL_HEADERS if "sk-client" in up["headers"].get(h, "")], up["headers"]
    body = json.loads(up["body"])
    assert isinstance(body, dict)
    if host.startswith("claude"):
        assert "messages" in body and "max_tokens" in body and not set(body) - ANTHROPIC_FIELDS, sorted(body)
        assert all(isinstance(m, dict) and m.get("role") in ("user", "assistant") for m in body["messages"])
    elif host.startswith("gemini"):
        assert not set(body) - GEMINI_FIELDS, sorted(body)
        assert all(isinstance(c, dict) and c.get("role") in ("user", "model") and isinstance(c.get("parts"), list)
                   for c in body["contents"])
    else:
        assert "model" in body or "azure" in host, sorted(body)


@pytest.mark.parametrize("seed", range(4))
def test_a_bad_request_is_an_openai_error_or_shaped_for_the_provider_it_reaches(targets, seed, monkeypatch):
    monkeypatch.setattr(explain_module, "_mask", lambda text, secrets: text)  # see whose key goes where
    r = random.Random(seed)
    for case in range(250):
        objects, host, fixed = r.choice(targets)
        raw = request_body(r)
        headers = {"content-type": "application/json", **fixed}
        if r.random() < .3:
            headers[r.choice(("authorization", "x-api-key", "api-key", "x-goog-api-key"))] = "Bearer sk-client-0wn"
        x = explain(objects, Request(host=host, headers=headers, body=raw), seed=case)
        where = f"seed {seed} case {case}: {host} {raw[:200]!r}"
        result = x.get("result")
        if result is not None:
            assert 400 <= result["status"] < 500, where
            openai_error(result["body"])
            assert not any(key in result["body"] for key in OWNER), where
            continue
        for up in x.get("attempts") or [x["upstream"]]:
            try:
                check_upstream(up)
            except AssertionError as exc:
                raise AssertionError(f"{where}: {exc}") from exc


def mutate(r: random.Random, value: Any) -> Any:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            roll = r.random()
            if roll < .25:
                out[k] = weird(r)
            elif roll >= .35:
                out[k] = mutate(r, v)
        return out
    if isinstance(value, list):
        return [mutate(r, v) for v in value] if r.random() < .8 else weird(r)
    return value


ANTHROPIC = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test",
             "content": [{"type": "text", "text": "Hello"}, {"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}},
                         {"type": "thinking", "thinking": "x"}],
             "stop_reason": "end_turn", "usage": {"input_tokens": 3, "output_tokens": 2, "cache_read_input_tokens": 1}}
ANTHROPIC_EVENTS = [
    {"type": "message_start", "message": {"id": "m", "type": "message", "role": "assistant", "content": [],
                                          "model": "c", "usage": {"input_tokens": 3, "output_tokens": 1}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}},
    {"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {}}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"a\""}},
    {"type": "content_block_stop", "index": 1}, {"type": "ping"},
    {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 9}},
    {"type": "error", "error": {"type": "overloaded_error", "message": "x"}}, {"type": "message_stop"}]
GEMINI_PARTS = [{"text": "Hi"}, {"functionCall": {"name": "f", "args": {"a": 1}}}, {"thought": True, "text": "t"}]
GEMINI = {"candidates": [{"content": {"role": "model", "parts": GEMINI_PARTS}, "finishReason": "STOP", "index": 0}],
          "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2, "totalTokenCount": 5, "thoughtsTokenCount": 1},
          "modelVersion": "gemini-test", "responseId": "r", "promptFeedback": {"blockReason": "SAFETY"}}


def answer(r: random.Random, fmt: str, stream: bool) -> tuple[bytes, str]:
    if stream:
        events: list[Any] = [mutate(r, e) for e in (ANTHROPIC_EVENTS if fmt == "anthropic" else [GEMINI, GEMINI])]
        if r.random() < .2:
            events.insert(r.randint(0, len(events)), r.choice(["{", "[DONE]", "null", "5", "{\"type\":", "\xff"]))
        text = "".join(f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events)
        if r.random() < .2:
            text = text[: r.randint(0, len(text))]
        return text.encode("utf-8", "surrogatepass"), "text/event-stream"
    base = ANTHROPIC if fmt == "anthropic" else GEMINI
    doc = mutate(r, base) if r.random() < .8 else r.choice(
        [weird(r), {"error": weird(r)}, {"error": {"message": weird(r), "type": weird(r)}}, [base], {"type": "error"}])
    text = json.dumps(doc)
    if r.random() < .1:
        text = text[: r.randint(0, len(text))]
    return text.encode(), r.choice(["application/json", "application/json; charset=utf-8", "text/plain"])


@pytest.mark.parametrize("seed", range(4))
def test_a_malformed_answer_is_never_a_lua_error_nor_an_error_under_2xx(seed):
    r = random.Random(1000 + seed)
    for case in range(150):
        fmt, stream = r.choice(["anthropic", "gemini"]), r.random() < .5
        status = r.choice([200, 200, 200, 201, 400, 429, 500, 529])
        raw, ctype = answer(r, fmt, stream)
        step = r.randint(1, 64)
        chunks = [raw] if r.random() < .5 or not raw else [raw[i:i + step] for i in range(0, len(raw), step)]
        where = f"seed {seed} case {case}: {fmt} {status} {raw[:200]!r}"
        got, headers, out, _ = translated_response(status, {"content-type": ctype}, chunks, fmt)  # asserts no Lua error
        if got >= 300:
            assert got >= 400, where
            openai_error(out)
        elif "event-stream" in headers.get("content-type", ""):
            events = [e.removeprefix("data: ") for e in out.decode().split("\n\n") if e]
            for e in events:
                if e != "[DONE]":
                    chunk = json.loads(e)
                    assert "error" in chunk or chunk.get("object") == "chat.completion.chunk", where
                    assert "error" not in chunk or "[DONE]" not in events, where
        else:
            completion = json.loads(out)
            assert "error" not in completion and completion.get("object") == "chat.completion", where
