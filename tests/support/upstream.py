"""A local stand-in for an OpenAI-compatible provider: records every request, answers like OpenAI's API.

Listens on 127.0.0.1 (optionally TLS with a certificate from the test CA, recording the SNI the
client sent). ``Upstream.requests`` (what the provider received) is the tests' oracle. Answers
follow OpenAI's documented chat-completions API, so the official ``openai`` SDK can be the client:

* a ``chat.completion`` object (``id``, ``object``, ``created``, ``model``, ``choices``, ``usage``);
  gzip-compressed (``content-encoding: gzip``) when the request's ``Accept-Encoding`` allows gzip,
  as OpenAI does for the SDK's ``gzip, deflate``;
* with ``"stream": true``, an SSE stream of ``chat.completion.chunk`` events sent chunk by chunk
  (never compressed), a pause after the first so tests can tell streamed from buffered; the usage
  arrives in a last chunk with empty ``choices`` only when ``stream_options.include_usage`` is true,
  then ``data: [DONE]``;
* ``stream_options`` without ``"stream": true`` is refused with OpenAI's 400 (wording from the API);
* errors in OpenAI's format with the headers OpenAI sends (``x-request-id`` on every answer,
  ``retry-after`` on 429/5xx, ``x-ratelimit-*`` on 429).

Test controls, sent as request headers (they pass through the proxy untouched):
``x-test-usage: none | malformed | details``, ``x-test-status: <an HTTP status to answer with>`` and
``x-test-pad: <n>`` (n more characters in a completion's content: a large answer) and
``x-test-linger: <seconds>`` (a stream's end waits, after its last event ``data: [DONE]``, until the
proxy closed the connection or that long: the official SDK stops reading at ``[DONE]`` and leaves,
so the end never arrives, whatever the machine's load).
Per upstream (failover tests), ``Upstream.fail``: ``"429"``/``"503"`` (always that OpenAI error),
``"reset"`` (close the connection without answering), ``"hang"`` (answer nothing for ``hang``
seconds, then close), ``"stream-reset"`` (a streaming request gets the headers and the first SSE
chunk, then the connection is reset).

The wire, for tests of HTTP framing (every double reads requests with :func:`read_request`): each
``Recorded`` keeps the header lines in order with duplicates (``raw_headers``), the declared
``Content-Length``, the connection it came on (``conn``, numbered per server) and its place there
(``seq``: above 1 means a reused keep-alive connection), and ``extra``: bytes that were already
waiting after the declared length (a proxy that sent more body than it declared). Bytes that do not
parse as a request line where the next request should start are kept in ``Server.stray``: the rest
of such a body, read as the start of the next request on that connection (an HTTP desync). After a
request with ``extra`` the double answers with ``connection: close``, so the rest of that body does
not reach a later test.
"""

from __future__ import annotations

import gzip
import itertools
import json
import select
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
#: OpenAI's usage with its details (cached prompt tokens, reasoning tokens), as o-series models report it
USAGE_DETAILS = {**USAGE, "prompt_tokens_details": {"cached_tokens": 4, "audio_tokens": 0},
                 "completion_tokens_details": {"reasoning_tokens": 3, "audio_tokens": 0,
                                               "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}
USAGE_MODES = {"none": None, "malformed": {"prompt_tokens": "many"}, "details": USAGE_DETAILS}
STREAM_OPTIONS_ERROR = "The 'stream_options' parameter is only allowed when 'stream' is enabled."
# OpenAI's error bodies for the statuses tests ask for with x-test-status (type, code, message).
ERRORS = {
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests. Please try again in 1s."),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The server is overloaded or not ready yet."),
}
HTTP_METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"}
RATE_LIMIT_HEADERS = {"x-ratelimit-limit-requests": "500", "x-ratelimit-remaining-requests": "0",
                      "x-ratelimit-reset-requests": "1s", "x-ratelimit-limit-tokens": "30000",
                      "x-ratelimit-remaining-tokens": "29000", "x-ratelimit-reset-tokens": "2ms"}


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names; of duplicate lines the last (see raw_headers)
    body: bytes
    sni: str | None
    raw_headers: list[tuple[str, str]] = field(default_factory=list)  # in order, duplicates kept
    conn: int = 0  # the connection's number on its server (1, 2, ...)
    seq: int = 0  # the request's place on its connection: 1 on a new connection
    declared: int | None = None  # the Content-Length header's value, None without one
    extra: bytes = b""  # bytes waiting right after the declared body: more body than declared
    order: int = 0  # arrival order across every double of the process (which try came first)

    def json(self) -> dict:
        return json.loads(self.body)


def accepts_gzip(accept_encoding: str) -> bool:
    for item in accept_encoding.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            return params.replace(" ", "").lower() not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


class Server(ThreadingHTTPServer):
    """A threading HTTP server that does not print a traceback when the proxy closes a connection
    (an idle keep-alive one, or one whose client left): that is normal, not a test failure's cause.
    It numbers its connections and keeps what did not parse as a request line (``stray``)."""

    daemon_threads = True

    def __init__(self, *args, **kwargs) -> None:
        self.stray: list[bytes] = []
        self._connections = itertools.count(1)
        super().__init__(*args, **kwargs)

    def next_connection(self) -> int:
        return next(self._connections)

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class ProviderHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive, quiet, and like real servers no Nagle delay on small writes (SSE chunks)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn_id = self.server.next_connection() if isinstance(self.server, Server) else 0
        self.served = 0

    def end_headers(self) -> None:
        if getattr(self, "desynced", False):
            # more body than declared is waiting on this connection: close it after this answer, so
            # the rest is not read as the next request (the test that caused it has seen `extra`)
            self.send_header("connection", "close")
        super().end_headers()

    def parse_request(self) -> bool:
        ok = super().parse_request()
        if (not ok or self.command not in HTTP_METHODS) and isinstance(self.server, Server):
            self.server.stray.append(self.raw_requestline)
        return ok


_ARRIVALS = itertools.count(1)


def read_request(h: BaseHTTPRequestHandler, sni: str | None = None) -> Recorded:
    """Reads the body (``Content-Length`` bytes) and records the request with its wire details."""
    declared = h.headers.get("content-length")
    length = int(declared or 0)
    body = h.rfile.read(length) if length else b""
    h.served = getattr(h, "served", 0) + 1
    extra = _waiting(h)
    h.desynced = bool(extra)
    return Recorded(h.command, h.path, {k.lower(): v for k, v in h.headers.items()}, body, sni,
                    raw_headers=[(k.lower(), v) for k, v in h.headers.items()], conn=getattr(h, "conn_id", 0),
                    seq=h.served, declared=int(declared) if declared is not None else None, extra=extra,
                    order=next(_ARRIVALS))


def _waiting(h: BaseHTTPRequestHandler) -> bytes:
    """Bytes already received after the request (never blocks): a proxy sends the next request on a
    connection only after the answer, so anything here is body it sent beyond its Content-Length."""
    sock = h.connection
    timeout = sock.gettimeout()
    try:
        sock.settimeout(0.0)
        return h.rfile.peek(65536) or b""
    except (OSError, ValueError):
        return b""
    finally:
        sock.settimeout(timeout)


def failed(h: BaseHTTPRequestHandler, fail: str | None, hang: float) -> bool:
    """Applies ``fail`` modes that answer nothing (``reset``, ``hang``); True when it did."""
    if fail not in ("reset", "hang"):
        return False
    if fail == "hang":
        time.sleep(hang)
    _reset(h)
    return True


#: How long a held stream waits for its client (``Held``): only reached when a proxy buffered the
#: stream, so the client saw no event; the test then fails on its stream's ``lead``.
HOLD_LIMIT = 10.0


class Held:
    """Streams that pause after their first event until the client saw it: ``chat_stream(...,
    hold=double)`` arms ``double.held`` and sets it on its first parsed event; the double waits for
    that (at most ``HOLD_LIMIT``), then its ``sse_pause``. Streamed through, the client's first event
    comes at least ``sse_pause`` before the end whatever the machine's load; buffered, both come at the
    end. Without a client armed, the pause alone (a timing, not a proof)."""

    held: threading.Event | None = None
    sse_pause: float

    def pause_after_first(self) -> None:
        gate, self.held = self.held, None
        if gate is not None:
            gate.wait(HOLD_LIMIT)
        time.sleep(self.sse_pause)


class ProviderDouble(Held):
    """What the translated providers' doubles (tests/support/anthropic.py, gemini.py) share: a server
    on a loopback port whose POSTs go to the subclass's ``_handle``, the requests received with the
    protocol problems found in each (``record``), failure injection (``fail``, as ``Upstream.fail``;
    ``hang`` seconds for "hang"), ``clear`` and ``stop``."""

    def __init__(self, name: str, sse_pause: float = 0.6):
        self.name, self.sse_pause = name, sse_pause
        self.fail: str | None = None
        self.hang = 5.0
        self.requests: list[Recorded] = []
        self.problems: list[list[str]] = []
        self._lock = threading.Lock()
        self._n = 0
        double = self

        class Handler(ProviderHandler):
            def do_POST(self):
                double._handle(self)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        raise NotImplementedError

    def record(self, h: BaseHTTPRequestHandler,
               problems_of: Callable[[str, dict, bytes], list[str]]) -> tuple[Recorded, list[str], str]:
        """Reads the request, checks it with ``problems_of(path, headers, body)`` and records both;
        with the answer's id (a counter, 4 digits)."""
        rec = read_request(h)
        problems = problems_of(h.path, rec.headers, rec.body)
        with self._lock:
            self.requests.append(rec)
            self.problems.append(problems)
            self._n += 1
            ident = f"{self._n:04d}"
        return rec, problems, ident

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()
            self.problems.clear()
        self.fail = None

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Upstream(Held):
    name: str
    tls_context: ssl.SSLContext | None = None
    sse_pause: float = 0.6  # after the first SSE chunk
    first_token_delay: float = 0.0  # before the first SSE chunk (a model's time to first token)
    requests: list[Recorded] = field(default_factory=list)
    fail: str | None = None  # see the module docstring (failover tests)
    hang: float = 5.0
    #: Authorization value -> the status requests carrying it get (several-keys tests: one key refused)
    fail_keys: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        upstream = self

        class Handler(ProviderHandler):
            def do_POST(self):
                upstream._handle(self)

            do_GET = do_PUT = do_POST

        self.server = Server(("127.0.0.1", 0), Handler)
        if self.tls_context is not None:
            def sni_cb(sslobj, server_name, _ctx):
                sslobj.sni_seen = server_name

            self.tls_context.sni_callback = sni_cb
            self.server.socket = self.tls_context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        rec = read_request(h, getattr(h.connection, "sni_seen", None))
        body = rec.body
        with self._lock:
            self.requests.append(rec)
            n = next(self._ids)
        try:
            req = json.loads(body) if body else {}
        except ValueError:
            req = {}
        if not isinstance(req, dict):
            req = {}
        ident = f"{self.name.split('.')[0]}-{n}"
        if failed(h, self.fail, self.hang):
            return
        if self.fail == "stream-reset" and req.get("stream") is True:
            return self._sse(h, ident, f"{req.get('model')}-2026", None, False, reset_after_first=True)
        status = int(self.fail) if self.fail and self.fail.isdigit() else int(h.headers.get("x-test-status", "200"))
        status = self.fail_keys.get(h.headers.get("authorization", ""), status)
        if status != 200:
            etype, code, message = ERRORS.get(status, ("server_error", None, "error"))
            return self._json(h, status, _error(message, etype, None, code), ident)
        if req.get("stream_options") is not None and req.get("stream") is not True:
            return self._json(h, 400, _error(STREAM_OPTIONS_ERROR, "invalid_request_error", "stream_options"), ident)
        usage = USAGE_MODES.get(h.headers.get("x-test-usage", ""), USAGE)
        model = f"{req.get('model')}-2026"  # the provider's own name for the model it ran
        if h.path.split("?")[0].endswith("/embeddings"):
            # OpenAI's embeddings API: `input` is required; `stream` fields are not accepted.
            if "input" not in req or "stream" in req or "stream_options" in req:
                return self._json(h, 400, _error("invalid embeddings request", "invalid_request_error", "input"), ident)
            inputs = req["input"] if isinstance(req["input"], list) else [req["input"]]
            return self._json(h, 200, {"object": "list", "model": model, "usage": {"prompt_tokens": 5, "total_tokens": 5},
                                       "data": [{"object": "embedding", "index": i, "embedding": [0.25, -0.5, 0.125]}
                                                for i in range(len(inputs))]}, ident)
        if req.get("stream") is True:
            include = (req.get("stream_options") or {}).get("include_usage") is True
            return self._sse(h, ident, model, usage, include)
        completion = {"id": f"chatcmpl-{ident}", "object": "chat.completion", "created": int(time.time()),
                      "model": model, "system_fingerprint": "fp_llmc_test",
                      "choices": [{"index": 0, "message": {"role": "assistant", "refusal": None,
                                                           "content": "hi" + "." * int(h.headers.get("x-test-pad", "0"))},
                                   "logprobs": None, "finish_reason": "stop"}]}
        if usage is not None:
            completion["usage"] = usage
        self._json(h, 200, completion, ident)

    def _json(self, h: BaseHTTPRequestHandler, status: int, body: dict, ident: str) -> None:
        payload = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("content-type", "application/json")
        h.send_header("x-request-id", f"req_{ident}")
        if status == 429 or status >= 500:
            h.send_header("retry-after", "1")
        if status == 429:
            for k, v in RATE_LIMIT_HEADERS.items():
                h.send_header(k, v)
        if h.headers.get("x-test-response-header"):  # a header a provider adds (e.g. faking an internal one)
            name, _, value = h.headers["x-test-response-header"].partition(":")
            h.send_header(name.strip(), value.strip())
        if accepts_gzip(h.headers.get("accept-encoding", "")):
            payload = gzip.compress(payload, mtime=0)
            h.send_header("content-encoding", "gzip")
            h.send_header("vary", "Accept-Encoding")
        h.send_header("content-length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload)

    def _sse(self, h: BaseHTTPRequestHandler, ident: str, model: str, usage: dict | None, include: bool,
             reset_after_first: bool = False) -> None:
        h.send_response(200)
        h.send_header("content-type", "text/event-stream; charset=utf-8")
        h.send_header("x-request-id", f"req_{ident}")
        h.send_header("transfer-encoding", "chunked")
        h.end_headers()
        base = {"id": f"chatcmpl-{ident}", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": model, "system_fingerprint": "fp_llmc_test"}
        deltas = [({"role": "assistant", "content": "Hel"}, None), ({"content": "lo"}, None), ({}, "stop")]
        events = [{**base, "choices": [{"index": 0, "delta": d, "logprobs": None, "finish_reason": f}]}
                  for d, f in deltas]
        if include:  # OpenAI: "usage": null on every chunk, then one with empty choices and the usage
            events = [{**e, "usage": None} for e in events] + [{**base, "choices": [], "usage": usage}]
        events = self._first_events() + events
        # OpenAI's events are compact JSON
        chunks = [f"data: {json.dumps(e, separators=(',', ':'))}\n\n".encode() for e in events]
        chunks.append(b"data: [DONE]\n\n")
        if self.first_token_delay:
            time.sleep(self.first_token_delay)
        for i, chunk in enumerate(chunks):
            h.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            h.wfile.flush()
            if i == 0 and reset_after_first:
                time.sleep(0.2)
                _reset(h)  # the stream breaks after its first event
                return
            if i == 0:
                self.pause_after_first()
        end_stream(h)

    def _first_events(self) -> list[dict]:
        """Events a provider streams before the completion's own (none for OpenAI; Azure overrides)."""
        return []

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()
        self.fail = None

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def end_stream(h: BaseHTTPRequestHandler) -> None:
    """Ends a chunked stream after its last event; with ``x-test-linger``, once the proxy closed the
    connection (its client left: the end is not sent, as a provider's write would fail) or after that
    many seconds. The proxy sends nothing else on a connection whose response is under way, so the
    connection turning readable means it closed (plain or TLS: no peeking needed)."""
    linger = float(h.headers.get("x-test-linger", "0"))
    if linger > 0:
        readable, _, _ = select.select([h.connection], [], [], linger)
        if readable:
            h.close_connection = True
            return
    try:
        h.wfile.write(b"0\r\n\r\n")
        h.wfile.flush()
    except OSError:
        h.close_connection = True


def _reset(h: BaseHTTPRequestHandler) -> None:
    """Close the connection with a TCP RST (SO_LINGER 0), as a crashed or overloaded server does."""
    h.close_connection = True
    h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    h.connection.close()
    h.wfile = h.rfile = _Sink()


class _Sink:
    closed = True  # the handler's finish() then skips its flush

    def write(self, data):
        return len(data)

    def flush(self):
        pass

    def close(self):
        pass

    def readline(self, *args):
        return b""


def _error(message: str, etype: str, param: str | None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": etype, "param": param, "code": code}}


def start_upstreams(ca, tls_hosts, plain_hosts, **options) -> dict[str, Upstream]:
    """One recording provider per host: TLS (certificate from the trustme ``ca``) or plain HTTP."""
    ups = {}
    for host in tls_hosts:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(host).configure_cert(ctx)
        ups[host] = Upstream(host, ctx, **options)
    for host in plain_hosts:
        ups[host] = Upstream(host, **options)
    return ups


@contextmanager
def serving(hosts) -> Iterator[dict[str, Upstream]]:
    """Plain-HTTP recording providers for ``hosts``, stopped on exit."""
    ups = start_upstreams(None, (), tuple(hosts))
    try:
        yield ups
    finally:
        for u in ups.values():
            u.stop()
