"""GitOps: the KRM function, --check, --out-dir, and a kustomize-style run of samples/kustomize.

No kustomize binary runs here; `kustomize_exec` does what kustomize does for an exec transformer:
it loads the kustomization's resources, annotates each with its path and index
(`config.kubernetes.io/path`, `.../index`), wraps them in a ResourceList with the function config,
pipes it to the executable named in `config.kubernetes.io/function`, and reads a ResourceList back.
"""

from __future__ import annotations

import io
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

from ruamel.yaml import YAML
from typer.testing import CliRunner

from compiler.cli import app
from tests.conftest import REPO, TESTDATA

runner = CliRunner()
KUSTOMIZE = REPO / "samples" / "kustomize"


def yaml_rt():
    y = YAML(typ="rt")
    y.width = 4096
    y.indent(mapping=2, sequence=2, offset=0)
    return y


def dump(obj) -> str:
    buf = io.StringIO()
    yaml_rt().dump(obj, buf)
    return buf.getvalue()


def run_krm(resource_list: str) -> tuple[int, str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "compiler.cli", "krm"], input=resource_list, text=True,
                          capture_output=True, env=env, cwd=REPO)
    return proc.returncode, proc.stdout


def resource_list(items: list, function_config: dict | None = None) -> str:
    rl = {"apiVersion": "config.kubernetes.io/v1", "kind": "ResourceList", "items": items}
    if function_config is not None:
        rl["functionConfig"] = function_config
    return dump(rl)


def load(text: str) -> dict:
    return YAML(typ="safe").load(text)


def test_krm_round_trip_passes_other_items_through_byte_stable():
    y = YAML(typ="safe")
    sources = list(y.load_all((REPO / "samples" / "seed" / "dashscope-qwen.yaml").read_text()))
    configmap = yaml_rt().load("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app  # a comment\n"
                               "data:\n  weird: \"keep 'quotes' as\\twritten\"\n")
    text = resource_list([configmap, *sources])
    code, out = run_krm(text)
    assert code == 0
    result = load(out)
    kinds = [i["kind"] for i in result["items"]]
    assert kinds[0] == "ConfigMap" and "LLMProvider" not in kinds
    assert {"ServiceEntry", "DestinationRule", "VirtualService", "EnvoyFilter"} <= set(kinds)
    # the passthrough item comes back with its comment and quoting, byte for byte
    assert dump({"items": [configmap]}).split("items:\n", 1)[1] in out
    # placeholder keys, and a routeSpecificConfigs entry no route in this list uses
    assert sorted(r["message"][:7] for r in result["results"]) == ["LLMC203", "LLMC207", "LLMC207"]
    assert {r["severity"] for r in result["results"]} == {"warning"}
    # on its own output (now all passthrough) the function changes no item, byte for byte
    code2, out2 = run_krm(out)
    assert code2 == 0 and out2 == out.split("results:\n", 1)[0]


def test_krm_errors_are_results_with_paths():
    bad = list(YAML(typ="safe").load_all((TESTDATA / "invalid" / "unknown-provider-host.yaml").read_text()))
    code, out = run_krm(resource_list(bad))
    assert code == 1
    result = load(out)
    errors = [r for r in result["results"] if r["severity"] == "error"]
    assert errors == [{
        "message": errors[0]["message"], "severity": "error",
        "resourceRef": {"apiVersion": "istio.alibabacloud.com/v1beta1", "kind": "LLMRoute", "name": "split",
                        "namespace": "default"},
        "field": {"path": "spec.rules[0].backendRefs[1].providerHost"},
        "file": errors[0]["file"]}]
    assert errors[0]["message"].startswith("LLMC202: ")
    assert not [i for i in result["items"] if i["kind"] == "EnvoyFilter"], "nothing generated on errors"


def test_krm_keep_sources_and_options():
    sources = list(YAML(typ="safe").load_all((REPO / "samples" / "seed" / "moonshot.yaml").read_text()))
    fc = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "llmc"},
          "data": {"keepSources": "true", "namespace": "team-k", "telemetry": "true"}}
    code, out = run_krm(resource_list(sources, fc))
    items = load(out)["items"]
    assert code == 0 and items[0]["kind"] == "LLMProvider"
    assert {i["metadata"].get("namespace") for i in items[1:]} == {"team-k"}
    assert "Telemetry" in {i["kind"] for i in items}


def test_krm_rejects_non_resource_lists():
    code, out = run_krm("kind: Pod\n")
    assert code == 1 and "not a config.kubernetes.io/v1 ResourceList" in out


def kustomize_exec(root: Path) -> tuple[int, dict]:
    y = YAML(typ="safe")
    kustomization = y.load((root / "kustomization.yaml").read_text())
    items = []
    for rel in kustomization["resources"]:
        for i, doc in enumerate(y.load_all((root / rel).read_text())):
            doc.setdefault("metadata", {}).setdefault("annotations", {}).update(
                {"config.kubernetes.io/path": rel, "config.kubernetes.io/index": str(i)})
            items.append(doc)
    (fn_file,) = kustomization["transformers"]
    function_config = y.load((root / fn_file).read_text())
    spec = y.load(function_config["metadata"]["annotations"]["config.kubernetes.io/function"])
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run([str(root / spec["exec"]["path"])], input=resource_list(items, function_config),
                          text=True, capture_output=True, env=env, cwd=root)
    return proc.returncode, load(proc.stdout)


def test_kustomize_style_run_of_the_example():
    code, result = kustomize_exec(KUSTOMIZE)
    assert code == 0, result.get("results")
    by_kind = {}
    for item in result["items"]:
        by_kind.setdefault(item["kind"], []).append(item)
    assert by_kind["Deployment"][0]["metadata"]["name"] == "sleep"  # passed through
    assert "LLMProvider" not in by_kind and "LLMRoute" not in by_kind
    assert {o["metadata"]["namespace"] for k in ("ServiceEntry", "EnvoyFilter") for o in by_kind[k]} == {"gitops-demo"}
    assert "results" not in result  # clean input: no diagnostics


def test_check_detects_one_character_drift_and_passes_when_clean(tmp_path):
    out = tmp_path / "rendered"
    assert runner.invoke(app, ["render", "-f", "samples/seed", "--out-dir", str(out)]).exit_code == 0
    assert runner.invoke(app, ["render", "-f", "samples/seed", "--check", str(out)]).exit_code == 0
    target = out / "default" / "virtualservice-llmc-route-dashscope-route.yaml"
    target.write_text(target.read_text().replace("subscriber", "subscribes", 1))
    res = runner.invoke(app, ["render", "-f", "samples/seed", "--check", str(out)])
    assert res.exit_code == 1 and "-          exact: subscribes" in res.stdout and "+          exact: subscriber" in res.stdout
    single = tmp_path / "all.yaml"
    single.write_text(runner.invoke(app, ["render", "-f", "samples/seed"]).stdout)
    assert runner.invoke(app, ["render", "-f", "samples/seed", "--check", str(single)]).exit_code == 0
    single.write_text(single.read_text()[:-2] + "x\n")
    assert runner.invoke(app, ["render", "-f", "samples/seed", "--check", str(single)]).exit_code == 1


def test_out_dir_is_idempotent_and_removes_only_its_own_stale_files(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(REPO / "samples" / "seed", src)
    out = tmp_path / "rendered"
    out.mkdir()
    (out / "README.md").write_text("hand-written")
    (out / "default").mkdir()
    (out / "default" / "custom.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    assert runner.invoke(app, ["render", "-f", str(src), "--out-dir", str(out)]).exit_code == 0
    snapshot = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    res = runner.invoke(app, ["render", "-f", str(src), "--out-dir", str(out)])
    assert "0 written, 0 stale removed" in res.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == snapshot
    (src / "demo-llm-server-route.yaml").unlink()
    res = runner.invoke(app, ["render", "-f", str(src), "--out-dir", str(out)])
    assert "2 stale removed" in res.stderr
    assert not (out / "default" / "virtualservice-llmc-route-demo-llm-server.yaml").exists()
    assert (out / "README.md").read_text() == "hand-written" and (out / "default" / "custom.yaml").exists()


def test_out_dir_is_order_independent(tmp_path):
    docs = [d for f in sorted((REPO / "samples" / "seed").glob("*.yaml")) for d in YAML(typ="safe").load_all(f.read_text())]
    random.Random(7).shuffle(docs)
    shuffled = tmp_path / "shuffled.yaml"
    shuffled.write_text(dump_all(docs))
    a, b = tmp_path / "a", tmp_path / "b"
    runner.invoke(app, ["render", "-f", "samples/seed", "--out-dir", str(a)])
    runner.invoke(app, ["render", "-f", str(shuffled), "--out-dir", str(b)])
    files = lambda d: {p.relative_to(d): p.read_bytes() for p in d.rglob("*") if p.is_file()}  # noqa: E731
    assert files(a) == files(b)


def dump_all(docs) -> str:
    buf = io.StringIO()
    yaml_rt().dump_all(docs, buf)
    return buf.getvalue()
