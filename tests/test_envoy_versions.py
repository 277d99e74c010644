"""The version matrix's own bookkeeping (``tests/envoy_versions.py``): every end-to-end module runs on
the other supported Envoy releases or says why not, and every module with tests that need Envoy
1.39+ (failover, key retry) is one whose skips fail the run there. A module left out would run on
the pinned release only, where those tests skip: the proof they carry would never run in CI (as
happened to the mixed-protocol failover proof of issue 27)."""

from __future__ import annotations

from pathlib import Path

from tests.envoy_versions import E2E, NEEDS_139, PINNED_ONLY

TESTS = Path(__file__).resolve().parent


def test_every_end_to_end_module_is_in_the_version_matrix_or_says_why_not():
    modules = {f"tests/{p.name}" for p in TESTS.glob("test_*_e2e.py")}
    assert modules - set(E2E) - set(PINNED_ONLY) == set()
    assert set(E2E) & set(PINNED_ONLY) == set()
    assert set(E2E) | set(PINNED_ONLY) <= modules  # no stale names


def test_modules_with_tests_that_need_envoy_139_fail_the_run_when_they_skip_there():
    needs = {p.name for p in TESTS.glob("test_*_e2e.py") if "needs Envoy 1.39+" in p.read_text(encoding="utf-8")}
    assert needs - set(NEEDS_139) == set()
    assert {f"tests/{n}" for n in NEEDS_139} <= set(E2E)
