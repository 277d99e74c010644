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
    (note,) = [d for d in result.diagnostics.items if d.code == "LLMC240"]
    assert result.ok and "78/22" in note.message and note.path == "spec.rules[0].backendRefs"
    result = compile_text(ROUTE % (70, 30) + providers, Options())
    assert not [d for d in result.diagnostics.items if d.code == "LLMC240"]


def test_a_base_url_as_host_gets_the_full_chat_path_in_its_hint():
    text = _provider("dashscope", "https://dashscope.aliyuncs.com/compatible-mode/v1", "/x")
    result = compile_text(text, Options())
    (diag,) = [d for d in result.diagnostics.items if d.code == "LLMC226"]
    assert "path: /compatible-mode/v1/chat/completions" in diag.hint
