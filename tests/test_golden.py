"""Golden input/output pairs: tests/testdata/golden/*.in.yaml and every samples/ directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from compiler import Options, compile_paths
from compiler.emit import dump_yaml
from tests.conftest import REPO, TESTDATA
from tests.support.golden import check_golden

GOLDEN = sorted((TESTDATA / "golden").glob("*.in.yaml"))
SAMPLE_DIRS = sorted(p for p in (REPO / "samples").iterdir() if p.is_dir())


def render(path: Path) -> tuple[str, str]:
    result = compile_paths([os.path.relpath(path, REPO)], Options())
    assert result.ok, result.diagnostics.format_text()
    return dump_yaml(result.objects), result.diagnostics.format_text()


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
