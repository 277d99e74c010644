"""`llmc controller --rate-limit-service`: the token limits' ConfigMap (issue 30's last item, issue 32's
item 4) on the fake API server. The ConfigMap lives in the rate-limit service's namespace and holds
the limits of every namespace and provider: one object with sources in many namespaces, so one work
key (that namespace) writes it, compiled from all of them (``compiler/controller/deps.py``). The
controller reads and writes ConfigMaps in that namespace only. Tests count passes and writes, never time.
"""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

from compiler import Options, compile_paths
from tests.support.controller import SRC, programmed, start, strip, wait_for
from tests.test_controller_scale import provider, put, record_passes, route, settled

CM = "api/v1"
RLS = "llmc-system/ratelimit:8081"


def limited(ns: str, tokens: int = 30) -> list[dict]:
    """A provider and a route of ``ns`` whose rule has a token limit keyed by a header."""
    r = route("r", ns, f"chat.{ns}", [f"{ns}.example.com"])
    r["spec"]["rules"][0]["name"] = "per-user"
    r["spec"]["rules"][0]["tokenLimits"] = [{"name": "tph", "tokens": tokens, "per": "Hour",
                                             "key": [{"header": "x-user-id"}]}]
    return [provider("p", ns, f"{ns}.example.com"), r]


def shared_provider() -> dict:
    p = provider("shared", "platform", "shared.example.com", export_to=["*"])
    p["spec"]["tokenLimits"] = [{"name": "provider-tph", "tokens": 50, "per": "Hour"}]
    return p


def config_maps(api) -> list[dict]:
    return [o for o in api.list(CM, "configmaps") if o["metadata"]["name"] == "llmc-ratelimit-config"]


def rendered(docs: list[dict], opts: Options) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "in.yaml")
        path.write_text("\n---\n".join(json.dumps(d) for d in docs))
        (cm,) = [o for o in compile_paths([str(path)], opts).objects if o["kind"] == "ConfigMap"]
    return cm


def test_the_controller_writes_renders_configmap_from_every_namespace_once_and_idles(api):
    """The ConfigMap equals `llmc render`'s for all the sources together (two namespaces' rule limits
    and a provider's, which is one bucket for every namespace); the sources are Programmed (no
    LLMC260); idle, nothing is rewritten; ConfigMaps are listed, watched and written in the service's
    namespace only (the RBAC deploy/components/rate-limit-service grants)."""
    opts = Options(rate_limit_service=("llmc-system", "ratelimit", 8081))
    uses = route("uses-shared", "team-b", "chat-shared.team-b", ["shared.example.com"])
    docs = limited("team-a") + limited("team-b", 40) + [shared_provider(), uses]
    put(api, *docs)
    ctrl = start(api, opts=opts, resync=3600)
    try:
        wait_for(lambda: all(programmed(api, d["kind"], d["metadata"]["name"], d["metadata"]["namespace"])
                             for d in docs), what="all programmed")
        expected = rendered(docs, opts)
        wait_for(lambda: [strip(o) for o in config_maps(api)] == [expected], what="render's ConfigMap")
        settled(api, ctrl)
        since = len(api.committed)
        ctrl.enqueue_all()
        settled(api, ctrl)
        assert [p for _, _, p, _ in api.committed[since:] if "/leases/" not in p] == []
        paths = {p.split("?")[0] for _, p in api.requests if "configmaps" in p}
        assert paths and all(p.startswith("/api/v1/namespaces/llmc-system/configmaps") for p in paths), paths
    finally:
        ctrl.stop()


def test_a_limit_change_rewrites_the_configmap_in_its_namespace_and_the_services(api):
    """A change of team-a's limit queues team-a's key and the service namespace's key (team-a's route
    is one of the ConfigMap's sources): the ConfigMap gets the new budget, keeps team-b's, and no
    other namespace's key runs."""
    opts = Options(rate_limit_service=("llmc-system", "ratelimit", 8081))
    docs = limited("team-a") + limited("team-b", 40) + limited("team-c", 50)
    put(api, *docs)
    ctrl = start(api, opts=opts, resync=3600)
    try:
        wait_for(lambda: config_maps(api) and "requests_per_unit: 50" in config_maps(api)[0]["data"]["llmc.yaml"],
                 what="the ConfigMap with team-c's limit")
        settled(api, ctrl)
        passes = record_passes(ctrl)
        r = copy.deepcopy(api.get(SRC, "llmroutes", "team-a", "r"))
        r["spec"]["rules"][0]["tokenLimits"][0]["tokens"] = 77
        api.put_object(SRC, "llmroutes", r)
        wait_for(lambda: "requests_per_unit: 77" in config_maps(api)[0]["data"]["llmc.yaml"], what="new budget")
        settled(api, ctrl)
        text = config_maps(api)[0]["data"]["llmc.yaml"]
        assert "requests_per_unit: 40" in text and "requests_per_unit: 50" in text
        assert set(passes) == {"team-a", "llmc-system"}, passes
    finally:
        ctrl.stop()


def test_a_limit_removed_leaves_the_configmap_without_it(api):
    """The last limit of team-a goes: the ConfigMap loses it (the service stops counting it); once no
    limit is left it stays, empty, as the service's Deployment mounts it."""
    opts = Options(rate_limit_service=("llmc-system", "ratelimit", 8081))
    docs = limited("team-a") + limited("team-b", 40)
    put(api, *docs)
    ctrl = start(api, opts=opts, resync=3600)
    try:
        wait_for(lambda: config_maps(api) and "team-a" in config_maps(api)[0]["data"]["llmc.yaml"]
                 and "team-b" in config_maps(api)[0]["data"]["llmc.yaml"], what="both limits")
        r = copy.deepcopy(api.get(SRC, "llmroutes", "team-a", "r"))
        del r["spec"]["rules"][0]["tokenLimits"]
        api.put_object(SRC, "llmroutes", r)
        wait_for(lambda: "team-a" not in config_maps(api)[0]["data"]["llmc.yaml"], what="team-a's limit gone")
        settled(api, ctrl)
        assert "team-b" in config_maps(api)[0]["data"]["llmc.yaml"]
        assert config_maps(api)[0]["metadata"]["annotations"]["llmc.io/sources"] == "LLMRoute team-b/r"
        api.delete_object(SRC, "llmroutes", "team-b", "r")
        wait_for(lambda: "team-b" not in config_maps(api)[0]["data"]["llmc.yaml"], what="no limit left")
        assert "descriptors: []" in config_maps(api)[0]["data"]["llmc.yaml"]
    finally:
        ctrl.stop()


def test_without_a_rate_limit_service_no_configmap_is_read(api):
    """Without --rate-limit-service the controller never lists ConfigMaps (it has no RBAC for them)
    and a limited route is refused with LLMC260."""
    docs = limited("team-a")
    put(api, *docs)
    ctrl = start(api, resync=3600)
    try:
        wait_for(lambda: programmed(api, "LLMProvider", "p", "team-a"), what="the provider programmed")
        obj = api.get(SRC, "llmroutes", "team-a", "r")
        wait_for(lambda: "LLMC260" in json.dumps((api.get(SRC, "llmroutes", "team-a", "r") or {}).get("status")),
                 what="LLMC260 on the route")
        assert obj is not None
        assert not [p for _, p in api.requests if "configmaps" in p]
    finally:
        ctrl.stop()


def test_two_scoped_instances_write_one_configmap_from_both_and_idle(api):
    """Two --watch-namespace instances with limits in their namespaces: one ConfigMap with the limits
    of both (each instance reads the other's sources the live object names), and idle, neither
    rewrites it (the window is a dozen resync passes of each, not a duration); when one instance's
    last limit goes, the ConfigMap is never deleted while the other still has limits."""
    opts = Options(rate_limit_service=("llmc-system", "ratelimit", 8081))
    for ns in ("lease-a", "lease-b"):
        api.create_namespace(ns)
    docs = limited("team-a") + limited("team-b", 40)
    put(api, *docs)
    a = start(api, "a", opts=opts, namespaces=["team-a"], lease_namespace="lease-a", resync=0.3)
    b = start(api, "b", opts=opts, namespaces=["team-b"], lease_namespace="lease-b", resync=0.3)
    try:
        expected = rendered(docs, opts)
        wait_for(lambda: [strip(o) for o in config_maps(api)] == [expected], what="one ConfigMap from both")
        for c in (a, b):
            settled(api, c)
        counts = {c: c.metrics.values["llmc_reconciles_total"] for c in (a, b)}
        since = len(api.committed)
        wait_for(lambda: all(c.metrics.values["llmc_reconciles_total"] >= counts[c] + 12 for c in (a, b)),
                 timeout=30, what="a dozen passes of each instance")
        assert [p for _, _, p, _ in api.committed[since:] if "/leases/" not in p] == []
        since = len(api.committed)
        api.delete_object(SRC, "llmroutes", "team-b", "r")
        wait_for(lambda: config_maps(api) and "team-b" not in config_maps(api)[0]["data"]["llmc.yaml"],
                 what="team-b's limit gone")
        assert "team-a" in config_maps(api)[0]["data"]["llmc.yaml"]
        # b's last limit went: b hands the object over (written from a's sources), never prunes it
        assert not [p for _, m, p, _ in api.committed[since:] if m == "DELETE" and "/configmaps/" in p]
    finally:
        a.stop()
        b.stop()


def test_a_namespace_budget_reaches_the_gateway_key_of_its_namespaces_placed_routes():
    """spec.namespaceLimits of one route apply to every route of its namespace: a gateway key that
    compiles a placed route of that namespace compiles the declaring route too, and a change of the
    declaration queues that gateway key."""
    from compiler.controller.deps import DependencyIndex

    idx = DependencyIndex(Options())
    gw = route("gr", "team-a", "gw.example.com", ["gw.example.com"], ["istio-system/gw"])
    declarer = route("r", "team-a", "chat.team-a", ["team-a.example.com"])
    declarer["spec"]["namespaceLimits"] = [{"name": "team", "budget": {"cost": 1}, "per": "Day"}]
    for d in (provider("gp", "team-a", "gw.example.com"), provider("p", "team-a", "team-a.example.com"), gw, declarer):
        idx.update(None, copy.deepcopy(d))
    sources, _ = idx.compile_set("istio-system")
    assert "LLMRoute team-a/r" in {f"{s['kind']} {s['metadata']['namespace']}/{s['metadata']['name']}" for s in sources}
    changed = copy.deepcopy(declarer)
    changed["spec"]["namespaceLimits"][0]["budget"]["cost"] = 2
    assert idx.update(declarer, changed) == {"team-a", "istio-system"}
    plain = copy.deepcopy(declarer)
    del plain["spec"]["namespaceLimits"]
    idx.update(changed, plain)
    assert idx.update(plain, copy.deepcopy(plain)) == {"team-a"}  # no budget: the gateway key is not its
