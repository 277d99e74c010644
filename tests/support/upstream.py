"""A local stand-in for an LLM provider: records every request it receives and answers like one.

Listens on 127.0.0.1 (optionally TLS with a certificate from the test CA, recording the SNI the
client sent). Non-streaming requests get a chat.completion JSON; requests whose JSON body has
``"stream": true`` get an SSE stream sent chunk by chunk, with a pause after the first chunk so
tests can tell a streamed response from a buffered one.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    sni: str | None

    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class Upstream:
    name: str
    tls_context: ssl.SSLContext | None = None
    sse_pause: float = 0.6  # after the first SSE chunk
    first_token_delay: float = 0.0  # before the first SSE chunk (a model's time to first token)
    requests: list[Recorded] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def setup(self):
                super().setup()
                # like real servers: no Nagle delay on small writes (SSE chunks)
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_POST(self):
                upstream._handle(self)

            do_GET = do_PUT = do_POST

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if self.tls_context is not None:
            def sni_cb(sslobj, server_name, _ctx):
                sslobj.sni_seen = server_name

            self.tls_context.sni_callback = sni_cb
            self.server.socket = self.tls_context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("content-length") or 0)
        body = h.rfile.read(length) if length else b""
        sni = getattr(h.connection, "sni_seen", None)
        rec = Recorded(h.command, h.path, {k.lower(): v for k, v in h.headers.items()}, body, sni)
        with self._lock:
            self.requests.append(rec)
        try:
            req = json.loads(body) if body else {}
        except ValueError:
            req = {}
        model = req.get("model") if isinstance(req, dict) else None
        # Test controls, sent by the tests as headers (they pass through the proxy untouched):
        # x-test-usage: none | malformed; x-test-status: an HTTP status to answer with.
        usage_mode = h.headers.get("x-test-usage", "")
        usage = {"none": None, "malformed": {"prompt_tokens": "many"}}.get(
            usage_mode, {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18})
        status = int(h.headers.get("x-test-status", "200"))
        if isinstance(req, dict) and req.get("stream") is True and status == 200:
            include = (req.get("stream_options") or {}).get("include_usage") is True
            self._sse(h, model, usage if include else None)
            return
        body: dict = {"id": "chatcmpl-test", "object": "chat.completion", "model": f"{model}-2026",
                      "upstream": self.name,
                      "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                                   "finish_reason": "stop"}]}
        if status != 200:
            body = {"error": {"message": "overloaded", "type": "server_error"}}
        elif usage is not None:
            body["usage"] = usage
        payload = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("content-type", "application/json")
        h.send_header("content-length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload)

    def _sse(self, h: BaseHTTPRequestHandler, model: str | None, usage: dict | None = None) -> None:
        h.send_response(200)
        h.send_header("content-type", "text/event-stream")
        h.send_header("transfer-encoding", "chunked")
        h.end_headers()
        events = [{"choices": [{"delta": {"content": w}}], "model": f"{model}-2026", "usage": None}
                  for w in ("Hel", "lo")]
        if usage is not None:  # OpenAI: a last event with empty choices and the usage
            events.append({"choices": [], "model": f"{model}-2026", "usage": usage})
        chunks = [f"data: {json.dumps(e)}\n\n".encode() for e in events] + [b"data: [DONE]\n\n"]
        if self.first_token_delay:
            time.sleep(self.first_token_delay)
        for i, chunk in enumerate(chunks):
            h.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            h.wfile.flush()
            if i == 0:
                time.sleep(self.sse_pause)
        h.wfile.write(b"0\r\n\r\n")
        h.wfile.flush()

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


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
