"""The data-plane test rig: real Envoys laid out like istiod's sidecar, a TLS mock provider, and `wrk`.

* The mock provider is a second Envoy with TLS and the buffer filter: it reads the whole request
  before it answers (a server that answered early would make every request pay a new upstream
  TLS handshake, and the bench would measure handshakes).
* A proxy is the seed mesh's sidecar layout (``tests/support/mesh.py``), either without llmc's
  EnvoyFilters (the passthrough, "limit") or with them and a chosen Lua source: the work tree's,
  one from a git revision, or one of the bench's own variants (``tests/bench/calls.py``).
* One load run is `wrk -t1 -c4` for at most ``seconds`` and ``max_requests``; the proxy's CPU time
  (utime + stime from ``/proc/<pid>/stat``) before and after, divided by completed requests, is the
  CPU per request. A run whose requests time out (e.g. a quadratic scan of an 8 MiB body) is
  recorded as timed out and the proxy is restarted, since its single worker may still be busy.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.bench.common import REPO, cpu_seconds

HOST = "dashscope.aliyuncs.com"
PATH = "/v1/chat/completions"  # what OpenAI clients send (llmc may answer other paths itself, e.g. a model list)
SSE_FIRST_TOKEN_S = 0.02  # a fast model's time to first token is 100 ms and more; 20 ms is strict
FILTER_NAME = "llmc.lua"


#: what the mock provider answers to a request carrying ``x-bench-status: 429`` (``Load.status``)
RATE_LIMITED = json.dumps({"error": {"message": "Rate limit reached for requests", "type": "requests",
                                     "param": None, "code": "rate_limit_exceeded"}})


def upstream_bootstrap(cert: str, key: str) -> dict:
    """A fast TLS upstream: buffers the whole request (like a real server reads it) and answers: a
    completion with usage, or OpenAI's 429 error when the request asks for it (``x-bench-status``)."""
    reply = json.dumps({"id": "x", "object": "chat.completion", "model": "m",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
    hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
                    ".HttpConnectionManager",
           "stat_prefix": "up", "route_config": {"virtual_hosts": [{
               "name": "all", "domains": ["*"], "routes": [
                   {"match": {"prefix": "/", "headers": [{"name": "x-bench-status",
                                                          "string_match": {"exact": "429"}}]},
                    "direct_response": {"status": 429, "body": {"inline_string": RATE_LIMITED}},
                    "response_headers_to_add": [{"header": {"key": "content-type", "value": "application/json"},
                                                 "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]},
                   {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": reply}},
                    "response_headers_to_add": [{"header": {"key": "content-type", "value": "application/json"},
                                                 "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]}]}]},
           "http_filters": [
               {"name": "envoy.filters.http.buffer", "typed_config": {
                   "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
                   "max_request_bytes": 32 << 20}},
               {"name": "envoy.filters.http.router", "typed_config": {
                   "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}
    tls = {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "common_tls_context": {"tls_certificates": [{"certificate_chain": {"filename": cert},
                                                     "private_key": {"filename": key}}]}}}
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            "static_resources": {"listeners": [{
                "name": "upstream", "per_connection_buffer_limit_bytes": 32 << 20,
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [{"transport_socket": tls, "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]}]}}


def lua_filters(bootstrap: dict) -> list[dict]:
    """llmc's Lua filter configs in a layout (one per outbound listener)."""
    found = []
    for listener in bootstrap["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for flt in chain["filters"]:
                for http in flt.get("typed_config", {}).get("http_filters", []):
                    if http["name"] == FILTER_NAME:
                        found.append(http["typed_config"])
    return found


def with_lua(bootstrap: dict, source: str) -> dict:
    """A copy of the llmc layout whose Lua filter runs ``source`` instead of the work tree's file."""
    out = copy.deepcopy(bootstrap)
    filters = lua_filters(out)
    assert filters, "the llmc layout has no llmc.lua filter"
    for cfg in filters:
        (name,) = cfg["source_codes"]
        cfg["source_codes"][name] = {"inline_string": source}
    return out


def lua_at_rev(rev: str) -> str:
    """The seed layout's Lua filter source as committed at git revision ``rev``: templates/lua/llmc.lua
    before the module split, else the bundle of that revision's modules that an OpenAI-only,
    failover-free filter carries (``main`` and what it requires), joined by the work tree's bundler."""
    def show(path: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "show", f"{rev}:{path}"], cwd=REPO, capture_output=True, text=True)

    single = show("templates/lua/llmc.lua")
    if single.returncode == 0:
        return single.stdout
    from compiler.luabundle import ENTRY, bundle_modules, requires_of

    names = subprocess.run(["git", "ls-tree", "--name-only", f"{rev}:templates/lua/llmc"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    sources = {n.removesuffix(".lua"): show(f"templates/lua/llmc/{n}").stdout for n in names if n.endswith(".lua")}
    todo, needed = [ENTRY], set()
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo.extend(requires_of(sources[name]))
    return bundle_modules({n: sources[n] for n in needed})


_LAYOUT_AT_REV = """
import json, sys
from pathlib import Path
from tests.support.mesh import seed_mesh
layout = seed_mesh(json.loads(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))
assert not layout.unmatched, layout.unmatched
sys.stdout.write(json.dumps(layout.bootstrap))
"""


def layout_at_rev(rev: str, workdir: Path, ports: dict[str, int], ca_file: str, secrets_dir: Path) -> dict:
    """llmc's sidecar layout of the seed mesh as git revision ``rev`` builds it: its compiler renders
    the seed (its Lua reads the filter context its own compiler writes) and its test harness lays
    the objects out (a newer compiler may emit what an older harness does not understand)."""
    tree = workdir / f"rev-{re.sub(r'[^A-Za-z0-9_.-]', '_', rev)}"
    tree.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", rev, "compiler", "templates", "samples", "tests"],
                             cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    pkgs = tree / "_pkgs"  # the templates package under its installed name, ahead of the work tree's
    pkgs.mkdir(exist_ok=True)
    if not (pkgs / "llmc_templates").exists():
        (pkgs / "llmc_templates").symlink_to(tree / "templates")
    out = subprocess.run([sys.executable, "-c", _LAYOUT_AT_REV, json.dumps(ports), ca_file, str(secrets_dir)],
                         cwd=tree, env={**os.environ, "PYTHONPATH": f"{pkgs}:{tree}"},
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def worktree_lua() -> str:
    """The work tree's bundle for the seed layout's filter (OpenAI providers, no failover)."""
    from compiler.translate.envoyfilter import lua_source

    return lua_source(["openai"], False)


WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Host"] = "{host}"
wrk.headers["Content-Type"] = "application/json"
{status}local f = assert(io.open("{body}", "rb"))
wrk.body = f:read("*a")
f:close()
local done, cap = 0, {cap}
function response(status, headers, body)
  done = done + 1
  if done >= cap then wrk.thread:stop() end
end
"""

#: Open-loop pacing (``Load.rate``): wrk calls ``delay()`` before each request and waits that many
#: milliseconds; the thread's schedule puts request i at start + i / rate on the monotonic clock
#: (LuaJIT's FFI, as wrk links LuaJIT), so every variant is offered the same rate whatever its
#: latency. A proxy's CPU per request depends on its rate (a slower rate pays the event loop's
#: wake-ups over fewer requests), so variants compared at their own closed-loop rates are not
#: comparable when one of them is held back by something else (the rate-limit double).
WRK_PACE = """
local ffi = require("ffi")
ffi.cdef[[ typedef struct {{ long tv_sec; long tv_nsec; }} llmc_ts; int clock_gettime(int, llmc_ts *); ]]
local ts = ffi.new("llmc_ts")
local interval, due = 1000 / {rate}, nil
function delay()
  ffi.C.clock_gettime(1, ts)
  local now = tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
  due = (due or now) + interval
  return due > now and math.floor(due - now) or 0
end
"""

_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3}


@dataclass
class Run:
    completed: int
    cpu_s: float
    rps: float
    p50_ms: float | None
    p99_ms: float | None
    timed_out: bool
    errors: int = 0

    @property
    def cpu_us_per_request(self) -> float | None:
        return None if self.timed_out or not self.completed else self.cpu_s / self.completed * 1e6


def parse_wrk(out: str) -> dict:
    completed = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {p: float(v) * _UNIT[u] for p, v, u in re.findall(r"\s(50|99)%\s+([\d.]+)(us|ms|s)\b", out)}
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"completed": completed, "rps": rps, "p50_ms": lat.get("50"), "p99_ms": lat.get("99"),
            "timeouts": int(sock.group(4)) if sock else 0,
            "errors": (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, sock.groups()[:3])) if sock else 0)}


@dataclass
class Proxy:
    """A named sidecar Envoy that can be restarted after a run left its worker busy."""

    name: str
    bootstrap: dict
    envoy: object = None

    def start(self) -> Proxy:
        from tests.support.envoy_harness import Envoy

        self.envoy = Envoy(self.bootstrap, concurrency=1)
        return self

    def restart(self) -> None:
        self.envoy.stop()
        self.start()

    @property
    def pid(self) -> int:
        return self.envoy.proc.pid

    @property
    def port(self) -> int:
        return self.envoy.port

    def stop(self) -> None:
        if self.envoy is not None:
            self.envoy.stop()


@dataclass
class Rig:
    """The mock provider, the test CA and the rendered layouts; proxies are started on demand."""

    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="llmc-bench-")))
    proxies: list[Proxy] = field(default_factory=list)

    def __post_init__(self) -> None:
        import trustme

        from tests.support.envoy_harness import Envoy, envoy_binary, envoy_version
        from tests.support.mesh import sidecar_layouts
        from tests.support.upstream import Upstream

        if not shutil.which("wrk"):
            raise SystemExit("wrk not found: install it (Debian: apt-get install wrk)")
        self.envoy_version = envoy_version(envoy_binary())
        ca = trustme.CA()
        ca_file = self.tmp / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        leaf = ca.issue_cert(HOST, "api.moonshot.cn")
        cert, key = self.tmp / "cert.pem", self.tmp / "key.pem"
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        self.upstream = Envoy(upstream_bootstrap(str(cert), str(key)), concurrency=1, listener="upstream")
        # the SSE provider (for time to first byte) and the e2e extras' plain-HTTP hosts
        self.sse = Upstream("stream.example.com", sse_pause=0.01, first_token_delay=SSE_FIRST_TOKEN_S)
        ports = {HOST: self.upstream.port, "api.moonshot.cn": self.upstream.port,
                 **{h: self.sse.port for h in ("stream.example.com", "tiny.example.com", "keyed.example.com")}}
        self.ports, self.ca_file = ports, ca_file
        self.layouts = sidecar_layouts(ports, str(ca_file), self.tmp)

    def llmc_layout_at(self, rev: str) -> dict:
        """llmc's layout of the seed as git revision ``rev`` renders and lays it out."""
        return layout_at_rev(rev, self.tmp, self.ports, str(self.ca_file), self.tmp)

    def proxy(self, name: str, lua: str | None, layout: dict | None = None) -> Proxy:
        """The passthrough layout when ``lua`` is None, else llmc's layout (or ``layout``) running ``lua``."""
        boot = self.layouts["limit"] if lua is None else with_lua(layout or self.layouts["llmc"], lua)
        p = Proxy(name, boot).start()
        self.proxies.append(p)
        return p

    def shapes(self, proxy: Proxy) -> bool:
        """Whether llmc's Lua runs on the bench's route in ``proxy``: it answers a body that is not
        JSON with its own 400 (the mock provider would answer 200). A Lua that does not recognise
        its filter context passes every request on untouched, and would look free."""
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        try:
            conn.request("POST", PATH, body=b"{", headers={"host": HOST, "content-type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            return resp.status == 400
        finally:
            conn.close()

    def body(self, name: str) -> tuple[bytes, Path]:
        """The bench body ``name`` (``tests/bench/bodies.py``) and the file wrk sends it from."""
        from tests.bench import bodies

        data = bodies.body(name)
        path = self.tmp / f"body-{name}.json"
        path.write_bytes(data)
        return data, path

    def script(self, body: Path, cap: int, status: int = 200, rate: float | None = None) -> Path:
        """wrk's script: POST ``body``; ``status`` 429 asks the mock provider for its 429 answer;
        ``rate`` paces the requests (:data:`WRK_PACE`, requests per second) instead of a closed loop."""
        path = body.with_suffix(f".{cap}.{status}.{rate or 'closed'}.wrk.lua")
        ask = "" if status == 200 else f'wrk.headers["x-bench-status"] = "{status}"\n'
        pace = "" if rate is None else WRK_PACE.format(rate=rate)
        path.write_text(WRK_SCRIPT.format(host=HOST, body=body, cap=cap, status=ask) + pace)
        return path

    def load(self, proxy: Proxy, script: Path, seconds: float, timeout_s: float, warmup: bool = False) -> Run:
        """One bounded load run against ``proxy``; restarts it when requests timed out. A measured
        run in which no request completed counts as timed out; a warm-up only when wrk saw timeouts."""
        before = cpu_seconds(proxy.pid)
        cmd = ["wrk", "-t1", "-c4", f"-d{max(1, round(seconds))}s", f"--timeout={max(1, round(timeout_s))}s",
               "--latency", "-s", str(script), f"http://127.0.0.1:{proxy.port}{PATH}"]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                                 timeout=seconds + timeout_s + 20).stdout
        except subprocess.TimeoutExpired:
            proxy.restart()
            return Run(0, 0.0, 0.0, None, None, timed_out=True)
        cpu = cpu_seconds(proxy.pid) - before
        w = parse_wrk(out)
        timed_out = w["timeouts"] > 0 or (w["completed"] == 0 and not warmup)
        if timed_out:
            proxy.restart()  # its worker may still be scanning the requests wrk gave up on
        return Run(w["completed"], cpu, w["rps"], w["p50_ms"], w["p99_ms"], timed_out, w["errors"])

    def close(self) -> None:
        for p in self.proxies:
            p.stop()
        self.upstream.stop()
        self.sse.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


def settle(proxy: Proxy, limit_s: float = 5.0) -> None:
    """Wait until the proxy's CPU is idle (work for requests wrk gave up on may still be running),
    so it is not counted in the next run; restart it if it stays busy."""
    import time

    deadline = time.monotonic() + limit_s
    last = cpu_seconds(proxy.pid)
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = cpu_seconds(proxy.pid)
        if now - last < 0.005:
            return
        last = now
    proxy.restart()


@dataclass
class Load:
    """Bounds of one load run."""

    seconds: float = 3.0
    max_requests: int = 100_000
    request_timeout: float = 10.0
    warmup_seconds: float = 1.0
    status: int = 200  # the mock provider's answer: 200 (a completion with usage) or 429
    rate: float | None = None  # requests per second offered (WRK_PACE); None: a closed loop


def interleave(rig: Rig, proxies: dict[str, Proxy], body_file: Path, rounds: int, load: Load,
               log=print) -> dict[str, list[Run | None]]:
    """Runs per variant, in interleaved rounds (each round in a rotated order). A variant whose
    warm-up or a round times out is not run again for this body (its later rounds are None)."""
    from tests.bench.common import rotate

    script = rig.script(body_file, load.max_requests, load.status, load.rate)
    runs: dict[str, list[Run | None]] = {name: [] for name in proxies}
    dead: set[str] = set()
    for name, proxy in proxies.items():
        warm = rig.load(proxy, script, load.warmup_seconds, load.request_timeout, warmup=True)
        settle(proxy)
        if warm.timed_out:
            dead.add(name)
            log(f"    {name}: warm-up timed out; not measured")
    for r in range(rounds):
        for name in rotate(list(proxies), r):
            if name in dead:
                runs[name].append(None)
                continue
            run = rig.load(proxies[name], script, load.seconds, load.request_timeout)
            settle(proxies[name])
            runs[name].append(run)
            if run.timed_out:
                dead.add(name)
            cpu = run.cpu_us_per_request
            log(f"    round {r + 1} {name}: {run.completed} requests, "
                f"{'timed out' if cpu is None else f'{cpu:.1f} µs CPU/request'}"
                f"{f', {run.errors} errors' if run.errors else ''}")
    return runs


def ratios(runs: dict[str, list[Run | None]], name: str, base: str) -> list[float | None]:
    """Per-round CPU-per-request ratios of ``name`` to ``base`` (rounds ran interleaved)."""
    out = []
    for a, b in zip(runs[name], runs[base], strict=True):
        ca = a.cpu_us_per_request if a else None
        cb = b.cpu_us_per_request if b else None
        out.append(ca / cb if ca is not None and cb else None)
    return out


def deltas(runs: dict[str, list[Run | None]], name: str, base: str) -> list[float | None]:
    """Per-round CPU-per-request differences (µs) of ``name`` over ``base``."""
    out = []
    for a, b in zip(runs[name], runs[base], strict=True):
        ca = a.cpu_us_per_request if a else None
        cb = b.cpu_us_per_request if b else None
        out.append(ca - cb if ca is not None and cb is not None else None)
    return out
