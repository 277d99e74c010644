"""The README's Quickstart, run verbatim in a fresh clone with a fresh venv: a newcomer who follows
only the README gets a rendered sample, an `llmc explain` of one request, and the test command.

The clone is a copy of this working tree (without .git, .venv and build output); the Quickstart's
```sh block runs as written with ``sh -e``. Its last step installs the test extras and runs
``pytest``: here that run only collects the suite (``PYTEST_ADDOPTS=--collect-only``), which proves
the command and the installed test dependencies work without running every test twice (and
without this test running itself). Slow (two installs): marked ``slow``, and still part of the
default ``pytest`` run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.support import manual

pytestmark = pytest.mark.slow


def quickstart() -> str:
    readme = REPO / "README.md"
    text = readme.read_text()
    section = text[text.index("\n## Quickstart\n"):]
    section = section[:section.index("\n## ", 1)]
    (block,) = [b for b in manual.blocks(readme) if b.lang == "sh" and b.text in section][:1]
    return block.text


def test_the_quickstart_block_installs_renders_explains_and_tests():
    text = quickstart()
    assert "pip install" in text and "llmc render -f samples/" in text and "llmc explain" in text
    assert text.rstrip().endswith(".venv/bin/pytest"), "the test command closes the Quickstart (.ci/run runs it)"


def test_the_quickstart_runs_verbatim_in_a_fresh_clone(tmp_path: Path):
    clone = tmp_path / "llmc"
    shutil.copytree(REPO, clone, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".cache", ".*_cache", ".hypothesis"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH", "PYTEST_"))}
    env.update(PYTEST_ADDOPTS="--collect-only -q -p no:cacheprovider",
               PATH=os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                    if not p.startswith(str(Path(sys.executable).parent))))
    proc = subprocess.run(["sh", "-e", "-c", quickstart()], cwd=clone, env=env, capture_output=True, text=True,
                          timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "kind: EnvoyFilter" in out and "llmc.io/sources" in out, "step 1 renders the samples"
    assert "upstream request: POST https://api.moonshot.cn/v1/chat/completions" in out, "step 2 explains"
    collected = re.search(r"^(\d+) tests collected", out, re.M)
    assert collected and int(collected.group(1)) > 500, out[-2000:]
    assert (clone / ".venv" / "bin" / "llmc").exists()
