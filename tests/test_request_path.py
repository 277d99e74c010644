"""One request path (issue 27): the downstream filter and the per-try (failover) filter call the same
request step (llmc.request's ``prepare`` and ``set_headers``) with the same inputs, so a request
shaped for a provider is the same whichever filter shaped it, for every driver."""

from __future__ import annotations

import json
import re

import pytest

from compiler import luabundle
from compiler.protocols import DRIVERS
from tests.support.lua import LuaFilter

BACKENDS = {
    "openai": {"provider": "p-openai", "protocol": "openai", "host": "o.example.com", "path": "/v1/chat/completions",
               "model": "gpt-x", "api_key": "sk-o"},
    "anthropic": {"provider": "p-claude", "protocol": "anthropic", "host": "c.example.com", "path": "/v1/messages",
                  "model": "claude-x", "max_tokens": 64, "headers": {"anthropic-version": "2023-06-01"},
                  "api_key": "sk-c"},
    "gemini": {"provider": "p-gemini", "protocol": "gemini", "host": "g.example.com",
               "path": "/v1beta/models/{model}:generateContent", "model": "gemini-x", "api_key": "sk-g"},
}
CLIENT = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"stream":true,"temperature":0.5}'


def _downstream(name: str) -> dict:
    b = {**BACKENDS[name], "weight": 1, "max_body": 1 << 20}
    return {"id": f"down-{name}", "route": "default/chat", "pin_header": "x-llmc-provider",
            "protocols": {name: DRIVERS[name].record.context()}, "buffer_limit": 1 << 21, "max_body": 1 << 20,
            "routes": {"r": "rule"}, "rules": {"rule": {"backends": [b]}}}


def _attempt(name: str) -> dict:
    b = {**BACKENDS[name], "weight": 1, "max_body": 1 << 20, "authority": BACKENDS[name]["host"]}
    return {"id": f"try-{name}", "route": "default/chat", "rule": "rule", "tries": [b],
            "protocols": {name: DRIVERS[name].record.context()},
            "credential_headers": sorted({d.record.auth_header for d in DRIVERS.values()}),
            "internal_headers": ["x-llmc-provider", "x-llmc-order"]}


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_a_try_is_shaped_as_the_request_path_shapes_it(name):
    lua = LuaFilter()
    down = lua.request(_downstream(name), CLIENT, path="/v1/chat/completions", route="r")
    up = lua.request(_attempt(name), CLIENT, path="/v1/chat/completions", route="x",
                     headers={"x-envoy-attempt-count": "1"},
                     metadata={"llmc:client_path": "/v1/chat/completions", "llmc:failover": True})
    assert down.status is None and up.status is None, (down.response_body, up.response_body)
    assert down.body == up.body and json.loads(down.body)  # the same body, valid JSON
    auth = DRIVERS[name].record.auth_header
    for header in (":path", auth, "content-type", "accept-encoding", "anthropic-version"):
        assert down.headers.get(header) == up.headers.get(header), header
    if name == "gemini":
        assert down.headers[":path"] == "/v1beta/models/gemini-x:streamGenerateContent?alt=sse"


def test_no_filter_shapes_a_request_but_through_the_request_step():
    """main (the request path) and failover (the tries) never call a shaping function of their own:
    only llmc.request's prepare and set_headers (which call shape, body_for and request_headers)."""
    shaping = re.compile(r"\b(body_for|shape|request_headers|shape_openai)\s*\(")
    for module in ("main", "failover"):
        code = luabundle.strip(luabundle.module_source(module))
        assert not shaping.findall(code), (module, shaping.findall(code))
        assert "prepare(" in code and "set_headers(" in code, module


@pytest.mark.parametrize("stream, want", [
    (False, "/v1beta/models/gemini-x:generateContent"),
    (True, "/v1beta/models/gemini-x:streamGenerateContent?alt=sse"),
])
@pytest.mark.parametrize("which", ["downstream", "try"])
def test_a_translator_that_builds_the_path_gets_no_query_of_the_client(which, stream, want):
    """Gemini's path is the translator's whole path: the client's OpenAI query string (an Azure-style
    ``api-version``, a tracing parameter) went to Gemini on non-streamed requests, which Google's APIs
    refuse (400, "Cannot bind query parameter"), and was dropped on streamed ones."""
    body = CLIENT.replace('"stream":true', f'"stream":{"true" if stream else "false"}')
    path = "/v1/chat/completions?api-version=2024-10-21"
    lua = LuaFilter()
    if which == "downstream":
        r = lua.request(_downstream("gemini"), body, path=path, route="r")
    else:
        r = lua.request(_attempt("gemini"), body, path=path, route="x", headers={"x-envoy-attempt-count": "1"},
                        metadata={"llmc:client_path": path, "llmc:failover": True})
    assert r.status is None, r.response_body
    assert r.headers[":path"] == want


def test_an_openai_provider_still_gets_the_clients_query():
    r = LuaFilter().request(_downstream("openai"), CLIENT, path="/v1/chat/completions?trace=1", route="r")
    assert r.status is None and r.headers[":path"] == "/v1/chat/completions?trace=1"
