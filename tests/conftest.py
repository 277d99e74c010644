"""Shared fixtures: repository paths, the golden-update switch, and access to ../shared.

Tests that need Istio's CRD file read it from ``$LLMC_SHARED/istio-1.30/crd-all.gen.yaml``
(``.ci/run`` sets ``LLMC_SHARED``). Without it they skip with that reason on a developer machine,
and fail under ``CI=true`` so CI can never pass without the strict schema check.
"""

from __future__ import annotations

import os
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


@pytest.fixture()
def api():
    """A fresh in-process fake Kubernetes API server (tests/support/fake_apiserver.py)."""
    from tests.support.fake_apiserver import FakeAPIServer

    server = FakeAPIServer()
    yield server
    server.stop()
