"""Unit tests (LuaJIT via lupa) for the data-plane hardening of templates/lua/llmc.lua.

Differential fuzzing of the JSON scanner and rewriter against Python's ``json`` on bytes (invalid
UTF-8 included), the scanner's work growing linearly with the body, the stream decision table, and
error replies attributed to their rule and provider.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from lupa import luajit21

from compiler.luabundle import module_source
from compiler.protocols import OPENAI
from compiler.translate.envoyfilter import buffer_limit, lua_source
from tests.support.lua import LuaFilter

_LUA = LuaFilter()


def _reject_constant(_):
    raise ValueError("non-standard constant")


def python_accepts(raw: bytes) -> bool:
    """What a provider's JSON parser accepts: UTF-8 text holding one JSON object, standard constants."""
    try:
        return isinstance(json.loads(raw.decode("utf-8"), parse_constant=_reject_constant), dict)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False


def lua_rewrite(raw: bytes, fields: list) -> tuple[bytes | None, str | None]:
    result = _LUA.M.rewrite(raw, _LUA.table([list(f) for f in fields]))
    out, err = result if isinstance(result, tuple) else (result, None)
    if isinstance(out, str):
        out = out.encode("utf-8", "surrogateescape")
    return out, err


# Bodies as bytes: valid JSON of arbitrary objects, then byte-level damage (cuts, inserted bytes,
# including invalid UTF-8 and control bytes) so both sides see the same near-miss inputs.
JSON_SCALARS = (st.none() | st.booleans() | st.integers(-2**53, 2**53)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text())
JSON_VALUES = st.recursive(JSON_SCALARS, lambda c: st.lists(c, max_size=4)
                           | st.dictionaries(st.text(max_size=6), c, max_size=4), max_leaves=20)
OBJECTS = st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=6)
ENCODED = st.builds(lambda o, a, i: json.dumps(o, ensure_ascii=a, indent=i).encode(), OBJECTS, st.booleans(),
                    st.sampled_from([None, 1]))
INSERTS = st.sampled_from([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe4\xbd", b"\x01",
                           b"\n", b"\\", b'"', b"\\u12", b"\xe4\xbd\xa0", b"\xf0\x9f\x98\x80", b"\x7f"])


@st.composite
def damaged(draw) -> bytes:
    raw = draw(ENCODED)
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(INSERTS) + raw[at:]
    if draw(st.booleans()) and raw:
        raw = raw[: draw(st.integers(0, len(raw)))]
    return raw


@settings(max_examples=1500, deadline=None)
@given(raw=damaged())
@example(raw=b'{"a":"\xff"}')
@example(raw=b'{"a":"\xc3\xa9\xe4\xbd\xa0\xf0\x9f\x98\x80"}')
@example(raw=b'{"a":"\xed\xa0\x80"}')  # an encoded surrogate is not UTF-8
@example(raw=b'{"a":"\xf4\x90\x80\x80"}')  # above U+10FFFF
@example(raw=b'{"a":"\xe0\x80\xaf"}')  # overlong
@example(raw=b'{"a":"x\xe4\xbd"}')  # truncated at the end of a string
@example(raw=b'{"\xff":1}')
def test_validity_agrees_with_python_on_bytes(raw):
    out, err = lua_rewrite(raw, [])
    assert (err is None) == python_accepts(raw), (raw, err)
    if err is None:
        assert out == raw


# The validator reads eight bytes at a time while they are plain ASCII: put each kind of byte at
# every offset of a word, in strings long enough for the word path, and at a body's last bytes.
WORD_INSERTS = [b"\x00", b"\x1f", b"\x7f", b"\x80", b"\xbf", b"\xc2\xa9", b"\xe4\xbd\xa0", b"\xf0\x9f\x98\x80",
                b"\xed\xa0\x80", b"\xc0\xaf", b"\xff", b"\xe4\xbd", b" ", b"~"]


@pytest.mark.parametrize("insert", WORD_INSERTS, ids=lambda b: b.hex())
def test_validity_agrees_with_python_at_every_offset_of_a_word(insert):
    for lead in range(0, 18):
        for tail in (0, 1, 7, 8, 9):
            raw = b'{"k":"' + b"a" * lead + insert + b"b" * tail + b'"}'
            out, err = lua_rewrite(raw, [])
            assert (err is None) == python_accepts(raw), (raw, err)


@given(raw=ENCODED, model=st.text(), drop=st.sets(st.sampled_from(["stream", "stream_options", "n", "messages"])),
       add=st.dictionaries(st.sampled_from(["stream", "temperature", "model"]), JSON_SCALARS, max_size=2))
def test_set_and_delete_agree_with_python(raw, model, drop, add):
    """Setting and deleting top-level members gives what Python's json makes of the same edit."""
    fields = [("model", json.dumps(model))] + [(k, False) for k in sorted(drop)]
    fields += [(k, json.dumps(v)) for k, v in sorted(add.items()) if k != "model" and k not in drop]
    out, err = lua_rewrite(raw, fields)
    assert err is None
    expected = json.loads(raw)
    for k, v in fields:
        if v is False:
            expected.pop(k, None)
        else:
            expected[k] = json.loads(v)
    assert json.loads(out) == expected


@pytest.mark.parametrize("body,expected", [
    ('{"stream_options":{"a":1},"messages":[]}', '{"messages":[]}'),
    ('{"messages":[] , "stream_options":{}}', '{"messages":[]}'),
    ('{ "stream_options":1 }', '{ }'),
    ('{"stream_options":1,"stream_options":2,"x":1}', '{"x":1}'),
    ('{"a":1,"stream_options":1,"b":2}', '{"a":1,"b":2}'),
])
def test_delete_is_byte_exact(body, expected):
    assert lua_rewrite(body.encode(), [("stream_options", False)]) == (expected.encode(), None)


class FindCounter:
    """The filter loaded in a LuaJIT whose string.find counts the bytes each plain search examines."""

    def __init__(self) -> None:
        self.lua = luajit21.LuaRuntime(unpack_returned_tuples=True)
        self.lua.execute("""
          scanned = 0
          local find = string.find
          string.find = function(s, p, init, plain)
            local a, b = find(s, p, init, plain)
            scanned = scanned + ((a or #s + 1) - (init or 1) + 1)
            return a, b
          end""")
        self.M = self.lua.execute(lua_source())

    def work(self, body: str) -> int:
        self.lua.execute("scanned = 0")
        out = self.M.rewrite(body, self.lua.table_from([]))
        assert not isinstance(out, tuple), out
        return self.lua.globals().scanned


@pytest.mark.parametrize("unit", ["\\u4f60\\u597d", "- item\\n", '\\"q\\"'])
def test_scanning_work_grows_linearly_with_escapes(unit):
    """Bytes examined by string.find for a body of n escapes: 8x the escapes, at most ~8x the work
    (the quadratic scanner searched for the closing quote afresh after every escape: ~64x)."""
    counter = FindCounter()

    def body(n: int) -> str:
        return '{"messages":[{"role":"user","content":"' + unit * n + '"}]}'

    small, large = counter.work(body(4000)), counter.work(body(32000))
    assert large <= 9 * small, (small, large)


PROTOCOLS = {"openai": OPENAI.context()}


def ctx(**backend) -> dict:
    b = {"provider": "p", "protocol": "openai", "host": "h.example.com", "path": "/v1/chat/completions", "weight": 1,
         "max_body": 1 << 20, **backend}
    return {"id": json.dumps(b, sort_keys=True), "route": "default/r", "pin_header": "x-llmc-provider", "protocols": PROTOCOLS,
            "buffer_limit": buffer_limit(b["max_body"]), "routes": {"llmc/default/r/r": "r"},
            "rules": {"r": {"backends": [b]}}}


ABSENT = object()


# (configured stream, include_usage, client's stream, client's stream_options) ->
# (stream the provider gets, stream_options the provider gets)
STREAM_CASES = [
    (None, False, ABSENT, ABSENT, ABSENT, ABSENT),
    (None, False, True, {"include_usage": True}, True, {"include_usage": True}),
    (None, False, False, {"include_usage": True}, False, ABSENT),   # OpenAI rejects options without stream
    (None, False, ABSENT, {"include_usage": True}, ABSENT, ABSENT),
    (False, True, ABSENT, ABSENT, False, ABSENT),
    (False, True, True, {"include_usage": True}, True, {"include_usage": True}),  # the client's choice wins
    (False, True, True, ABSENT, True, ABSENT),
    (False, True, ABSENT, {"include_usage": True}, False, ABSENT),
    (True, True, ABSENT, ABSENT, True, {"include_usage": True}),    # llmc turned streaming on: ask for usage
    (True, False, ABSENT, ABSENT, True, ABSENT),                    # ... unless streamIncludeUsage: false
    (True, True, ABSENT, {"include_usage": False}, True, {"include_usage": False}),
    (True, True, False, ABSENT, False, ABSENT),                     # the client's choice wins
    (True, True, False, {"include_usage": True}, False, ABSENT),
    (True, True, True, ABSENT, True, ABSENT),                       # the client streams by itself: as sent
]


@pytest.mark.parametrize("configured,usage,client,options,want_stream,want_options", STREAM_CASES)
def test_stream_decision(configured, usage, client, options, want_stream, want_options):
    backend = {"model": "m"}
    if configured is not None:
        backend["stream"] = configured
    if configured and usage:
        backend["include_usage"] = True
    req = {"messages": []}
    if client is not ABSENT:
        req["stream"] = client
    if options is not ABSENT:
        req["stream_options"] = options
    r = _LUA.request(ctx(**backend), json.dumps(req))
    assert r.status is None, r.response_body
    sent = json.loads(r.body)
    assert sent.get("stream", ABSENT) == want_stream
    assert sent.get("stream_options", ABSENT) == want_options


@pytest.mark.parametrize("value", ['"yes"', "1", "null", "{}"])
def test_non_boolean_stream_is_400_naming_the_param(value):
    r = _LUA.request(ctx(model="m"), '{"messages":[],"stream":' + value + "}")
    assert r.status == 400
    err = json.loads(r.response_body)["error"]
    assert err["param"] == "stream" and err["code"] == "invalid_json"


def test_duplicate_stream_members_count_as_providers_read_them():
    r = _LUA.request(ctx(model="m", stream=False), '{"stream":false,"messages":[],"stream":true}')
    assert r.body == '{"stream":true,"messages":[],"model":"m"}'


def test_invalid_utf8_in_a_string_is_400():
    r = _LUA.request(ctx(model="m"), b'{"messages":[{"role":"user","content":"caf\xe9"}]}')
    assert r.status == 400
    assert "invalid UTF-8" in json.loads(r.response_body)["error"]["message"]


def test_error_replies_are_attributed_to_rule_and_provider():
    r = _LUA.request(ctx(model="m"), "not json")
    assert r.status == 400
    # recorded before the body is read: the model the request would have carried
    assert r.metadata == {"llmc:rule": "default/r/r", "llmc:provider": "p", "llmc:request_model": "m",
                          "llmc:gen_ai_provider": "p"}  # the context names none: the LLMProvider's name
    # the same on every reply of llmc's once the provider is known: 413 by Content-Length, 503 no key
    r = _LUA.request(ctx(model="m", max_body=1024), "{}", headers={"content-length": "5000"})
    assert r.status == 413 and r.metadata["llmc:request_model"] == "m"
    r = _LUA.request(ctx(model="m", api_key_file="/nonexistent/key"), "{}")
    assert r.status == 503 and r.metadata["llmc:request_model"] == "m"
    r = _LUA.request(ctx(model="m"), "{}", method="GET")
    assert r.status == 405 and r.metadata == {"llmc:rule": "default/r/r"}  # before a provider is picked


def test_shaped_requests_ask_for_an_uncompressed_response():
    r = _LUA.request(ctx(model="m"), "{}", headers={"accept-encoding": "gzip, deflate"})
    assert r.status is None and r.headers["accept-encoding"] == "identity"


def test_a_body_that_outgrows_the_buffer_is_json_413():
    c = ctx(model="m" * 70000, max_body=1000)
    r = _LUA.request(c, '{"messages":[]}')
    assert r.status == 413 and json.loads(r.response_body)["error"]["code"] == "request_too_large"


def test_client_sent_pin_of_a_pinned_route_is_400():
    c = ctx(model="m")
    c["id"] = "two-pinned-backends"
    c["rules"]["r"]["backends"].append({**c["rules"]["r"]["backends"][0], "provider": "q"})
    for i, b in enumerate(c["rules"]["r"]["backends"]):
        b["pin"] = f"llmc/default/r/r/{b['provider']}"
        b["weight"] = i + 1
    r = _LUA.request(c, "{}", headers={"x-llmc-provider": "llmc/default/r/r/q"}, route="llmc/default/r/r/q")
    assert r.status == 400 and json.loads(r.response_body)["error"]["code"] == "reserved_header"
    assert r.cleared == 0


def test_protocol_facts_come_from_the_context():
    """The auth header, its prefix and fixed headers are data (a protocol record), not code."""
    c = ctx(model="m", api_key="sk-1", protocol="gw")
    c["id"] = "protocol-gw"
    c["protocols"] = {"gw": {"auth_header": "x-api-key", "auth_prefix": "", "usage": "openai",
                             "headers": {"x-api-version": "7"}}}
    r = _LUA.request(c, "{}", headers={"authorization": "Bearer app"})
    assert r.status is None
    assert r.headers["x-api-key"] == "sk-1" and r.headers["x-api-version"] == "7"
    # A configured key in another header replaces the client's credential: the app's own
    # Authorization (its key for llmc or another provider) never reaches this provider.
    assert "authorization" not in r.headers
    r = _LUA.request({**c, "id": "protocol-gw-nokey", "rules": {"r": {"backends": [
        {k: v for k, v in c["rules"]["r"]["backends"][0].items() if k != "api_key"}]}}}, "{}",
        headers={"authorization": "Bearer app"})
    assert r.status is None and "x-api-key" not in r.headers
    assert r.headers["authorization"] == "Bearer app"  # no key configured: the client's passes


def test_a_client_key_moves_to_the_protocols_header_when_none_is_configured():
    """Anthropic-style records (`client_key`): the openai SDK's bearer token becomes x-api-key."""
    c = ctx(model="m", protocol="gw")
    c["id"] = "protocol-gw-client-key"
    c["protocols"] = {"gw": {"auth_header": "x-api-key", "auth_prefix": "", "usage": "openai",
                             "headers": {}, "client_key": True}}
    r = _LUA.request(c, "{}", headers={"authorization": "Bearer sk-app"})
    assert r.status is None and r.headers["x-api-key"] == "sk-app" and "authorization" not in r.headers
    r = _LUA.request(c, "{}", headers={"authorization": "Basic abc"})
    assert r.status is None and "x-api-key" not in r.headers and r.headers["authorization"] == "Basic abc"


def test_a_backend_refines_its_protocols_auth_header_and_headers():
    """openAIConfig.authHeader/authPrefix and per-backend headers (anthropic-version) from the context."""
    c = ctx(model="m", api_key="sk-1", auth_header="x-gw-key", auth_prefix="Key ",
            headers={"x-extra": "1"})
    c["id"] = "backend-auth"
    r = _LUA.request(c, "{}", headers={"authorization": "Bearer app"})
    assert r.status is None and r.headers["x-gw-key"] == "Key sk-1" and r.headers["x-extra"] == "1"
    assert "authorization" not in r.headers


def test_the_luas_constants_equal_the_pythons():
    import re

    from compiler import telemetry

    assert re.search(r'^local METADATA_NS = "(\w+)"$', module_source("context"), re.M).group(1) == telemetry.NS


def routable_model(raw: str, limit: int = 256):
    members = _LUA.M.scan_object(raw)
    if isinstance(members, tuple):
        members = members[0]
    assert members is not None, raw
    result = _LUA.M.routable_field(raw, members, "model", limit)
    return result[0] if isinstance(result, tuple) else result


@pytest.mark.parametrize("raw,expected", [
    ('{"model":"gpt-4o"}', "gpt-4o"),
    ('{"\\u006dodel":"escaped-key"}', "escaped-key"),           # keys compare decoded
    ('{"model":"a\\u002fb"}', "a/b"),                            # so do values
    ('{"model":"first","x":1,"model":"last"}', "last"),          # duplicates: the last, as providers read it
    ('{"model":"first","model":7}', None),                       # ... even when it is not a string
    ('{"meta":{"model":"nested"}}', None),                       # nested `model` keys are ignored
    ('{"model":null}', None),
    ('{"model":"tab\\there"}', None),                            # control characters match nothing
    ('{"model":"' + "m" * 257 + '"}', None),                     # longer than the limit
    ('{"model":"' + "m" * 256 + '"}', "m" * 256),
    ('{"model":"\\u4f60\\u597d"}', "\u4f60\u597d"),
])
def test_routable_model(raw, expected):
    assert routable_model(raw) == expected


KEYS = st.sampled_from(["model", "messages", "\\u006dodel", "x"])


@settings(max_examples=400, deadline=None)
@given(pairs=st.lists(st.tuples(KEYS, JSON_SCALARS), max_size=6))
def test_routable_model_agrees_with_python(pairs):
    raw = "{" + ",".join(f'"{k}":{json.dumps(v)}' for k, v in pairs) + "}"
    value = json.loads(raw).get("model")
    ok = isinstance(value, str) and len(value.encode()) <= 256 and not any(ord(c) < 32 or ord(c) == 127 for c in value)
    assert routable_model(raw) == (value if ok else None)


def _without_string_buffer() -> LuaFilter:
    """The filter loaded in a LuaJIT where require("string.buffer") fails (older LuaJIT builds)."""
    f = LuaFilter.__new__(LuaFilter)
    f.lua = luajit21.LuaRuntime(unpack_returned_tuples=True)
    f.lua.execute('package.loaded["string.buffer"] = nil; '
                  'package.preload["string.buffer"] = function() error("no string.buffer here") end')
    f.M = f.lua.execute(lua_source())
    return f


_NO_BUFFER = _without_string_buffer()


@given(raw=ENCODED, model=st.text())
def test_the_rewrite_is_the_same_without_string_buffer(raw, model):
    fields = [["model", json.dumps(model)], ["stream_options", False], ["stream", "true"]]
    with_buffer = _LUA.M.rewrite(raw, _LUA.table(fields))
    without = _NO_BUFFER.M.rewrite(raw, _NO_BUFFER.table(fields))
    assert with_buffer == without
    assert json.loads(with_buffer)["model"] == model


def test_the_fallback_really_has_no_string_buffer():
    assert _NO_BUFFER.lua.eval('(pcall(require, "string.buffer"))') is False
    assert (_NO_BUFFER.M.assembly, _LUA.M.assembly) == ("concat", "string.buffer")
