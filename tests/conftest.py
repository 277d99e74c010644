"""Shared fixtures: repository paths, the golden-update switch, access to ../shared, and the
GitOps tools.

Tests that need Istio's CRD file read it from ``$LLMC_SHARED/istio-1.30/crd-all.gen.yaml``
(``.ci/run`` sets ``LLMC_SHARED``). Without it they skip with that reason on a developer machine,
and fail under ``CI=true`` so CI can never pass without the strict schema check. The same holds
for the real ``kpt`` and ``kubectl`` binaries (:func:`require_tool`): CI machines have them on PATH.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TESTDATA = REPO / "tests" / "testdata"


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite golden files under tests/testdata (refused when CI=true)")


@pytest.fixture(scope="session")
def update_golden(request) -> bool:
    update = request.config.getoption("--update-golden")
    if update and os.environ.get("CI") == "true":
        pytest.fail("--update-golden is refused under CI=true: goldens must be committed")
    return update


def shared_path(relative: str) -> Path:
    base = os.environ.get("LLMC_SHARED")
    if not base or not (Path(base) / relative).exists():
        reason = (f"needs {relative} from the shared reference folder: set LLMC_SHARED to it "
                  f"(.ci/run sets LLMC_SHARED=../shared); currently LLMC_SHARED={base!r}")
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return Path(base) / relative


@pytest.fixture(scope="session")
def istio_crds() -> str:
    return str(shared_path("istio-1.30/crd-all.gen.yaml"))


def require_tool(name: str) -> str:
    """The path of ``name`` on PATH; skip with the reason when it is missing, fail under CI=true."""
    path = shutil.which(name)
    if path is None:
        reason = (f"needs the real `{name}` on PATH (CONTRIBUTING.md, Set up: kpt, kubectl and graphviz are "
                  f"prerequisites of the full test suite)")
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


# Property tests check results, never time: no per-example deadline (the 2-core CI machines run
# Envoy next to them; a deadline there would only measure load).
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("llmc", deadline=None)
_hypothesis_settings.load_profile("llmc")


@pytest.fixture()
def api():
    """A fresh in-process fake Kubernetes API server (tests/support/fake_apiserver.py)."""
    from tests.support.fake_apiserver import FakeAPIServer

    server = FakeAPIServer()
    yield server
    server.stop()
