"""Tenancy through gateways (issue 29, item 1): with ``--gateway-selectors`` a route may bind to a
gateway, and the providers it uses may select gateway pods, only within the selectors the operator
allows — in ``llmc render``, the KRM function and the controller alike; and a tenant's status never
tells whether a Secret exists in another namespace."""

from __future__ import annotations

import copy

from typer.testing import CliRunner

from compiler import Severity, compile_paths
from compiler.cli import app
from compiler.gitops import transform
from compiler.options import parse_options
from tests.support.controller import EF, PLURAL, SRC, conditions, generated, programmed, start, wait_for

V = "istio.alibabacloud.com/v1beta1"
ALLOWED = "istio-system/istio=ingressgateway,istio-system/istio=egressgateway"


def provider(name: str, ns: str, host: str, labels: dict | None = None, secret: bool = False) -> dict:
    spec: dict = {"host": host, "path": "/v1/chat/completions"}
    if labels:
        spec["workloadSelector"] = {"labels": labels}
    if secret:
        spec["configs"] = {"defaultConfig": {"openAIConfig": {"apiKeySecretRef": {"name": "llm-keys", "key": "k"}}}}
    return {"apiVersion": V, "kind": "LLMProvider", "metadata": {"name": name, "namespace": ns}, "spec": spec}


def route(name: str, ns: str, host: str, gateways: list[str]) -> dict:
    return {"apiVersion": V, "kind": "LLMRoute", "metadata": {"name": name, "namespace": ns},
            "spec": {"host": host, "gateways": gateways, "rules": [{"backendRefs": [{"providerHost": host}]}]}}


def put(server, *objs) -> None:
    for obj in objs:
        server.put_object(SRC, PLURAL[obj["kind"]], copy.deepcopy(obj))


def options(selectors: str | None = ALLOWED):
    opts, problems = parse_options(gateway_selectors=selectors)
    assert opts is not None, problems
    return opts


HOSTILE = [provider("pay", "tenant-a", "pay.example.com", {"app": "payments"}),  # any pod of the mesh
           route("pay", "tenant-a", "pay.example.com", ["istio-system/llm-gateway"])]
ELSEWHERE = [provider("q", "tenant-c", "q.example.com", {"app": "tenant-b-gateway"}),  # a namespace not allowed
             route("q", "tenant-c", "q.example.com", ["tenant-b/gw"])]
GOOD = [provider("g", "tenant-d", "g.example.com", {"istio": "ingressgateway"}),
        route("g", "tenant-d", "g.example.com", ["istio-system/llm-gateway"])]


def test_gateway_selectors_confine_tenants_to_the_allowed_gateway_pods(api):
    for ns in ("istio-system", "tenant-b"):
        api.create_namespace(ns)
    put(api, *HOSTILE, *ELSEWHERE, *GOOD)
    # istio-system and tenant-b are writable namespaces: the selectors alone must refuse
    ctrl = start(api, opts=options(), gateway_namespaces=["istio-system", "tenant-b"])
    try:
        wait_for(lambda: programmed(api, "LLMRoute", "g", "tenant-d"), what="the allowed route programmed")
        for name, ns in (("pay", "tenant-a"), ("q", "tenant-c")):
            conds = wait_for(lambda n=name, s=ns: (c := conditions(api, "LLMRoute", n, s)) and
                             c["Programmed"]["reason"] == "GatewayNotAllowed" and c, what=f"{ns}/{name} refused")
            assert conds["Programmed"]["status"] == "False" and conds["Accepted"]["status"] == "False"
            assert "LLMC243" in conds["Programmed"]["message"] and "spec.gateways[0]" in conds["Programmed"]["message"]
        selectors = [((o["spec"].get("workloadSelector") or {}).get("labels") or {}) for o in api.list(EF, "envoyfilters")
                     if o["metadata"]["namespace"] == "istio-system"]
        assert {"istio": "ingressgateway"} in selectors
        assert {"app": "payments"} not in selectors, "the hostile selector reached the root namespace"
        assert not [o for o in generated(api) if o["metadata"]["namespace"] == "tenant-b"]
        assert not [p for _, _, p in api.writes_by("llmc-controller") if "/namespaces/tenant-b/" in p]
        assert programmed(api, "LLMProvider", "pay", "tenant-a"), "the provider alone is still programmed"
    finally:
        ctrl.stop()


def test_an_object_written_before_the_selectors_is_not_kept_as_last_known_good(api):
    """The upgrade path: an EnvoyFilter a hostile tenant got written under the old rules is pruned
    once the operator sets --gateway-selectors, not frozen as the route's last known good."""
    api.create_namespace("istio-system")
    put(api, *HOSTILE)
    before = start(api, "a", opts=options(None), gateway_namespaces=["istio-system"])
    try:
        wait_for(lambda: programmed(api, "LLMRoute", "pay", "tenant-a"), what="programmed without selectors")
        assert [o for o in api.list(EF, "envoyfilters") if o["metadata"]["namespace"] == "istio-system"]
    finally:
        before.stop()
    after = start(api, "b", opts=options(), gateway_namespaces=["istio-system"])
    try:
        wait_for(lambda: not [o for o in api.list(EF, "envoyfilters") if o["metadata"]["namespace"] == "istio-system"],
                 what="the hostile EnvoyFilter pruned")
        # the route's status is written by its own namespace's key, the prune by istio-system's (issue 32)
        wait_for(lambda: conditions(api, "LLMRoute", "pay", "tenant-a")["Programmed"]["reason"] == "GatewayNotAllowed",
                 what="GatewayNotAllowed")
    finally:
        after.stop()


def test_status_never_tells_whether_another_namespaces_secret_exists(api):
    """The same conditions whether the Secret exists in istio-system, is missing, or the controller
    may not look: a tenant cannot probe Secret names there."""
    api.create_namespace("istio-system")
    docs = [provider("p", "tenant-a", "api.example.com", {"istio": "ingressgateway"}, secret=True),
            route("r", "tenant-a", "api.example.com", ["istio-system/llm-gateway"])]
    put(api, *docs)
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "llm-keys", "namespace": "istio-system"},
              "data": {"k": "c2stMQ=="}}
    seen = []
    for i, case in enumerate(("exists", "missing", "forbidden")):
        if case == "exists":
            api.put_object("api/v1", "secrets", copy.deepcopy(secret))
        else:
            api.delete_object("api/v1", "secrets", "istio-system", "llm-keys")
        if case == "forbidden":
            api.fail("GET", "/namespaces/istio-system/secrets/", 403, times=1000)
        for d in docs:  # a fresh status each time: the conditions are those this run computed
            api.put_object(SRC, PLURAL[d["kind"]], {**copy.deepcopy(d), "status": {}})
        ctrl = start(api, f"r{i}", opts=options(), gateway_namespaces=["istio-system"])
        try:
            wait_for(lambda: all("ResolvedRefs" in conditions(api, d["kind"], d["metadata"]["name"], "tenant-a")
                                 for d in docs), what=f"status ({case})")
            seen.append({(d["kind"], t): (c["status"], c["reason"], c["message"]) for d in docs
                         for t, c in conditions(api, d["kind"], d["metadata"]["name"], "tenant-a").items()})
        finally:
            ctrl.stop()
    assert seen[0] == seen[1] == seen[2], seen
    assert seen[0][("LLMRoute", "ResolvedRefs")][1] == "NotChecked"


def test_the_option_in_render_krm_and_the_controller(tmp_path):
    path = tmp_path / "in.yaml"
    import json

    path.write_text("\n---\n".join(json.dumps(d) for d in HOSTILE + ELSEWHERE + GOOD))
    assert compile_paths([str(path)], options(None)).ok, "no restriction by default"
    result = compile_paths([str(path)], options())
    errors = sorted((d.object, d.path, d.line > 0) for d in result.diagnostics.items
                    if d.severity is Severity.ERROR and d.code == "LLMC243")
    assert errors == [("LLMRoute tenant-a/pay", "spec.gateways[0]", True),
                      ("LLMRoute tenant-c/q", "spec.gateways[0]", True)], result.diagnostics.format_text()
    res = CliRunner().invoke(app, ["render", "-f", str(path), "--gateway-selectors", ALLOWED])
    assert res.exit_code == 1 and "error[LLMC243]" in res.stderr and "app: payments" in res.stderr
    bad = CliRunner().invoke(app, ["render", "-f", str(path), "--gateway-selectors", "istio=ingressgateway"])
    assert bad.exit_code == 2 and "--gateway-selectors" in bad.stderr
    _, krm = transform(HOSTILE + GOOD, {"gatewaySelectors": ALLOWED})
    assert [d.path for d in krm.diagnostics.items if d.code == "LLMC243"] == ["spec.gateways[0]"]
    _, krm = transform(HOSTILE + GOOD, {"gatewaySelectors": "nope"})
    assert [d.code for d in krm.diagnostics.items] == ["LLMC010"]
    helptext = CliRunner().invoke(app, ["controller", "--help"], env={"COLUMNS": "200"}).stdout
    assert "--gateway-selectors" in helptext


def test_frozen_status_names_no_source_of_another_namespace():
    """A gateway-wide object frozen by another tenant's invalid route: the status counts that source
    and names the object (in a gateway namespace the operator allowed), not the other tenant's route."""
    from compiler.controller.reconcile import Outcome, conditions

    src = {"kind": "LLMProvider", "metadata": {"name": "p", "namespace": "tenant-a"}}
    frozen = (["EnvoyFilter istio-system/llmc-gateway-filter-x"], ["LLMProvider tenant-a/q", "LLMRoute tenant-b/plan-z"])
    prog = conditions(src, Outcome(), [], [], [], [], frozen)[-1]
    assert (prog["status"], prog["reason"]) == ("False", "LastKnownGood")
    assert "LLMProvider tenant-a/q" in prog["message"] and "1 source(s) of other namespaces" in prog["message"]
    assert "tenant-b" not in prog["message"] and "llmc-gateway-filter-x" in prog["message"]
