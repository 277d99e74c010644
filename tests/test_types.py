"""`mypy compiler/` is clean (config in pyproject.toml: check_untyped_defs, the pydantic plugin,
missing imports ignored only for libraries that publish no types). Run here so CI checks it too."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_mypy_is_clean():
    proc = subprocess.run([sys.executable, "-m", "mypy"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
