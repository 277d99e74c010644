"""The benchmark's own pieces (no timings here): bodies, wrk parsing, the filter variants, sections."""

from __future__ import annotations

import http.server
import json
import subprocess
import threading

import pytest
from lupa import luajit21

from tests.bench import __main__ as bench
from tests.bench import bodies
from tests.bench.calls import VARIANTS, variant_source
from tests.bench.rig import WRK_PACE, WRK_SCRIPT, parse_wrk, worktree_lua
from tests.conftest import require_tool


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


def test_a_paced_load_offers_no_more_than_its_rate(tmp_path):
    """The limits section compares variants at one offered rate (WRK_PACE). Pacing can only hold
    wrk back, so the bound below does not depend on the machine's speed; a closed loop against the
    same server exceeds it many times over."""
    class Ok(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    wrk = require_tool("wrk")  # .ci/run installs it
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    body = tmp_path / "body.json"
    body.write_bytes(b'{"messages":[]}')
    try:
        def run(pace: str) -> int:
            script = tmp_path / "s.lua"
            script.write_text(WRK_SCRIPT.format(host="h", body=body, cap=10**6, status="") + pace)
            out = subprocess.run([wrk, "-t1", "-c4", "-d2s", "-s", str(script),
                                  f"http://127.0.0.1:{server.server_address[1]}/"],
                                 capture_output=True, text=True, check=True, timeout=60).stdout
            return parse_wrk(out)["completed"]

        paced = run(WRK_PACE.format(rate=20))
        assert 0 < paced <= 20 * 2 + 4 + 10, paced  # rate x duration, one per connection, slack
        assert run("") > 3 * (20 * 2 + 14)
    finally:
        server.shutdown()


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


def test_steps_compares_a_revision_with_its_listed_parent_else_the_row_above():
    from tests.bench.steps import parent_of

    assert parent_of("HEAD", ["HEAD~1", "HEAD"]) == "HEAD~1"
    assert parent_of("HEAD", ["HEAD~2", "HEAD"]) is None  # not listed: the caller takes the row above
    assert parent_of("HEAD~1", ["HEAD~1", "HEAD"]) is None


def test_steps_table_names_each_revision_with_its_ratios():
    from tests.bench.steps import format as fmt

    cell = {"median": 1.5, "min": 1.4, "max": 1.6, "n": 3}
    row = {"rev": "abc", "subject": "abc1234 Fewer calls", "cpu_us": {**cell, "median": 120.0, "min": 110.0,
                                                                      "max": 130.0},
           "before": "def", "vs_passthrough": cell, "vs_previous": {**cell, "median": 0.81},
           "rps_vs_passthrough": {**cell, "median": 0.66}}
    out = fmt({"rounds": 3, "seconds": 3.0, "bodies": [{"body": "1k", "bytes": 891, "steps": [row],
                                                         "passthrough_cpu_us": {**cell, "median": 80.0}}]})
    line = next(ln for ln in out.splitlines() if "Fewer calls" in ln)
    assert "120.0 (110.0–130.0)" in line and "1.50 (1.40–1.60)" in line and "0.810" in line and "0.66" in line
    assert "1 KiB: passthrough 80.0" in out


def test_the_mock_provider_answers_json_like_a_provider():
    """Envoy's direct responses say text/plain; a provider says application/json, and llmc's response
    path reads only JSON and event streams: the bench must measure the read it does in production."""
    from tests.bench.rig import upstream_bootstrap

    boot = upstream_bootstrap("cert.pem", "key.pem")
    (chain,) = boot["static_resources"]["listeners"][0]["filter_chains"]
    routes = chain["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    assert [r["direct_response"]["status"] for r in routes] == [429, 200]
    for r in routes:
        (h,) = r["response_headers_to_add"]
        assert h == {"header": {"key": "content-type", "value": "application/json"},
                     "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}


def test_the_size_sections_failover_mesh_compiles_to_one_rule_of_n_providers():
    from compiler.options import parse_options
    from compiler.pipeline import compile_text
    from tests.bench.size import failover_mesh

    result = compile_text(failover_mesh(3), parse_options(istio_version="1.31")[0], "f.yaml")
    assert result.ok
    efs = {o["metadata"]["name"] for o in result.objects if o["kind"] == "EnvoyFilter"}
    assert "llmc-failover" in efs
    (rule,) = [h for o in result.objects if o["kind"] == "VirtualService" for h in o["spec"]["http"]
               if len(h.get("route", [])) == 3][:1]
    assert [d["destination"]["host"] for d in rule["route"]] == [f"p{i}.example.com" for i in range(3)]
