"""Leader election and fencing of `llmc controller`: client-go's rules, connection-level faults,
an API outage, a paused (SIGSTOP) leader, and /healthz when the loops are dead."""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from kubernetes import client

from compiler.controller.leader import LeaderElector, LeadershipLost, LeaseConfig
from tests.conftest import REPO
from tests.support.controller import SRC, kubeconfig, load_seed, programmed, start, wait_for

LEASES = "apis/coordination.k8s.io/v1"


def _api(server, agent: str = "test") -> client.ApiClient:
    cfg = client.Configuration()
    cfg.host = server.url
    api = client.ApiClient(cfg)
    api.user_agent = agent
    return api


def test_lease_config_follows_client_go_rules():
    LeaseConfig(15, 10, 2)
    # the defaults leave 2 s for transit and etcd's commit after a stale write's server deadline
    assert LeaseConfig().stale_write_margin == 2.0 and LeaseConfig(15, 10, 2, 5).stale_write_margin == 0
    with pytest.raises(ValueError, match="greater than the renew deadline"):
        LeaseConfig(lease_duration=10, renew_deadline=10, retry_period=2)
    with pytest.raises(ValueError, match="retry period"):
        LeaseConfig(lease_duration=15, renew_deadline=2, retry_period=2)


def test_expiry_is_judged_on_the_local_clock_not_the_holders_renew_time(api):
    """A Lease whose renewTime is years old is still held until *we* saw it unchanged for a lease
    duration: other replicas' clocks are never compared with ours."""
    api.put_object(LEASES, "leases", {
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "llmc-controller", "namespace": "llmc-system"},
        "spec": {"holderIdentity": "ghost", "leaseDurationSeconds": 15, "renewTime": "2020-01-01T00:00:00.000000Z"}})
    now = [100.0]
    elector = LeaderElector(_api(api), "llmc-system", "llmc-controller", "b", LeaseConfig(15, 10, 2),
                            clock=lambda: now[0])
    assert not elector.try_acquire_or_renew()
    now[0] += 14.9
    assert not elector.try_acquire_or_renew()
    now[0] += 0.2
    assert elector.try_acquire_or_renew()
    lease = api.get(LEASES, "leases", "llmc-system", "llmc-controller")
    assert lease["spec"]["holderIdentity"] == "b" and lease["spec"]["leaseTransitions"] == 1
    # the fence: open right after the renewal, shut once the renew deadline passed without one
    elector.check_fence()
    now[0] += 10.0
    with pytest.raises(LeadershipLost):
        elector.check_fence()


def test_connection_resets_do_not_kill_the_leader(api):
    load_seed(api)
    ctrl = start(api)
    port = ctrl.serve_health("127.0.0.1", 0)
    try:
        wait_for(lambda: ctrl.leader, what="leader")
        api.fail("GET", "/leases/", "reset", times=3)  # connection-level errors, not ApiExceptions
        api.fail("PUT", "/leases/", "reset", times=2)
        wait_for(lambda: not [f for f in api.faults if f["times"]], what="faults consumed")
        time.sleep(0.5)
        assert ctrl.leader and not ctrl.lost.is_set()
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz").status == 200
        wait_for(lambda: programmed(api, "LLMRoute", "demo-llm-server"), what="programmed")
    finally:
        ctrl.stop()


@pytest.mark.parametrize("mode", ["reset", "hang"])
def test_an_api_outage_never_yields_two_writers(api, mode):
    load_seed(api)
    a = start(api, "a")
    wait_for(lambda: a.leader, what="a leads")
    b = start(api, "b")
    port = a.serve_health("127.0.0.1", 0)
    try:
        wait_for(lambda: programmed(api, "LLMRoute", "demo-llm-server"), what="programmed")
        api.outage(3.0, mode)
        route = api.get(SRC, "llmroutes", "default", "demo-llm-server")
        route["spec"]["rules"][0]["backendRefs"][0]["weight"] = 70
        api.put_object(SRC, "llmroutes", route)  # work for whoever leads after the outage
        wait_for(lambda: a.lost.is_set(), what="a gives up after its renew deadline")
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz")
        assert exc.value.code == 503
        wait_for(lambda: b.leader, timeout=15, what="b takes over")
        wait_for(lambda: api.writes_by("/b"), timeout=15, what="b writes")
        writes = sorted([(t, "a") for t, _, _ in api.writes_by("/a")] + [(t, "b") for t, _, _ in api.writes_by("/b")])
        runs = [w[1] for i, w in enumerate(writes) if i == 0 or writes[i - 1][1] != w[1]]
        assert runs == ["a", "b"], "the writers interleaved"
        assert not a.leader
    finally:
        a.stop()
        b.stop()


def test_a_paused_leader_starts_no_write_after_its_renew_deadline(api, tmp_path):
    """SIGSTOP the leading process mid-pass, let another replica take over, SIGCONT it: it starts no
    write, and exits so that Kubernetes restarts it."""
    for i in range(12):  # enough objects that a pass with slow writes takes seconds
        api.put_object(SRC, "llmproviders", {
            "apiVersion": "istio.alibabacloud.com/v1beta1", "kind": "LLMProvider",
            "metadata": {"name": f"p{i}", "namespace": "default"},
            "spec": {"host": f"p{i}.example.com", "path": "/v1/chat/completions"}})
    api.delay("PATCH", 0.1)
    # health port 0: the kernel's free port at bind (a port chosen here and bound by the process a
    # moment later could be taken in between; nothing here reads the probes)
    proc = subprocess.Popen([sys.executable, "-m", "compiler.cli", "controller", "--kubeconfig",
                             kubeconfig(api, tmp_path / "kubeconfig"), "--health-port", "0",
                             "--identity", "pod-a", "--lease-duration", "2", "--renew-deadline", "1.5",
                             "--retry-period", "0.2", "--request-timeout", "1"],
                            cwd=REPO, stderr=(tmp_path / "stderr").open("wb"))
    b = None
    try:
        wait_for(lambda: len(api.writes_by("/pod-a")) >= 3, timeout=30, what="pod-a mid-pass")
        proc.send_signal(signal.SIGSTOP)
        paused = time.monotonic()
        b = start(api, "b")
        wait_for(lambda: b.leader, timeout=15, what="b takes over")
        assert time.monotonic() - paused > 1.5
        resumed = time.monotonic()
        proc.send_signal(signal.SIGCONT)
        code = proc.wait(timeout=15)
        assert code == 1, ("an ex-leader exits with 1 so that it is restarted",
                           (tmp_path / "stderr").read_text(errors="replace")[-2000:])
        assert api.writes_by("/pod-a", since=resumed) == []
        lease = api.get(LEASES, "leases", "llmc-system", "llmc-controller")
        assert lease["spec"]["holderIdentity"] == "b"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
        if b is not None:
            b.stop()


WRITES = ("POST", "PUT", "PATCH", "DELETE")


def test_every_write_carries_the_server_side_timeout(api):
    """The API server, not only the client, gives up on a write after --request-timeout."""
    load_seed(api)
    ctrl = start(api)  # request_timeout 1 s
    try:
        wait_for(lambda: programmed(api, "LLMRoute", "demo-llm-server"), what="programmed")
    finally:
        ctrl.stop()  # hands the Lease back: a write too
    writes = [(m, p, q) for m, p, q in api.queries if m in WRITES]
    for kind in ("leases", "serviceentries", "envoyfilters", "llmroutes"):  # Lease, apply, status
        assert [p for _, p, _ in writes if f"/{kind}/" in p or p.endswith(f"/{kind}")], kind
    assert [w for w in writes if w[2].get("timeout") != "1s"] == []


def test_an_ex_leaders_held_write_never_lands_after_the_new_leaders(api):
    """The API server holds every request of leader a (as a congested apiserver or a stalled
    connection can) past a's renew deadline; b takes over and applies a newer version. a's held
    writes must not land afterwards and revert it: the server-side timeout makes them fail."""
    load_seed(api)
    a = start(api, "a", watch_timeout=60)  # its open watch sees the change; a new one would be held
    b = None
    try:
        wait_for(lambda: programmed(api, "LLMProvider", "moonshot"), what="programmed")
        api.hold("llmc-controller/a", 6.0)  # a's renewals and writes: each waits 6 s (timeout: 1 s)
        set_model(api, "moonshot-v2")  # a starts writing it: the fence is still open
        wait_for(lambda: any("envoyfilters" in p for _, m, p, ua in api.log
                             if m == "PATCH" and ua.endswith("/a") and p), what="a's held write")
        b = start(api, "b")
        wait_for(lambda: b.leader, timeout=15, what="b takes over")
        set_model(api, "moonshot-v3")
        wait_for(lambda: "moonshot-v3" in moonshot_filters(api), timeout=15, what="b applies v3")
        b_first = min(t for t, _, p, ua in api.committed if ua.endswith("/b") and "/leases/" not in p)
        wait_for(lambda: a.lost.is_set(), timeout=15, what="a gives up")
        # every request a sent until it gave up has been answered (each is held 6 s): the check
        # below sees all that could land, however long the loaded machine took to get there
        gave_up = time.monotonic()
        wait_for(lambda: not api.unanswered("llmc-controller/a", received_before=gave_up), timeout=60,
                 what="a's held requests answered")
        late = [(t, p) for t, m, p, ua in api.committed if ua.endswith("/a") and t > b_first]
        assert late == [], "an ex-leader's write landed after the new leader's"
        assert "moonshot-v3" in moonshot_filters(api) and "moonshot-v2" not in moonshot_filters(api)
    finally:
        api.hold("llmc-controller/a", 0)
        a.stop()
        if b is not None:
            b.stop()


def set_model(api, model: str) -> None:
    p = api.get(SRC, "llmproviders", "default", "moonshot")
    p["spec"]["configs"]["defaultConfig"]["openAIConfig"]["model"] = model
    api.put_object(SRC, "llmproviders", p)


def moonshot_filters(api) -> str:
    import json

    return json.dumps([o["spec"] for o in api.list("apis/networking.istio.io/v1alpha3", "envoyfilters")
                       if "LLMProvider default/moonshot" in o["metadata"]["annotations"]["llmc.io/sources"]])


def test_the_lease_records_transitions_and_acquire_time(api):
    a = start(api, "a")
    try:
        wait_for(lambda: a.leader, what="a leads")
        lease = api.get(LEASES, "leases", "llmc-system", "llmc-controller")
        assert lease["spec"]["holderIdentity"] == "a" and lease["spec"]["leaseDurationSeconds"] == 2
        first = dt.datetime.fromisoformat(lease["spec"]["acquireTime"])
        renewed = wait_for(lambda: (got := api.get(LEASES, "leases", "llmc-system", "llmc-controller"))
                           and got["spec"]["renewTime"] != lease["spec"]["renewTime"] and got, what="a renewal")
        assert renewed["spec"]["holderIdentity"] == "a"
        assert dt.datetime.fromisoformat(renewed["spec"]["acquireTime"]) == first
    finally:
        a.stop()
