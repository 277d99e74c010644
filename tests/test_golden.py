"""Golden input/output pairs: tests/testdata/golden/*.in.yaml and every samples/ directory."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from compiler.cli import app
from tests.conftest import REPO, TESTDATA
from tests.support.golden import check_golden

GOLDEN = sorted((TESTDATA / "golden").glob("*.in.yaml"))
SAMPLE_DIRS = sorted(p for p in (REPO / "samples").iterdir() if p.is_dir())


ARGS = re.compile(r"^# llmc-args: (.*)$", re.M)


def render(path: Path) -> tuple[str, str]:
    """Run `llmc render` on ``path`` with the extra flags a ``# llmc-args:`` header line names."""
    found = ARGS.search(path.read_text()) if path.is_file() else None
    args = shlex.split(found.group(1)) if found else []
    res = CliRunner().invoke(app, ["render", "-f", os.path.relpath(path, REPO), *args])
    assert res.exit_code == 0, res.stderr
    return res.stdout, "\n".join(line for line in res.stderr.splitlines() if not line.startswith("llmc: "))


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # diagnostics carry repo-relative file names


@pytest.mark.parametrize("case", GOLDEN, ids=lambda p: p.name.removesuffix(".in.yaml"))
def test_golden(case: Path, update_golden: bool):
    out, diags = render(case)
    stem = case.name.removesuffix(".in.yaml")
    check_golden(case.with_name(f"{stem}.out.yaml"), out, update_golden)
    check_golden(case.with_name(f"{stem}.diagnostics.txt"), diags + "\n" if diags else "", update_golden)


@pytest.mark.parametrize("sample", SAMPLE_DIRS, ids=lambda p: p.name)
def test_samples_compile_clean(sample: Path, update_golden: bool):
    out, diags = render(sample)
    assert "error[" not in diags
    check_golden(TESTDATA / "samples" / f"{sample.name}.out.yaml", out, update_golden)


def test_all_samples_together(update_golden: bool):
    """`llmc render -f samples/` (the README's command) compiles clean."""
    out, diags = render(REPO / "samples")
    assert "error[" not in diags
    check_golden(TESTDATA / "samples" / "all.out.yaml", out, update_golden)


def test_goldens_exist_for_every_case():
    assert len(GOLDEN) >= 5 and len(SAMPLE_DIRS) >= 2
