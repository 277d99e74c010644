"""Input exported from a live cluster: ``kubectl get llmproviders,llmroutes -A -o yaml`` prints one
``kind: List`` whose items carry what the API server set (uid, resourceVersion, managedFields,
status, kubectl's last-applied annotation). llmc reads the items, drops those fields, and compiles
the export to exactly what the manifests it came from compile to (docs/migrating-from-asm.md)."""

from __future__ import annotations

import copy

import yaml
from typer.testing import CliRunner

from compiler.cli import app
from compiler.diagnostics import Diagnostics
from compiler.load import load_text, strip_server_fields
from tests.conftest import REPO

runner = CliRunner()
EXPORT = REPO / "tests" / "testdata" / "kubectl" / "get-llmproviders-llmroutes.yaml"


def test_an_exported_list_renders_like_its_manifests():
    seed = runner.invoke(app, ["render", "-f", str(REPO / "samples" / "seed")])
    export = runner.invoke(app, ["render", "-f", str(EXPORT)])
    assert seed.exit_code == 0 and export.exit_code == 0, export.stderr
    assert export.stdout == seed.stdout


def test_server_fields_never_reach_the_output():
    res = runner.invoke(app, ["render", "-f", str(EXPORT)])
    for field in ("uid", "resourceVersion", "managedFields", "last-applied-configuration", "creationTimestamp",
                  "48213377", "2026-11-02"):
        assert field not in res.stdout


def test_diagnostics_point_into_the_right_item():
    res = runner.invoke(app, ["render", "-f", str(EXPORT)])
    lines = EXPORT.read_text().splitlines()
    located = [line for line in res.stderr.splitlines() if "LLMC207" in line]
    assert len(located) == 3
    for line in located:
        _, row, col = line.split(": ")[0].rsplit(":", 2)
        assert lines[int(row) - 1][int(col) - 1:].startswith("apiKey:"), line
    # the moonshot warning is in the second item, below its `name: moonshot`
    moonshot = next(line for line in located if "moonshot" in line)
    assert int(moonshot.split(":")[1]) > lines.index("    name: moonshot")


def test_an_error_in_an_item_is_located_in_that_item(tmp_path):
    text = EXPORT.read_text().replace("  - providerHost: api.moonshot.cn", "  - providerHost: api.moonshot.com")
    (tmp_path / "export.yaml").write_text(text)
    res = runner.invoke(app, ["validate", "-f", str(tmp_path / "export.yaml")])
    assert res.exit_code == 1
    line = next(line for line in res.stderr.splitlines() if "api.moonshot.com" in line)
    row = int(line.split(":")[1])
    assert text.splitlines()[row - 1].strip() == "- providerHost: api.moonshot.com"
    assert "LLMRoute default/demo-llm-server" in line and "spec.rules[0].backendRefs[1]" in line


def test_typed_lists_and_empty_lists():
    one = yaml.safe_load((REPO / "samples" / "seed" / "moonshot.yaml").read_text())
    typed = yaml.safe_dump({"apiVersion": "istio.alibabacloud.com/v1beta1", "kind": "LLMProviderList",
                            "items": [one], "metadata": {"resourceVersion": "1"}})
    assert [d.name for d in load_text("x.yaml", typed, Diagnostics())] == ["moonshot"]
    empty = runner.invoke(app, ["render", "-f", "-"], input="apiVersion: v1\nkind: List\nitems: []\n")
    assert empty.exit_code == 1 and "LLMC006" in empty.stderr


def test_other_kinds_in_a_list_are_noted_or_passed_through(tmp_path):
    deploy = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "sleep", "namespace": "default"}}
    one = yaml.safe_load((REPO / "samples" / "seed" / "moonshot.yaml").read_text())
    (tmp_path / "l.yaml").write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [deploy, one]}))
    res = runner.invoke(app, ["render", "-f", str(tmp_path / "l.yaml")])
    assert res.exit_code == 0 and "LLMC008" in res.stderr and "Deployment sleep" in res.stderr
    passed = runner.invoke(app, ["render", "--passthrough", "-f", str(tmp_path)])
    docs = list(yaml.safe_load_all(passed.stdout))
    assert docs[0] == deploy and len(docs) > 1


def test_strip_keeps_the_users_annotations_and_labels():
    data = {"kind": "LLMRoute", "status": {"x": 1},
            "metadata": {"name": "r", "uid": "u", "labels": {"team": "a"},
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}", "note": "mine"}}}
    before = copy.deepcopy(data)
    strip_server_fields(data)
    assert data == {"kind": "LLMRoute", "metadata": {"name": "r", "labels": {"team": "a"},
                                                      "annotations": {"note": "mine"}}}
    assert before != data


def test_a_misspelt_kind_gets_a_did_you_mean():
    text = (REPO / "samples" / "seed" / "moonshot.yaml").read_text().replace("kind: LLMProvider", "kind: LLMProviders")
    res = runner.invoke(app, ["render", "-f", "-"], input=text)
    assert res.exit_code == 1 and "did you mean kind: LLMProvider?" in res.stderr


def test_loaded_items_hold_the_manifest_only():
    docs = load_text(str(EXPORT), EXPORT.read_text(), Diagnostics())
    assert [(d.kind, d.name) for d in docs] == [("LLMProvider", "dashscope-qwen"), ("LLMProvider", "moonshot"),
                                              ("LLMRoute", "dashscope-route"), ("LLMRoute", "demo-llm-server")]
    for doc in docs:
        assert set(doc.data) == {"apiVersion", "kind", "metadata", "spec"}
        assert set(doc.data["metadata"]) == {"name", "namespace"}, doc.data["metadata"]
    assert [d.index for d in docs] == [0, 1, 2, 3]


def test_what_kubectl_get_prints_renders_like_the_manifests(api, tmp_path):
    """The real kubectl against the fake API server: apply the seed client-side (so each object carries
    kubectl's last-applied annotation, managedFields, uid, …), export it as the migration guide says,
    render the export."""
    import os
    import subprocess

    from tests.conftest import require_tool
    from tests.support.controller import kubeconfig

    binary = require_tool("kubectl")
    env = {"KUBECONFIG": kubeconfig(api, tmp_path / "kubeconfig"), "HOME": str(tmp_path),
           "PATH": os.environ.get("PATH", "")}

    def kubectl(*args: str) -> str:
        proc = subprocess.run([binary, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    kubectl("apply", "--server-side", "-f", "schemas/")
    kubectl("apply", "-f", "samples/seed/")
    exported = kubectl("get", "llmproviders,llmroutes", "-A", "-o", "yaml")
    assert "kind: List" in exported and "uid:" in exported and "last-applied-configuration" in exported
    res = runner.invoke(app, ["render", "-f", "-"], input=exported)
    seed = runner.invoke(app, ["render", "-f", str(REPO / "samples" / "seed")])
    assert res.exit_code == 0, res.stderr
    assert res.stdout == seed.stdout
    assert "<stdin>:" in res.stderr and "LLMC207" in res.stderr  # the placeholder keys, located in the export
