"""The diagnostics registry: one severity and one meaning per code, the table of docs/diagnostics.md agrees with
it, and every code is emitted somewhere (no dead entries)."""

from __future__ import annotations

import re

import pytest

from compiler.diagnostics import MESSAGES, REGISTRY, Diagnostics, Severity
from tests.conftest import REPO

ROW = re.compile(r"^\| (LLMC\d{3}) \| (error|warning|note) \|", re.M)


def test_docs_table_matches_the_registry():
    table = {code: Severity(sev) for code, sev in ROW.findall((REPO / "docs" / "diagnostics.md").read_text())}
    assert table == {m.code: m.severity for m in MESSAGES}


def test_codes_are_unique_and_sorted():
    codes = [m.code for m in MESSAGES]
    assert len(codes) == len(set(codes)) and codes == sorted(codes)


def test_a_code_is_emitted_only_with_its_severity():
    diags = Diagnostics()
    with pytest.raises(ValueError, match="registered as error"):
        diags.note("LLMC002", "x")
    with pytest.raises(KeyError):
        diags.error("LLMC999", "x")


def test_every_registered_code_is_emitted_somewhere():
    source = "".join(p.read_text() for p in (REPO / "compiler").rglob("*.py"))
    emitted = set(re.findall(r"\"(LLMC\d{3})\"", source))
    for code in REGISTRY:
        assert source.count(f'"{code}"') >= 2, f"{code} is registered but never emitted"
    assert emitted <= set(REGISTRY)


def test_an_internal_error_is_a_diagnostic_and_nothing_is_written(monkeypatch):
    import compiler.translate as translate
    from compiler import Options, compile_paths

    def broken(_program):
        raise RuntimeError("boom")

    monkeypatch.setattr(translate, "TRANSLATORS", (("ServiceEntry", "serviceentry.json.j2", broken),))
    result = compile_paths([str(REPO / "samples" / "seed")], Options())
    assert not result.ok and result.objects == []
    (d,) = [d for d in result.diagnostics.items if d.severity is Severity.ERROR]
    assert d.code == "LLMC901" and "boom" in d.message
