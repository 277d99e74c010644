"""Unit tests of templates/lua/llmc.lua under LuaJIT (lupa), with a fake Envoy handle.

The end-to-end tests in test_envoy_e2e.py run the same file in a real Envoy; these are the fast,
exhaustive ones: JSON scanning against Python's json module, byte preservation, every request
error, weighting, keys, and config values travelling from LLMProvider YAML to the request.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from compiler import Options, compile_text
from compiler.emit import dump_yaml
from compiler.protocols import OPENAI
from compiler.translate.envoyfilter import buffer_limit
from tests.support.flow import to_flow
from tests.support.lua import LuaFilter


@pytest.fixture(scope="module")
def lua() -> LuaFilter:
    return LuaFilter()


PROTOCOLS = {"openai": OPENAI.context()}


def ctx(**backend) -> dict:
    """A virtual host context with one single-provider rule ``r`` on route ``llmc/default/r/r``."""
    b = {"provider": "p", "protocol": "openai", "host": "h.example.com", "path": "/v1/chat/completions", "weight": 1,
         "max_body": 1 << 20, **backend}
    return {"id": json.dumps(b, sort_keys=True), "route": "default/r", "pin_header": "x-llmc-provider", "protocols": PROTOCOLS,
            "buffer_limit": buffer_limit(b["max_body"]), "routes": {"llmc/default/r/r": "r"},
            "rules": {"r": {"backends": [b]}}}


JSON_SCALARS = (st.none() | st.booleans() | st.integers(-2**53, 2**53)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text())
JSON_VALUES = st.recursive(JSON_SCALARS, lambda c: st.lists(c, max_size=5)
                           | st.dictionaries(st.text(max_size=8), c, max_size=5), max_leaves=25)
OBJECTS = st.dictionaries(st.text(max_size=10), JSON_VALUES, max_size=8)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(obj=OBJECTS, model=st.text(), stream=st.booleans(), indent=st.sampled_from([None, 0, 2]),
       ascii_only=st.booleans())
@example(obj={"model": {"model": "nested"}, "messages": []}, model="x", stream=True, indent=None,
         ascii_only=False)
def test_rewrite_changes_only_model_and_stream(lua, obj, model, stream, indent, ascii_only):
    body = json.dumps(obj, indent=indent, ensure_ascii=ascii_only)
    out, err = lua.rewrite(body, [("model", json.dumps(model, ensure_ascii=False)),
                                  ("stream", "true" if stream else "false")])
    assert err is None
    assert json.loads(out) == {**obj, "model": model, "stream": stream}


@given(obj=OBJECTS.filter(lambda o: "model" not in o and "stream" not in o and o))
def test_rewrite_preserves_every_other_byte(obj):
    lua = _LUA
    body = json.dumps(obj, ensure_ascii=True, indent=1)
    out, _ = lua.rewrite(body, [("model", '"m"')])
    close = body.rindex("}")
    last = body[:close].rstrip()
    assert out == last + ',"model":"m"' + body[len(last):]


_LUA = LuaFilter()


def test_rewrite_examples_byte_exact(lua):
    cases = [
        ('{"messages":[{"role":"user","content":"\\u4f60\\u597d"}],"temperature":0.5e-1,"tools":[]}',
         '{"messages":[{"role":"user","content":"\\u4f60\\u597d"}],"temperature":0.5e-1,"tools":[],'
         '"model":"qwen"}'),
        ('{"model":"client", "messages":[]}', '{"model":"qwen", "messages":[]}'),
        ('{"a":{"model":"keep"},"model" : "x" ,"model":"y"}', '{"a":{"model":"keep"},"model" : "qwen"}'),
        ('{"\\u006dodel":"escaped-key"}', '{"\\u006dodel":"qwen"}'),
        ('  {}  ', '  {"model":"qwen"}  '),
        ('{"n":-0.0E+5,"big":123456789012345678901234567890}',
         '{"n":-0.0E+5,"big":123456789012345678901234567890,"model":"qwen"}'),
    ]
    for body, expected in cases:
        out, err = lua.rewrite(body, [("model", '"qwen"')])
        assert (out, err) == (expected, None), body


JSONISH = st.text(alphabet='{}[]",:0123456789.eE+-tfrueanl \\u/bx\n\t\x01é', max_size=40)


@settings(max_examples=2000, deadline=None)
@given(text=JSONISH | st.builds(lambda o: json.dumps(o)[:-1], OBJECTS))
@example(text='{"a":1}x')
@example(text='{"a":01}')
@example(text='{"a":"\\x"}')
@example(text='{"a":"\t"}')
@example(text="{'a':1}")
@example(text='{"a":NaN}')
@example(text='{"a":[1,]}')
def test_validity_agrees_with_python_json(text):
    def reject(_):
        raise ValueError("non-standard constant")

    try:
        ok_py = isinstance(json.loads(text, parse_constant=reject), dict)
    except ValueError:
        ok_py = False
    out, err = _LUA.rewrite(text, [])
    assert (err is None) == ok_py, (text, err)


def test_deep_nesting_is_rejected_not_crashing(lua):
    body = '{"a":' + "[" * 200 + "]" * 200 + "}"
    out, err = lua.rewrite(body, [])
    assert out is None and "too deep" in err


@settings(max_examples=60, deadline=None)
@given(model=st.text(min_size=1), key=st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7e),
                                                   min_size=8))
@example(model='q"\n]]\\u0000 中文 \U0001F600', key="sk-]]--[[x")
def test_config_values_reach_the_request_exactly(model, key):
    """LLMProvider YAML → llmc render → filter_context → Lua → request body and header."""
    provider = {"apiVersion": "istio.alibabacloud.com/v1beta1", "kind": "LLMProvider",
                "metadata": {"name": "p"}, "spec": {"host": "p.example.com", "path": "/v1/chat/completions",
                "configs": {"defaultConfig": {"openAIConfig": {"model": model, "apiKey": key}}}}}
    result = compile_text(to_flow(provider), Options())
    assert result.ok, result.diagnostics.format_text()
    objects = list(YAML(typ="safe").load_all(dump_yaml(result.objects)))
    patch = next(o for o in objects if o["kind"] == "EnvoyFilter" and o["metadata"]["name"] != "llmc-filter")
    assert patch["spec"]["configPatches"][0]["applyTo"] == "VIRTUAL_HOST"
    value = patch["spec"]["configPatches"][0]["patch"]["value"]
    context = value["typed_per_filter_config"]["llmc.lua"]["filter_context"]
    reply = _LUA.request(context, '{"messages":[{"role":"user","content":"hi"}]}')
    assert reply.status is None
    assert json.loads(reply.body)["model"] == model
    assert reply.headers["authorization"] == f"Bearer {key}"


def test_errors_are_openai_format(lua):
    c = ctx(model="m", api_key="sk-secret-value", max_body=2048)
    cases = [
        (dict(body='{"messages":[]}', method="GET"), 405, "method_not_allowed"),
        (dict(body=None), 400, "invalid_json"),
        (dict(body=""), 400, "invalid_json"),
        (dict(body="[1,2]"), 400, "invalid_json"),
        (dict(body='"text"'), 400, "invalid_json"),
        (dict(body='{"messages": [}'), 400, "invalid_json"),
        (dict(body="x" * 4096), 413, "request_too_large"),
        (dict(body="x" * 4096, headers={"content-length": "100"}), 413, "request_too_large"),
    ]
    for kwargs, status, code in cases:
        r = lua.request(c, **kwargs)
        assert r.status == status, kwargs
        err = json.loads(r.response_body)["error"]
        assert err["code"] == code and err["message"].startswith("llmc: ")
        assert set(err) == {"message", "type", "param", "code"}
        assert "sk-secret-value" not in r.response_body
        assert "authorization" not in r.headers, "a rejected request is never half-rewritten"


def test_success_shapes_path_headers_and_metadata(lua):
    r = lua.request(ctx(model="qwen", stream=False, api_key="k1"), '{"messages":[]}',
                    headers={"authorization": "Bearer client", "content-type": "text/plain"},
                    path="/anything?api-version=2")
    assert r.status is None
    assert r.headers[":path"] == "/v1/chat/completions?api-version=2"
    assert r.headers["authorization"] == "Bearer k1"
    assert r.headers["content-type"] == "application/json"
    assert json.loads(r.body) == {"messages": [], "model": "qwen", "stream": False}
    assert r.metadata == {"llmc:provider": "p", "llmc:request_model": "qwen", "llmc:rule": "default/r/r",
                          "llmc:gen_ai_provider": "p"}  # the context names none: the LLMProvider's name


def test_unknown_route_on_an_llmc_vhost_fails_closed(lua):
    r = lua.request(ctx(model="m", api_key="k"), '{"messages":[]}', route="someone-elses-route")
    assert r.status == 500
    assert json.loads(r.response_body)["error"]["code"] == "llmc_route_unknown"
    assert "authorization" not in r.headers


def test_without_configured_key_the_clients_header_passes(lua):
    r = lua.request(ctx(model="m"), "{}", headers={"authorization": "Bearer own"})
    assert r.headers["authorization"] == "Bearer own"


def test_no_context_means_untouched(lua):
    r = lua.request(None, "not json at all", method="GET")
    assert r.status is None and r.body == "not json at all" and r.headers[":path"] == "/"


def test_internal_errors_become_500_without_details(lua):
    broken = ctx(model="m")
    broken["rules"]["r"]["backends"][0]["path"] = None  # impossible from the compiler; forces a Lua error
    broken["id"] = "broken"
    r = lua.request(broken, "{}")
    assert r.status == 500
    assert json.loads(r.response_body)["error"]["code"] == "llmc_internal_error"
    assert any("llmc: internal error" in log for log in r.logs)


def weighted_ctx(weights: dict[str, int]) -> dict:
    """Rule ``split``: entry route ``llmc/default/r/split`` and one pinned route per provider."""
    backends = [{"provider": n, "protocol": "openai", "host": f"{n}.example.com", "path": f"/{n}", "weight": w,
                 "max_body": 1 << 20, "model": f"model-{n}", "api_key": f"key-{n}",
                 "pin": f"llmc/default/r/split/{n}"} for n, w in weights.items()]
    return {"id": json.dumps(weights), "route": "default/r", "pin_header": "x-llmc-provider", "protocols": PROTOCOLS,
            "buffer_limit": buffer_limit(1 << 20), "routes": {"llmc/default/r/split": "split"},
            "rules": {"split": {"backends": backends}}}


def test_weighted_pick_is_exact_over_the_unit_interval(lua):
    by_route = lua.M.prepare(lua.lua.eval("function(t) return function(k) return t[k] end end")(
        lua.table(weighted_ctx({"a": 1, "b": 3}))))
    cfg = by_route.by_route["llmc/default/r/split"]
    assert by_route.by_route["llmc/default/r/split/a"].pinned  # pinned routes are only reached by the pin
    picks = [lua.M.pick(cfg, i / 1000).provider for i in range(1000)]
    assert picks.count("a") == 250 and picks.count("b") == 750


def test_weighted_request_is_shaped_for_the_picked_provider(lua):
    seen = {}
    for _ in range(200):
        r = lua.request(weighted_ctx({"a": 50, "b": 50}), '{"messages":[]}', route="llmc/default/r/split")
        p = r.headers["x-llmc-provider"].rsplit("/", 1)[1]
        seen[p] = seen.get(p, 0) + 1
        assert r.cleared == 1
        assert r.headers[":path"] == f"/{p}"
        assert r.headers["authorization"] == f"Bearer key-{p}"
        assert json.loads(r.body)["model"] == f"model-{p}"
    # 200 fair coin flips: P(outside 70..130) < 3e-5
    assert 70 <= seen.get("a", 0) <= 130, seen


def test_key_file_is_read_trimmed_and_rotated(lua, tmp_path):
    key = tmp_path / "key"
    key.write_text("sk-one\n")
    b = lua.table({"api_key_file": str(key)})
    now = math.floor(time.time())
    assert lua.M.api_key(b, now) == "sk-one"
    key.write_text("sk-two")
    assert lua.M.api_key(b, now) == "sk-one"  # cached within the TTL
    assert lua.M.api_key(b, now + 1) == "sk-two"
    os.remove(key)
    assert lua.M.api_key(b, now + 2) is None


def test_missing_key_file_is_503_without_forwarding(lua, tmp_path):
    c = ctx(model="m", api_key_file=str(tmp_path / "absent"))
    r = lua.request(c, '{"messages":[]}')
    assert r.status == 503
    assert json.loads(r.response_body)["error"]["code"] == "api_key_unavailable"


def test_usage_from_json_response(lua):
    body = '{"id":"x","model":"qwen-turbo-0919","usage":{"prompt_tokens":3,"completion_tokens":72,"total_tokens":75}}'
    assert tuple(lua.M.usage_of(body)) == (3, 72, 75, "qwen-turbo-0919", None)
    assert tuple(lua.M.usage_of('{"usage":"lots","model":7}')) == (None, None, None, None, None)
    assert lua.M.usage_of("not json") is None


# A response-path handle: headers, bodyChunks (counted), dynamic metadata; no filter context
# outside the routes' (the downstream filter's response path needs none).
RESPONSE_HANDLE = """
return function(status, ctype, chunks, clen, stall)
  local hm = { [":status"] = status, ["content-type"] = ctype, ["content-length"] = clen }
  local h = { reads = 0, buffered = 0, md_reads = 0, md_writes = 0, md = {}, hm = hm }
  local headers = { get = function(_, k) return hm[k] end, remove = function(_, k) hm[k] = nil end,
                    replace = function(_, k, v) hm[k] = v end }
  function h:headers() return headers end
  function h:filterContext() return nil end
  function h:timestamp() return 1796603451602 end -- Envoy's clock, ms since the epoch
  function h:bodyChunks()
    h.reads = h.reads + 1
    local i = 0
    return function()
      i = i + 1
      local c = chunks[i]
      -- stall: the stream's end never comes (its client left; Envoy never resumes the script)
      if c == nil and stall then coroutine.yield() end
      if c == nil then return nil end
      return { length = function() return #c end, getBytes = function(_, a, n) return c:sub(a + 1, a + n) end }
    end
  end
  function h:body()
    h.buffered = h.buffered + 1
    local text = table.concat(chunks)
    return { length = function() return #text end, getBytes = function(_, a, n) return text:sub(a + 1, a + n) end }
  end
  local md = { set = function(_, ns, k, v) h.md_writes = h.md_writes + 1; h.md[ns .. ":" .. k] = v end,
               get = function() h.md_reads = h.md_reads + 1; return nil end }
  function h:streamInfo() return { dynamicMetadata = function() return md end } end
  function h:logErr(m) h.err = m end
  return h
end
"""


@pytest.mark.parametrize("status,ctype,read", [
    ("200", "application/json", True), ("200", "application/json; charset=utf-8", True),
    ("201", None, True),  # no content type: read as JSON
    ("429", "application/json", False), ("500", "application/json", False), ("304", None, False),
    ("200", "text/html", False), ("200", "application/octet-stream", False),
    ("200", "Application/JSON; Charset=UTF-8", True)])  # media types ignore case
def test_the_response_path_reads_only_2xx_json_or_event_streams(status, ctype, read):
    """Nothing is read (no bodyChunks(), no metadata) from a response that cannot hold usage, even
    when its body looks like a completion with usage."""
    f = LuaFilter()  # a VM of its own: no earlier request left it marked as an upstream filter's
    new = f.lua.execute(RESPONSE_HANDLE)
    body = '{"model":"m-1","usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}'
    h = new(status, ctype, f.table([body[:20], body[20:]]))
    f.lua.globals().envoy_on_response(h)
    assert h.err is None
    assert h.reads == (1 if read else 0) and h.buffered == 0 and h.md_reads == 0
    assert dict(h.md.items()) == ({"llmc:response_model": "m-1", "llmc:request_prompt_tokens": 3,
                                   "llmc:request_completion_tokens": 4, "llmc:request_total_tokens": 7}
                                  if read else {})


def test_the_failover_mark_is_removed_and_only_failover_responses_read_metadata():
    f = LuaFilter()
    new = f.lua.execute(RESPONSE_HANDLE)
    h = new("200", "application/json", f.table(['{"usage":{"total_tokens":2}}']))
    h.hm["x-llmc-failover"] = "1"  # a failover route's mark; no failover request recorded: a normal response
    f.lua.globals().envoy_on_response(h)
    assert "x-llmc-failover" not in dict(h.hm.items()) and h.err is None
    assert h.md_reads == 1  # the mark makes the response look for the failover request's record
    assert dict(h.md.items()) == {"llmc:request_total_tokens": 2}
    h = new("200", "application/json", f.table(['{"usage":{"total_tokens":2}}']))
    f.lua.globals().envoy_on_response(h)
    assert h.md_reads == 0 and dict(h.md.items()) == {"llmc:request_total_tokens": 2}  # unmarked: no read


def test_event_streams_are_recognised_in_any_case(lua):
    assert lua.M.readable("200", "TEXT/Event-Stream; charset=utf-8") == "sse"
    assert lua.M.readable("204", None) == "json" and lua.M.readable("2000", "application/json") is None


@pytest.mark.parametrize("clen,whole", [("80", True), ("65536", True), ("65537", False), (None, False)])
def test_json_answers_up_to_64_kib_are_read_whole_larger_ones_by_chunks(clen, whole):
    f = LuaFilter()
    new = f.lua.execute(RESPONSE_HANDLE)
    body = '{"model":"m-1","usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}'
    h = new("200", "application/json", f.table([body[:30], body[30:]]), clen)
    f.lua.globals().envoy_on_response(h)
    assert h.err is None and (h.buffered, h.reads) == ((1, 0) if whole else (0, 1))
    assert dict(h.md.items())["llmc:request_total_tokens"] == 7


#: what a stream's first chunk records: when it passed (the unit handle's clock), once
FIRST = {"llmc:first_chunk_ms": 1796603451602}


def stalled_stream(events: list[dict], cuts: list[int] | str | None = None):
    """The unit handle after an OpenAI event stream whose end never comes, in one chunk, split at
    ``cuts``, or with ``cuts="events"`` one event per chunk."""
    f = LuaFilter()
    new = f.lua.execute(RESPONSE_HANDLE)
    lines = [f"data: {json.dumps(e)}\n\n" for e in events]
    text = "".join(lines) + "data: [DONE]\n\n"
    if cuts == "events":
        cuts = list(itertools.accumulate(map(len, lines)))
    bounds = [0, *sorted({c for c in cuts or [] if 0 < c < len(text)}), len(text)]
    h = new("200", "text/event-stream", f.table([text[a:b] for a, b in itertools.pairwise(bounds)]), None, True)
    run = f.lua.eval("function(h) local co = coroutine.create(envoy_on_response); "
                     "local ok, err = coroutine.resume(co, h); return ok, err, coroutine.status(co) end")
    ok, err, state = run(h)
    assert ok and err is None and state == "suspended" and h.err is None
    return h


def test_a_stream_records_usage_as_it_passes_not_at_its_end():
    """The official SDK closes the connection at ``data: [DONE]``; when the provider's stream ends
    after that, Envoy never resumes the script. What passed is recorded already, each value once."""
    events = [{"choices": [{"delta": {"content": "Hel"}}], "model": "m-1", "usage": None},
              {"choices": [{"delta": {"content": "lo"}}], "model": "m-1", "usage": None},
              {"choices": [], "model": "m-1", "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}]
    h = stalled_stream(events, "events")
    assert dict(h.md.items()) == {"llmc:response_model": "m-1", "llmc:request_prompt_tokens": 5,
                                  "llmc:request_completion_tokens": 2, "llmc:request_total_tokens": 7, **FIRST}
    # the first chunk's time, the model when it first passed, the usage when it passed; nothing twice
    assert h.md_writes == 5


def test_usage_in_every_event_costs_the_changed_counts_only():
    """vLLM's continuous_usage_stats: usage in every event. The prompt is written once, completion and
    total when they change, the model once; the values are the last event's."""
    events = [{"choices": [{"delta": {"content": "x"}}], "model": "m-1",
               "usage": {"prompt_tokens": 5, "completion_tokens": n, "total_tokens": 5 + n}} for n in range(1, 11)]
    h = stalled_stream(events, "events")
    assert dict(h.md.items()) == {"llmc:response_model": "m-1", "llmc:request_prompt_tokens": 5,
                                  "llmc:request_completion_tokens": 10, "llmc:request_total_tokens": 15, **FIRST}
    assert h.md_writes == 1 + 2 + 2 * 10
    assert stalled_stream(events).md_writes == 5  # all in one chunk: the last values only


def test_a_later_usage_without_a_field_keeps_the_earlier_value():
    """Each usage field keeps the last value any event gave it (what was recorded is never unset)."""
    events = [{"choices": [], "model": "m-1", "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}},
              {"choices": [], "model": "m-1", "usage": {"completion_tokens": 4, "total_tokens": 9}}]
    h = stalled_stream(events)
    assert dict(h.md.items()) == {"llmc:response_model": "m-1", "llmc:request_prompt_tokens": 5,
                                  "llmc:request_completion_tokens": 4, "llmc:request_total_tokens": 9, **FIRST}
    u = _LUA.M.new_usage(True)
    for e in events:
        u.feed(f"data: {json.dumps(e)}\n\n")
    assert tuple(u.finish())[:4] == (5, 4, 9, "m-1")  # the reader's state is what was recorded


@given(cuts=st.lists(st.integers(1, 600), max_size=8))
def test_a_stream_split_anywhere_records_its_usage_before_its_end(cuts):
    events = [{"choices": [{"delta": {"content": "Hel"}}], "model": "m-1", "usage": None},
              {"choices": [], "model": "m-2", "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}]
    h = stalled_stream(events, cuts)
    assert dict(h.md.items()) == {"llmc:response_model": "m-1", "llmc:request_prompt_tokens": 5,
                                  "llmc:request_completion_tokens": 2, "llmc:request_total_tokens": 7, **FIRST}
    assert h.md_writes == 5


@given(cuts=st.lists(st.integers(1, 400), max_size=8))
def test_usage_from_sse_split_anywhere(cuts):
    events = [{"choices": [{"delta": {"content": "Hel"}}], "model": "m-1", "usage": None},
              {"choices": [], "model": "m-1", "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}]
    stream = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    u = _LUA.M.new_usage(True)
    start = 0
    for cut in sorted(set(cuts)) + [len(stream)]:
        if cut > start:
            u.feed(stream[start:cut])
            start = cut
    assert tuple(u.finish())[:4] == (5, 2, 7, "m-1")


def test_stream_options_added_only_when_llmc_turns_streaming_on(lua):
    c = ctx(model="m", stream=True, include_usage=True)
    added = json.loads(lua.request(c, '{"messages":[]}').body)
    assert added["stream_options"] == {"include_usage": True} and added["stream"] is True
    kept = json.loads(lua.request(c, '{"messages":[],"stream_options":{"include_usage":false}}').body)
    assert kept["stream_options"] == {"include_usage": False}
    plain = json.loads(lua.request(ctx(model="m", stream=True), '{"messages":[]}').body)
    assert "stream_options" not in plain


def test_the_first_non_empty_model_counts():
    """Azure's first streamed chunk with content filtering on (the default) carries "model": ""."""
    first = {"choices": [], "created": 0, "id": "", "model": "", "object": "",
             "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}]}
    events = [first, {"choices": [{"delta": {"content": "Hel"}}], "model": "gpt-4o-2024-11-20", "usage": None},
              {"choices": [], "model": "gpt-4o-2024-11-20",
               "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}]
    for cuts in ("events", None):
        h = stalled_stream(events, cuts)
        assert dict(h.md.items())["llmc:response_model"] == "gpt-4o-2024-11-20"
    u = _LUA.M.new_usage(True)
    u.feed("".join(f"data: {json.dumps(e)}\n\n" for e in events))
    assert tuple(u.finish())[3] == "gpt-4o-2024-11-20"
    assert _LUA.M.usage_of('{"model":"","usage":{"total_tokens":3}}')[3] is None
