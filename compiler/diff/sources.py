"""The two sides of `llmc diff`: a path, or ``REV:PATH`` — a revision of the current git repository in
git's own syntax (``main:deploy/llm``, ``HEAD~1:samples/seed``), read without touching the work tree."""

from __future__ import annotations

import os
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO


class SourceError(Exception):
    """A side that cannot be read (no such revision or path)."""


def _is_revision_spec(spec: str) -> bool:
    if os.path.exists(spec) or ":" not in spec:
        return False
    rev = spec.partition(":")[0]
    if not rev:
        return False
    found = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], capture_output=True)
    if found.returncode != 0:
        raise SourceError(f"{spec}: neither a path nor REV:PATH (no revision {rev!r} in the current git repository)")
    return True


@contextmanager
def materialized(spec: str) -> Iterator[tuple[str, str]]:
    """(a local path holding the side's files, the temporary folder's prefix that its diagnostics
    should show as ``REV:`` instead; empty for a plain path). A plain path is used as it is;
    ``REV:PATH`` is extracted with ``git archive`` into a temporary folder removed on exit."""
    if not _is_revision_spec(spec):
        yield spec, ""
        return
    rev, _, path = spec.partition(":")
    path = path.strip("/") or "."
    top = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    if top.returncode != 0:
        raise SourceError(f"{spec}: REV:PATH reads a revision of the current git repository, and this is not one")
    prefix = os.path.relpath(os.getcwd(), top.stdout.strip())
    repo_path = os.path.normpath(os.path.join(prefix, path)) if prefix != "." else path
    res = subprocess.run(["git", "archive", "--format=tar", rev, "--", repo_path], capture_output=True,
                         cwd=top.stdout.strip())
    if res.returncode != 0:
        detail = res.stderr.decode("utf-8", "replace").strip().splitlines()
        raise SourceError(f"{spec}: {detail[-1] if detail else 'git archive failed'}")
    with tempfile.TemporaryDirectory(prefix="llmc-diff-") as tmp:
        with tarfile.open(fileobj=BytesIO(res.stdout)) as tar:
            tar.extractall(tmp, filter="data")
        yield os.path.join(tmp, repo_path), f"{tmp}/"
