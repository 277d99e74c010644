"""`llmc controller` scope, tenancy and per-key behaviour against the fake API server: pruning stays
inside watched namespaces and the controller's own objects; tenants cannot get objects written into
namespaces the operator did not allow; one refused object fails only its own sources; hand edits are
repaired from the watches; an invalid edit keeps the last known good config."""

from __future__ import annotations

import copy

from compiler import Options
from tests.support.controller import (
    EF,
    NET,
    PLURAL,
    SRC,
    conditions,
    generated,
    load_seed,
    programmed,
    seed_objects,
    start,
    wait_for,
)

V = "istio.alibabacloud.com/v1beta1"


def provider(name: str, ns: str, host: str, gateway: bool = False, secret: bool = False) -> dict:
    spec = {"host": host, "path": "/v1/chat/completions"}
    if gateway:
        spec["workloadSelector"] = {"labels": {"istio": "ingressgateway"}}
    if secret:
        spec["configs"] = {"defaultConfig": {"openAIConfig": {"apiKeySecretRef": {"name": "llm-keys", "key": "k"}}}}
    return {"apiVersion": V, "kind": "LLMProvider", "metadata": {"name": name, "namespace": ns}, "spec": spec}


def route(name: str, ns: str, host: str, gateways: list[str] | None = None) -> dict:
    spec = {"host": host, "rules": [{"backendRefs": [{"providerHost": host}]}]}
    if gateways:
        spec["gateways"] = gateways
    return {"apiVersion": V, "kind": "LLMRoute", "metadata": {"name": name, "namespace": ns}, "spec": spec}


def put(server, *objs) -> None:
    for obj in objs:
        server.put_object(SRC, PLURAL[obj["kind"]], copy.deepcopy(obj))


def test_watch_namespace_never_deletes_outside_its_namespaces(api):
    for ns in ("ns-00", "ns-01"):
        put(api, provider("p", ns, "api.example.com"))
    everywhere = start(api, "a")  # a cluster-wide run first: objects in both namespaces
    wait_for(lambda: programmed(api, "LLMProvider", "p", "ns-01") and programmed(api, "LLMProvider", "p", "ns-00"),
             what="both programmed")
    everywhere.stop()
    rendered = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",  # `llmc render | kubectl apply`
                "metadata": {"name": "llmc-route-by-render", "namespace": "ns-00",
                             "labels": {"app.kubernetes.io/managed-by": "llmc"},
                             "annotations": {"llmc.io/sources": "LLMRoute ns-00/gone"}},
                "spec": {"hosts": ["x"]}}
    api.put_object(NET, "virtualservices", rendered)
    before = {(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]) for o in generated(api)}
    ctrl = start(api, "b", namespaces=["ns-00"])
    try:
        api.delete_object(SRC, "llmproviders", "ns-01", "p")  # not watched: its objects are not ours now
        api.delete_object(SRC, "llmproviders", "ns-00", "p")
        wait_for(lambda: api.get(NET, "serviceentries", "ns-00", "llmc-provider-p") is None, what="ns-00 pruned")
        assert api.get(NET, "serviceentries", "ns-01", "llmc-provider-p") is not None
        assert api.get(NET, "virtualservices", "ns-00", "llmc-route-by-render") is not None
        deletes = [p for _, m, p in api.writes_by("/b") if m == "DELETE"]
        assert deletes and all("/namespaces/ns-00/" in p for p in deletes), deletes
        assert {k for k in before if k[1] == "ns-01"} <= \
            {(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]) for o in generated(api)}
    finally:
        ctrl.stop()


def test_controller_adopts_a_render_applied_object_of_the_same_name(api):
    put(api, provider("p", "default", "api.example.com"))
    rendered = {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
                "metadata": {"name": "llmc-provider-p", "namespace": "default",
                             "labels": {"app.kubernetes.io/managed-by": "llmc"},
                             "annotations": {"llmc.io/sources": "LLMProvider default/p"}},
                "spec": {"hosts": ["stale.example.com"]}}
    api.put_object(NET, "serviceentries", rendered)
    ctrl = start(api)
    try:
        se = wait_for(lambda: (o := api.get(NET, "serviceentries", "default", "llmc-provider-p"))
                      and o["spec"]["hosts"] == ["api.example.com"] and o, what="adopted")
        assert se["metadata"]["labels"]["llmc.io/owner"] == "controller"
        api.delete_object(SRC, "llmproviders", "default", "p")
        wait_for(lambda: api.get(NET, "serviceentries", "default", "llmc-provider-p") is None, what="pruned")
    finally:
        ctrl.stop()


def test_tenant_cannot_get_objects_written_into_namespaces_not_allowed(api):
    api.create_namespace("istio-system")
    api.create_namespace("tenant-b")
    put(api, provider("p", "tenant-a", "api.example.com", gateway=True),
        route("r", "tenant-a", "api.example.com", gateways=["kube-system/x", "tenant-b/gw"]))
    ctrl = start(api, gateway_namespaces=["istio-system"])
    try:
        conds = wait_for(lambda: (c := conditions(api, "LLMRoute", "r", "tenant-a")) and
                         c["Programmed"]["reason"] == "GatewayNamespaceNotAllowed" and c, what="refused")
        assert conds["Programmed"]["status"] == "False"
        assert "kube-system" in conds["Programmed"]["message"] and "--gateway-namespaces" in conds["Programmed"]["message"]
        writes = [p for _, _, p in api.writes_by("llmc-controller")]
        assert writes and not [p for p in writes if "/namespaces/kube-system/" in p or "/namespaces/tenant-b/" in p]
        # the tenant's own namespace is fine (the provider's status is its own write: not
        # necessarily in before the route's, so waited for)
        wait_for(lambda: programmed(api, "LLMProvider", "p", "tenant-a"), what="provider programmed")
        # an allowed gateway namespace is written
        put(api, route("r", "tenant-a", "api.example.com", gateways=["istio-system/gw"]))
        wait_for(lambda: programmed(api, "LLMRoute", "r", "tenant-a"), what="allowed gateway programmed")
        wait_for(lambda: [o for o in api.list(EF, "envoyfilters") if o["metadata"]["namespace"] == "istio-system"],
                 what="an EnvoyFilter in the allowed gateway namespace")
    finally:
        ctrl.stop()


def test_secrets_checked_only_in_own_or_allowed_namespaces(api):
    api.create_namespace("istio-system")
    put(api, provider("p", "tenant-a", "api.example.com", gateway=True, secret=True),
        route("r", "tenant-a", "api.example.com", gateways=["istio-system/gw"]))
    api.fail("GET", "/namespaces/istio-system/secrets/", 403, times=1000)  # no Role there
    ctrl = start(api, gateway_namespaces=["istio-system"])
    try:
        conds = wait_for(lambda: (c := conditions(api, "LLMRoute", "r", "tenant-a")) and
                         c["ResolvedRefs"]["reason"] == "NotChecked" and c, what="not checked")
        assert conds["ResolvedRefs"]["status"] == "Unknown"
        assert "llm-keys" not in conds["ResolvedRefs"]["message"]
    finally:
        ctrl.stop()
    other = start(api, "b")  # istio-system not allowed: the Secret there is never looked at
    try:
        wait_for(lambda: conditions(api, "LLMRoute", "r", "tenant-a")["Programmed"]["reason"] ==
                 "GatewayNamespaceNotAllowed", what="refused")
        reads = [p for _, m, p, ua in api.log if m == "GET" and "/secrets/" in p and "/b" in ua]
        assert reads == []
    finally:
        other.stop()


def test_one_refused_object_fails_only_its_own_sources(api, caplog):
    load_seed(api)
    put(api, provider("gw-p", "edge", "gw.example.com", gateway=True),
        route("to-missing-ns", "edge", "gw.example.com", gateways=["missing/gw"]))
    # an API server may echo the refused object, and an EnvoyFilter can hold a literal key
    api.fail("PATCH", "/virtualservices/llmc-provider-moonshot", 422, times=10**6,
             message='VirtualService is invalid: apiKey "sk-echoed-secret"')
    ctrl = start(api, gateway_namespaces=["missing"])  # allowed, but it does not exist: 404
    try:
        wait_for(lambda: programmed(api, "LLMRoute", "demo-llm-server"), what="others programmed")
        conds = wait_for(lambda: (c := conditions(api, "LLMRoute", "to-missing-ns", "edge")) and
                         c["Programmed"]["reason"] == "ApplyFailed" and c, what="404 reported")
        assert "404" in conds["Programmed"]["message"]
        moon = wait_for(lambda: (c := conditions(api, "LLMProvider", "moonshot")) and
                        c["Programmed"]["reason"] == "ApplyFailed" and c, what="422 reported")
        assert "422" in moon["Programmed"]["message"]
        assert "sk-echoed-secret" not in str(api.list(SRC, "llmproviders") + api.list(SRC, "llmroutes"))
        assert "apply failed" in caplog.text and "sk-echoed-secret" not in caplog.text
        assert programmed(api, "LLMProvider", "dashscope-qwen") and programmed(api, "LLMRoute", "dashscope-route")
        # the provider is a source of the refused EnvoyFilter too (its settings run on that gateway)
        assert "missing/" in conditions(api, "LLMProvider", "gw-p", "edge")["Programmed"]["message"]
    finally:
        ctrl.stop()


def test_hand_edits_and_deletions_are_repaired_from_the_watch(api):
    load_seed(api)
    ctrl = start(api, resync=3600)  # no periodic resync: the repair must come from the watch
    try:
        wait_for(lambda: programmed(api, "LLMRoute", "demo-llm-server"), what="programmed")
        vs = api.get(NET, "virtualservices", "default", "llmc-route-demo-llm-server")
        good = copy.deepcopy(vs["spec"])
        vs["spec"]["http"][0]["timeout"] = "1s"
        vs["spec"]["hosts"] = ["hijacked.example.com"]
        api.put_object(NET, "virtualservices", vs)
        wait_for(lambda: api.get(NET, "virtualservices", "default", "llmc-route-demo-llm-server")["spec"] == good,
                 what="edit reverted")
        api.delete_object(NET, "serviceentries", "default", "llmc-provider-moonshot")
        wait_for(lambda: api.get(NET, "serviceentries", "default", "llmc-provider-moonshot"), what="re-created")
    finally:
        ctrl.stop()


def test_an_invalid_edit_keeps_the_last_known_good_config(api):
    load_seed(api)
    ctrl = start(api)
    try:
        wait_for(lambda: programmed(api, "LLMRoute", "demo-llm-server"), what="programmed")
        good = {(o["kind"], o["metadata"]["name"]): o["spec"] for o in generated(api)}
        broken = api.get(SRC, "llmroutes", "default", "demo-llm-server")
        broken["spec"]["rules"][0]["backendRefs"][0]["providerHost"] = "typo.example.com"
        api.put_object(SRC, "llmroutes", broken)
        conds = wait_for(lambda: (c := conditions(api, "LLMRoute", "demo-llm-server")) and
                         c["Accepted"]["status"] == "False" and c["Programmed"].get("observedGeneration") == 2 and c,
                         what="invalid reported")
        assert conds["Programmed"]["reason"] == "Invalid" and "kept" in conds["Programmed"]["message"]
        ctrl.enqueue_all()
        wait_for(lambda: len(ctrl.queue) == 0 and not ctrl.queue.processing, what="queue drained")
        assert {(o["kind"], o["metadata"]["name"]): o["spec"] for o in generated(api)} == good
        # fixed: programmed again; deleted: pruned
        fixed = api.get(SRC, "llmroutes", "default", "demo-llm-server")
        fixed["spec"]["rules"][0]["backendRefs"][0]["providerHost"] = \
            seed_objects()[2]["spec"]["rules"][0]["backendRefs"][0]["providerHost"]
        api.put_object(SRC, "llmroutes", fixed)
        wait_for(lambda: programmed(api, "LLMRoute", "demo-llm-server"), what="programmed after the fix")
        api.put_object(SRC, "llmroutes", broken | {"metadata": {**broken["metadata"]}})
        wait_for(lambda: conditions(api, "LLMRoute", "demo-llm-server")["Accepted"]["status"] == "False",
                 what="invalid again")
        api.delete_object(SRC, "llmroutes", "default", "demo-llm-server")
        wait_for(lambda: api.get(NET, "virtualservices", "default", "llmc-route-demo-llm-server") is None,
                 what="pruned once deleted")
    finally:
        ctrl.stop()


def test_work_keys_are_the_namespaces_objects_are_written_into():
    """Issue 32: a key is a namespace whose objects its pass writes; a source's keys are its own
    namespace and where its rules run (gateways, the egress gateway), and a provider's change queues
    every key that imports it. No source collapses the cluster into one key any more."""
    from compiler.controller.deps import DependencyIndex

    idx = DependencyIndex(Options())
    assert idx.update(None, provider("p", "ns-00", "a.example.com")) == {"ns-00"}
    assert idx.update(None, route("r", "ns-01", "chat", gateways=["istio-system/gw"])) == {"ns-01", "istio-system"}
    root = provider("shared", "istio-system", "root.example.com")
    assert idx.update(None, root) == {"istio-system"}
    uses = route("u", "ns-02", "chat-u")
    uses["spec"]["rules"][0]["backendRefs"] = [{"providerHost": "root.example.com"}]
    assert idx.update(None, uses) == {"ns-02"}
    changed = copy.deepcopy(root)
    changed["spec"]["path"] = "/v2"
    assert idx.update(root, changed) == {"istio-system", "ns-02"}  # the keys that import it
    sources, own = idx.compile_set("ns-02")
    assert own == {"LLMRoute ns-02/u"} and {f"{s['kind']} {s['metadata']['namespace']}/{s['metadata']['name']}"
                                           for s in sources} == {"LLMRoute ns-02/u", "LLMProvider istio-system/shared"}
    egress = DependencyIndex(Options(egress_gateway="istio-system/istio-egressgateway"))
    assert egress.update(None, provider("p", "ns-00", "a.example.com")) == {"ns-00", "istio-system"}
    # ambient: a waypoint of each source's namespace adds no key; one shared waypoint's namespace does
    own = DependencyIndex(Options(target="ambient"))
    assert own.update(None, provider("p", "ns-00", "a.example.com")) == {"ns-00"}
    shared = DependencyIndex(Options(target="ambient", waypoint=("llm-egress", "waypoint")))
    assert shared.update(None, provider("p", "ns-00", "a.example.com")) == {"ns-00", "llm-egress"}
    assert shared.update(None, route("r", "ns-01", "chat")) == {"ns-01", "llm-egress"}


def test_routes_of_several_namespaces_on_one_gateway_share_its_filter_as_render_does(api):
    """The gateway-wide EnvoyFilter lists the rules of every namespace: one key covers them all, so
    the controller applies what `llmc render` prints for all the sources together."""
    from compiler import compile_paths
    from tests.support.controller import strip

    api.create_namespace("istio-system")
    docs = []
    for ns in ("team-a", "team-b"):
        docs += [provider("p", ns, f"{ns}.example.com", gateway=True),
                 route("r", ns, f"{ns}.example.com", gateways=["istio-system/gw"])]
    put(api, *docs)
    ctrl = start(api, gateway_namespaces=["istio-system"])
    try:
        wait_for(lambda: all(programmed(api, d["kind"], d["metadata"]["name"], d["metadata"]["namespace"])
                             for d in docs), what="all programmed")
        import json
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp, "in.yaml")
            path.write_text("\n---\n".join(json.dumps(d) for d in docs))
            expected = {(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]): o
                        for o in compile_paths([str(path)], Options()).objects}
        wait_for(lambda: {(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]): strip(o)
                          for o in generated(api)} == expected, what="render's objects")
        wait_for(lambda: len(ctrl.queue) == 0 and not ctrl.queue.processing, what="queue drained")
        assert {(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]): strip(o)
                for o in generated(api)} == expected, "the keys fought over a shared object"
        shared = [k for k in expected if k[1] == "istio-system" and "gateway-filter" in k[2]]
        assert shared and "team-a" in expected[shared[0]]["metadata"]["annotations"]["llmc.io/sources"] \
            and "team-b" in expected[shared[0]]["metadata"]["annotations"]["llmc.io/sources"]
    finally:
        ctrl.stop()


def test_last_known_good_status_names_the_frozen_objects_on_every_source_of_them(api):
    """A provider turns invalid: the route that splits over it and a second provider is frozen. A
    valid change to the second provider cannot reach the frozen objects, so it must not report
    Programmed=True: every source of a frozen object says which objects and which source froze them."""
    def llm(name: str, host: str, model: str) -> dict:
        p = provider(name, "default", host)
        p["spec"]["configs"] = {"defaultConfig": {"openAIConfig": {"model": model}}}
        return p

    split = route("r", "default", "chat-svc")
    split["spec"]["rules"][0]["backendRefs"] = [{"providerHost": "a.example.com", "weight": 50},
                                                {"providerHost": "b.example.com", "weight": 50}]
    put(api, llm("p1", "a.example.com", "m-a"), llm("p2", "b.example.com", "m-1"), split)
    ctrl = start(api)
    try:
        wait_for(lambda: all(programmed(api, k, n) for k, n in
                             (("LLMProvider", "p1"), ("LLMProvider", "p2"), ("LLMRoute", "r"))), what="programmed")
        p1 = api.get(SRC, "llmproviders", "default", "p1")
        p1["spec"]["configs"]["defaultConfig"]["openAIConfig"].update(
            {"apiKey": "sk-1", "apiKeySecretRef": {"name": "keys", "key": "k"}})  # LLMC211: invalid
        api.put_object(SRC, "llmproviders", p1)
        wait_for(lambda: conditions(api, "LLMProvider", "p1")["Accepted"]["status"] == "False", what="p1 invalid")
        p2 = api.get(SRC, "llmproviders", "default", "p2")
        p2["spec"]["configs"]["defaultConfig"]["openAIConfig"]["model"] = "m-2"
        api.put_object(SRC, "llmproviders", p2)
        conds = wait_for(lambda: (c := conditions(api, "LLMProvider", "p2")) and
                         c["Programmed"].get("observedGeneration") == 2 and c, what="p2's status for generation 2")
        frozen = [f"{o['kind']} default/{o['metadata']['name']}" for o in generated(api)
                  if "LLMRoute default/r" in o["metadata"]["annotations"]["llmc.io/sources"]]
        assert frozen
        prog = conds["Programmed"]
        assert (prog["status"], prog["reason"]) == ("False", "LastKnownGood"), prog
        assert "LLMProvider default/p1" in prog["message"] and all(f in prog["message"] for f in frozen), prog
        for kind, name in (("LLMProvider", "p1"), ("LLMRoute", "r")):
            prog = conditions(api, kind, name)["Programmed"]
            assert prog["status"] == "False" and "LLMProvider default/p1" in prog["message"], prog
            assert all(f in prog["message"] for f in frozen), prog
        assert "m-1" in str([o["spec"] for o in generated(api) if o["kind"] == "EnvoyFilter"])  # frozen indeed
    finally:
        ctrl.stop()
