"""`llmc controller` at cluster scale (issue 32), against the fake API server: per-placement work keys
with a dependency index (one shared source no longer makes every change recompile everything),
shared objects that two ``--watch-namespace`` instances do not fight over, and no second pass for
the controller's own writes. Sizes stay small: the bench (``python -m tests.bench controller``)
measures scale; these tests count passes, keys and writes, never time."""

from __future__ import annotations

import copy

import pytest

from tests.support.controller import EF, PLURAL, SRC, conditions, generated, programmed, start, wait_for

V = "istio.alibabacloud.com/v1beta1"
GATEWAY = {"istio": "ingressgateway"}


def provider(name: str, ns: str, host: str, model: str = "m1", labels: dict | None = None,
             export_to: list[str] | None = None) -> dict:
    spec: dict = {"host": host, "path": "/v1/chat/completions",
                  "configs": {"defaultConfig": {"openAIConfig": {"model": model}}}}
    if labels:
        spec["workloadSelector"] = {"labels": labels}
    if export_to is not None:
        spec["exportTo"] = export_to
    return {"apiVersion": V, "kind": "LLMProvider", "metadata": {"name": name, "namespace": ns}, "spec": spec}


def route(name: str, ns: str, host: str, backends: list[str], gateways: list[str] | None = None) -> dict:
    spec: dict = {"host": host, "rules": [{"backendRefs": [{"providerHost": b} for b in backends]}]}
    if len(backends) > 1:
        for i, b in enumerate(spec["rules"][0]["backendRefs"]):
            b["weight"] = 50 if i < 2 else 0
    if gateways:
        spec["gateways"] = gateways
    return {"apiVersion": V, "kind": "LLMRoute", "metadata": {"name": name, "namespace": ns}, "spec": spec}


def put(server, *objs) -> None:
    for obj in objs:
        server.put_object(SRC, PLURAL[obj["kind"]], copy.deepcopy(obj))


def teams(*namespaces: str) -> list[dict]:
    out = []
    for ns in namespaces:
        out += [provider("p", ns, f"{ns}.example.com"), route("r", ns, f"chat.{ns}", [f"{ns}.example.com"])]
    return out


def record_passes(ctrl) -> list[str]:
    """The keys of every pass the controller runs from now on."""
    passes: list[str] = []
    run = ctrl.reconcile_key

    def recorded(key: str) -> bool:
        passes.append(key)
        return run(key)

    ctrl.reconcile_key = recorded
    return passes


def settled(api, ctrl) -> None:
    """Every write of the API server is in the controller's caches and its queue is idle: no pass is
    pending (bounded by events, not by a time window)."""
    def caught_up() -> bool:
        with api.lock:
            latest = {(o.get("kind"), k[2], k[3]): o["metadata"]["resourceVersion"] for k, o in api.objects.items()
                      if k[0] != "api/v1" and "leases" not in k[1]}
        seen = {}
        for inf in ctrl.sources + ctrl.generated:
            seen.update({(o.get("kind"), *k): o["metadata"]["resourceVersion"] for k, o in dict(inf.cache).items()})
        return all(seen.get(k, rv) == rv for k, rv in latest.items())

    wait_for(caught_up, what="caches caught up")
    wait_for(lambda: len(ctrl.queue) == 0 and not ctrl.queue.processing and not ctrl.queue.again, what="idle")


def all_programmed(api, docs) -> bool:
    return all(programmed(api, d["kind"], d["metadata"]["name"], d["metadata"]["namespace"]) for d in docs)


SHARED = {
    "gateway-bound route": [provider("gp", "team-c", "gw.example.com", labels=GATEWAY),
                            route("gr", "team-c", "gw.example.com", ["gw.example.com"], ["istio-system/gw"])],
    "provider in the root namespace": [provider("rootp", "istio-system", "root.example.com"),
                                       route("uses-root", "team-b", "chat-root.team-b", ["root.example.com"])],
    "exportTo": [provider("xp", "team-c", "shared.example.com", export_to=["*"]),
                 route("uses-x", "team-b", "chat-x.team-b", ["shared.example.com"])],
}


@pytest.mark.parametrize("shared", sorted(SHARED))
def test_one_shared_source_does_not_collapse_the_cluster_into_one_key(api, shared):
    """Item 1: with one shared source, a change of a provider of team-a recompiles team-a's key only
    and writes only team-a's objects that changed."""
    api.create_namespace("istio-system")
    docs = teams("team-a", "team-b", "team-c") + SHARED[shared]
    put(api, *docs)
    ctrl = start(api, gateway_namespaces=["istio-system"], resync=3600)
    try:
        wait_for(lambda: all_programmed(api, docs), what="all programmed")
        settled(api, ctrl)
        passes = record_passes(ctrl)
        since = len(api.committed)
        changed = api.get(SRC, "llmproviders", "team-a", "p")
        changed["spec"]["configs"]["defaultConfig"]["openAIConfig"]["model"] = "m2"
        api.put_object(SRC, "llmproviders", changed)
        wait_for(lambda: conditions(api, "LLMProvider", "p", "team-a")["Programmed"].get("observedGeneration") == 2,
                 what="status of generation 2")
        settled(api, ctrl)
        assert set(passes) == {"team-a"}, passes
        written = {p for _, m, p, _ in api.committed[since:] if "/llmproviders/" not in p and "/leases/" not in p}
        assert written and all("/namespaces/team-a/" in p for p in written), written
    finally:
        ctrl.stop()


def test_a_gateway_bound_route_is_compiled_in_its_own_key_and_the_gateway_namespace_key(api):
    """Item 1: the dependency index: a change of the gateway-bound route queues its namespace and the
    gateway namespace its rules are placed in, nothing else; objects still equal `llmc render`'s."""
    api.create_namespace("istio-system")
    docs = teams("team-a", "team-b") + SHARED["gateway-bound route"]
    put(api, *docs)
    ctrl = start(api, gateway_namespaces=["istio-system"], resync=3600)
    try:
        wait_for(lambda: all_programmed(api, docs), what="all programmed")
        settled(api, ctrl)
        passes = record_passes(ctrl)
        gp = api.get(SRC, "llmproviders", "team-c", "gp")
        gp["spec"]["configs"]["defaultConfig"]["openAIConfig"]["model"] = "m2"
        api.put_object(SRC, "llmproviders", gp)
        wait_for(lambda: "m2" in str([o["spec"] for o in api.list(EF, "envoyfilters")
                                      if o["metadata"]["namespace"] == "istio-system"]), what="gateway filter")
        settled(api, ctrl)
        assert set(passes) == {"team-c", "istio-system"}, passes
    finally:
        ctrl.stop()


def test_one_change_is_one_pass(api):
    """Item 3: the controller's own writes come back through the watch; it recognises them (the
    resourceVersion it just wrote) and does not queue the key again."""
    docs = teams("team-a")
    put(api, *docs)
    ctrl = start(api, resync=3600)
    try:
        wait_for(lambda: all_programmed(api, docs), what="programmed")
        settled(api, ctrl)
        passes = record_passes(ctrl)
        for model in ("m2", "m3", "m4"):
            p = api.get(SRC, "llmproviders", "team-a", "p")
            p["spec"]["configs"]["defaultConfig"]["openAIConfig"]["model"] = model
            api.put_object(SRC, "llmproviders", p)
            wait_for(lambda m=model: m in str([o["spec"] for o in generated(api)]), what=f"{model} applied")
            settled(api, ctrl)
        assert len(passes) == 3, passes
    finally:
        ctrl.stop()


def two_instances(api):
    """team-a and team-b, each with its own scoped instance (own Lease namespace), both routing
    through the ingress gateway in istio-system: one gateway-wide EnvoyFilter has sources of both."""
    for ns in ("istio-system", "lease-a", "lease-b"):
        api.create_namespace(ns)
    docs = []
    for ns in ("team-a", "team-b"):
        docs += [provider("gp", ns, f"gw.{ns}.example.com", labels=GATEWAY),
                 route("gr", ns, f"gw.{ns}.example.com", [f"gw.{ns}.example.com"], ["istio-system/gw"])]
    put(api, *docs)
    a = start(api, "a", namespaces=["team-a"], gateway_namespaces=["istio-system"], lease_namespace="lease-a",
              resync=0.3)
    b = start(api, "b", namespaces=["team-b"], gateway_namespaces=["istio-system"], lease_namespace="lease-b",
              resync=0.3)
    return docs, a, b


def gateway_filter(api) -> dict | None:
    found = [o for o in api.list(EF, "envoyfilters") if o["metadata"]["namespace"] == "istio-system"
             and "gateway-filter" in o["metadata"]["name"]]
    return found[0] if found else None


def test_two_scoped_instances_sharing_a_gateway_namespace_make_no_writes_when_idle(api):
    """Item 2: the gateway-wide EnvoyFilter of istio-system has sources of both instances: both
    compute it from all of them, so neither rewrites it; idle, they write nothing (the window is a
    number of resync passes of each instance, not a duration)."""
    docs, a, b = two_instances(api)
    try:
        wait_for(lambda: all_programmed(api, docs), what="all programmed")
        wait_for(lambda: (f := gateway_filter(api)) and "team-a/" in f["metadata"]["annotations"]["llmc.io/sources"]
                 and "team-b/" in f["metadata"]["annotations"]["llmc.io/sources"], what="filter has both")
        for c in (a, b):  # converged: every write seen by both, no pass in flight (a pass may still be
            settled(api, c)  # writing its last objects when the statuses are already Programmed)
        counts = {c: c.metrics.values["llmc_reconciles_total"] for c in (a, b)}
        since = len(api.committed)
        wait_for(lambda: all(c.metrics.values["llmc_reconciles_total"] >= counts[c] + 12 for c in (a, b)),
                 timeout=30, what="a dozen passes of each instance")
        writes = [(m, p, ua) for _, m, p, ua in api.committed[since:] if "/leases/" not in p]
        assert writes == [], writes[:10]
        f = gateway_filter(api)
        assert "team-a/" in f["metadata"]["annotations"]["llmc.io/sources"]
        assert "team-b/" in f["metadata"]["annotations"]["llmc.io/sources"]
    finally:
        a.stop()
        b.stop()


def test_a_scoped_instance_never_prunes_a_shared_object_the_other_still_needs(api):
    """Item 2: team-b's route goes; the shared filter stays, with team-a's sources only."""
    docs, a, b = two_instances(api)
    try:
        wait_for(lambda: all_programmed(api, docs), what="all programmed")
        api.delete_object(SRC, "llmroutes", "team-b", "gr")
        wait_for(lambda: (f := gateway_filter(api)) and "team-b/" not in f["metadata"]["annotations"]["llmc.io/sources"],
                 what="team-b's route gone from the filter")
        counts = {c: c.metrics.values["llmc_reconciles_total"] for c in (a, b)}
        wait_for(lambda: all(c.metrics.values["llmc_reconciles_total"] >= counts[c] + 6 for c in (a, b)),
                 timeout=30, what="passes of each instance")
        f = gateway_filter(api)
        assert f is not None and "LLMRoute team-a/gr" in f["metadata"]["annotations"]["llmc.io/sources"]
        api.delete_object(SRC, "llmroutes", "team-a", "gr")
        wait_for(lambda: gateway_filter(api) is None, what="pruned once no route needs it")
    finally:
        a.stop()
        b.stop()


def test_any_object_with_sources_in_several_namespaces_is_compiled_from_all_of_them():
    """Item 4, the general rule: an object of namespace N found (live, or in another key's output)
    to have sources of other namespaces — as the token limits' ConfigMap in the rate-limit service's
    namespace will — makes N's key compile all of them, and a change of any of them queue N."""
    from compiler import Options
    from compiler.controller.deps import DependencyIndex

    idx = DependencyIndex(Options())
    docs = teams("team-a", "team-b")
    for d in docs:
        idx.update(None, copy.deepcopy(d))
    assert "ratelimit" not in idx.keys()
    assert idx.learn("ratelimit", {"LLMRoute team-a/r", "LLMRoute team-b/r"})
    assert not idx.learn("ratelimit", {"LLMRoute team-a/r"})  # nothing new: no pass needed
    sources, own = idx.compile_set("ratelimit")
    assert own == set() and {f"{s['kind']} {s['metadata']['namespace']}/{s['metadata']['name']}" for s in sources} == {
        "LLMRoute team-a/r", "LLMRoute team-b/r", "LLMProvider team-a/p", "LLMProvider team-b/p"}
    changed = copy.deepcopy(docs[1])
    changed["spec"]["rules"][0]["name"] = "renamed"
    assert idx.update(docs[1], changed) == {"team-a", "ratelimit"}
    p = copy.deepcopy(docs[2])  # team-b's provider: imported by team-b's route, so by ratelimit's key
    p["spec"]["path"] = "/v2"
    assert idx.update(docs[2], p) == {"team-b", "ratelimit"}
    idx.forget("ratelimit", {"LLMRoute team-a/r"})
    assert idx.update(changed, docs[1]) == {"team-a"}


def test_own_writes_are_told_from_others_even_when_the_watch_is_faster_than_the_response():
    """Item 3, the rule: an event carrying the resourceVersion our write returned is ours; one that
    arrives while the write is in flight waits for the response; anything else queues the key."""
    from compiler.controller.ownwrites import DELETED, OwnWrites

    def at(rv: str) -> dict:
        return {"metadata": {"resourceVersion": rv}}

    own, key = OwnWrites(), ("EnvoyFilter", "ns", "x")
    own.begin(key)
    assert own.ours(key, at("5"))  # the watch came first
    assert own.end(key, "5") is False  # and it was our write: nothing to queue
    assert own.ours(key, at("5")) and not own.ours(key, at("6"))  # a hand edit is not ours
    own.begin(key)
    own.ours(key, at("7"))  # someone else's write while ours was in flight
    assert own.end(key, "8") is True
    own.begin(key)
    assert own.end(key, DELETED) is False
    assert own.ours(key, None) and not own.ours(key, None)  # our deletion, once; then someone else's


@pytest.mark.parametrize("mode", ["egress-gateway", "telemetry"])
def test_per_namespace_keys_apply_what_render_prints_when_objects_aggregate(api, mode):
    """Egress-gateway and telemetry modes used to be one key for everything; per-namespace keys must
    still apply exactly `llmc render`'s objects for all the sources together, and idle, not rewrite
    any of them."""
    import json
    import tempfile
    from pathlib import Path

    from compiler import Options, compile_paths
    from tests.support.controller import strip

    api.create_namespace("istio-system")
    opts = Options(egress_gateway="istio-system/istio-egressgateway") if mode == "egress-gateway" \
        else Options(telemetry=True)
    docs = teams("team-a", "team-b") + SHARED["gateway-bound route"] + [
        provider("gp", "team-a", "gw-a.example.com", labels=GATEWAY),
        route("gr", "team-a", "gw-a.example.com", ["gw-a.example.com"], ["istio-system/gw"])]
    put(api, *docs)
    ctrl = start(api, opts=opts, gateway_namespaces=["istio-system"], resync=3600)
    try:
        wait_for(lambda: all_programmed(api, docs), what="all programmed")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp, "in.yaml")
            path.write_text("\n---\n".join(json.dumps(d) for d in docs))
            expected = {(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]): o
                        for o in compile_paths([str(path)], opts).objects}
        assert any(len({s.split(" ")[1].split("/")[0] for s in o["metadata"]["annotations"]["llmc.io/sources"]
                        .split(", ")}) > 1 for o in expected.values()), "no object aggregates namespaces"
        wait_for(lambda: {(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]): strip(o)
                          for o in generated(api) + api.list("apis/telemetry.istio.io/v1", "telemetries")
                          + api.list("apis/networking.istio.io/v1", "gateways")} == expected,
                 what="render's objects")
        settled(api, ctrl)
        since = len(api.committed)
        ctrl.enqueue_all()
        settled(api, ctrl)
        assert [p for _, _, p, _ in api.committed[since:] if "/leases/" not in p] == []
    finally:
        ctrl.stop()
