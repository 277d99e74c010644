"""Translation when the provider or the client is not the documented one (issue 24, item 8), under
LuaJIT (lupa): a stream event over the line limit, a compressed answer, an error without a JSON body,
an ``http://`` image, lone surrogate escapes, a message without ``"type"`` and a 2xx that cannot be
translated. The same cases run through a real Envoy in tests/test_providers_e2e.py.

The response-path handle here models what Envoy does and the filter depends on: ``body()`` is nil
for an answer without a body unless called as ``body(true)``; ``setBytes`` fixes Content-Length;
headers are sent (and can no longer change) once ``bodyChunks()`` is called.
"""

from __future__ import annotations

import gzip
import json

import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from tests.support.lua import LuaFilter
from tests.test_translate import sse, to_anthropic

LUA = LuaFilter()
M = LUA.M
TRANSLATOR = LUA.module("anthropic")  # templates/lua/llmc/anthropic.lua: the translator contract
START = {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "content": [],
                                              "model": "claude-test", "usage": {"input_tokens": 3, "output_tokens": 1}}}
END = [{"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 9}},
       {"type": "message_stop"}]


def text_delta(text: str) -> dict:
    return {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}


def feed_all(stream, body: str, size: int = 16384) -> str:
    as_lua = LUA.lua.eval("function(b) return b end")
    return "".join(stream.feed(as_lua(body[i:i + size])) for i in range(0, len(body), size))


def events_of(out: str) -> list[str]:
    return [e.removeprefix("data: ") for e in out.split("\n\n") if e]


# --- a. an event over the line limit --------------------------------------------------------------

def test_an_event_over_256_kib_is_translated_whole():
    big = "x" * (300 * 1024)
    out = feed_all(TRANSLATOR.stream(False, 1), sse([START, text_delta("a"), text_delta(big), *END]))
    events = events_of(out)
    assert events[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate_json(e) for e in events[:-1]]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "a" + big
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_an_event_over_the_limit_ends_the_stream_with_an_error_never_done():
    """Truncated output is never reported as complete: no finish_reason, no [DONE] after the error."""
    st_ = TRANSLATOR.stream(True, 1)
    out = feed_all(st_, sse([START, text_delta("a"), text_delta("x" * (1024 * 1024 + 1)), text_delta("b"), *END]))
    events = events_of(out)
    assert "[DONE]" not in events
    error = json.loads(events[-1])["error"]
    assert error["code"] == "llmc_event_too_large" and error["type"] == "server_error"
    chunks = [ChatCompletionChunk.model_validate_json(e) for e in events[:-1]]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "a"
    assert all(c.choices[0].finish_reason is None for c in chunks if c.choices)


# --- the response path through an Envoy-like handle ----------------------------------------------

TRANSLATED_HANDLE = """
return function(status, headers, chunks, note)
  local hm = { [":status"] = status, ["x-llmc-translate"] = "1" }
  for k, v in pairs(headers) do hm[k] = v end
  local h = { hm = hm, sent = false, out = {}, logs = {}, md = {} }
  local function check() if h.sent then error("headers modified after they were sent") end end
  local hdrs = { get = function(_, k) return hm[k] end,
                 remove = function(_, k) check(); hm[k] = nil end,
                 replace = function(_, k, v) check(); hm[k] = v end }
  function h:headers() return hdrs end
  function h:filterContext() return nil end
  function h:timestamp() return 1796603451602 end -- Envoy's clock, ms since the epoch
  function h:bodyChunks()
    h.sent = true
    local i = 0
    return function()
      i = i + 1
      local c = chunks[i]
      if c == nil then
        if i > #chunks + 1 then return nil end
        c = "" -- Envoy's last iteration: a 0-length chunk
      end
      local k = i
      h.out[k] = c
      return { length = function() return #c end, getBytes = function(_, a, n) return c:sub(a + 1, a + n) end,
               setBytes = function(_, s) h.out[k] = s end }
    end
  end
  function h:body(always)
    local text = table.concat(chunks)
    if text == "" and not always then return nil end
    h.out = { text }
    return { length = function() return #h.out[1] end,
             getBytes = function(_, a, n) return h.out[1]:sub(a + 1, a + n) end,
             setBytes = function(_, s) h.out[1] = s; if hm["content-length"] then hm["content-length"] = tostring(#s) end end }
  end
  local md = { set = function(_, ns, k, v) h.md[ns .. ":" .. k] = v end,
               get = function(_, ns) return { translate = note } end }
  function h:streamInfo() return { dynamicMetadata = function() return md end } end
  function h:logErr(m) h.logs[#h.logs + 1] = m end
  function h:logWarn(m) h.logs[#h.logs + 1] = m end
  return h
end
"""


def translated_response(status: int, headers: dict[str, str], body: bytes | list[bytes], note: str = "anthropic"):
    """Runs the filter's response path on a translated answer: (status, headers, body bytes, metadata)."""
    f = LuaFilter()
    new = f.lua.execute(TRANSLATED_HANDLE)
    chunks = body if isinstance(body, list) else ([body] if body else [])
    h = new(str(status), f.table(headers), f.table([c.decode("latin-1") for c in chunks]), note)
    f.lua.globals().envoy_on_response(h)
    logs = list(h.logs.values())
    assert not any("internal error" in m for m in logs), logs
    out = "".join(h.out[k] for k in sorted(h.out.keys())).encode("latin-1")
    return int(h.hm[":status"]), dict(h.hm.items()), out, dict(h.md.items())


def openai_error(payload: bytes) -> dict:
    body = json.loads(payload)
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


# --- b. a compressed answer -----------------------------------------------------------------------

MESSAGE = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test",
           "content": [{"type": "text", "text": "Hello"}], "stop_reason": "end_turn",
           "usage": {"input_tokens": 3, "output_tokens": 2}}


@pytest.mark.parametrize("ctype,body", [
    ("application/json", json.dumps(MESSAGE).encode()),
    ("text/event-stream; charset=utf-8", sse([START, text_delta("Hello"), *END]).encode())])
def test_a_compressed_answer_becomes_a_502_openai_error_without_content_encoding(ctype, body):
    packed = gzip.compress(body, mtime=0)
    status, headers, out, _ = translated_response(
        200, {"content-type": ctype, "content-encoding": "gzip", "content-length": str(len(packed))},
        [packed[:10], packed[10:]])
    assert status == 502 and "content-encoding" not in headers
    assert headers["content-type"] == "application/json"
    error = openai_error(out)
    assert error["code"] == "llmc_compressed_answer" and "gzip" in error["message"]
    assert headers.get("content-length") in (None, str(len(out)))


def test_a_compressed_error_keeps_its_status():
    packed = gzip.compress(b'{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}')
    status, headers, out, _ = translated_response(429, {"content-type": "application/json",
                                                        "content-encoding": "gzip"}, packed)
    assert status == 429 and "content-encoding" not in headers and openai_error(out)["type"] == "rate_limit_error"


# --- c. an error without a JSON body --------------------------------------------------------------

@pytest.mark.parametrize("status,body,etype", [(529, b"", "overloaded_error"), (503, b"", "api_error"),
                                               (502, b"<html>Bad Gateway</html>", "api_error"),
                                               (429, b"", "rate_limit_error")])
def test_an_error_without_a_json_body_becomes_an_openai_error(status, body, etype):
    got, headers, out, _ = translated_response(status, {"content-length": str(len(body))}, body)
    assert got == status and headers["content-type"] == "application/json"
    error = openai_error(out)
    assert error["type"] == etype and str(status) in error["message"]
    assert headers["content-length"] == str(len(out))


# --- d. image URLs --------------------------------------------------------------------------------

@pytest.mark.parametrize("url,ok", [("http://example.com/cat.jpg", False), ("ftp://example.com/cat.jpg", False),
                                    ("https://example.com/cat.jpg", True), ("HTTPS://example.com/cat.jpg", True),
                                    ("data:image/png;base64,iVBORw0KGgo=", True)])
def test_image_urls_must_be_https_or_data(url, ok):
    req = {"messages": [{"role": "user", "content": [{"type": "text", "text": "what is it?"},
                                                     {"type": "image_url", "image_url": {"url": url}}]}]}
    out, err, param, _ = to_anthropic(req)
    if ok:
        assert err is None and out["messages"][0]["content"][1]["type"] == "image"
    else:
        assert out is None and param == "messages" and "https://" in err


# --- e. lone surrogates ---------------------------------------------------------------------------

@pytest.mark.parametrize("escaped,text", [
    ("\\ud800", "\ufffd"), ("a\\udc00b", "a\ufffdb"), ("\\ud800\\ud800", "\ufffd\ufffd"),
    ("\\ud800\\u0041", "\ufffdA"), ("\\udbff\\udfff", "\U0010ffff"), ("\\ud83d\\ude00", "\U0001f600"),
    ("\\ud800x", "\ufffdx")])
def test_lone_surrogates_decode_to_the_replacement_character(escaped, text):
    assert M.decode_string(escaped) == text


def test_a_lone_surrogate_never_reaches_anthropic_as_invalid_utf8():
    out, err, _, _ = to_anthropic('{"messages":[{"role":"user","content":"a\\ud800b"}],"model":"\\udfff"}')
    assert err is None and out["messages"][0]["content"][0]["text"] == "a\ufffdb"


def test_a_routed_model_with_a_lone_surrogate_is_valid_utf8():
    body = '{"model":"gpt\\ud800","messages":[]}'
    members = M.scan_object(body)[0]
    assert M.routable_field(body, members, "model", 256)[0] == "gpt\ufffd"


# --- f. a message without "type", and 2xx answers that cannot be translated ----------------------

def test_a_message_without_type_is_translated():
    untyped = {k: v for k, v in MESSAGE.items() if k != "type"}
    out, p, c, t, model, *_ = TRANSLATOR.response(json.dumps(untyped), 200, 1)
    completion = ChatCompletion.model_validate_json(out)
    assert completion.choices[0].message.content == "Hello" and completion.choices[0].finish_reason == "stop"
    assert (p, c, t, model) == (3, 2, 5, "claude-test")


@pytest.mark.parametrize("ctype,body", [
    ("application/json", json.dumps(MESSAGE).encode()),
    ("application/json", json.dumps({k: v for k, v in MESSAGE.items() if k != "type"}).encode())])
def test_a_translatable_2xx_stays_2xx(ctype, body):
    status, _, out, md = translated_response(200, {"content-type": ctype}, body)
    assert status == 200 and ChatCompletion.model_validate_json(out).choices[0].message.content
    assert "error" not in json.loads(out)


@pytest.mark.parametrize("status,ctype,body", [
    (200, "text/html", b"<html>Welcome</html>"), (200, "application/json", b'{"id":"x","kind":"unknown"}'),
    (200, "application/json", b'{"type":"error","error":{"type":"api_error","message":"odd"}}'),
    (200, "application/json", b""), (201, "application/json", b'[1,2]')])
def test_a_2xx_that_cannot_be_translated_is_a_502_openai_error(status, ctype, body):
    got, headers, out, _ = translated_response(status, {"content-type": ctype}, body)
    assert got == 502 and headers["content-type"] == "application/json"
    assert openai_error(out)["message"]


# --- g. a 2xx message whose text block's text is not a string (review 9's fuzzing) ----------------

@pytest.mark.parametrize("text", [5, [], {"a": 1}, None, True])
def test_a_text_block_without_string_text_is_dropped_not_an_internal_error(text):
    """A text block carrying no string is dropped, as blocks without an OpenAI equivalent are (was:
    a Lua error in the response path, so the client got Anthropic's message untranslated under 200)."""
    msg = {**MESSAGE, "content": [{"type": "text", "text": text}, {"type": "text", "text": "Hello"}]}
    status, headers, out, md = translated_response(200, {"content-type": "application/json"}, json.dumps(msg).encode())
    assert status == 200 and headers["content-type"] == "application/json"
    completion = ChatCompletion.model_validate_json(out)
    assert completion.choices[0].message.content == "Hello" and completion.usage.total_tokens == 5
