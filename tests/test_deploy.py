"""deploy/: the in-cluster manifests are valid Kubernetes (offline schemas, strict), the CRDs are the
generated ones, and the Deployment runs the controller with probes on its health endpoints."""

from __future__ import annotations

import kubernetes_validate
import pytest
from ruamel.yaml import YAML
from typer.testing import CliRunner

from compiler.cli import app
from compiler.crds import render_crds
from tests.conftest import REPO

DEPLOY = REPO / "deploy"
K8S_VERSION = "1.30.0"


def manifests() -> list[tuple[str, dict]]:
    y = YAML(typ="safe")
    kustomization = y.load((DEPLOY / "kustomization.yaml").read_text())
    out = []
    for rel in kustomization["resources"]:
        out += [(rel, d) for d in y.load_all((DEPLOY / rel).read_text()) if d]
    return out


@pytest.mark.parametrize("rel,doc", manifests(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_manifest_is_valid_kubernetes(rel, doc):
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_deploy_crds_are_the_generated_ones():
    for name, text in render_crds().items():
        assert (DEPLOY / "crds" / name).read_text() == text, f"deploy/crds/{name} drifted: run `task schemas`"


def test_controller_deployment_shape():
    docs = {d["kind"]: d for _, d in manifests()}
    dep = docs["Deployment"]
    assert dep["spec"]["replicas"] == 2
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert container["args"][0] == "controller"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == docs["ServiceAccount"]["metadata"]["name"]
    assert "--gateway-namespaces" in container["args"]
    assert container["args"][container["args"].index("--gateway-namespaces") + 1] == "istio-system"
    # tenants may bind only to Istio's default ingress and egress gateway pods (issue 29)
    selectors = container["args"][container["args"].index("--gateway-selectors") + 1]
    assert selectors == "istio-system/istio=ingressgateway,istio-system/istio=egressgateway"
    res = CliRunner().invoke(app, ["render", "-f", str(REPO / "tests/testdata/golden/ingress-gateway.in.yaml"),
                                   "--gateway-selectors", selectors])
    assert res.exit_code == 0, res.stderr  # the documented ingress setup passes the shipped selectors


def test_rbac_grants_only_the_verbs_the_controller_uses():
    docs = [d for _, d in manifests()]
    cluster = next(d for d in docs if d["kind"] == "ClusterRole")
    assert not [r for r in cluster["rules"] if "secrets" in r["resources"]], "no cluster-wide Secret access"
    verbs = {res: set(r["verbs"]) for r in cluster["rules"] for res in r["resources"]}
    assert verbs["llmroutes"] == {"list", "watch"} and verbs["llmroutes/status"] == {"patch"}
    assert verbs["envoyfilters"] == {"list", "watch", "create", "patch", "delete"}
    roles = {(d["metadata"]["namespace"], d["metadata"]["name"]): d for d in docs if d["kind"] == "Role"}
    secrets = roles[("istio-system", "llmc-secrets-check")]
    assert secrets["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]
    bindings = {(d["metadata"]["namespace"], d["roleRef"]["name"]) for d in docs if d["kind"] == "RoleBinding"}
    assert ("istio-system", "llmc-secrets-check") in bindings


def test_validator_can_fail():
    bad = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
           "spec": {"replicas": "two", "selector": {}, "template": {}, "bogus": True}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def _cluster_role(docs: list[dict], name: str) -> list[dict]:
    role = next(d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] == name)
    return role["rules"]


def test_rbac_is_the_kinds_table_for_the_flags_in_use():
    """deploy/rbac.yaml grants what compiler.controller.rbac derives from the generated-kinds table
    for deploy/'s flags (neither --egress-gateway nor --telemetry): gateways and telemetries are
    only listed and watched; each flag's component grants exactly what the flag adds."""
    from compiler.controller.rbac import cluster_role_rules, flag_rules

    docs = [d for _, d in manifests()]
    assert _cluster_role(docs, "llmc-controller") == cluster_role_rules(frozenset())
    verbs = {res: set(r["verbs"]) for r in _cluster_role(docs, "llmc-controller") for res in r["resources"]}
    assert verbs["gateways"] == verbs["telemetries"] == {"list", "watch"}
    y = YAML(typ="safe")
    for flag, arg in (("egress-gateway", "--egress-gateway"), ("telemetry", "--telemetry"),
                      ("target", "--target=ambient")):
        root = DEPLOY / "components" / flag
        comp = y.load((root / "kustomization.yaml").read_text())
        assert comp["kind"] == "Component"
        extra = [d for rel in comp["resources"] for d in y.load_all((root / rel).read_text()) if d]
        for d in extra:
            kubernetes_validate.validate(d, K8S_VERSION, strict=True)
        assert _cluster_role(extra, f"llmc-controller-{flag}") == flag_rules(flag)
        assert arg in (root / "deployment-patch.yaml").read_text()


def test_components_build_with_kubectl_kustomize(tmp_path):
    """An overlay with both components: the Deployment gets the flags, RBAC the verbs they need."""
    import os
    import subprocess

    from compiler.controller.rbac import cluster_role_rules
    from tests.conftest import require_tool

    kubectl = require_tool("kubectl")
    rel = os.path.relpath(DEPLOY, tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        f"apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [{rel}]\n"
        f"components: [{rel}/components/egress-gateway, {rel}/components/telemetry, {rel}/components/target]\n")
    out = subprocess.run([kubectl, "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    docs = [d for d in YAML(typ="safe").load_all(out.stdout) if d]
    (container,) = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"]
    assert "--telemetry" in container["args"] and "--egress-gateway" in container["args"]
    assert "--target=ambient" in container["args"]
    granted = {(g, res, v) for d in docs if d["kind"] == "ClusterRole" for r in d["rules"]
               for g in r["apiGroups"] for res in r["resources"] for v in r["verbs"]}
    wanted = {(g, res, v) for r in cluster_role_rules(frozenset({"egress-gateway", "telemetry", "target"}))
              for g in r["apiGroups"] for res in r["resources"] for v in r["verbs"]}
    assert granted == wanted


def test_sizing_defaults_follow_the_measurements():
    """Requests cover the measured RSS (200-294 MB at 20 namespaces x 50 providers/routes); the
    default --api-qps lets a 1,000 + 1,000 cold start (~6,900 writes) finish in well under a minute."""
    from compiler.controller.runtime import Tuning

    docs = {d["kind"]: d for _, d in manifests()}
    (container,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    mib = {"Mi": 1, "Gi": 1024}
    request = container["resources"]["requests"]["memory"]
    limit = container["resources"]["limits"]["memory"]
    assert int(request[:-2]) * mib[request[-2:]] * 2**20 >= 294e6
    assert int(limit[:-2]) * mib[limit[-2:]] >= 2 * int(request[:-2]) * mib[request[-2:]]
    assert (6900 - Tuning().burst) / Tuning().qps <= 40
    helptext = CliRunner().invoke(app, ["controller", "--help"], env={"COLUMNS": "300"}).stdout
    assert f"[default: {Tuning().qps:g}]" in helptext.replace(".0]", "]")


def test_the_rate_limit_component_grants_configmaps_in_the_services_namespace_only(tmp_path):
    """deploy/components/rate-limit-service passes --rate-limit-service and grants the controller
    ConfigMaps in the service's namespace only (a Role there: compiler.controller.rbac.service_rules),
    nothing cluster-wide; with deploy/ it builds with kubectl kustomize."""
    import os
    import subprocess

    from compiler.controller.rbac import cluster_role_rules, service_rules
    from tests.conftest import require_tool

    root = DEPLOY / "components" / "rate-limit-service"
    y = YAML(typ="safe")
    comp = y.load((root / "kustomization.yaml").read_text())
    assert comp["kind"] == "Component"
    extra = [d for rel in comp["resources"] for d in y.load_all((root / rel).read_text()) if d]
    for d in extra:
        kubernetes_validate.validate(d, K8S_VERSION, strict=True)
    assert {d["kind"] for d in extra} == {"Role", "RoleBinding"}
    (role,) = [d for d in extra if d["kind"] == "Role"]
    assert role["metadata"]["namespace"] == "llmc-system"
    assert role["rules"] == service_rules("rate-limit-service") == [
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list", "watch", "create", "patch", "delete"]}]
    assert "--rate-limit-service=llmc-system/ratelimit:8081" in (root / "deployment-patch.yaml").read_text()
    assert not [r for r in cluster_role_rules(frozenset({"rate-limit-service"})) if "configmaps" in r["resources"]]
    kubectl = require_tool("kubectl")
    rel = os.path.relpath(DEPLOY, tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        f"apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [{rel}]\n"
        f"components: [{rel}/components/rate-limit-service]\n")
    out = subprocess.run([kubectl, "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    docs = [d for d in y.load_all(out.stdout) if d]
    (container,) = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"]
    assert "--rate-limit-service=llmc-system/ratelimit:8081" in container["args"]
    assert not [r for d in docs if d["kind"] == "ClusterRole" for r in d["rules"] if "configmaps" in r["resources"]]


def test_the_rate_limit_image_is_pinned_to_a_commit_with_per_descriptor_hits_addend():
    """deploy/ratelimit names envoyproxy/ratelimit by a digest or by the commit tag the project's CI
    pushes (`git rev-parse --short=8`, never `master`/`latest`), and that commit is one the docs name
    as having per-descriptor hits_addend (38500fe or later: checked against envoyproxy/ratelimit's
    history when the tag was chosen, written down in docs/budgets.md)."""
    import re

    y = YAML(typ="safe")
    (dep,) = [d for d in y.load_all((DEPLOY / "ratelimit" / "ratelimit.yaml").read_text()) if d and d["kind"] == "Deployment"]
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    m = re.fullmatch(r"envoyproxy/ratelimit(?::([0-9a-f]{8}))?(?:@sha256:([0-9a-f]{64}))?", container["image"])
    assert m and (m.group(1) or m.group(2)), container["image"]
    docs = (REPO / "docs" / "budgets.md").read_text()
    assert f"envoyproxy/ratelimit:{m.group(1)}" in docs and "38500fe" in docs
