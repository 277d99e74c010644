"""The benchmark's own pieces (no timings here): bodies, wrk parsing, the filter variants, sections."""

from __future__ import annotations

import json

import pytest
from lupa import luajit21

from tests.bench import __main__ as bench
from tests.bench import bodies
from tests.bench.calls import VARIANTS, variant_source
from tests.bench.rig import parse_wrk, worktree_lua


@pytest.mark.parametrize("name", ["1k", "64k", "1m-cjk", "1m-md"])
def test_bodies_are_chat_requests_at_most_their_size(name):
    data = bodies.body(name)
    nominal = bodies.SIZES[name.partition("-")[0]]
    assert nominal * 0.8 < len(data) <= nominal
    assert json.loads(data)["messages"]
    if name.endswith("-cjk"):
        assert bodies.escapes(data) > len(data) // 7  # nearly every character is a \uXXXX escape
    elif name.endswith("-md"):
        assert data.count(b"\\n") > len(data) // 60
    else:
        assert bodies.escapes(data) == 0


def test_parse_wrk_reads_counts_latency_and_timeouts():
    out = """Running 3s test @ http://127.0.0.1:1/
  1 threads and 4 connections
  Latency Distribution
     50%  412.00us
     75%  500.00us
     90%  800.00us
     99%    1.20ms
  15000 requests in 3.00s, 2.00MB read
  Socket errors: connect 0, read 0, write 0, timeout 3
Requests/sec:   5000.00
"""
    w = parse_wrk(out)
    assert (w["completed"], w["rps"], w["timeouts"]) == (15000, 5000.0, 3)
    assert (w["p50_ms"], w["p99_ms"]) == pytest.approx((0.412, 1.2))


@pytest.mark.parametrize("variant", [v for v, tail in VARIANTS.items() if tail is not None])
def test_filter_variants_load_and_keep_the_module(variant):
    lua = luajit21.LuaRuntime()
    lua.execute(variant_source(worktree_lua(), VARIANTS[variant]))
    g = lua.globals()
    assert g.envoy_on_request is not None
    expects_response = variant in ("+ empty response hook", "llmc as shipped")
    assert (g.envoy_on_response is not None) == expects_response


def test_every_registered_section_has_the_interface():
    for name in bench.available():
        sec = bench.section(name)
        assert all(hasattr(sec, a) for a in ("HELP", "add_arguments", "run", "format")), name
