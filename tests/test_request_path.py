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
