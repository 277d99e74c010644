"""The GitOps recipes of docs/gitops.md, run with the real tools: kpt (llmc as an exec function), kubectl's
built-in kustomize (llmc as an exec plugin), and the Argo CD Config Management Plugin's commands.

Each recipe is a constant below, run verbatim by ``sh -c`` in a folder laid out as docs/gitops.md
assumes (``llm/`` holds the sources), with this venv's ``llmc`` first on PATH; the last test checks
that docs/gitops.md shows exactly these commands. kpt and kubectl are prerequisites of the full suite
(CI machines have them): without them the tests skip with the reason, and fail under ``CI=true``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from tests.conftest import REPO, require_tool

SEED = REPO / "samples" / "seed"
GENERATED = {"ServiceEntry", "DestinationRule", "VirtualService", "EnvoyFilter"}

KPT_IN_PLACE = 'kpt fn eval llm/ --exec "llmc krm"'
KPT_IN_PLACE_KEEP = 'kpt fn eval llm/ --exec "llmc krm" -- keepSources=true'
KPT_STDOUT = 'kpt fn eval llm/ --exec "llmc krm" -o stdout'
KPT_UNWRAP = 'kpt fn eval llm/ --exec "llmc krm" -o unwrap'
KPT_PIPE = "kpt fn source llm/ | llmc krm | kpt fn sink rendered/"
KUSTOMIZE_INSTALL = "llmc kustomize-plugin install"
KUSTOMIZE_BUILD = "kubectl kustomize --enable-alpha-plugins samples/kustomize"
KUSTOMIZE_NO_FLAG = "kubectl kustomize samples/kustomize"
KUSTOMIZE_APPLY_K = "kubectl apply -k samples/kustomize"
CMP_PLUGIN = REPO / "deploy" / "argocd" / "cmp-plugin.yaml"


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **extra}


def sh(command: str, cwd: Path, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", command], cwd=cwd, env=env(**extra), capture_output=True, text=True,
                          timeout=120)


def docs(text: str) -> list[dict]:
    return [d for d in YAML(typ="safe").load_all(text) if d]


def kinds(objects: list[dict]) -> set[str]:
    return {o["kind"] for o in objects}


def folder_docs(root: Path) -> list[dict]:
    return [d for p in sorted(root.rglob("*.yaml")) for d in docs(p.read_text())]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """``llm/``: the seed sources plus a Deployment that must pass through."""
    shutil.copytree(SEED, tmp_path / "llm")
    shutil.copy(REPO / "samples" / "kustomize" / "sleep.yaml", tmp_path / "llm" / "sleep.yaml")
    return tmp_path


@pytest.fixture
def kpt() -> str:
    return require_tool("kpt")


@pytest.fixture
def kubectl() -> str:
    return require_tool("kubectl")


def test_missing_tools_skip_outside_ci_and_fail_under_ci(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="needs the real `kpt` on PATH"):
        require_tool("kpt")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="needs the real `kubectl` on PATH"):
        require_tool("kubectl")


# ------------------------------------------------------------------------------------------------ kpt


def test_kpt_eval_in_place_replaces_the_sources(kpt, workdir: Path):
    proc = sh(KPT_IN_PLACE, workdir)
    assert proc.returncode == 0, proc.stderr
    after = folder_docs(workdir / "llm")
    assert "LLMProvider" not in kinds(after) and "LLMRoute" not in kinds(after), "sources are deleted in place"
    assert GENERATED <= kinds(after) and "Deployment" in kinds(after)
    assert not (workdir / "llm" / "moonshot.yaml").exists()
    # again, on its own output (no sources left): nothing changes
    before = {p: p.read_bytes() for p in (workdir / "llm").rglob("*") if p.is_file()}
    assert sh(KPT_IN_PLACE, workdir).returncode == 0
    assert {p: p.read_bytes() for p in (workdir / "llm").rglob("*") if p.is_file()} == before


def test_kpt_eval_in_place_with_keep_sources_is_repeatable(kpt, workdir: Path):
    first = sh(KPT_IN_PLACE_KEEP, workdir)
    assert first.returncode == 0, first.stderr
    after = folder_docs(workdir / "llm")
    assert {"LLMProvider", "LLMRoute", "Deployment"} | GENERATED <= kinds(after)
    # kept as they were (kpt re-formats whitespace, e.g. trailing blanks, when it writes them back)
    assert docs((workdir / "llm" / "moonshot.yaml").read_text()) == docs((SEED / "moonshot.yaml").read_text())
    names = sorted((o["kind"], o["metadata"]["name"]) for o in after if o["kind"] in GENERATED)
    snapshot = {p: p.read_bytes() for p in (workdir / "llm").rglob("*") if p.is_file()}
    second = sh(KPT_IN_PLACE_KEEP, workdir)
    assert second.returncode == 0, second.stderr
    again = folder_docs(workdir / "llm")
    assert sorted((o["kind"], o["metadata"]["name"]) for o in again if o["kind"] in GENERATED) == names, \
        "a second run replaces the generated objects instead of adding copies"
    assert {p: p.read_bytes() for p in (workdir / "llm").rglob("*") if p.is_file()} == snapshot


def test_kpt_eval_to_stdout_leaves_the_sources(kpt, workdir: Path):
    before = {p: p.read_bytes() for p in (workdir / "llm").rglob("*")}
    proc = sh(KPT_STDOUT, workdir)
    assert proc.returncode == 0, proc.stderr
    (rl,) = docs(proc.stdout)
    assert rl["kind"] == "ResourceList"
    assert GENERATED | {"Deployment"} == kinds(rl["items"])
    unwrapped = sh(KPT_UNWRAP, workdir)
    assert unwrapped.returncode == 0, unwrapped.stderr
    objects = docs(unwrapped.stdout)
    assert GENERATED | {"Deployment"} == kinds(objects)
    assert {p: p.read_bytes() for p in (workdir / "llm").rglob("*")} == before
    assert "LLMC207" in proc.stderr, "kpt shows llmc's results (the seed's placeholder keys)"


def test_kpt_source_pipe_sink(kpt, workdir: Path):
    proc = sh(KPT_PIPE, workdir)
    assert proc.returncode == 0, proc.stderr
    out = folder_docs(workdir / "rendered")
    assert GENERATED | {"Deployment"} == kinds(out)
    assert (workdir / "rendered" / "default" / "serviceentry_llmc-provider-moonshot.yaml").is_file()


def test_kpt_fails_on_llmc_errors_and_writes_nothing(kpt, workdir: Path):
    route = workdir / "llm" / "dashscope-route.yaml"
    route.write_text(route.read_text().replace("providerHost: dashscope.aliyuncs.com", "providerHost: nowhere.cn"))
    before = {p: p.read_bytes() for p in (workdir / "llm").rglob("*")}
    proc = sh(KPT_IN_PLACE, workdir)
    assert proc.returncode != 0 and "LLMC202" in proc.stderr
    assert {p: p.read_bytes() for p in (workdir / "llm").rglob("*")} == before


def test_kpt_rejects_a_mistyped_option(kpt, workdir: Path):
    before = {p: p.read_bytes() for p in (workdir / "llm").rglob("*")}
    proc = sh('kpt fn eval llm/ --exec "llmc krm" -- keepsources=true', workdir)
    assert proc.returncode != 0 and "LLMC007" in proc.stderr and "did you mean 'keepSources'" in proc.stderr
    assert {p: p.read_bytes() for p in (workdir / "llm").rglob("*")} == before


# ------------------------------------------------------------------------------------------ kustomize


@pytest.fixture
def kustomize_home(tmp_path: Path, kubectl) -> dict[str, str]:
    """A plugin home of the test's own, found the way kustomize finds it ($XDG_CONFIG_HOME)."""
    extra = {"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "KUSTOMIZE_PLUGIN_HOME": ""}
    proc = sh(KUSTOMIZE_INSTALL, REPO, **extra)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "xdg" / "kustomize" / "plugin" / "llmc.io" / "v1" / "llmcompiler" / "LLMCompiler").is_file()
    return extra


def test_kubectl_kustomize_runs_the_plugin(kustomize_home):
    proc = sh(KUSTOMIZE_BUILD, REPO, **kustomize_home)
    assert proc.returncode == 0, proc.stderr
    objects = docs(proc.stdout)
    assert kinds(objects) == GENERATED | {"Deployment"}, "sources replaced, the Deployment passed through"
    assert {o["metadata"]["namespace"] for o in objects} == {"gitops-demo"}
    assert not any("kustomize.config.k8s.io/id" in str(o["metadata"].get("annotations", {})) for o in objects)
    # the same objects `llmc render` prints for the sources
    render = sh("llmc render -f samples/kustomize/llm.yaml", REPO)
    key = lambda o: (o["kind"], o["metadata"]["name"])  # noqa: E731
    assert {key(o): o for o in objects if o["kind"] != "Deployment"} == {key(o): o for o in docs(render.stdout)}


def test_kubectl_kustomize_fails_loudly_without_the_flag_or_the_plugin(kustomize_home, tmp_path: Path):
    proc = sh(KUSTOMIZE_NO_FLAG, REPO, **kustomize_home)
    assert proc.returncode != 0 and proc.stdout == ""
    assert "external plugins disabled" in proc.stderr
    apply = sh(KUSTOMIZE_APPLY_K + " --dry-run=client", REPO, **kustomize_home,
               KUBECONFIG=str(tmp_path / "no-cluster"))
    assert apply.returncode != 0 and "external plugins disabled" in apply.stderr
    missing = sh(KUSTOMIZE_BUILD, REPO, XDG_CONFIG_HOME=str(tmp_path / "empty"), KUSTOMIZE_PLUGIN_HOME="",
                 HOME=str(tmp_path / "empty"))
    assert missing.returncode != 0 and missing.stdout == "" and "plugin" in missing.stderr


def test_kubectl_kustomize_reports_llmc_errors(kustomize_home, tmp_path: Path):
    app = tmp_path / "app"
    shutil.copytree(REPO / "samples" / "kustomize", app)
    llm = app / "llm.yaml"
    llm.write_text(llm.read_text().replace("- providerHost: dashscope.aliyuncs.com", "- providerHost: nowhere.cn", 1))
    proc = sh(f"kubectl kustomize --enable-alpha-plugins {app}", REPO, **kustomize_home)
    assert proc.returncode != 0 and proc.stdout == ""
    assert "error[LLMC202]" in proc.stderr and "spec.rules[0].backendRefs[0].providerHost" in proc.stderr
    # located in the source file (kustomize names none; the plugin finds it under the kustomization)
    row = next(n for n, line in enumerate(llm.read_text().splitlines(), 1) if "nowhere.cn" in line)
    assert f"{llm}:{row}:7: error[LLMC202]" in proc.stderr and "items[" not in proc.stderr


# ------------------------------------------------------------------------------------ Argo CD plugin


def test_argocd_plugin_config_map_is_valid_kubernetes():
    import kubernetes_validate

    kubernetes_validate.validate(YAML(typ="safe").load(CMP_PLUGIN.read_text()), "1.30.0", strict=True)


def cmp_spec() -> dict:
    config_map = YAML(typ="safe").load(CMP_PLUGIN.read_text())
    plugin = YAML(typ="safe").load(config_map["data"]["plugin.yaml"])
    assert plugin["kind"] == "ConfigManagementPlugin"
    return plugin["spec"]


@pytest.fixture
def app_folder(tmp_path: Path) -> Path:
    """An Argo CD app folder: LLM sources, other manifests, and files that are not manifests."""
    app = tmp_path / "app"
    (app / "llm").mkdir(parents=True)
    for name in ("dashscope-qwen.yaml", "dashscope-route.yaml", "moonshot.yaml"):  # sources naming no namespace
        shutil.copy(SEED / name, app / "llm" / name)
    shutil.copy(REPO / "samples" / "kustomize" / "sleep.yaml", app / "sleep.yaml")
    (app / "config.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n"
                                     "data:\n  since: 2024-01-01   # a YAML 1.1 date\n---\n"
                                     "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n"
                                     "spec: {ports: [{port: 80}]}\n")
    (app / "Taskfile.yml").write_text("version: '3'\ntasks:\n  default:\n    cmds: [echo hi]\n")
    (app / "dashboards").mkdir()
    shutil.copy(REPO / "deploy" / "grafana" / "llmc-dashboard.json", app / "dashboards" / "llm.json")
    (app / ".github" / "workflows").mkdir(parents=True)
    (app / ".github" / "workflows" / "ci.yaml").write_text("on: push\njobs: {}\n")
    (app / ".venv" / "lib").mkdir(parents=True)
    (app / ".venv" / "lib" / "broken.yaml").write_text("kind: LLMProvider\n  : [ not yaml\n")
    return app


def test_argocd_plugin_generate_renders_the_whole_app(app_folder: Path):
    spec = cmp_spec()
    discover = subprocess.run(spec["discover"]["find"]["command"], cwd=app_folder, env=env(), capture_output=True,
                              text=True)
    assert discover.returncode == 0 and discover.stdout.strip().startswith("./llm/"), discover
    generate = spec["generate"]
    proc = subprocess.run(generate["command"] + generate["args"], cwd=app_folder, capture_output=True, text=True,
                          env=env(ARGOCD_APP_NAMESPACE="team-a"))
    assert proc.returncode == 0, proc.stderr
    objects = docs(proc.stdout)
    assert kinds(objects) == GENERATED | {"Deployment", "ConfigMap", "Service"}
    assert "LLMProvider" not in kinds(objects)
    # other manifests: unchanged, as written (comments included), before the generated objects
    assert proc.stdout.startswith("---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n"
                                  "data:\n  since: 2024-01-01   # a YAML 1.1 date\n---\n")
    assert (REPO / "samples" / "kustomize" / "sleep.yaml").read_text().split("\n", 1)[1] in proc.stdout
    # the sources' namespace (default) comes from Argo CD's destination namespace
    assert {o["metadata"]["namespace"] for o in objects if o["kind"] in GENERATED} == {"team-a"}
    # non-Kubernetes files: one note naming them; hidden folders never read
    notes = [line for line in proc.stderr.splitlines() if "note[LLMC009]" in line]
    assert notes == [".: note[LLMC009] skipped 2 file(s) that hold no Kubernetes object: "
                     "Taskfile.yml, dashboards/llm.json"]
    assert ".venv" not in proc.stderr and ".github" not in proc.stderr


def test_argocd_plugin_refuses_an_app_without_llm_sources(app_folder: Path):
    shutil.rmtree(app_folder / "llm")
    spec = cmp_spec()
    discover = subprocess.run(spec["discover"]["find"]["command"], cwd=app_folder, env=env(), capture_output=True,
                              text=True)
    assert discover.stdout.strip() == "", "the plugin is not chosen for apps without LLM sources"
    generate = spec["generate"]
    proc = subprocess.run(generate["command"] + generate["args"], cwd=app_folder, capture_output=True, text=True,
                          env=env(ARGOCD_APP_NAMESPACE="team-a"))
    assert proc.returncode == 1 and proc.stdout == "" and "error[LLMC006]" in proc.stderr


# ----------------------------------------------------------------------------------- docs recipes


def test_docs_show_the_tested_recipes():
    readme = "\n".join(p.read_text() for p in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))])
    gitops = (REPO / "docs" / "gitops.md").read_text()
    for command in (KPT_IN_PLACE, KPT_IN_PLACE_KEEP, KPT_STDOUT, KPT_UNWRAP, KPT_PIPE, KUSTOMIZE_INSTALL,
                    KUSTOMIZE_BUILD):
        assert command in gitops, f"docs/gitops.md lacks the tested recipe {command!r}"
    plugin = YAML(typ="safe").load(CMP_PLUGIN.read_text())["data"]["plugin.yaml"]
    assert plugin in gitops, "docs/gitops.md shows deploy/argocd/cmp-plugin.yaml's plugin.yaml verbatim"
    # no code block shows a form that fails (or silently applies raw sources), and every kpt or
    # kubectl kustomize line in one is a tested recipe
    code = "\n".join(re.findall(r"^```\w*\n(.*?)^```", readme, re.M | re.S))
    assert KUSTOMIZE_BUILD in code and KPT_PIPE in code and "llmc render -f . --passthrough" in code
    for broken in ("--exec llmc", "--enable-exec", "kustomize build", "config.kubernetes.io/function", "apply -k samples"):
        assert broken not in code, broken
    for line in re.findall(r"^.*(?:kpt fn|kubectl kustomize) .*$", code, re.M):
        assert any(c in line for c in (KPT_IN_PLACE, KPT_PIPE, KUSTOMIZE_BUILD)), line
