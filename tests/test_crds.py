"""The CRDs in schemas/ are generated from the pydantic models and must not drift from them."""

from __future__ import annotations

from jsonschema import Draft202012Validator
from ruamel.yaml import YAML

from compiler.crds import crd, render_crds
from tests.conftest import REPO


def test_schemas_dir_matches_models():
    for name, text in render_crds().items():
        path = REPO / "schemas" / name
        assert path.exists(), f"{path} missing: run `task schemas`"
        assert path.read_text() == text, f"{path} drifted from compiler/api.py: run `task schemas`"


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
