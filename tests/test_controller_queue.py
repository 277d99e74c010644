"""The keyed work queue, the rate limiter's bookkeeping, the pure planning step, and /healthz when a
loop has died."""

from __future__ import annotations

import threading

from compiler.controller.queue import RateLimiter, WorkQueue
from compiler.controller.reconcile import Outcome, Scope, drifted, plan
from tests.support.controller import load_seed, start, wait_for


def test_adds_coalesce_and_a_key_is_never_processed_twice_at_once():
    q = WorkQueue(debounce=0)
    q.add("a")
    q.add("a")
    q.add("b")
    assert len(q) == 2
    first = q.get(timeout=1)
    q.add(first)  # added while processing: held back until done
    second = q.get(timeout=1)
    assert {first, second} == {"a", "b"}
    assert q.get(timeout=0.05) is None
    q.done(first)
    assert q.get(timeout=1) == first
    q.done(first)
    q.done(second)
    assert len(q) == 0


def test_per_key_exponential_backoff_and_forget():
    q = WorkQueue(debounce=0, base=0.1, cap=0.5)
    q.add("bad")
    delays = []
    for _ in range(4):
        assert q.get(timeout=10) == "bad"  # the bounds only matter when the key never comes back
        delays.append(q.retry("bad"))
    assert delays == [0.1, 0.2, 0.4, 0.5]
    assert q.get(timeout=10) == "bad"  # back after its backoff
    q.forget("bad")
    assert q.retry("bad") == 0.1


def test_another_key_is_not_held_up_by_a_failing_ones_backoff():
    """The failing key backs off 30 s, so "good" comes first however long the machine stalls between
    two lines (a backoff of 0.5 s could have run out first on a loaded machine, and "bad" came first)."""
    q = WorkQueue(debounce=0, base=30, cap=30)
    q.add("bad")
    assert q.get(timeout=10) == "bad"
    assert q.retry("bad") == 30
    q.add("good")
    assert q.get(timeout=10) == "good"
    q.done("good")
    assert q.get(timeout=0.05) is None  # "bad" still backs off


def test_rate_limiter_spends_its_burst_then_waits():
    limiter = RateLimiter(qps=1000, burst=3)
    for _ in range(3):
        limiter.wait()
    assert limiter.tokens < 1
    RateLimiter(qps=0, burst=0).wait()  # 0 = unlimited


def _obj(kind, name, sources, spec):
    return {"apiVersion": "networking.istio.io/v1", "kind": kind,
            "metadata": {"name": name, "namespace": "a", "labels": {"x": "1"},
                         "annotations": {"llmc.io/sources": ", ".join(sources)}}, "spec": spec}


def test_plan_keeps_objects_of_invalid_sources_and_refuses_other_namespaces():
    keep = _obj("VirtualService", "v", ["LLMRoute a/r"], {"hosts": ["old"]})
    gone = _obj("ServiceEntry", "s", ["LLMProvider a/p"], {"hosts": ["p"]})
    outcome = Outcome(objects=[_obj("VirtualService", "v", ["LLMRoute a/r"], {"hosts": ["new"]}),
                               {**_obj("EnvoyFilter", "e", ["LLMRoute a/r2"], {}),
                                "metadata": {**_obj("EnvoyFilter", "e", ["LLMRoute a/r2"], {})["metadata"],
                                             "namespace": "kube-system"}}],
                      invalid={"LLMRoute a/r"})
    live = {("VirtualService", "a", "v"): keep, ("ServiceEntry", "a", "s"): gone}
    p = plan(outcome, live, Scope(frozenset({"istio-system"})))
    assert p.apply == [] and p.kept == [("VirtualService", "a", "v")]
    assert p.prune == [("ServiceEntry", "a", "s")]
    assert "kube-system" in p.refused["LLMRoute a/r2"][0]
    allowed = plan(outcome, live, Scope(frozenset({"kube-system"})))
    assert [o["metadata"]["namespace"] for o in allowed.apply] == ["kube-system"]


def test_drift_ignores_other_managers_additions_but_not_changes():
    desired = _obj("VirtualService", "v", ["LLMRoute a/r"], {"hosts": ["h"], "http": [{"a": 1}]})
    live = _obj("VirtualService", "v", ["LLMRoute a/r"], {"hosts": ["h"], "http": [{"a": 1}], "exportTo": ["."]})
    live["metadata"]["labels"]["other"] = "y"
    assert not drifted(desired, live)
    live["spec"]["http"] = [{"a": 2}]
    assert drifted(desired, live)
    assert drifted(desired, None)


def test_healthz_fails_when_a_loop_died(api):
    import urllib.error
    import urllib.request

    load_seed(api)
    ctrl = start(api)
    port = ctrl.serve_health("127.0.0.1", 0)
    try:
        wait_for(ctrl.ready, what="synced")
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz").status == 200
        dead = threading.Thread(target=lambda: None)
        dead.start()
        dead.join()
        ctrl.loops.append(dead)  # a loop thread that has exited
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz")
            raise AssertionError("healthz stayed ok")
        except urllib.error.HTTPError as exc:
            assert exc.code == 503
    finally:
        ctrl.stop()
