"""A newcomer's first hour (issue 25): the sharp edges they met, each pinned by a test."""

from __future__ import annotations

from typer.testing import CliRunner

from compiler import Options
from compiler.cli import app
from compiler.pipeline import compile_text
from tests.conftest import REPO

runner = CliRunner()
SEED = REPO / "samples" / "seed"

ROUTE = """apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMRoute
metadata: {name: split}
spec:
  host: demo-llm-server
  rules:
  - backendRefs:
    - {providerHost: dashscope.aliyuncs.com, weight: %d}
    - {providerHost: api.moonshot.cn, weight: %d}
"""


def test_crds_out_dir_creates_the_folder(tmp_path):
    target = tmp_path / "new" / "crds"
    res = runner.invoke(app, ["crds", "--out-dir", str(target)])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in target.iterdir()) == ["llmproviders.yaml", "llmroutes.yaml"]


def test_check_of_a_folder_not_yet_written_suggests_out_dir(tmp_path):
    for missing in (str(tmp_path / "rendered"), str(tmp_path / "rendered") + "/"):
        res = runner.invoke(app, ["render", "-f", str(SEED), "--check", missing])
        assert res.exit_code == 1
        assert f"--out-dir {missing}" in res.stderr and ">" not in res.stderr.split("update it with:")[1]
    res = runner.invoke(app, ["render", "-f", str(SEED), "--check", str(tmp_path / "out.yaml")])
    assert res.exit_code == 1 and f"> {tmp_path / 'out.yaml'}" in res.stderr


def _provider(name, host, path):
    return (f"---\napiVersion: istio.alibabacloud.com/v1beta1\nkind: LLMProvider\nmetadata: {{name: {name}}}\n"
            f"spec:\n  host: {host}\n  path: {path}\n")


def test_weights_that_do_not_add_up_to_100_get_a_note():
    providers = (_provider("dashscope", "dashscope.aliyuncs.com", "/compatible-mode/v1/chat/completions")
                 + _provider("moonshot", "api.moonshot.cn", "/v1/chat/completions"))
    result = compile_text(ROUTE % (70, 20) + providers, Options())
    (note,) = [d for d in result.diagnostics.items if d.code == "LLMC242"]
    assert result.ok and "78/22" in note.message and note.path == "spec.rules[0].backendRefs"
    result = compile_text(ROUTE % (70, 30) + providers, Options())
    assert not [d for d in result.diagnostics.items if d.code == "LLMC242"]


def test_a_base_url_as_host_gets_the_full_chat_path_in_its_hint():
    text = _provider("dashscope", "https://dashscope.aliyuncs.com/compatible-mode/v1", "/x")
    result = compile_text(text, Options())
    (diag,) = [d for d in result.diagnostics.items if d.code == "LLMC226"]
    assert "path: /compatible-mode/v1/chat/completions" in diag.hint


# ------------------------------------------------------------------------------------ explain wording

MODELS = str(REPO / "tests" / "testdata" / "golden" / "model-routing.in.yaml")


def test_explain_of_a_model_rule_never_says_the_winning_rule_had_no_match():
    res = runner.invoke(app, ["explain", "-f", MODELS, "--host", "models-gateway",
                              "-d", '{"model":"gpt-4o-mini","messages":[]}'])
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "rule: default/models-gateway/alias" in out
    assert "route llmc/default/models-gateway/alias: not yet — x-llmc-model is absent" in out
    assert "alias: no match" not in out and "matched route: llmc/default/models-gateway/*nomatch" not in out
    assert "entry route: llmc/default/models-gateway/*nomatch (llmc's catch-all" in out


def test_explain_of_failover_relates_istios_attempts_to_the_rules():
    res = runner.invoke(app, ["explain", "-f", str(REPO / "tests" / "testdata" / "golden" / "failover.in.yaml"),
                              "--host", "demo-llm-server", "-d", '{"messages":[]}'])
    line = next(x for x in res.stdout.splitlines() if x.startswith("retries"))
    assert '"attempts": 1' in line and "2 tries in all" in line and "retries.attempts counts every try" in line


def test_explain_names_the_namespace_to_use():
    res = runner.invoke(app, ["explain", "-f", str(REPO / "samples" / "anthropic"), "--host", "chat",
                              "-d", '{"messages":[]}'])
    assert res.exit_code == 1 and "--namespace apps" in res.stderr
    res = runner.invoke(app, ["explain", "-f", str(REPO / "samples" / "anthropic"), "--host", "chat",
                              "--namespace", "apps", "-d", '{"messages":[]}'])
    assert res.exit_code == 0, res.output


def test_explain_without_lupa_says_how_to_install_it_from_a_clone(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_lupa(name, *args, **kwargs):
        if name == "lupa" or name.startswith("lupa."):
            raise ImportError("No module named 'lupa'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_lupa)
    import compiler.explain as explain_module

    monkeypatch.setattr(explain_module, "_RUNTIMES", {})  # the process's LuaJITs, loaded afresh
    res = runner.invoke(app, ["explain", "-f", str(SEED), "--host", "demo-llm-server", "-d", '{"messages":[]}'])
    assert res.exit_code == 1 and "pip install '.[explain]'" in res.stderr and "llmc-istio[explain]" not in res.stderr


# ------------------------------------------------------------------------------------------ packaging


def test_the_controller_without_its_extra_says_how_to_install_it(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "kubernetes" else real(name, *a))
    res = runner.invoke(app, ["controller"])
    assert res.exit_code == 1 and "pip install '.[controller]'" in res.stderr and "Traceback" not in res.output


def test_the_core_does_not_need_the_kubernetes_client():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("kubernetes")]
    assert project["optional-dependencies"]["controller"] == ["kubernetes>=29"]
    assert project["urls"] and len(project["classifiers"]) > 5 and project["authors"]


# ------------------------------------------------------------------------------------------ CLI habits

COMMANDS = ["render", "validate", "mounts", "controller", "krm", "explain", "diff", "meshconfig", "crds", "version",
            "completion", "kustomize-plugin"]


def _help(*args: str) -> str:
    res = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    assert res.exit_code == 0, res.output
    return res.stdout


def test_help_shows_no_bool_or_list_types():
    for command in [[], *[[c] for c in COMMANDS], ["kustomize-plugin", "install"]]:
        text = _help(*command)
        assert "<bool>" not in text and "list[" not in text, (command, text)


def test_the_command_list_has_one_line_per_command():
    text = _help()
    rows = [line for line in text.splitlines() if line.startswith("│ ")]
    listed = [row.split()[1] for row in rows if len(row.split()) > 1 and row.split()[1] in COMMANDS]
    assert sorted(listed) == sorted(COMMANDS)
    commands_panel = text[text.index("Commands"):]
    continuation = [r for r in commands_panel.splitlines() if r.startswith("│   ")]
    assert continuation == [], "a command's summary wraps or keeps a docstring's line break"


def test_krm_help_lists_every_function_option():
    from compiler.options import FUNCTION_OPTIONS

    text = " ".join(_help("krm").split())
    for key in FUNCTION_OPTIONS:
        assert key in text, key


def test_version_and_completion_subcommands():
    from compiler import __version__

    assert runner.invoke(app, ["version"]).stdout == f"llmc {__version__}\n"
    assert runner.invoke(app, ["--version"]).stdout == f"llmc {__version__}\n"
    for shell in ("bash", "zsh", "fish", "powershell"):
        res = runner.invoke(app, ["completion", shell])
        assert res.exit_code == 0 and "_LLMC_COMPLETE" in res.stdout, shell
    assert runner.invoke(app, ["completion", "tcsh"]).exit_code == 2


def test_render_o_name_is_kubectls_form():
    res = runner.invoke(app, ["render", "-f", str(SEED), "-o", "name"])
    names = res.stdout.splitlines()
    assert res.exit_code == 0 and "envoyfilter.networking.istio.io/llmc-filter" in names
    assert all(n.count("/") == 1 and "." in n.split("/")[0] for n in names)
    full = runner.invoke(app, ["render", "-f", str(SEED)])
    assert len(names) == full.stdout.count("\nkind: ") + full.stdout.startswith("kind: ")
