"""Everything llmc emits validates strictly against Istio 1.30.3's own CRDs (incl. CEL rules); the one
core kind it emits (the rate-limit service's ConfigMap) against Kubernetes' own schema."""

from __future__ import annotations

from pathlib import Path

import pytest
from ruamel.yaml import YAML

from tests.conftest import TESTDATA
from tests.support.istio_schema import validate
from tests.test_deploy import K8S_VERSION

OUTPUTS = sorted((TESTDATA / "golden").glob("*.out.yaml")) + sorted((TESTDATA / "samples").glob("*.out.yaml"))


@pytest.mark.parametrize("path", OUTPUTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_output_is_valid_istio(path: Path, istio_crds: str):
    docs = [d for d in YAML(typ="safe").load_all(path.read_text()) if d]
    assert docs, f"{path} is empty"
    for doc in docs:
        if doc["apiVersion"] == "v1":  # core: the token limits' ConfigMap
            import kubernetes_validate

            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            continue
        errors = validate(doc, istio_crds)
        assert not errors, f"{doc['kind']} {doc['metadata']['name']}: {errors}"


def test_checker_rejects_unknown_fields_and_cel_violations(istio_crds: str):
    """The checker itself can fail: an unknown field and a CEL rule violation are both caught."""
    se = {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
          "metadata": {"name": "x", "namespace": "default"},
          "spec": {"hosts": ["a.example.com"], "resolution": "DNS", "bogus": True,
                   "ports": [{"number": 80, "name": "http", "protocol": "HTTP"},
                             {"number": 80, "name": "http2", "protocol": "HTTP"}]}}
    errors = validate(se, istio_crds)
    assert any("bogus" in e for e in errors)
    assert any("port number cannot be duplicated" in e for e in errors)
    route = {"timeout": "0.1ms", "route": [{"destination": {"host": "a"}}]}
    vs = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
          "metadata": {"name": "x"}, "spec": {"hosts": ["a"], "http": [route]}}
    assert any("duration" in e for e in validate(vs, istio_crds))
    assert validate({"apiVersion": "networking.istio.io/v9", "kind": "VirtualService"}, istio_crds)
