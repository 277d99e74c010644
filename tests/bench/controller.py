"""Controller benchmark (`python -m tests.bench controller`): `llmc controller` as a real process
against the in-process fake API server, on the compile benchmark's synthetic mesh (1,000 providers +
1,000 LLMRoutes in 20 namespaces by default). Not part of the test suite: nothing here is asserted
on time, the figures are printed and written to JSON.

Figures: cold convergence (process start → last write, with every source Programmed), writes,
the controller's peak RSS; one provider changed → time to converge and writes, compared with the
objects whose content changed (target: only those, in under 5% of the cold-start time measured in
the same run); recovery after SIGKILL (restart → converged, with a source changed while it was
down); cold convergence with 10% of API requests failing (500s, 429s, connection resets).
Issue 32 (section ``shared``): the same mesh with one shared source — a provider in the Istio root
namespace that route-0 of every namespace also sends to — against the mesh without it: one change's
convergence, the objects written against those whose content changed, the controller's CPU for the
change (process utime+stime, less its idle rate), and the passes ten edits 0.3 s apart cost; and
(section ``instances``) two ``--watch-namespace`` instances whose routes share the gateway-wide
EnvoyFilter in istio-system: their writes in 30 s idle.
The fake API server runs in this process (one Python thread per request): its own cost is part of
every figure, so the figures are upper bounds for a real API server.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ruamel.yaml import YAML

from compiler import Options, compile_paths
from tests.bench.synthetic import provider, route
from tests.support.controller import PLURAL, SRC, kubeconfig
from tests.support.fake_apiserver import FakeAPIServer

REPO = Path(__file__).resolve().parents[2]
AGENT = "llmc-controller/bench"
#: the source tree whose `compiler` the controller process runs (``--tree``: measure another revision,
#: e.g. an export of the parent commit, against the same fake API server and mesh)
TREE = {"path": REPO}


ROOT = "istio-system"
SHARED_HOST = "shared.example.com"


def _objects(n: int, shared: bool = False) -> list[dict]:
    """The synthetic mesh; ``shared``: plus one provider in the Istio root namespace (visible to every
    namespace) that route-0 of every namespace also sends 10% to."""
    y = YAML(typ="safe")
    objs = [y.load(provider(i)) for i in range(n)] + [y.load(route(i, n)) for i in range(n)]
    if shared:
        root = y.load(provider(0))
        root["metadata"] = {"name": "shared", "namespace": ROOT}
        root["spec"]["host"] = SHARED_HOST
        root["spec"]["configs"].pop("routeSpecificConfigs")
        objs.append(root)
        for o in objs:
            if o["kind"] == "LLMRoute" and int(o["metadata"]["name"].split("-")[1]) % 50 == 0:
                for rule in o["spec"]["rules"]:
                    rule["backendRefs"].append({"providerHost": SHARED_HOST, "weight": 10})
    return objs


def _load(server: FakeAPIServer, objs: list[dict]) -> None:
    for obj in objs:
        server.put_object(SRC, PLURAL[obj["kind"]], obj)
    for ns in sorted({o["metadata"]["namespace"] for o in objs}):
        server.put_object("api/v1", "secrets", {"apiVersion": "v1", "kind": "Secret",
                                                "metadata": {"name": "llm-keys", "namespace": ns}, "data": {}})


def _all_programmed(server: FakeAPIServer) -> bool:
    with server.lock:  # read in place: copying 2,000 objects per poll would slow the server down
        objs = [o for k, o in server.objects.items() if k[0] == SRC and k[1] in ("llmproviders", "llmroutes")]
        for obj in objs:
            conds = {c["type"]: c for c in (obj.get("status") or {}).get("conditions", [])}
            prog = conds.get("Programmed")
            if not prog or prog["status"] != "True" or prog.get("observedGeneration") != obj["metadata"]["generation"]:
                return False
    return True


def _writes(server: FakeAPIServer, since: float = 0.0) -> list[tuple[float, str, str]]:
    return server.writes_by(AGENT, since=since)


def _converge(server: FakeAPIServer, since: float, timeout: float, proc: Process, quiet: float = 2.0) -> float:
    """Seconds from ``since`` to the last controller write, once every source is Programmed and no
    write came for ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.supervise()
        writes = _writes(server, since)
        last = writes[-1][0] if writes else since
        if _all_programmed(server) and time.monotonic() - last > quiet:
            return last - since
        time.sleep(0.5)
    raise TimeoutError("the controller did not converge")


class Process:
    """The controller process, restarted when it exits (as Kubernetes restarts a pod); restarts are
    counted and reported."""

    def __init__(self, server: FakeAPIServer, tmp: Path, qps: float, extra: tuple[str, ...] = (),
                 identity: str = "bench"):
        self.port = _free_port()
        self.cmd = [sys.executable, "-m", "compiler.cli", "controller", "--kubeconfig",
                    kubeconfig(server, tmp / "kubeconfig"), "--identity", identity, "--health-port", str(self.port),
                    "--api-qps", str(qps), "--api-burst", str(int(qps)), *extra]
        self.restarts = 0
        self.proc = self._spawn()

    def _spawn(self) -> subprocess.Popen:
        return subprocess.Popen(self.cmd, cwd=TREE["path"], stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)

    def supervise(self) -> None:
        if self.proc.poll() is not None:
            self.restarts += 1
            self.proc = self._spawn()

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_seconds(self) -> float:
        """utime + stime of the process so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def metric(self, name: str) -> float:
        """A value of /metrics (NaN when the controller does not export it)."""
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith(f"{name} "):
                    return float(line.split()[1])
        return float("nan")

    def passes(self) -> int:
        return int(self.metric("llmc_reconciles_total"))

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _affected(objs: list[dict], changed: dict, whole: bool = False) -> set[str]:
    """Objects whose content differs between compiling the mesh before and after the change."""
    with tempfile.TemporaryDirectory() as tmp:
        def compile_(docs: list[dict]) -> dict[str, dict]:
            path = Path(tmp, "in.yaml")
            path.write_text("\n---\n".join(json.dumps(d) for d in docs))  # JSON documents are YAML
            out = compile_paths([str(path)], Options()).objects
            return {f"{o['kind']} {o['metadata']['namespace']}/{o['metadata']['name']}": o for o in out}

        ns = changed["metadata"]["namespace"]
        before_docs = [o for o in objs if whole or o["metadata"]["namespace"] == ns]
        after_docs = [changed if o["metadata"]["name"] == changed["metadata"]["name"] and o["kind"] == changed["kind"]
                      else o for o in before_docs]
        before, after = compile_(before_docs), compile_(after_docs)
        return {k for k in set(before) | set(after) if before.get(k) != after.get(k)}


def _written(writes: list[tuple[float, str, str]]) -> set[str]:
    kinds = {"serviceentries": "ServiceEntry", "destinationrules": "DestinationRule",
             "virtualservices": "VirtualService", "envoyfilters": "EnvoyFilter", "gateways": "Gateway"}
    out = set()
    for _, _, path in writes:
        parts = path.strip("/").split("/")
        if parts[-2] in kinds:
            out.add(f"{kinds[parts[-2]]} {parts[-3]}/{parts[-1]}")
    return out


def bench_controller(n: int = 1000, qps: float = 2000.0, timeout: float = 900.0) -> dict:
    objs = _objects(n)
    result: dict = {"providers": n, "routes": n, "namespaces": len({o["metadata"]["namespace"] for o in objs}),
                    "api_qps_limit": qps}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        server = FakeAPIServer()
        _load(server, objs)
        start = time.monotonic()
        proc = Process(server, tmp, qps)
        try:
            cold = _converge(server, start, timeout, proc)
            writes = _writes(server, start)
            result["cold"] = {"seconds": cold, "writes": len(writes),
                              "applies": sum(1 for w in writes if "/status" not in w[2] and w[1] == "PATCH"),
                              "status_patches": sum(1 for w in writes if w[2].endswith("/status")),
                              "objects": len(_written(writes)), "peak_rss_mb": proc.peak_rss_mb()}
            # one provider changed
            changed = json.loads(json.dumps(server.get(SRC, "llmproviders", "team-0", "provider-0")))
            changed["spec"]["configs"]["defaultConfig"]["openAIConfig"]["model"] = "model-0-v2"
            expected = _affected(objs, {k: v for k, v in changed.items() if k != "status"})
            t0 = time.monotonic()
            server.put_object(SRC, "llmproviders", changed)
            seconds = _converge(server, t0, timeout, proc)
            writes = _writes(server, t0)
            written = _written(writes)
            result["one_provider_changed"] = {
                "seconds": seconds, "writes": len(writes), "objects_written": sorted(written),
                "objects_changed": sorted(expected), "only_affected_written": written == expected,
                "ratio_to_cold": seconds / cold, "target_ratio": 0.05, "meets_target": seconds / cold < 0.05
                and written == expected}
            # recovery after SIGKILL, with a source changed while the controller was down
            proc.kill()
            last = n - 1
            down = json.loads(json.dumps(server.get(SRC, "llmproviders", f"team-{last // 50}", f"provider-{last}")))
            down["spec"]["configs"]["defaultConfig"]["openAIConfig"]["model"] = f"model-{last}-v2"
            server.put_object(SRC, "llmproviders", down)
            t0 = time.monotonic()
            restarts = proc.restarts
            proc = Process(server, tmp, qps)
            seconds = _converge(server, t0, timeout, proc)
            result["recovery_after_sigkill"] = {"seconds": seconds, "writes": len(_writes(server, t0))}
            result["cold"]["restarts"] = restarts
        finally:
            proc.stop()
            server.stop()
        # 10% injected API faults, cold
        server = FakeAPIServer()
        _load(server, objs)
        server.chaos(0.10, seed=1)
        start = time.monotonic()
        proc = Process(server, tmp, qps)
        try:
            seconds = _converge(server, start, timeout, proc)
            result["cold_with_10pct_faults"] = {"seconds": seconds, "writes": len(_writes(server, start)),
                                                "restarts": proc.restarts,
                                                "faults_injected": server.chaos_count,
                                                "ratio_to_cold": seconds / result["cold"]["seconds"]}
        finally:
            proc.stop()
            server.stop()
    return result


def _edit(server: FakeAPIServer, model: str) -> dict:
    changed = json.loads(json.dumps(server.get(SRC, "llmproviders", "team-0", "provider-0")))
    changed["spec"]["configs"]["defaultConfig"]["openAIConfig"]["model"] = model
    server.put_object(SRC, "llmproviders", changed)
    return changed


def _idle_cpu_rate(proc: Process, seconds: float = 5.0) -> float:
    c0, t0 = proc.cpu_seconds(), time.monotonic()
    time.sleep(seconds)
    return (proc.cpu_seconds() - c0) / (time.monotonic() - t0)


def bench_change(n: int, shared: bool, qps: float, timeout: float) -> dict:
    """Cold start, then one provider changed (team-0/provider-0): convergence, objects written
    against those changed, controller CPU for it; then ten edits 0.3 s apart and the passes they cost."""
    objs = _objects(n, shared)
    with tempfile.TemporaryDirectory() as tmp_dir:
        server = FakeAPIServer()
        server.create_namespace(ROOT)
        _load(server, objs)
        start = time.monotonic()
        # no periodic resync: its passes over every key would land in the windows measured here
        proc = Process(server, Path(tmp_dir), qps, ("--resync", "3600"))
        try:
            cold = _converge(server, start, timeout, proc)
            out: dict = {"shared_source": shared, "sources": len(objs), "cold_seconds": cold,
                         "peak_rss_mb_cold": proc.peak_rss_mb()}
            time.sleep(3)
            idle = _idle_cpu_rate(proc, 10.0)
            # five single changes, each to convergence: process CPU (less the idle rate) and the CPU
            # of the passes' own threads (llmc_reconcile_cpu_seconds_sum); medians
            base = {k: v for k, v in server.get(SRC, "llmproviders", "team-0", "provider-0").items() if k != "status"}
            rows = []
            for i in range(5):
                c0, p0, t0 = proc.cpu_seconds(), proc.metric("llmc_reconcile_cpu_seconds_sum"), time.monotonic()
                changed = _edit(server, f"model-0-v{i + 2}")
                seconds = _converge(server, t0, timeout, proc)
                rows.append((seconds, proc.cpu_seconds() - c0 - idle * (time.monotonic() - t0),
                             proc.metric("llmc_reconcile_cpu_seconds_sum") - p0, _writes(server, t0)))
                if i == 0:
                    written = _written(rows[0][3])
                    expected = _affected([base if o["kind"] == "LLMProvider" and o["metadata"]["name"] == "provider-0"
                                          and o["metadata"]["namespace"] == "team-0" else o for o in objs],
                                         {k: v for k, v in changed.items() if k != "status"}, whole=True)
            med = sorted(rows, key=lambda r: r[0])[2]
            out.update({"change_seconds": med[0], "change_seconds_all": [r[0] for r in rows],
                        "objects_written": sorted(written), "objects_changed": sorted(expected),
                        "only_affected_written": written == expected,
                        "cpu_seconds_per_change": sorted(r[1] for r in rows)[2],
                        "pass_cpu_seconds_per_change": sorted(r[2] for r in rows)[2],
                        "idle_cpu_per_second": idle, "writes": len(rows[0][3])})
            p0 = proc.passes()
            t1 = time.monotonic()
            for i in range(10):
                _edit(server, f"model-0-e{i}")
                time.sleep(0.3)
            _converge(server, t1, timeout, proc)
            out["ten_edits_passes"] = proc.passes() - p0
            out["peak_rss_mb"] = proc.peak_rss_mb()
            return out
        finally:
            proc.stop()
            server.stop()


def bench_instances(qps: float, timeout: float, idle_seconds: float = 30.0) -> dict:
    """Two --watch-namespace instances (team-0, team-1; own Lease namespaces) whose gateway-bound
    routes share the gateway-wide EnvoyFilter in istio-system: writes while idle."""
    y = YAML(typ="safe")
    objs = [o for o in _objects(100) if o["metadata"]["namespace"] in ("team-0", "team-1")]
    for ns in ("team-0", "team-1"):
        p = y.load(provider(0))
        p["metadata"] = {"name": "edge", "namespace": ns}
        p["spec"].update({"host": f"edge.{ns}.example.com", "workloadSelector": {"labels": {"istio": "ingressgateway"}}})
        p["spec"]["configs"].pop("routeSpecificConfigs")
        r = {"apiVersion": p["apiVersion"], "kind": "LLMRoute", "metadata": {"name": "edge", "namespace": ns},
             "spec": {"host": f"edge.{ns}.example.com", "gateways": [f"{ROOT}/llm-gateway"],
                      "rules": [{"backendRefs": [{"providerHost": f"edge.{ns}.example.com"}]}]}}
        objs += [p, r]
    with tempfile.TemporaryDirectory() as tmp_dir:
        server = FakeAPIServer()
        for ns in (ROOT, "lease-0", "lease-1"):
            server.create_namespace(ns)
        _load(server, objs)
        start = time.monotonic()
        procs = [Process(server, Path(tmp_dir), qps, ("--watch-namespace", f"team-{i}", "--gateway-namespaces", ROOT,
                                                      "--lease-namespace", f"lease-{i}"), identity=f"bench-{i}")
                 for i in range(2)]
        try:
            seconds = max(_converge(server, start, timeout, p) for p in procs)
            t0 = time.monotonic()
            time.sleep(idle_seconds)
            writes = [w for w in server.writes_by("llmc-controller/bench", since=t0)]
            shared = [o for o in server.list("apis/networking.istio.io/v1alpha3", "envoyfilters")
                      if o["metadata"]["namespace"] == ROOT and "gateway-filter" in o["metadata"]["name"]]
            sources = shared[0]["metadata"]["annotations"]["llmc.io/sources"] if shared else ""
            return {"converged_seconds": seconds, "idle_seconds": idle_seconds, "idle_writes": len(writes),
                    "shared_filter_has_both": "team-0/" in sources and "team-1/" in sources}
        finally:
            for p in procs:
                p.stop()
            server.stop()


def report_shared(r: dict) -> str:
    b = r["shared"]["with"]
    a = r["shared"].get("without", b)
    lines = [f"controller, issue 32: {a['sources']} sources in {a['sources'] // 100} namespaces without / "
             f"{b['sources']} with one shared "
             f"source (a provider in {ROOT} that route-0 of every namespace sends to)"]
    for name, x in (("no shared source", a), ("one shared source", b)):
        lines.append(f"  {name:18} cold {x['cold_seconds']:6.1f} s; one change {x['change_seconds']:5.2f} s, "
                     f"{len(x['objects_written'])} objects written ({len(x['objects_changed'])} changed, only those: "
                     f"{x['only_affected_written']}), controller CPU {x['cpu_seconds_per_change']:.2f} s "
                     f"(passes' threads {x['pass_cpu_seconds_per_change']:.2f} s); "
                     f"ten edits 0.3 s apart: {x['ten_edits_passes']} passes; peak RSS {x['peak_rss_mb']:.0f} MB")
    ratio = b["cpu_seconds_per_change"] / max(a["cpu_seconds_per_change"], 1e-6)
    threads = b["pass_cpu_seconds_per_change"] / max(a["pass_cpu_seconds_per_change"], 1e-6)
    lines.append(f"  CPU per change, shared / not shared: {ratio:.2f}x (process), {threads:.2f}x (passes' threads); "
                 "medians of 5 changes")
    i = r.get("instances")
    if i:
        lines.append(f"  two --watch-namespace instances sharing istio-system's gateway filter: {i['idle_writes']} writes "
                     f"in {i['idle_seconds']:.0f} s idle (filter has both instances' sources: {i['shared_filter_has_both']})")
    return "\n".join(lines)


def report(r: dict) -> str:
    c, o, k, f = r["cold"], r["one_provider_changed"], r["recovery_after_sigkill"], r["cold_with_10pct_faults"]
    lines = [
        f"controller: {r['providers']} providers + {r['routes']} routes in {r['namespaces']} namespaces "
        f"(fake API server in-process; --api-qps {r['api_qps_limit']:g})",
        f"  cold convergence      {c['seconds']:8.1f} s   {c['writes']} writes ({c['applies']} applies of "
        f"{c['objects']} objects, {c['status_patches']} status patches)   peak RSS {c['peak_rss_mb']:.0f} MB, "
        f"{c.get('restarts', 0)} restarts",
        f"  one provider changed  {o['seconds']:8.2f} s   {o['writes']} writes; objects written "
        f"{len(o['objects_written'])}, changed {len(o['objects_changed'])}, only affected: "
        f"{o['only_affected_written']}; {o['ratio_to_cold']:.1%} of cold (target < 5%: "
        f"{'met' if o['meets_target'] else 'NOT met'})",
        f"  recovery after SIGKILL {k['seconds']:7.1f} s   {k['writes']} writes (one source changed while down)",
        f"  cold, 10% API faults  {f['seconds']:8.1f} s   {f['writes']} writes, {f['faults_injected']} faults "
        f"injected; {f['ratio_to_cold']:.2f}x the fault-free cold start; {f['restarts']} restarts",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m tests.bench controller")
    ap.add_argument("--n", type=int, default=1000, help="providers (and as many routes); 50 per namespace")
    ap.add_argument("--qps", type=float, default=2000.0, help="the controller's --api-qps")
    ap.add_argument("--out", default=str(REPO / ".cache" / "bench" / "controller.json"))
    ap.add_argument("--sections", default="base,shared,instances",
                    help="base (cold, one change, SIGKILL, faults), shared (issue 32), instances (issue 32)")
    ap.add_argument("--tree", default=str(REPO), help="run the controller of this source tree (git archive REV)")
    ap.add_argument("--shared-only", action="store_true", help="section shared: only the case with the shared source")
    args = ap.parse_args(argv)
    TREE["path"] = Path(args.tree)
    sections = set(args.sections.split(","))
    result: dict = {}
    if "base" in sections:
        result = bench_controller(args.n, args.qps)
        print(report(result))
    if "shared" in sections:
        result["shared"] = {"with": bench_change(args.n, True, args.qps, 900.0)}
        if not args.shared_only:
            result["shared"]["without"] = bench_change(args.n, False, args.qps, 900.0)
    if "instances" in sections:
        result["instances"] = bench_instances(args.qps, 900.0)
    if "shared" in result:
        print(report_shared(result))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
