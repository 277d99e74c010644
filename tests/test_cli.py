"""The command line: inputs (file, directory, stdin), formats, notes, exit codes, secrets."""

from __future__ import annotations

import json

from ruamel.yaml import YAML
from typer.testing import CliRunner

from compiler import __version__
from compiler.cli import app
from tests.conftest import REPO

runner = CliRunner()
SEED = REPO / "samples" / "seed"


def test_version():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.stdout.strip() == f"llmc {__version__}"


def test_render_directory_is_kubectl_ready():
    res = runner.invoke(app, ["render", "-f", str(SEED)])
    assert res.exit_code == 0, res.stderr
    docs = list(YAML(typ="safe").load_all(res.stdout))
    kinds = [d["kind"] for d in docs]
    assert kinds == sorted(kinds, key=["ServiceEntry", "DestinationRule", "VirtualService", "EnvoyFilter"].index)
    assert all(d["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "llmc" for d in docs)
    assert all(d["metadata"]["annotations"]["llmc.io/sources"] for d in docs)


def test_stdin_and_namespace_flag():
    text = (SEED / "moonshot.yaml").read_text()
    res = runner.invoke(app, ["render", "-f", "-", "-n", "team-x"], input=text)
    assert res.exit_code == 0, res.stderr
    docs = list(YAML(typ="safe").load_all(res.stdout))
    assert {d["metadata"]["namespace"] for d in docs} == {"team-x"}


def test_json_output_is_a_list():
    res = runner.invoke(app, ["render", "-f", str(SEED), "-o", "json"])
    data = json.loads(res.stdout)
    assert data["kind"] == "List" and len(data["items"]) > 4


def test_emit_ir_masks_literal_keys(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("apiVersion: istio.alibabacloud.com/v1beta1\nkind: LLMProvider\nmetadata: {name: p}\n"
                 "spec:\n  host: a.example.com\n  path: /v1/chat/completions\n  configs:\n"
                 "    defaultConfig: {openAIConfig: {apiKey: sk-very-secret-123}}\n")
    res = runner.invoke(app, ["render", "-f", str(f), "--emit", "ir"])
    assert res.exit_code == 0
    assert "sk-very-secret-123" not in res.stdout and "sk-very-secret-123" not in res.stderr
    assert json.loads(res.stdout)["providers"][0]["default"]["api_key"] == "***"


def test_other_kinds_are_ignored_with_a_note(tmp_path):
    (tmp_path / "deploy.yaml").write_text("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: sleep}\n")
    (tmp_path / "p.yaml").write_text((SEED / "moonshot.yaml").read_text())
    res = runner.invoke(app, ["render", "-f", str(tmp_path)])
    assert res.exit_code == 0
    assert "note[LLMC008]" in res.stderr and "ignoring Deployment sleep" in res.stderr
    assert "kind: Deployment" not in res.stdout


def test_validate_json_diagnostics():
    bad = REPO / "tests" / "testdata" / "invalid" / "unknown-provider-host.yaml"
    res = runner.invoke(app, ["validate", "-f", str(bad), "-o", "json"])
    assert res.exit_code == 1
    diags = json.loads(res.stdout)
    assert diags[0]["code"] == "LLMC202"
    assert diags[0]["path"] == "spec.rules[0].backendRefs[1].providerHost"
    assert diags[0]["line"] == 16


def test_missing_input_file():
    res = runner.invoke(app, ["render", "-f", "/nonexistent/llmc.yaml"])
    assert res.exit_code == 1 and "LLMC004" in res.stderr and res.stdout == ""


def test_usage_error_exit_2():
    assert runner.invoke(app, ["render"]).exit_code == 2


def test_crds_command():
    res = runner.invoke(app, ["crds"])
    docs = list(YAML(typ="safe").load_all(res.stdout))
    assert [d["spec"]["names"]["kind"] for d in docs] == ["LLMProvider", "LLMRoute"]


def test_directory_walk_skips_hidden_files_and_folders(tmp_path):
    (tmp_path / "p.yaml").write_text((SEED / "moonshot.yaml").read_text())
    for hidden in (".venv/lib/site-packages/x", ".git", "sub/.cache"):
        (tmp_path / hidden).mkdir(parents=True)
        (tmp_path / hidden / "broken.yaml").write_text("kind: [\n")
    (tmp_path / ".pre-commit-config.yaml").write_text("repos: [\n")
    res = runner.invoke(app, ["validate", "-f", str(tmp_path)])
    assert res.exit_code == 0, res.stderr
    # an explicitly named hidden folder is read
    res = runner.invoke(app, ["validate", "-f", str(tmp_path / ".git")])
    assert res.exit_code == 1 and "LLMC001" in res.stderr


def app_folder(tmp_path):
    (tmp_path / "llm").mkdir()
    (tmp_path / "llm" / "moonshot.yaml").write_text((SEED / "moonshot.yaml").read_text())
    (tmp_path / "web.yaml").write_text("# the web app\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n"
                                       "  name: web   # keep this comment\nspec: {replicas: 2}\n---\n"
                                       "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg}\ndata:\n"
                                       "  day: 2024-01-31\n  flag: 'yes'\n")
    (tmp_path / "Taskfile.yml").write_text("version: '3'\ntasks: {}\n")
    (tmp_path / "dash.json").write_text('{\n\t"title": "tabs are fine in JSON, not in YAML",\n\t"panels": []\n}\n')
    (tmp_path / "empty.yaml").write_text("# nothing here\n")
    return tmp_path


def test_passthrough_renders_a_whole_app_folder(tmp_path):
    folder = app_folder(tmp_path)
    res = runner.invoke(app, ["render", "-f", str(folder), "--passthrough"])
    assert res.exit_code == 0, res.stderr
    assert res.stdout.startswith("---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n"
                                 "  name: web   # keep this comment\nspec: {replicas: 2}\n"
                                 "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg}\ndata:\n"
                                 "  day: 2024-01-31\n  flag: 'yes'\n---\napiVersion: networking.istio.io/v1\n")
    docs = list(YAML(typ="safe").load_all(res.stdout))
    assert [d["kind"] for d in docs][:2] == ["Deployment", "ConfigMap"]
    assert {d["kind"] for d in docs[2:]} == {"ServiceEntry", "DestinationRule", "VirtualService", "EnvoyFilter"}
    skipped = [line for line in res.stderr.splitlines() if "LLMC009" in line]
    assert skipped == [f"{folder}: note[LLMC009] skipped 3 file(s) that hold no Kubernetes object: "
                       f"{folder}/Taskfile.yml, {folder}/dash.json, {folder}/empty.yaml"]
    as_json = json.loads(runner.invoke(app, ["render", "-f", str(folder), "--passthrough", "-o", "json"]).stdout)
    assert as_json["items"][1]["data"] == {"day": "2024-01-31", "flag": "yes"}
    # without --passthrough: other kinds are noted and dropped, non-Kubernetes files are errors
    plain = runner.invoke(app, ["render", "-f", str(folder)])
    assert plain.exit_code == 1 and "error[LLMC002]" in plain.stderr


def test_passthrough_drops_earlier_llmc_output_and_keeps_errors(tmp_path):
    folder = app_folder(tmp_path)
    first = runner.invoke(app, ["render", "-f", str(folder), "--passthrough"]).stdout
    rendered = runner.invoke(app, ["render", "-f", str(folder / "llm")]).stdout
    (folder / "rendered.yaml").write_text(rendered)  # an app folder that also holds rendered output
    again = runner.invoke(app, ["render", "-f", str(folder), "--passthrough"])
    assert again.exit_code == 0 and again.stdout == first
    # a YAML error is an error even here: the broken file might be an LLMProvider
    (folder / "llm" / "broken.yaml").write_text("apiVersion: istio.alibabacloud.com/v1beta1\nkind: [\n")
    res = runner.invoke(app, ["render", "-f", str(folder), "--passthrough"])
    assert res.exit_code == 1 and res.stdout == "" and "error[LLMC001]" in res.stderr


def test_passthrough_is_for_streams_only():
    for extra in (["--out-dir", "x"], ["--check", "x"], ["--emit", "ir"]):
        res = runner.invoke(app, ["render", "-f", str(SEED), "--passthrough", *extra])
        assert res.exit_code == 2, extra


def test_json_that_yaml_cannot_read(tmp_path):
    """JSON escapes libyaml rejects (a surrogate pair: an emoji in a dashboard) are read as JSON."""
    (tmp_path / "cm.json").write_text('{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "emoji"},'
                                      ' "data": {"icon": "\\ud83d\\ude00"}}')
    (tmp_path / "dash.json").write_text('{"title": "\\ud83d\\ude00 tokens"}')
    (tmp_path / "p.yaml").write_text((SEED / "moonshot.yaml").read_text())
    res = runner.invoke(app, ["render", "-f", str(tmp_path), "--passthrough"])
    assert res.exit_code == 0, res.stderr
    first = next(YAML(typ="safe").load_all(res.stdout))
    assert first["data"] == {"icon": "\U0001F600"}
    assert "skipped 1 file(s) that hold no Kubernetes object: " + str(tmp_path / "dash.json") in res.stderr
    bad = tmp_path / "bad.json"
    bad.write_text('{"apiVersion": "istio.alibabacloud.com/v1beta1", "kind": "LLMProvider", "metadata": {"name": "x"},'
                   ' "spec": {"host": "\\ud83d\\ude00", "path": 1}}')
    res = runner.invoke(app, ["validate", "-f", str(bad)])
    assert res.exit_code == 1 and "LLMC10" in res.stderr and "Traceback" not in res.stderr


def _literal_key_providers(n: int) -> str:
    return "---\n".join(
        f"apiVersion: istio.alibabacloud.com/v1beta1\nkind: LLMProvider\nmetadata: {{name: p{i}}}\n"
        f"spec:\n  host: p{i}.example.com\n  path: /v1/chat/completions\n  configs:\n"
        f"    defaultConfig: {{openAIConfig: {{apiKey: sk-bench-key-{i:04d}}}}}\n" for i in range(n))


def test_terminal_sums_up_repeated_diagnostics_json_lists_all(tmp_path):
    from compiler.cli import PER_CODE

    n = PER_CODE + 7
    f = tmp_path / "providers.yaml"
    f.write_text(_literal_key_providers(n))
    res = runner.invoke(app, ["validate", "-f", str(f)])
    assert res.exit_code == 0, res.stderr
    lines = res.stderr.splitlines()
    shown = [ln for ln in lines if "warning[LLMC215]" in ln and not ln.startswith("...")]
    assert len(shown) == PER_CODE
    assert [ln for ln in lines if ln.startswith("...")] == [
        f"... and {n - PER_CODE} more warning[LLMC215] (literal apiKey is stored in generated config) not shown; "
        "`llmc validate -o json` lists every diagnostic"]
    assert lines[-1] == f"llmc: 0 error(s), {n} warning(s)"
    assert "sk-bench-key" not in res.stderr
    res = runner.invoke(app, ["validate", "-f", str(f), "-o", "json"])
    diags = json.loads(res.stdout)
    assert len([d for d in diags if d["code"] == "LLMC215"]) == n
    # every one keeps its exact position: the apiKey of document i (9 lines each with "---") is on line 8 of it, column 36
    assert {(d["line"], d["col"]) for d in diags if d["code"] == "LLMC215"} == {(9 * i + 8, 36) for i in range(n)}
    assert "sk-bench-key" not in res.stdout


def test_summary_keeps_the_first_per_code_in_order():
    from compiler.diagnostics import Diagnostics

    d = Diagnostics()
    for i in range(4):
        d.warning("LLMC215", "literal", file="a.yaml", line=10 - i, col=1)
    d.error("LLMC202", "unknown host", file="a.yaml", line=3, col=1)
    text = d.format_text(per_code=2).splitlines()
    assert text == ["a.yaml:3:1: error[LLMC202] unknown host", "a.yaml:7:1: warning[LLMC215] literal",
                    "a.yaml:8:1: warning[LLMC215] literal",
                    "... and 2 more warning[LLMC215] (literal apiKey is stored in generated config) not shown; "
                    "`llmc validate -o json` lists every diagnostic"]
    assert len(d.format_text().splitlines()) == 5
