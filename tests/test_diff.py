"""`llmc diff` (issue 36): what a change to LLMProvider/LLMRoute does to requests, computed by the
engine of `llmc explain` on both configurations.

Each test changes one thing in a copy of ``tests/testdata/diff/base`` and checks that exactly the
requests it affects are reported, with what changed; the docs' example output is a golden
(``docs/diff.md``)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from compiler.cli import app
from tests.conftest import REPO, TESTDATA

DIFF = TESTDATA / "diff"
runner = CliRunner()


def llmc_diff(*args: str):
    return runner.invoke(app, ["diff", *args])


@pytest.fixture
def base(tmp_path) -> Path:
    out = tmp_path / "base"
    shutil.copytree(DIFF / "base", out)
    return out


def variant(tmp_path: Path, name: str, edits: dict[str, list[tuple[str, str]]]) -> Path:
    """A copy of the base configuration with text replacements per file (each must apply)."""
    out = tmp_path / name
    shutil.copytree(DIFF / "base", out)
    for fname, pairs in edits.items():
        text = (out / fname).read_text()
        for old, new in pairs:
            assert old in text, (fname, old)
            text = text.replace(old, new)
        (out / fname).write_text(text)
    return out


def requests_file(tmp_path: Path, items: list[dict]) -> str:
    path = tmp_path / "requests.jsonl"
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    return str(path)


def as_json(result) -> dict:
    return json.loads(result.stdout)


ANYONE = {"name": "anyone", "host": "chat.llm.internal", "body": {"messages": [{"role": "user", "content": "Hi"}]}}
BATCH = {"name": "batch", "host": "chat.llm.internal", "headers": {"x-workload": "batch"},
         "body": {"messages": [{"role": "user", "content": "Hi"}]}}


def test_identical_configurations_exit_0(base, tmp_path):
    result = llmc_diff("--base", str(base), "--head", str(DIFF / "base"), "--requests",
                       requests_file(tmp_path, [ANYONE, BATCH]))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith("2 requests: 0 changed, 2 unchanged")


def test_a_weight_change_moves_the_share_computed_from_the_weights(base, tmp_path):
    head = variant(tmp_path, "head", {"route.yaml": [("weight: 80", "weight: 60"), ("weight: 20", "weight: 40")]})
    result = llmc_diff("--base", str(base), "--head", str(head), "--requests", requests_file(tmp_path, [ANYONE, BATCH]),
                       "-o", "json")
    assert result.exit_code == 1, result.output
    report = as_json(result)
    assert report["schema"] == "llmc.diff/v1" and report["summary"]["changed"] == 1
    anyone, batch = report["requests"]
    assert batch["status"] == "unchanged"
    assert {(c["provider"], c["what"], c["base"], c["head"]) for c in anyone["changes"]} == {
        ("dashscope", "share", 0.8, 0.6), ("moonshot", "share", 0.2, 0.4)}


def test_a_new_header_match_moves_exactly_the_matching_requests(base, tmp_path):
    head = variant(tmp_path, "head", {"route.yaml": [("  - name: default\n", "  - name: blue\n"
                                                      "    matches: [{headers: {x-team: {exact: blue}}}]\n"
                                                      "    backendRefs: [{providerHost: api.deepseek.com}]\n"
                                                      "  - name: default\n")]})
    blue = {**ANYONE, "name": "blue", "headers": {"x-team": "blue"}}
    green = {**ANYONE, "name": "green", "headers": {"x-team": "green"}}
    result = llmc_diff("--base", str(base), "--head", str(head), "--requests",
                       requests_file(tmp_path, [ANYONE, blue, green, BATCH]), "-o", "json")
    assert result.exit_code == 1, result.output
    status = {r["name"]: r["status"] for r in as_json(result)["requests"]}
    assert status == {"anyone": "unchanged", "blue": "changed", "green": "unchanged", "batch": "unchanged"}
    (changed,) = [r for r in as_json(result)["requests"] if r["status"] == "changed"]
    assert {"what": "rule", "base": "default/chat/default", "head": "default/chat/blue"} in changed["changes"]
    assert changed["head"]["picks"]["deepseek"]["endpoint"] == "https://api.deepseek.com/chat/completions"


def test_a_renamed_key_secret_is_a_key_change_and_no_key_is_ever_printed(base, tmp_path):
    head = variant(tmp_path, "head", {"providers.yaml": [("{name: llm-keys, key: moonshot}",
                                                          "{name: moonshot-keys, key: api-key}")]})
    result = llmc_diff("--base", str(base), "--head", str(head), "--requests", requests_file(tmp_path, [ANYONE]))
    assert result.exit_code == 1
    assert ("moonshot: key Secret llm-keys, key moonshot in authorization → Secret moonshot-keys, key api-key "
            "in authorization") in result.stdout
    # literal keys: a fingerprint tells them apart; the key itself never appears
    literal_base = variant(tmp_path, "lb", {"providers.yaml": [("apiKeySecretRef: {name: llm-keys, key: moonshot}",
                                                                "apiKey: sk-moonshot-first-0000000000")]})
    literal_head = variant(tmp_path, "lh", {"providers.yaml": [("apiKeySecretRef: {name: llm-keys, key: moonshot}",
                                                                "apiKey: sk-moonshot-second-000000000")]})
    for fmt in ("text", "json", "markdown"):
        result = llmc_diff("--base", str(literal_base), "--head", str(literal_head), "--requests",
                           requests_file(tmp_path, [ANYONE]), "-o", fmt)
        assert result.exit_code == 1
        assert "sk-moonshot" not in result.output and "literal apiKey sha256:" in result.stdout


def test_a_failover_priority_change_shows_the_new_try_order(base, tmp_path):
    head = variant(tmp_path, "head", {"route.yaml": [
        ("    - {providerHost: dashscope.aliyuncs.com}\n    - {providerHost: api.deepseek.com, priority: 1}",
         "    - {providerHost: dashscope.aliyuncs.com, priority: 1}\n    - {providerHost: api.deepseek.com}")]})
    result = llmc_diff("--base", str(base), "--head", str(head), "--requests", requests_file(tmp_path, [BATCH, ANYONE]))
    assert result.exit_code == 1
    assert "dashscope: no longer picked (was 100%, tries dashscope → deepseek)" in result.stdout
    assert "deepseek: now picked (100%, tries deepseek → dashscope)" in result.stdout
    assert result.stdout.strip().endswith("2 requests: 1 changed, 1 unchanged")


def test_a_side_that_does_not_compile_exits_2_with_its_located_diagnostics(base, tmp_path):
    head = variant(tmp_path, "head", {"route.yaml": [("weight: 80", "weight: -3")]})
    result = llmc_diff("--base", str(base), "--head", str(head), "--generate")
    assert result.exit_code == 2
    assert re.search(r"route\.yaml:\d+:\d+: error\[LLMC\d{3}\]", result.stderr), result.stderr
    assert "--head" in result.stderr and result.stdout == ""


def test_generate_builds_one_request_per_rule_match_of_both_sides(base, tmp_path):
    head = variant(tmp_path, "head", {"route.yaml": [("  - name: default\n", "  - name: regex\n"
                                                      "    matches: [{headers: {x-team: {regex: 'b.*'}}}]\n"
                                                      "    backendRefs: [{providerHost: api.deepseek.com}]\n"
                                                      "  - name: default\n")]})
    result = llmc_diff("--base", str(base), "--head", str(head), "--generate", "-o", "json")
    names = sorted(r["name"] for r in as_json(result)["requests"])
    # every rule once, the providers' own hosts included (each is a route of its own, as in ASM)
    assert names == ["default/chat/batch", "default/chat/default", "default/dashscope/default",
                     "default/deepseek/default", "default/moonshot/default"]
    assert "default/chat/regex: match 0: header x-team is a regex condition: not generated" in result.stderr


def test_rev_path_reads_a_revision_of_the_current_repository(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    shutil.copytree(DIFF / "base", repo / "llm")
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "-C", str(repo), "add", "."], check=True)
    subprocess.run([*git, "-C", str(repo), "commit", "-qm", "base"], check=True)
    text = (repo / "llm" / "route.yaml").read_text().replace("weight: 80", "weight: 70").replace("weight: 20", "weight: 30")
    (repo / "llm" / "route.yaml").write_text(text)
    monkeypatch.chdir(repo)
    result = llmc_diff("--base", "HEAD:llm", "--head", "llm", "--requests", requests_file(tmp_path, [ANYONE]))
    assert result.exit_code == 1, result.output
    assert "dashscope: share 80% → 70%" in result.stdout
    missing = llmc_diff("--base", "nosuchrev:llm", "--head", "llm", "--generate")
    assert missing.exit_code == 2 and "no revision 'nosuchrev'" in missing.stderr


def test_a_bad_request_file_is_located(base, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ANYONE) + "\n{not json\n")
    result = llmc_diff("--base", str(base), "--head", str(base), "--requests", str(path))
    assert result.exit_code == 2 and f"{path}:2: not JSON" in result.stderr


def test_markdown_is_a_table_of_the_changes(base, tmp_path):
    head = variant(tmp_path, "head", {"route.yaml": [("weight: 80", "weight: 60"), ("weight: 20", "weight: 40")]})
    result = llmc_diff("--base", str(base), "--head", str(head), "--requests", requests_file(tmp_path, [ANYONE]),
                       "-o", "markdown")
    assert result.stdout.splitlines() == [
        "### llmc diff", "", "**1** of 1 requests change.", "",
        "| request | provider | what | base | head |", "|---|---|---|---|---|",
        "| `POST chat.llm.internal/v1/chat/completions` | dashscope | share | 80% | 60% |",
        "| `POST chat.llm.internal/v1/chat/completions` | moonshot | share | 20% | 40% |"]


def _docs_example() -> tuple[str, str]:
    """The command and the output block of docs/diff.md's example."""
    text = (REPO / "docs" / "diff.md").read_text()
    m = re.search(r"<!-- diff-example -->\n```sh\n\$ (llmc diff [^\n]+)\n```\n\n```text\n(.*?)```", text, re.S)
    assert m, "docs/diff.md lost its example"
    return m.group(1), m.group(2)


def test_the_docs_example_output_is_what_llmc_prints(monkeypatch):
    command, expected = _docs_example()
    monkeypatch.chdir(REPO)
    result = llmc_diff(*command.split()[2:])
    assert result.exit_code == 1
    assert result.stdout == expected


LIMITS = TESTDATA / "golden" / "token-limits.in.yaml"
RLS = ("--rate-limit-service", "llmc-system/ratelimit:8081")


def test_a_token_limit_change_shows_on_exactly_the_requests_it_charges(tmp_path):
    """Token limits are a column: each limit on the route a request takes, with its budget, key and
    charge formula, from the rate-limit configuration llmc emits."""
    base, head = tmp_path / "base", tmp_path / "head"
    base.mkdir(), head.mkdir()
    text = LIMITS.read_text()
    (base / "in.yaml").write_text(text)
    (head / "in.yaml").write_text(text.replace("tokens: 60, per: Minute", "tokens: 120, per: Minute")
                                  .replace("- {name: provider-tpm, tokens: 100000, per: Minute}",
                                           "- {name: provider-tpm, tokens: 50000, per: Minute}"))
    result = llmc_diff("--base", str(base), "--head", str(head), "--generate", *RLS, "-o", "json")
    assert result.exit_code == 1, result.output
    changes = {(r["name"], c["what"], c["base"].split(",")[0], c["head"].split(",")[0])
               for r in as_json(result)["requests"] for c in r.get("changes", [])}
    per_user = ("team-a/chat/per-user", "limit route/team-a/chat/per-user/user-tpm",
                "60 tokens per minute", "120 tokens per minute")
    assert per_user in changes
    provider = [c for c in changes if c[1] == "limit provider/platform/shared-openai/provider-tpm"]
    assert provider and {c[2:] for c in provider} == {("100000 tokens per minute", "50000 tokens per minute")}
    # only those two limits moved; each request charged by neither is unchanged
    assert {c[1] for c in changes} == {per_user[1], "limit provider/platform/shared-openai/provider-tpm"}
    text_out = llmc_diff("--base", str(base), "--head", str(head), "--generate", *RLS).stdout
    assert "charge 1×prompt + 4×completion tokens" in text_out


def test_a_clients_credentials_in_the_requests_are_never_printed(base, tmp_path):
    """The report goes into a pull request: a request's credential headers (Authorization, a key
    header, a cookie) are shown masked, their scheme kept; other headers as sent (review 9; was:
    the client's key in clear in every format)."""
    head = variant(tmp_path, "head", {"providers.yaml": [("{name: llm-keys, key: moonshot}",
                                                          "{name: moonshot-keys, key: api-key}")]})
    creds = {"authorization": "Bearer sk-client-0wn-0000001", "x-api-key": "sk-client-0wn-0000002",
             "api-key": "sk-client-0wn-0000003", "x-goog-api-key": "AIza-client-0wn-0000004",
             "cookie": "session=client-0wn-0000005", "proxy-authorization": "Basic Y2xpZW50LTB3bg==",
             "x-team-token": "client-0wn-0000006"}
    req = {**ANYONE, "headers": {**creds, "x-app": "reporting"}}
    for fmt in ("text", "json", "markdown"):
        result = llmc_diff("--base", str(base), "--head", str(head), "--requests", requests_file(tmp_path, [req]),
                           "-o", fmt)
        assert result.exit_code == 1, result.output
        assert "0wn" not in result.output and "Y2xpZW50LTB3bg" not in result.output, fmt
        assert "reporting" in result.stdout and "Bearer ***" in result.stdout, fmt
