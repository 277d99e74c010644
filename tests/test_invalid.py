"""Every file under tests/testdata/invalid fails (or warns) with the (code, path) it declares.

A file declares its expectations in header comments: ``# expect: CODE path`` for errors and
``# expect-warning: CODE path`` for warnings. Errors and warnings must match exactly, so a new
unexpected diagnostic fails the test too. Files with errors must exit 1 with nothing on stdout.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from compiler import Options, Severity, compile_paths
from compiler.cli import app
from tests.conftest import REPO, TESTDATA

CASES = sorted((TESTDATA / "invalid").glob("*.yaml"))
EXPECT = re.compile(r"^# (expect|expect-warning): (LLMC\d{3})(?: (.*))?$", re.M)


def expectations(path: Path) -> tuple[set, set]:
    errors, warnings = set(), set()
    for kind, code, where in EXPECT.findall(path.read_text()):
        (errors if kind == "expect" else warnings).add((code, where.strip()))
    return errors, warnings


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.stem)
def test_invalid_case(case: Path):
    errors, warnings = expectations(case)
    assert errors or warnings, f"{case} declares no expectations"
    result = compile_paths([str(case)], Options())
    got_errors = {(d.code, d.path) for d in result.diagnostics.items if d.severity is Severity.ERROR}
    got_warnings = {(d.code, d.path) for d in result.diagnostics.items if d.severity is Severity.WARNING}
    assert got_errors == errors, result.diagnostics.format_text()
    assert got_warnings == warnings, result.diagnostics.format_text()
    for d in result.diagnostics.items:
        if d.severity is not Severity.NOTE and d.code != "LLMC002":
            assert d.line > 0, f"diagnostic without a line: {d.format()}"


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.stem)
def test_cli_all_or_nothing(case: Path, monkeypatch):
    monkeypatch.chdir(REPO)
    errors, _ = expectations(case)
    rel = os.path.relpath(case, REPO)
    res = CliRunner().invoke(app, ["render", "-f", rel])
    if errors:
        assert res.exit_code == 1
        assert res.stdout == "", "render must print nothing on stdout when there are errors"
        assert f"{rel}:" in res.stderr and "error[" in res.stderr
        assert re.search(r"\d+ error\(s\), \d+ warning\(s\)", res.stderr)
    else:
        assert res.exit_code == 0
        assert res.stdout.startswith("---\n")


def test_every_error_reported_at_once(tmp_path):
    """Two broken files: both problems are reported in one run."""
    (tmp_path / "a.yaml").write_text((TESTDATA / "invalid" / "wrong-types.yaml").read_text())
    (tmp_path / "b.yaml").write_text((TESTDATA / "invalid" / "unknown-field-and-missing.yaml").read_text())
    result = compile_paths([str(tmp_path)], Options())
    files = {Path(d.file).name for d in result.diagnostics.items if d.severity is Severity.ERROR}
    assert files == {"a.yaml", "b.yaml"}
