"""The e2e tests' stand-in provider answers like OpenAI's chat-completions API.

Checked with the official ``openai`` SDK talking to it directly (no Envoy), plus raw HTTP for the
wire details the SDK hides (compression, SSE framing, ``[DONE]``).
"""

from __future__ import annotations

import gzip
import http.client
import json

import openai
import pytest

from tests.support.sdk import APP_KEY, SENT, chat, chat_stream, status_error
from tests.support.upstream import STREAM_OPTIONS_ERROR, Upstream, accepts_gzip


@pytest.fixture(scope="module")
def upstream():
    u = Upstream("api.example.com", sse_pause=0.05)
    yield u
    u.stop()


@pytest.fixture(autouse=True)
def _clear(upstream):
    upstream.clear()


def raw(upstream: Upstream, body: dict, headers: dict | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=10)
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers=headers or {})
    resp = conn.getresponse()
    payload = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, payload


def test_chat_completion_object(upstream):
    completion = chat(upstream.port, "api.example.com")
    assert completion.object == "chat.completion" and completion.id.startswith("chatcmpl-")
    assert completion.model == "gpt-4o-mini-2026" and isinstance(completion.created, int)
    assert completion.choices[0].message.content == "hi" and completion.choices[0].finish_reason == "stop"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens, completion.usage.total_tokens) == (11, 7, 18)
    (req,) = upstream.requests
    assert (req.method, req.path, req.headers["host"]) == ("POST", "/v1/chat/completions", "api.example.com")
    assert req.headers["authorization"] == f"Bearer {APP_KEY}" and req.json() == SENT


def test_gzip_only_when_the_client_accepts_it(upstream):
    status, headers, payload = raw(upstream, SENT, {"accept-encoding": "gzip, deflate"})
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert json.loads(gzip.decompress(payload))["object"] == "chat.completion"
    status, headers, payload = raw(upstream, SENT)
    assert "content-encoding" not in headers and json.loads(payload)["usage"]["total_tokens"] == 18
    assert upstream.requests[0].headers["accept-encoding"] == "gzip, deflate"  # what the SDK sends too


@pytest.mark.parametrize("value,expected", [
    ("gzip, deflate", True), ("deflate, gzip;q=0.5", True), ("*", True), ("identity", False),
    ("gzip;q=0", False), ("", False), ("br, zstd", False),
])
def test_accept_encoding(value, expected):
    assert accepts_gzip(value) is expected


def test_stream_with_usage(upstream):
    streamed = chat_stream(upstream.port, "api.example.com")
    assert streamed.text == "Hello" and all(c.object == "chat.completion.chunk" for c in streamed.chunks)
    assert len({c.id for c in streamed.chunks}) == 1
    assert streamed.chunks[-1].choices == [] and streamed.usage.total_tokens == 18
    assert all(c.usage is None for c in streamed.chunks[:-1])
    status, headers, payload = raw(upstream, {**SENT, "stream": True, "stream_options": {"include_usage": True}},
                                   {"accept-encoding": "gzip"})
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert "content-encoding" not in headers  # streams are never compressed
    events = payload.decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    last = json.loads(events[-3].removeprefix("data: "))
    assert last["choices"] == [] and last["usage"] == {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}


def test_stream_without_usage_has_no_usage_field(upstream):
    status, _, payload = raw(upstream, {**SENT, "stream": True})
    events = [e.removeprefix("data: ") for e in payload.decode().split("\n\n") if e]
    assert status == 200 and events[-1] == "[DONE]"
    assert all("usage" not in json.loads(e) and json.loads(e)["choices"] for e in events[:-1])


@pytest.mark.parametrize("stream", [False, None])
def test_stream_options_without_stream_is_refused(upstream, stream):
    extra = {} if stream is None else {"stream": stream}
    err = status_error(chat, upstream.port, "api.example.com", stream_options={"include_usage": True}, **extra)
    assert type(err) is openai.BadRequestError
    assert (err.message.split(" - ", 1)[-1], err.type, err.param, err.code) == (
        STREAM_OPTIONS_ERROR, "invalid_request_error", "stream_options", None)


@pytest.mark.parametrize("status,exc", [(429, openai.RateLimitError), (500, openai.InternalServerError),
                                        (503, openai.InternalServerError)])
def test_error_statuses_with_openai_headers(upstream, status, exc):
    err = status_error(chat, upstream.port, "api.example.com", headers={"x-test-status": str(status)})
    assert type(err) is exc and err.status_code == status and err.request_id.startswith("req_api-")
    assert err.response.headers["retry-after"] == "1"
    assert ("x-ratelimit-remaining-requests" in err.response.headers) is (status == 429)
    assert len(upstream.requests) == 1  # max_retries=0


@pytest.mark.parametrize("mode,usage", [("none", None), ("malformed", {"prompt_tokens": "many"})])
def test_usage_controls(upstream, mode, usage):
    _, _, payload = raw(upstream, SENT, {"x-test-usage": mode})
    assert json.loads(payload).get("usage") == usage


def test_requests_record_their_connection_and_place_on_it(upstream):
    conn = http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=10)
    for _ in range(2):
        conn.request("POST", "/v1/chat/completions", body=json.dumps(SENT), headers={"x-dup": "a"})
        conn.getresponse().read()
    conn.close()
    first, second = upstream.requests
    assert (first.conn, first.seq) == (second.conn, 1) and second.seq == 2
    assert first.declared == len(first.body) and first.extra == b""
    assert first.raw_headers.count(("x-dup", "a")) == 1


def test_a_body_longer_than_its_content_length_is_caught_as_a_desync(upstream):
    """What a proxy sends beyond the declared length is seen at once (``extra``) and, on the kept
    connection, as the start of the next request that does not parse (``Server.stray``)."""
    import socket

    body = json.dumps(SENT).encode()
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body) - 5}\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", upstream.port), timeout=10) as s:
        s.sendall(head + body)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 ") and b"\r\nconnection: close\r\n" in answer.lower()
    (rec,) = upstream.requests
    assert rec.body == body[:-5] and rec.extra.startswith(body[-5:])


def test_bytes_that_arrive_late_are_read_as_a_stray_request_line(upstream):
    """The rest of a body that arrives after the answer is read where the next request starts."""
    import socket

    body = json.dumps(SENT).encode()
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body) - 5}\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", upstream.port), timeout=10) as s:
        s.sendall(head + body[:-5])
        assert s.recv(65536).startswith(b"HTTP/1.1 200")  # answered: the double waits for the next request
        s.sendall(body[-5:] + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        while s.recv(65536):
            pass
    assert upstream.requests[0].extra == b""
    assert upstream.server.stray and upstream.server.stray[0].startswith(body[-5:])
