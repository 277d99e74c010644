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
from tests.support.golden import MARKER, check_golden, mask_lua

GOLDEN = sorted((TESTDATA / "golden").glob("*.in.yaml"))
SAMPLE_DIRS = sorted(p for p in (REPO / "samples").iterdir() if p.is_dir())


ARGS = re.compile(r"^# llmc-args: (.*)$", re.M)


def render(path: Path, *extra: str) -> tuple[str, str]:
    """Run `llmc render` on ``path`` with the extra flags a ``# llmc-args:`` header line names."""
    found = ARGS.search(path.read_text()) if path.is_file() else None
    args = shlex.split(found.group(1)) if found else []
    res = CliRunner().invoke(app, ["render", "-f", os.path.relpath(path, REPO), *args, *extra])
    assert res.exit_code == 0, res.stderr
    return mask_lua(res.stdout), "\n".join(line for line in res.stderr.splitlines() if not line.startswith("llmc: "))


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # diagnostics carry repo-relative file names


@pytest.mark.parametrize("case", GOLDEN, ids=lambda p: p.name.removesuffix(".in.yaml"))
def test_golden(case: Path, update_golden: bool):
    out, diags = render(case)
    stem = case.name.removesuffix(".in.yaml")
    check_golden(case.with_name(f"{stem}.out.yaml"), out, update_golden)
    check_golden(case.with_name(f"{stem}.diagnostics.txt"), diags + "\n" if diags else "", update_golden)
    # The IR pins what the compiler decided before any YAML (as Envoy Gateway pins its xdsIR).
    ir, _ = render(case, "--emit", "ir")
    check_golden(case.with_name(f"{stem}.ir.json"), ir, update_golden)


@pytest.mark.parametrize("sample", SAMPLE_DIRS, ids=lambda p: p.name)
def test_samples_compile_clean(sample: Path, update_golden: bool):
    out, diags = render(sample)
    assert "error[" not in diags
    check_golden(TESTDATA / "samples" / f"{sample.name}.out.yaml", out, update_golden)


def test_all_samples_together(update_golden: bool):
    """`llmc render -f samples/` (the README's Quickstart command) compiles clean."""
    out, diags = render(REPO / "samples")
    assert "error[" not in diags
    check_golden(TESTDATA / "samples" / "all.out.yaml", out, update_golden)


def test_goldens_exist_for_every_case():
    assert len(GOLDEN) >= 5 and len(SAMPLE_DIRS) >= 2


def test_goldens_carry_the_lua_source_only_as_a_marker():
    """Every EnvoyFilter that inserts the filter carries exactly the bundle of the modules it names
    (checked by mask_lua); goldens show a marker naming the modules instead of the source."""
    out, _ = render(REPO / "samples")
    markers = MARKER.findall(out)
    assert markers and "envoy_on_request" not in out
    raw = CliRunner().invoke(app, ["render", "-f", "samples"]).stdout
    assert raw.count("function envoy_on_request(") == len(markers)


def test_no_orphaned_golden_files():
    """Every file under testdata/golden and testdata/samples belongs to a case."""
    stems = {p.name.removesuffix(".in.yaml") for p in GOLDEN}
    for f in (TESTDATA / "golden").iterdir():
        stem = re.sub(r"\.(in\.yaml|out\.yaml|diagnostics\.txt|ir\.json)$", "", f.name)
        assert stem in stems, f"orphaned golden file {f}"
    samples = {p.name for p in SAMPLE_DIRS} | {"all"}
    for f in (TESTDATA / "samples").iterdir():
        assert f.name.removesuffix(".out.yaml") in samples, f"orphaned golden file {f}"
