"""Anthropic's Messages API as the tests know it: a request checker and a local stand-in server.

Both follow Anthropic's documented API (docs.anthropic.com, "Messages", "Streaming Messages",
"Errors", "Tool use"):

* :func:`request_problems` checks a ``POST /v1/messages`` request: the headers (``x-api-key``,
  ``anthropic-version``, ``content-type: application/json``) and the body (required ``model``,
  ``max_tokens`` (an integer ≥ 1) and ``messages``; roles ``user``/``assistant``; content a string or
  blocks ``text``/``image``/``tool_use``/``tool_result`` with their required fields; ``system`` a
  string or text blocks; ``tools[]`` with ``name`` and ``input_schema`` (an object schema);
  ``tool_choice`` ``auto``/``any``/``tool``/``none``; ``stop_sequences`` strings; ``temperature``
  0–1; no member Anthropic does not define). Unit tests and the server use the same checker.
* :class:`AnthropicUpstream` answers like the API: a ``message`` object, or with ``"stream": true``
  the documented event sequence (``message_start``, ``content_block_start``, ``ping``,
  ``content_block_delta`` …, ``content_block_stop``, ``message_delta``, ``message_stop``), sent event
  by event with a pause after the first; a ``tool_use`` block when the request offers tools and its
  last message is the user's text; errors as ``{"type": "error", "error": {type, message}}`` with
  Anthropic's statuses (``x-test-status``), and an ``overloaded_error`` event in the middle of a
  stream (``x-test-stream-error: 1``); ``x-test-linger`` as in :mod:`tests.support.upstream`. A
  request that fails :func:`request_problems` gets Anthropic's 400 ``invalid_request_error`` and is
  recorded, so tests see it.

Answers a broken or surprising provider gives (issue 24, item 8), asked for with request headers:
``x-test-pad: <n>`` (the first text delta of a stream, or a message's text, carries n more
characters: one event over any line limit), ``x-test-gzip: 1`` (the answer is gzip-compressed with
``content-encoding: gzip`` although llmc asks for ``identity``), ``x-test-error-body: empty | html``
(an error status, from ``x-test-status``, with an empty body or a proxy's HTML page instead of
Anthropic's JSON error), ``x-test-message: untyped | html`` (a 200 message without ``"type"``, as
the tool-use examples of Anthropic's documentation show them, or a 200 HTML page).
"""

from __future__ import annotations

import gzip
import json
import time
import zlib
from http.server import BaseHTTPRequestHandler

from tests.support.upstream import ProviderDouble, end_stream, failed

TOP_LEVEL = {"model", "max_tokens", "messages", "system", "temperature", "top_p", "top_k", "stop_sequences",
             "stream", "tools", "tool_choice", "metadata", "thinking", "service_tier"}
ERRORS = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
          529: "overloaded_error"}
PIECE = 16384  # the largest piece of a stream written at once
USAGE = {"input_tokens": 21, "cache_creation_input_tokens": 3, "cache_read_input_tokens": 5, "output_tokens": 9}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _text_blocks(blocks, where: str) -> list[str]:
    if not isinstance(blocks, list):
        return [f"{where}: must be a string or an array of text blocks"]
    return [f"{where}[{i}]: a text block needs type text and a non-empty string text" for i, b in enumerate(blocks)
            if not (isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str) and b["text"])]


def _block_problems(b, where: str, role: str) -> list[str]:
    if not isinstance(b, dict):
        return [f"{where}: must be an object"]
    t = b.get("type")
    if t == "text":  # Anthropic: "messages: text content blocks must be non-empty"
        return [] if isinstance(b.get("text"), str) and b["text"] else [f"{where}.text: a non-empty string"]
    if t == "image" and role == "user":
        src = b.get("source")
        if isinstance(src, dict) and src.get("type") == "base64":
            ok = src.get("media_type") in ("image/jpeg", "image/png", "image/gif", "image/webp") and isinstance(
                src.get("data"), str)
            return [] if ok else [f"{where}.source: invalid base64 image source"]
        if isinstance(src, dict) and src.get("type") == "url" and isinstance(src.get("url"), str):
            return []
        return [f"{where}.source: invalid image source"]
    if t == "tool_use" and role == "assistant":
        ok = isinstance(b.get("id"), str) and isinstance(b.get("name"), str) and isinstance(b.get("input"), dict)
        return [] if ok else [f"{where}: tool_use needs id, name and an object input"]
    if t == "tool_result" and role == "user":
        if not isinstance(b.get("tool_use_id"), str):
            return [f"{where}.tool_use_id: required string"]
        c = b.get("content")
        if c is None or isinstance(c, str):
            return []
        return _text_blocks(c, f"{where}.content")
    return [f"{where}.type: {t!r} is not a valid block for role {role!r}"]


def body_problems(body) -> list[str]:
    """Everything wrong with a Messages request body, by Anthropic's documented schema."""
    if not isinstance(body, dict):
        return ["body: must be a JSON object"]
    out = [f"{k}: Extra inputs are not permitted" for k in body if k not in TOP_LEVEL]
    if not isinstance(body.get("model"), str):
        out.append("model: Field required (string)")
    if not _is_int(body.get("max_tokens")) or body["max_tokens"] < 1:
        out.append("max_tokens: Field required (integer >= 1)")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        out.append("messages: Field required (non-empty array)")
        msgs = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant") or set(m) - {"role", "content"}:
            out.append(f"messages.{i}: needs role user|assistant and content only")
            continue
        c = m.get("content")
        if isinstance(c, str):
            continue
        if not isinstance(c, list) or (not c and i < len(msgs) - 1):  # only a last assistant turn may be empty
            out.append(f"messages.{i}.content: must be a string or a non-empty array")
            continue
        for j, b in enumerate(c):
            out += _block_problems(b, f"messages.{i}.content.{j}", m["role"])
    if "system" in body and not isinstance(body["system"], str):
        out += _text_blocks(body["system"], "system")
    if "temperature" in body and not (isinstance(body["temperature"], int | float) and 0 <= body["temperature"] <= 1):
        out.append("temperature: must be a number between 0 and 1")
    if "top_p" in body and not isinstance(body["top_p"], int | float):
        out.append("top_p: must be a number")
    if "stop_sequences" in body and not (isinstance(body["stop_sequences"], list)
                                         and all(isinstance(s, str) for s in body["stop_sequences"])):
        out.append("stop_sequences: must be an array of strings")
    if "stream" in body and not isinstance(body["stream"], bool):
        out.append("stream: must be a boolean")
    for i, t in enumerate(body.get("tools") or []):
        if not (isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("input_schema"), dict)
                and t["input_schema"].get("type") == "object" and set(t) <= {"name", "description", "input_schema"}):
            out.append(f"tools.{i}: needs name and input_schema (an object schema)")
    tc = body.get("tool_choice")
    if tc is not None and not (isinstance(tc, dict) and tc.get("type") in ("auto", "any", "tool", "none")
                               and (tc["type"] != "tool" or isinstance(tc.get("name"), str))):
        out.append("tool_choice: invalid")
    if "metadata" in body and not (isinstance(body["metadata"], dict) and set(body["metadata"]) <= {"user_id"}):
        out.append("metadata: only user_id")
    return out


def request_problems(path: str, headers: dict[str, str], body: bytes) -> list[str]:
    out = []
    if path.partition("?")[0] != "/v1/messages":  # the client's query string is passed on, as for OpenAI
        out.append(f"path: {path!r} is not /v1/messages")
    if not headers.get("x-api-key"):
        out.append("x-api-key: header is required")
    if not headers.get("anthropic-version"):
        out.append("anthropic-version: header is required")
    if not headers.get("content-type", "").startswith("application/json"):
        out.append("content-type: must be application/json")
    try:
        parsed = json.loads(body.decode("utf-8"))  # strict: Python's json.loads(bytes) lets surrogates pass
    except ValueError:
        return [*out, "body: not JSON (or not UTF-8)"]
    return out + body_problems(parsed)


def message(model: str, ident: str, tool: dict | None) -> dict:
    content = [{"type": "text", "text": "Hello from Claude"}]
    if tool is not None:
        content.append({"type": "tool_use", "id": f"toolu_{ident}", "name": tool["name"],
                        "input": {"city": "Paris", "days": 2}})
    return {"id": f"msg_{ident}", "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": "tool_use" if tool else "end_turn", "stop_sequence": None, "usage": USAGE}


def stream_events(model: str, ident: str, tool: dict | None, error: bool) -> list[tuple[str, dict]]:
    start = {**message(model, ident, None), "content": [], "stop_reason": None,
             "usage": {**USAGE, "output_tokens": 1}}
    ev = [("message_start", {"type": "message_start", "message": start}),
          ("content_block_start", {"type": "content_block_start", "index": 0,
                                   "content_block": {"type": "text", "text": ""}}),
          ("ping", {"type": "ping"})]
    for piece in ("Hel", "lo"):
        ev.append(("content_block_delta", {"type": "content_block_delta", "index": 0,
                                           "delta": {"type": "text_delta", "text": piece}}))
    if error:
        return ev + [("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})]
    ev.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
    if tool is not None:
        ev.append(("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {
            "type": "tool_use", "id": f"toolu_{ident}", "name": tool["name"], "input": {}}}))
        for part in ('{"city": "Pa', 'ris", "days": 2}'):
            ev.append(("content_block_delta", {"type": "content_block_delta", "index": 1,
                                               "delta": {"type": "input_json_delta", "partial_json": part}}))
        ev.append(("content_block_stop", {"type": "content_block_stop", "index": 1}))
    ev.append(("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use" if tool else "end_turn",
                                                                   "stop_sequence": None},
                                 "usage": {"output_tokens": USAGE["output_tokens"]}}))
    ev.append(("message_stop", {"type": "message_stop"}))
    return ev


class AnthropicUpstream(ProviderDouble):
    # fail: as Upstream.fail: "429"/"503"/"529" (that error), "reset", "hang"

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        rec, problems, ident = self.record(h, request_problems)
        body, headers = rec.body, rec.headers
        if failed(h, self.fail, self.hang):
            return
        status = int(self.fail) if self.fail and self.fail.isdigit() else int(headers.get("x-test-status", "200"))
        if problems:
            return self._error(h, 400, "; ".join(problems))
        if status != 200:
            body = {"empty": b"", "html": b"<html><body>502 Bad Gateway</body></html>"}.get(
                headers.get("x-test-error-body", ""))
            if body is not None:
                return self._raw(h, status, "text/html" if body else None, body)
            return self._error(h, status, f"test error {status}")
        if headers.get("x-test-message") == "html":
            return self._raw(h, 200, "text/html", b"<html><body>Welcome</body></html>")
        req = json.loads(body)
        last = req["messages"][-1]
        wants_tool = bool(req.get("tools")) and last["role"] == "user" and not any(
            isinstance(b, dict) and b.get("type") == "tool_result" for b in last["content"]
            if isinstance(last["content"], list))
        tool = req["tools"][0] if wants_tool else None
        pad = "." * int(headers.get("x-test-pad", "0"))
        if req.get("stream"):
            events = stream_events(req["model"], ident, tool, headers.get("x-test-stream-error") == "1")
            for _, data in events:
                if pad and data["type"] == "content_block_delta":
                    data["delta"]["text"] += pad
                    break
            return self._sse(h, events)
        msg = message(req["model"], ident, tool)
        msg["content"][0]["text"] += pad
        if headers.get("x-test-message") == "untyped":
            del msg["type"]
        self._json(h, 200, msg)

    def _json(self, h, status: int, obj: dict) -> None:
        self._raw(h, status, "application/json", json.dumps(obj).encode())

    def _raw(self, h, status: int, ctype: str | None, payload: bytes) -> None:
        h.send_response(status)
        if ctype is not None:
            h.send_header("content-type", ctype)
        h.send_header("request-id", "req_test")
        if h.headers.get("x-test-gzip") == "1":
            payload = gzip.compress(payload, mtime=0)
            h.send_header("content-encoding", "gzip")
        h.send_header("content-length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload)

    def _error(self, h, status: int, message: str) -> None:
        self._json(h, status, {"type": "error", "error": {"type": ERRORS.get(status, "api_error"), "message": message}})

    def _sse(self, h, events: list[tuple[str, dict]]) -> None:
        compress = zlib.compressobj(wbits=31) if h.headers.get("x-test-gzip") == "1" else None
        h.send_response(200)
        h.send_header("content-type", "text/event-stream; charset=utf-8")
        h.send_header("request-id", "req_test")
        if compress is not None:
            h.send_header("content-encoding", "gzip")
        h.send_header("transfer-encoding", "chunked")
        h.end_headers()
        for i, (name, data) in enumerate(events):
            chunk = f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
            if compress is not None:
                chunk = compress.compress(chunk) + compress.flush(zlib.Z_SYNC_FLUSH)
            # a large event arrives in pieces, as from a network (the proxy sees it across chunks)
            for at in range(0, len(chunk), PIECE):
                piece = chunk[at:at + PIECE]
                h.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                h.wfile.flush()
                if len(chunk) > PIECE:
                    time.sleep(0.002)
            if i == 0:
                self.pause_after_first()
        if compress is not None:
            tail = compress.flush()
            h.wfile.write(f"{len(tail):x}\r\n".encode() + tail + b"\r\n")
        end_stream(h)
