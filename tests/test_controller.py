"""`llmc controller` against the in-process fake API server, through the real kubernetes client."""

from __future__ import annotations

import time
import urllib.request

from ruamel.yaml import YAML

from compiler import Options, compile_paths
from tests.conftest import REPO
from tests.support.controller import (
    EF,
    NET,
    PLURAL,
    SRC,
    conditions,
    generated,
    kubeconfig,
    load_seed,
    programmed,
    seed_objects,
    settle,
    start,
    strip,
    wait_for,
)


def test_create_applies_what_render_prints_and_sets_status(api):
    load_seed(api)
    ctrl = start(api)
    try:
        expected = compile_paths([str(REPO / "samples" / "seed")], Options()).objects
        wait_for(lambda: len(generated(api)) == len(expected), what="objects applied")
        by_key = {(o["kind"], o["metadata"]["name"]): strip(o) for o in generated(api)}
        assert by_key == {(o["kind"], o["metadata"]["name"]): o for o in expected}
        wait_for(lambda: programmed(api, "LLMRoute", "demo-llm-server"), what="status")
        conds = conditions(api, "LLMRoute", "demo-llm-server")
        assert conds["Accepted"]["status"] == "True" and conds["ResolvedRefs"]["status"] == "True"
        assert conds["Programmed"]["observedGeneration"] == 1
        assert "LLMC207" in conditions(api, "LLMProvider", "moonshot")["Accepted"]["message"]
        se = api.get(NET, "serviceentries", "default", "llmc-provider-moonshot")
        assert se["metadata"]["ownerReferences"][0]["name"] == "moonshot"
        assert "${API_KEY" not in str([c for o in api.list(SRC, "llmproviders") for c in o.get("status", {}).values()])
        # a second reconcile of unchanged input writes nothing
        def writes():  # lease renewals aside
            return [w for w in api.writes() if "/leases" not in w[1]]

        # other objects' statuses may still be on the way when the route's is seen (a pass counts
        # itself after its last status write; each key has its own pass): count writes once they ended
        wait_for(lambda: ctrl.metrics.values["llmc_reconciles_total"] >= 1, what="the first pass")
        settle(api, "/apis/istio.alibabacloud.com")
        before, count = len(writes()), ctrl.metrics.values["llmc_reconciles_total"]
        ctrl.enqueue_all()
        wait_for(lambda: ctrl.metrics.values["llmc_reconciles_total"] > count, what="another reconcile")
        time.sleep(0.3)
        assert len(writes()) == before
    finally:
        ctrl.stop()


def test_update_rewrites_only_changed_objects_and_delete_prunes_owned_only(api):
    load_seed(api)
    foreign = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
               "metadata": {"name": "someone-elses", "namespace": "default"}, "spec": {"hosts": ["x"]}}
    api.put_object(NET, "virtualservices", foreign)
    ctrl = start(api)
    try:
        wait_for(lambda: programmed(api, "LLMRoute", "demo-llm-server"), what="programmed")
        before = settle(api, "/apis/networking.istio.io")
        route = api.get(SRC, "llmroutes", "default", "demo-llm-server")
        route["spec"]["rules"][0]["backendRefs"][0]["weight"] = 80
        api.put_object(SRC, "llmroutes", route)
        wait_for(lambda: conditions(api, "LLMRoute", "demo-llm-server")["Programmed"]["observedGeneration"] == 2,
                 what="generation 2 programmed")
        changed = api.writes("/apis/networking.istio.io")[before:]
        assert [w[1].rsplit("/", 1)[-1] for w in changed] == ["llmc-route-demo-llm-server"], changed
        api.delete_object(SRC, "llmroutes", "default", "demo-llm-server")
        wait_for(lambda: api.get(NET, "virtualservices", "default", "llmc-route-demo-llm-server") is None,
                 what="pruned")
        assert api.get(EF, "envoyfilters", "default", "llmc-route-demo-llm-server") is None
        assert api.get(NET, "virtualservices", "default", "someone-elses") is not None
        assert api.get(NET, "serviceentries", "default", "llmc-provider-moonshot") is not None
    finally:
        ctrl.stop()


def test_invalid_object_does_not_stop_the_others(api):
    load_seed(api)
    broken = {"apiVersion": "istio.alibabacloud.com/v1beta1", "kind": "LLMRoute",
              "metadata": {"name": "broken", "namespace": "default"},
              "spec": {"host": "other", "rules": [{"backendRefs": [{"providerHost": "nowhere.example.com"}]}]}}
    api.put_object(SRC, "llmroutes", broken)
    ctrl = start(api)
    try:
        wait_for(lambda: programmed(api, "LLMRoute", "demo-llm-server"), what="others programmed")
        conds = wait_for(lambda: conditions(api, "LLMRoute", "broken") or None, what="broken status")
        assert conds["Accepted"]["status"] == "False" and "LLMC202" in conds["Accepted"]["message"]
        assert conds["ResolvedRefs"]["reason"] == "ProviderNotFound"
        assert conds["Programmed"]["status"] == "False"
    finally:
        ctrl.stop()


def test_watch_drops_and_410_resync_without_losing_events(api):
    ctrl = start(api)
    try:
        wait_for(ctrl.ready, what="synced")
        objs = seed_objects()
        api.put_object(SRC, PLURAL[objs[0]["kind"]], objs[0])
        api.drop_watches()
        for obj in objs[1:3]:
            api.put_object(SRC, PLURAL[obj["kind"]], obj)
        api.compact()  # the next watch resumes from a compacted version: 410 Gone, then a relist
        api.drop_watches()
        api.put_object(SRC, PLURAL[objs[3]["kind"]], objs[3])
        wait_for(lambda: all(programmed(api, o["kind"], o["metadata"]["name"]) for o in objs), what="all programmed")
    finally:
        ctrl.stop()


def test_api_errors_and_conflicts_converge(api):
    load_seed(api)
    api.fail("PATCH", "/virtualservices/", 500, times=4)
    api.fail("PATCH", "/envoyfilters/", 409, times=3)
    api.fail("GET", "/serviceentries", 500, times=2)
    ctrl = start(api)
    try:
        wait_for(lambda: programmed(api, "LLMRoute", "demo-llm-server"), what="converged")
        assert api.get(NET, "virtualservices", "default", "llmc-route-demo-llm-server") is not None
    finally:
        ctrl.stop()


def test_two_controllers_one_leader(api):
    load_seed(api)
    a, b = start(api, "a"), start(api, "b")
    try:
        wait_for(lambda: a.leader or b.leader, what="a leader")
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:  # never both (a leader that missed a renewal may be neither)
            assert not (a.leader and b.leader)
            time.sleep(0.02)
        wait_for(lambda: programmed(api, "LLMRoute", "demo-llm-server"), what="programmed")
        wait_for(lambda: a.leader or b.leader, what="a leader")
        leader, follower = (a, b) if a.leader else (b, a)
        leader.stop()  # graceful shutdown hands the Lease over
        wait_for(lambda: follower.leader, timeout=10, what="takeover")
    finally:
        a.stop()
        b.stop()


def test_health_ready_and_metrics(api):
    load_seed(api)
    ctrl = start(api)
    port = ctrl.serve_health("127.0.0.1", 0)
    try:
        wait_for(ctrl.ready, what="synced")
        base = f"http://127.0.0.1:{port}"
        assert urllib.request.urlopen(f"{base}/healthz").status == 200
        assert urllib.request.urlopen(f"{base}/readyz").status == 200
        wait_for(lambda: ctrl.metrics.values["llmc_reconciles_total"] > 0, what="a reconcile")
        text = urllib.request.urlopen(f"{base}/metrics").read().decode()
        assert "llmc_reconciles_total" in text and "llmc_leader 1" in text
    finally:
        ctrl.stop()


def test_cli_process_runs_and_stops_gracefully(api, tmp_path):
    import json as _json
    import signal
    import socket
    import subprocess
    import sys

    load_seed(api)
    config = kubeconfig(api, tmp_path / "kubeconfig")
    # its log goes to a file: a pipe read only at the end fills (64 KiB) and blocks the controller
    stderr = tmp_path / "stderr"
    for _ in range(5):  # the port is chosen free and bound by the process later: another may take it
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-m", "compiler.cli", "controller", "--kubeconfig", config,
                                 "--health-port", str(port), "--identity", "pod-1"], cwd=REPO,
                                stderr=stderr.open("wb"))
        wait_for(lambda p=proc: p.poll() is not None or programmed(api, "LLMRoute", "demo-llm-server"),
                 timeout=30, what="programmed by the CLI")
        if proc.poll() is None or "Address already in use" not in stderr.read_text(errors="replace"):
            break
    try:
        assert proc.poll() is None, stderr.read_text(errors="replace")[-2000:]
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz").status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        lease = api.get("apis/coordination.k8s.io/v1", "leases", "llmc-system", "llmc-controller")
        assert lease["spec"]["holderIdentity"] == ""  # handed back on shutdown
        logs = [_json.loads(line) for line in stderr.read_text().splitlines() if line.startswith("{")]
        assert any(entry["msg"] == "reconciled" for entry in logs)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_missing_secret_is_reported_then_resolved_and_everything_removed_with_the_sources(api):
    docs = list(YAML(typ="safe").load_all((REPO / "samples" / "secret-ref" / "dashscope.yaml").read_text()))
    docs.append({"apiVersion": "istio.alibabacloud.com/v1beta1", "kind": "LLMProvider",  # needs no Secret
                 "metadata": {"name": "moonshot", "namespace": "llm-apps"},
                 "spec": {"host": "api.moonshot.cn", "path": "/v1/chat/completions"}})
    for obj in docs:
        api.put_object(SRC, PLURAL[obj["kind"]], obj)
    ctrl = start(api, resync=0.5)
    try:
        conds = wait_for(lambda: conditions(api, "LLMProvider", "dashscope-qwen", "llm-apps") or None, what="status")
        assert conds["ResolvedRefs"]["status"] == "False" and conds["ResolvedRefs"]["reason"] == "SecretNotFound"
        assert "llm-apps/llm-provider-keys" in conds["ResolvedRefs"]["message"]
        route = wait_for(lambda: conditions(api, "LLMRoute", "dashscope-route", "llm-apps") or None, what="status")
        assert route["ResolvedRefs"]["status"] == "False"
        other = wait_for(lambda: conditions(api, "LLMProvider", "moonshot", "llm-apps") or None, what="status")
        assert other["ResolvedRefs"]["status"] == "True", "only sources that use the Secret are affected"
        api.put_object("api/v1", "secrets", {"apiVersion": "v1", "kind": "Secret",
                                             "metadata": {"name": "llm-provider-keys", "namespace": "llm-apps"},
                                             "data": {"dashscope": "c2stc2VjcmV0"}})
        wait_for(lambda: conditions(api, "LLMProvider", "dashscope-qwen", "llm-apps")["ResolvedRefs"]["status"] == "True",
                 what="secret resolved on resync")
        assert "c2stc2VjcmV0" not in str(api.list(SRC, "llmproviders")) + str(generated(api))
        for obj in docs:
            api.delete_object(SRC, PLURAL[obj["kind"]], "llm-apps", obj["metadata"]["name"])
        wait_for(lambda: not generated(api), what="everything removed")
    finally:
        ctrl.stop()


def test_ambient_target_applies_what_render_prints(api):
    """``--target ambient`` reaches the controller through the settings table: it applies the
    TrafficExtension and the enrolled ServiceEntries exactly as ``llmc render --target ambient``."""
    load_seed(api)
    opts = Options(target="ambient")
    ctrl = start(api, opts=opts)
    try:
        expected = compile_paths([str(REPO / "samples" / "seed")], opts).objects
        assert "TrafficExtension" in {o["kind"] for o in expected}
        wait_for(lambda: len(generated(api)) == len(expected), what="objects applied")
        by_key = {(o["kind"], o["metadata"]["name"]): strip(o) for o in generated(api)}
        assert by_key == {(o["kind"], o["metadata"]["name"]): o for o in expected}
        wait_for(lambda: programmed(api, "LLMRoute", "demo-llm-server"), what="status")
    finally:
        ctrl.stop()
