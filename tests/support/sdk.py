"""The official ``openai`` SDK as the app in the mesh: the client of every well-formed e2e request.

An app in the mesh talks plain HTTP to the provider's host (iptables sends it to the sidecar); here
the SDK's ``base_url`` is the Envoy listener on loopback and its ``Host`` header names the target
host, which httpx sends instead of the URL's authority (tests check it at the upstream and in the
access log). The app holds its own key and uses the SDK's own path (``/v1/chat/completions``):
llmc must replace both, so a test seeing ``APP_KEY`` or ``SDK_PATH`` at a provider fails.
``max_retries=0`` so that every call is exactly one request (the upstream's count is an oracle).
"""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass

import openai
from openai.types.chat import ChatCompletion, ChatCompletionChunk

APP_KEY = "sk-app-own-key"
SDK_PATH = "/v1/chat/completions"
APP_MODEL = "gpt-4o-mini"  # what the app asks for; llmc sets the provider's model
MESSAGES = [{"role": "user", "content": "Please introduce yourself"}]
# The JSON body the SDK sends for chat() with the defaults, as the upstream parses it.
SENT = {"messages": MESSAGES, "model": APP_MODEL}


def client(port: int, host: str) -> openai.OpenAI:
    """An SDK client whose requests reach the Envoy listener on ``port`` with ``Host: host``."""
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=APP_KEY, max_retries=0, timeout=30,
                         default_headers={"Host": host})


def chat(port: int, host: str, headers: dict | None = None, **params) -> ChatCompletion:
    """One non-streaming chat completion; raises the SDK's exception for an error status."""
    params.setdefault("messages", MESSAGES)
    params.setdefault("model", APP_MODEL)
    with client(port, host) as sdk:  # closes its connections: one client per call, as short-lived as a test
        return sdk.chat.completions.create(extra_headers=headers, **params)


@dataclass
class Streamed:
    chunks: list[ChatCompletionChunk]
    headers: dict[str, str]
    first_at: float  # seconds from sending the request to the first parsed event
    total: float  # seconds until the stream ended ([DONE])

    @property
    def lead(self) -> float:
        """Seconds from the first event to the end. Streamed through, it is about the pause the test
        upstream makes after its first event; buffered by a proxy, about 0. Unlike ``first_at`` it
        does not grow with the machine's load before the first event (tests compare it to half the pause)."""
        return self.total - self.first_at

    @property
    def text(self) -> str:
        return "".join(c.choices[0].delta.content or "" for c in self.chunks if c.choices)

    @property
    def usage(self):
        """The usage of the stream's last event (OpenAI's final chunk with empty choices), or None."""
        return self.chunks[-1].usage if self.chunks else None


def chat_stream(port: int, host: str, headers: dict | None = None,
                stream_options: dict | None = None, hold=None, **params) -> Streamed:
    """``stream=True`` with ``stream_options`` (default ``{"include_usage": True}``; pass ``{}`` to send
    none), read event by event as the SDK parses them. ``hold``: the upstream double (a
    ``tests.support.upstream.Held``) that pauses after its first event until this client parsed one,
    so ``lead`` tells streamed from buffered whatever the machine's load."""
    gate = None
    if hold is not None:
        gate = hold.held = threading.Event()
    params.setdefault("messages", MESSAGES)
    params.setdefault("model", APP_MODEL)
    options = {"include_usage": True} if stream_options is None else stream_options
    if options:
        params["stream_options"] = options
    chunks, first_at = [], None
    with client(port, host) as sdk:
        start = time.monotonic()
        stream = sdk.chat.completions.create(stream=True, extra_headers=headers, **params)
        with stream:
            for chunk in stream:
                if first_at is None:
                    first_at = time.monotonic() - start
                    if gate is not None:
                        gate.set()
                chunks.append(chunk)
        total = time.monotonic() - start
    return Streamed(chunks, {k.lower(): v for k, v in stream.response.headers.items()}, first_at or total, total)


def status_error(call, *args, **kwargs) -> openai.APIStatusError:
    """The SDK's exception for a call that must fail with an HTTP error status."""
    try:
        call(*args, **kwargs)
    except openai.APIStatusError as err:
        return err
    raise AssertionError(f"{call.__name__} succeeded; an error status was expected")


def post(port: int, host: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict, bytes]:
    """One raw HTTP/1.1 request (exact body bytes, any headers), as an app without the SDK sends it:
    status, headers, body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body=body, headers={"Host": host, "content-type": "application/json", **headers})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()
