"""GitOps: the KRM function, the kustomize plugin's stream protocol, --check, --out-dir, and the
safety rules (empty input, exact commands in messages). The real kpt and kubectl run in
tests/test_gitops_tools.py."""

from __future__ import annotations

import io
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML
from typer.testing import CliRunner

from compiler.cli import app
from tests.conftest import REPO, TESTDATA

runner = CliRunner()


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


def test_krm_replaces_objects_it_generated_earlier():
    """kpt in place with keepSources: the second run sees sources *and* last run's output."""
    sources = list(YAML(typ="safe").load_all((REPO / "samples" / "seed" / "moonshot.yaml").read_text()))
    fc = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "llmc"}, "data": {"keepSources": "true"}}
    code, first = run_krm(resource_list(sources, fc))
    assert code == 0
    items = load(first)["items"]
    code, second = run_krm(resource_list(items, fc))
    assert code == 0
    again = load(second)["items"]
    key = lambda o: (o["kind"], o["metadata"]["name"])  # noqa: E731
    assert sorted(map(key, again)) == sorted(map(key, items)), "no duplicates"
    # without sources in the list, earlier output passes through untouched (a second in-place run
    # after the sources were replaced must not delete everything)
    generated = [i for i in items if i["kind"] != "LLMProvider"]
    code, out = run_krm(resource_list(generated))
    assert code == 0 and sorted(map(key, load(out)["items"])) == sorted(map(key, generated))
    # an object that only carries the label (the CRDs of `llmc crds`) is not llmc output
    crd = {"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": "x", "labels": {"app.kubernetes.io/managed-by": "llmc"}}}
    code, out = run_krm(resource_list([crd, *sources]))
    assert code == 0 and ("ConfigMap", "x") in map(key, load(out)["items"])


def test_krm_rejects_unknown_options_and_keeps_everything():
    sources = list(YAML(typ="safe").load_all((REPO / "samples" / "seed" / "moonshot.yaml").read_text()))
    fc = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "llmc"}, "data": {"keepsource": "true"}}
    code, out = run_krm(resource_list(sources, fc))
    result = load(out)
    assert code == 1
    assert result["results"][0]["message"].startswith("LLMC007: unknown llmc option 'keepsource'")
    assert "did you mean 'keepSources'" in result["results"][0]["message"]
    assert [i["kind"] for i in result["items"]] == ["LLMProvider"], "nothing dropped on a config error"


def test_kustomize_plugin_protocol(tmp_path):
    """What kustomize does for a legacy exec plugin: config file as argv[1], resources on stdin."""
    config = tmp_path / "llmc.yaml"
    config.write_text("apiVersion: llmc.io/v1\nkind: LLMCompiler\nmetadata: {name: llmc}\nnamespace: team-z\n")
    stream = (REPO / "samples" / "seed" / "moonshot.yaml").read_text() + "---\n" + \
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: keep   # as written\n"
    proc = subprocess.run([sys.executable, "-m", "compiler.cli", "kustomize-plugin", "run", str(config)],
                          input=stream, text=True, capture_output=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    objects = list(YAML(typ="safe").load_all(proc.stdout))
    assert objects[0] == {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "keep"}}
    assert "name: keep   # as written" in proc.stdout
    assert {o["kind"] for o in objects[1:]} == {"ServiceEntry", "DestinationRule", "VirtualService", "EnvoyFilter"}
    assert {o["metadata"]["namespace"] for o in objects[1:]} == {"team-z"}
    assert "warning[LLMC207]" in proc.stderr
    config.write_text("apiVersion: llmc.io/v1\nkind: LLMCompiler\nmetadata: {name: llmc}\nnamepsace: x\n")
    bad = subprocess.run([sys.executable, "-m", "compiler.cli", "kustomize-plugin", "run", str(config)],
                         input=stream, text=True, capture_output=True, cwd=REPO)
    assert bad.returncode == 1 and bad.stdout == ""
    assert "error[LLMC007] namepsace: unknown llmc option 'namepsace'" in bad.stderr


def test_kustomize_plugin_install_finds_kustomizes_plugin_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("KUSTOMIZE_PLUGIN_HOME", raising=False)
    res = runner.invoke(app, ["kustomize-plugin", "install"])
    exe = tmp_path / "xdg" / "kustomize" / "plugin" / "llmc.io" / "v1" / "llmcompiler" / "LLMCompiler"
    assert res.exit_code == 0 and str(exe) in res.stderr
    assert os.access(exe, os.X_OK) and f"exec {sys.executable} -m compiler.cli kustomize-plugin run" in exe.read_text()
    monkeypatch.setenv("KUSTOMIZE_PLUGIN_HOME", str(tmp_path / "home"))
    assert runner.invoke(app, ["kustomize-plugin", "install"]).exit_code == 0
    assert (tmp_path / "home" / "llmc.io" / "v1" / "llmcompiler" / "LLMCompiler").is_file()


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


def test_out_dir_never_removes_a_hand_written_file_that_mentions_the_label(tmp_path):
    """A file listed in the manifest but edited by hand (it still carries llmc's label text) stays:
    stale files are removed only when every document in them is an object llmc generated."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "samples" / "seed", src)
    out = tmp_path / "rendered"
    assert runner.invoke(app, ["render", "-f", str(src), "--out-dir", str(out)]).exit_code == 0
    stale = out / "default" / "virtualservice-llmc-route-demo-llm-server.yaml"
    stale.write_text("# notes: app.kubernetes.io/managed-by: llmc was here\napiVersion: v1\nkind: ConfigMap\n"
                     "metadata:\n  name: mine\n  labels: {app.kubernetes.io/managed-by: llmc}\n")
    (src / "demo-llm-server-route.yaml").unlink()
    res = runner.invoke(app, ["render", "-f", str(src), "--out-dir", str(out)])
    assert res.exit_code == 0 and stale.exists()


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


def test_empty_input_never_empties_the_out_dir(tmp_path):
    out = tmp_path / "rendered"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert runner.invoke(app, ["render", "-f", "samples/seed", "--out-dir", str(out)]).exit_code == 0
    snapshot = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    res = runner.invoke(app, ["render", "-f", str(empty), "--out-dir", str(out)])
    assert res.exit_code == 1 and res.stdout == ""
    assert f"{empty}: error[LLMC006] no LLMProvider or LLMRoute in the input" in res.stderr
    assert (f"hint: if that is intended, run `llmc render -f {empty} --out-dir {out} --allow-empty` "
            f"(it removes every file llmc wrote in {out})") in res.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == snapshot
    # the same for stdout, --check and other kinds only
    (empty / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    for args in (["render", "-f", str(empty)], ["render", "-f", str(empty), "--check", str(out)],
                 ["render", "-f", "-"]):
        res = runner.invoke(app, args, input="")
        assert res.exit_code == 1 and "LLMC006" in res.stderr, args
    res = runner.invoke(app, ["render", "-f", str(empty), "--out-dir", str(out), "--allow-empty"])
    assert res.exit_code == 0 and "0 written, 11 stale removed" in res.stderr
    assert not list(out.glob("default/*.yaml"))


def test_messages_name_the_exact_command(tmp_path):
    out = tmp_path / "rendered"
    res = runner.invoke(app, ["render", "-f", "samples/seed", "-n", "team-a", "--telemetry", "--out-dir", str(out)])
    assert res.exit_code == 1  # demo-llm-server's route names namespace default, its providers are in team-a
    res = runner.invoke(app, ["render", "-f", "samples/seed/moonshot.yaml", "-n", "team-a", "--telemetry",
                              "-o", "json", "--out-dir", str(out)])
    command = f"llmc render -f samples/seed/moonshot.yaml -n team-a --telemetry --check {out}"
    assert res.exit_code == 0 and res.stderr.endswith(f"check it in CI with:\n  {command}\n")
    assert runner.invoke(app, command.split()[1:]).exit_code == 0, "the printed command passes"
    stale = runner.invoke(app, ["render", "-f", "samples/seed/moonshot.yaml", "-f", "samples/secret-ref",
                                "-n", "team-a", "--telemetry", "--check", str(out)])
    fix = f"llmc render -f samples/seed/moonshot.yaml -f samples/secret-ref -n team-a --telemetry --out-dir {out}"
    assert stale.exit_code == 1 and stale.stderr.endswith(f"{out} is out of date; update it with:\n  {fix}\n")
    assert runner.invoke(app, fix.split()[1:]).exit_code == 0
    assert runner.invoke(app, ["render", "-f", "samples/seed/moonshot.yaml", "-f", "samples/secret-ref", "-n", "team-a",
                               "--telemetry", "--check", str(out)]).exit_code == 0, "the printed fix works"
    single = tmp_path / "all of it.yaml"
    res = runner.invoke(app, ["render", "-f", "samples/seed", "-o", "json", "--check", str(single)])
    assert res.exit_code == 1
    assert res.stderr.endswith(f"update it with:\n  llmc render -f samples/seed > '{single}'\n")


@pytest.mark.parametrize("key,value", [("egressGateway", "istio-system"), ("secretsDir", "relative/dir"),
                                       ("namespace", "Not_A_Namespace"), ("telemetry", "yes"),
                                       ("egressGatewayLabels", "istio"),
                                       ("gatewayWorkloadNamespace", "llm-gateway=istio-system")])
def test_krm_rejects_the_option_values_the_cli_rejects(key, value):
    """One validation for every front end: `egressGateway: istio-system` (no Service) once emitted a
    Gateway named `llmc-` and a host `.istio-system.svc.cluster.local`."""
    from compiler.gitops import transform

    flag = {"egressGateway": "--egress-gateway", "secretsDir": "--secrets-dir", "namespace": "--namespace",
            "egressGatewayLabels": "--egress-gateway-labels",
            "gatewayWorkloadNamespace": "--gateway-workload-namespace"}.get(key)
    items = [dict(d) for d in YAML(typ="safe").load_all((REPO / "samples" / "seed" / "dashscope-qwen.yaml").read_text()) if d]
    out, result = transform(items, {key: value})
    assert not result.ok and [d.code for d in result.diagnostics.items] == ["LLMC010"]
    assert not [o for o in out if o.get("kind") in ("Gateway", "VirtualService")]
    if flag:
        res = runner.invoke(app, ["render", "-f", "samples/seed", flag, value])
        assert res.exit_code == 2 and flag in res.stderr


def test_krm_gateway_workload_namespace_moves_the_gateway_filters():
    """ASM's shared ingress runs in istio-system while the Gateway lives in `llm`: the function config
    says so (as the CLI flag does), and the gateway's EnvoyFilters are written there."""
    from compiler.gitops import transform

    items = [dict(d) for d in YAML(typ="safe").load_all(
        (REPO / "tests" / "testdata" / "golden" / "gateway-workload-namespace.in.yaml").read_text()) if d]
    for config in ({"gatewayWorkloadNamespace": "llm/llm-gateway=istio-system"},
                   {"gatewayWorkloadNamespace": ["llm/llm-gateway=istio-system"]}):
        out, result = transform(items, config)
        assert result.ok, result.diagnostics.format_text()
        gateway_filters = [o for o in out if o.get("kind") == "EnvoyFilter"
                           and o["spec"]["configPatches"][0]["match"]["context"] == "GATEWAY"]
        assert gateway_filters and {o["metadata"]["namespace"] for o in gateway_filters} == {"istio-system"}
        route = next(o for o in out if o.get("kind") == "VirtualService" and o["spec"].get("gateways"))
        assert route["metadata"]["namespace"] == "llm" and "istio-system" in route["spec"]["exportTo"]
