"""The CRDs in schemas/ are generated from the pydantic models and must not drift from them; the
API server would accept them (tests/support/crd_rules.py, calibrated on Istio's own CRDs and on the
CRDs llmc shipped before); their CEL rules hold what the compiler's cross-field rules hold."""

from __future__ import annotations

import copy

import pytest
import yaml
from jsonschema import Draft202012Validator
from ruamel.yaml import YAML

from compiler.crds import crd, object_schema, render_crds
from tests.conftest import REPO, TESTDATA
from tests.support.crd_rules import check_crd
from tests.support.istio_schema import validate

SHIPPED = sorted((REPO / "schemas").glob("*.yaml")) + sorted((REPO / "deploy" / "crds").glob("*.yaml"))


def test_schemas_dir_matches_models():
    for name, text in render_crds().items():
        path = REPO / "schemas" / name
        assert path.exists(), f"{path} missing: run `task schemas`"
        assert path.read_text() == text, f"{path} drifted from compiler/api.py: run `task schemas`"
        deployed = REPO / "deploy" / "crds" / name
        assert deployed.read_text() == text, f"{deployed} drifted from compiler/api.py: run `task schemas`"


def _crds(path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "CustomResourceDefinition"]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_crds_pass_the_api_servers_rules(path):
    for doc in _crds(path):
        assert check_crd(doc) == [], doc["metadata"]["name"]


def test_rules_check_accepts_istios_own_crds(istio_crds):
    docs = _crds(__import__("pathlib").Path(istio_crds))
    assert len(docs) > 10
    for doc in docs:
        assert check_crd(doc) == [], doc["metadata"]["name"]


def test_rules_check_rejects_the_crds_llmc_shipped_before():
    """Calibration: the CRDs of the previous release, which a real API server refused."""
    for name in ("llmproviders", "llmroutes"):
        for doc in _crds(TESTDATA / "crd-rules" / f"{name}-before-i14.yaml"):
            errors = check_crd(doc)
            assert errors and all("additionalProperties and properties are mutual exclusive" in e for e in errors)


def _with_spec(extra: dict) -> dict:
    doc = copy.deepcopy(crd("LLMRoute"))
    doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["x"] = extra
    return doc


@pytest.mark.parametrize("node,expected", [
    ({"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False}, "mutual exclusive"),
    ({"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": {"type": "string"}},
     "mutual exclusive"),
    ({"properties": {"a": {"type": "string"}}}, "type: must not be empty"),
    ({"type": "object", "properties": {"a": {"description": "untyped"}}}, "type: must not be empty"),
    ({"$ref": "#/definitions/x"}, "$ref: Forbidden"),
    ({"type": "object", "definitions": {"x": {"type": "string"}}}, "definitions: Forbidden"),
    ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "uniqueItems"),
    ({"type": "array", "items": [{"type": "string"}]}, "not an array"),
    ({"type": "array"}, "items: must be specified"),
    ({"type": "string", "anyOf": [{"type": "string", "minLength": 1}]}, "nested context"),
    ({"type": "string", "oneOf": [{"default": "x"}]}, "nested context"),
    ({"type": "object", "properties": {"a": {"type": "string"}}, "anyOf": [{"required": ["b"],
      "properties": {"b": {"minLength": 1}}}]}, "because it is defined in"),
    ({"type": "object", "x-kubernetes-preserve-unknown-fields": False}, "must be true or undefined"),
    ({"type": "string", "x-kubernetes-list-type": "atomic"}, "must be array"),
    ({"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "map"}, "must not be empty"),
    ({"type": "array", "items": {"type": "object", "properties": {"k": {"type": "string"}}},
      "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["k"]}, "required or have a default"),
    ({"type": "array", "items": {"type": "object", "properties": {"k": {"type": "object"}}, "required": ["k"]},
      "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["k"]}, "scalar"),
    ({"type": "array", "items": {"type": "string"}, "x-kubernetes-list-map-keys": ["k"]}, "must be map"),
    ({"type": "string", "x-kubernetes-validations": [{"rule": " "}]}, "rule is not specified"),
    ({"type": "string", "x-kubernetes-validations": [{"rule": "self != ''\n&& true"}]}, "line breaks"),
])
def test_rules_check_finds_each_violation(node, expected):
    errors = check_crd(_with_spec(node))
    assert any(expected in e for e in errors), errors


def test_rules_check_root_metadata_and_versions():
    doc = copy.deepcopy(crd("LLMRoute"))
    root = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    root["properties"]["metadata"] = {"type": "object", "properties": {"labels": {"type": "object"}}}
    root["properties"]["kind"] = {"type": "integer"}
    doc["spec"]["versions"][0]["storage"] = False
    errors = check_crd(doc)
    assert any("name and generateName" in e for e in errors)
    assert any("properties[kind].type: must be string" in e for e in errors)
    assert any("storage version" in e for e in errors)
    ok = copy.deepcopy(crd("LLMRoute"))
    ok["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["metadata"] = {
        "type": "object", "properties": {"name": {"type": "string", "maxLength": 63}}}
    assert check_crd(ok) == []


def test_crd_names_columns_and_typed_status():
    for kind in ("LLMProvider", "LLMRoute"):
        doc = crd(kind)
        assert doc["spec"]["names"]["categories"] == ["llmc", "istio-io"]
        version = doc["spec"]["versions"][0]
        assert "Programmed" in [c["name"] for c in version["additionalPrinterColumns"]]
        status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
        assert "x-kubernetes-preserve-unknown-fields" not in status
        conds = status["properties"]["conditions"]
        assert conds["x-kubernetes-list-type"] == "map" and conds["x-kubernetes-list-map-keys"] == ["type"]
        v = Draft202012Validator(status)
        good = {"conditions": [{"type": "Programmed", "status": "True", "reason": "Programmed", "message": "",
                                "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 2}]}
        assert not list(v.iter_errors(good))
        bad = {"conditions": [{"type": "Programmed", "status": "Yes", "reason": "not a reason!", "message": ""}]}
        assert len(list(v.iter_errors(bad))) >= 2


def test_compiler_schema_stays_closed_while_the_crd_relies_on_pruning():
    strict = object_schema("LLMRoute")["properties"]["spec"]
    assert strict["additionalProperties"] is False
    assert strict["properties"]["rules"]["items"]["additionalProperties"] is False
    assert "x-kubernetes-validations" not in str(strict)
    served = crd("LLMRoute")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert "additionalProperties" not in served


ROUTE = {"apiVersion": "istio.alibabacloud.com/v1beta1", "kind": "LLMRoute",
         "metadata": {"name": "r", "namespace": "default"},
         "spec": {"host": "h", "rules": [{"backendRefs": [{"providerHost": "a"}]}]}}


def _route(**rules) -> dict:
    doc = copy.deepcopy(ROUTE)
    doc["spec"]["rules"] = rules["rules"]
    return doc


@pytest.mark.parametrize("rules,message", [
    ([{"backendRefs": [{"providerHost": "a"}]}, {"backendRefs": [{"providerHost": "b"}]}], None),  # unnamed
    ([{"name": "x", "backendRefs": [{"providerHost": "a"}]}, {"name": "y", "backendRefs": [{"providerHost": "a"}]}],
     None),
    ([{"name": "x", "backendRefs": [{"providerHost": "a"}]}, {"name": "x", "backendRefs": [{"providerHost": "a"}]}],
     "rule names must be unique"),
    # Istio's rule: with some weights set, an unset one is 0 (the compiler warns, LLMC229)
    ([{"backendRefs": [{"providerHost": "a", "weight": 1}, {"providerHost": "b"}]}], None),
    ([{"backendRefs": [{"providerHost": "a", "weight": 0}, {"providerHost": "b"}]}], "add up to 0"),
    ([{"backendRefs": [{"providerHost": "a", "weight": 0}, {"providerHost": "b", "weight": 0}]}], "add up to 0"),
    ([{"backendRefs": [{"providerHost": "a", "weight": 0}, {"providerHost": "b", "weight": 3}]}], None),
    ([{"backendRefs": [{"providerHost": "a"}, {"providerHost": "a"}]}], "listed twice"),
    ([{"matches": [{"headers": {"x": {"exact": "1", "prefix": "2"}}}], "backendRefs": [{"providerHost": "a"}]}],
     "at most one of exact"),
    ([{"matches": [{"headers": {"x": {}}}], "backendRefs": [{"providerHost": "a"}]}], None),  # present, as Istio
    ([{"backendRefs": [{"backendRef": {"name": "pool"}}, {"backendRef": {"name": "pool2"}}]}], None),  # LLMC227
])
def test_route_cel_rules(rules, message):
    errors = validate(_route(rules=rules), str(REPO / "schemas" / "llmroutes.yaml"))
    if message is None:
        assert errors == []
    else:
        assert any(message in e for e in errors), errors


def test_provider_cel_rule_api_key_xor_secret_ref():
    doc = {"apiVersion": "istio.alibabacloud.com/v1beta1", "kind": "LLMProvider",
           "metadata": {"name": "p", "namespace": "default"},
           "spec": {"host": "h", "path": "/v1", "configs": {"defaultConfig": {"openAIConfig": {
               "apiKey": "k", "apiKeySecretRef": {"name": "s", "key": "k"}}}}}}
    path = str(REPO / "schemas" / "llmproviders.yaml")
    assert any("set one of" in e for e in validate(doc, path))
    del doc["spec"]["configs"]["defaultConfig"]["openAIConfig"]["apiKey"]
    assert validate(doc, path) == []
    # several keys (docs/api-keys.md): one of the four forms
    cfg = doc["spec"]["configs"]["defaultConfig"]["openAIConfig"]
    cfg["apiKeys"] = ["k1", "k2"]
    assert any("set one of" in e for e in validate(doc, path))
    del cfg["apiKeySecretRef"]
    assert validate(doc, path) == []
    cfg["apiKeySecretRefs"] = [{"name": "s", "key": "a", "weight": 2}]
    assert any("set one of" in e for e in validate(doc, path))


def _walk(node, path="openAPIV3Schema"):
    yield path, node
    for key in ("properties",):
        for k, v in node.get(key, {}).items():
            yield from _walk(v, f"{path}.{k}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            yield from _walk(node[key], f"{path}[{key}]")


def test_crds_are_structural():
    for kind in ("LLMProvider", "LLMRoute"):
        doc = crd(kind)
        version = doc["spec"]["versions"][0]
        assert version["subresources"] == {"status": {}}
        assert version["additionalPrinterColumns"]
        for path, node in _walk(version["schema"]["openAPIV3Schema"]):
            assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
            assert not {"$ref", "anyOf", "allOf", "oneOf", "$defs"} & set(node), path


def test_seed_manifests_validate_against_generated_crd():
    y = YAML(typ="safe")
    for path in sorted((REPO / "samples").rglob("*.yaml")):
        for doc in y.load_all(path.read_text()):
            if doc.get("kind") not in ("LLMProvider", "LLMRoute"):
                continue
            schema = next(v for v in crd(doc["kind"])["spec"]["versions"])["schema"]["openAPIV3Schema"]
            errors = list(Draft202012Validator(schema).iter_errors(doc))
            assert not errors, (path, [e.message for e in errors])
