"""deploy/: the in-cluster manifests are valid Kubernetes (offline schemas, strict), the CRDs are the
generated ones, and the Deployment runs the controller with probes on its health endpoints."""

from __future__ import annotations

import kubernetes_validate
import pytest
from ruamel.yaml import YAML

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
    secret_rules = [r for r in docs["ClusterRole"]["rules"] if "secrets" in r["resources"]]
    assert secret_rules == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]


def test_validator_can_fail():
    bad = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
           "spec": {"replicas": "two", "selector": {}, "template": {}, "bogus": True}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)
