"""Failover in the compiler: the Istio version option, its diagnostics, the order of tries, the
proxy-version pin, and that outputs without failover do not depend on the target version."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from compiler.cli import app
from compiler.gitops import transform
from compiler.options import DEFAULT_ISTIO_VERSION, parse_options
from compiler.pipeline import compile_text
from compiler.translate.envoyfilter import FAILOVER_PROXY_VERSION
from tests.conftest import REPO, TESTDATA

FAILOVER = (TESTDATA / "golden" / "failover.in.yaml").read_text()
runner = CliRunner()


def codes(result) -> list[tuple[str, str]]:
    return [(d.code, d.path) for d in result.diagnostics.sorted()]


def test_the_default_target_is_the_newest_supported_istio():
    opts, problems = parse_options()
    assert problems == [] and opts.istio_version == DEFAULT_ISTIO_VERSION == "1.31" and opts.supports_failover


@pytest.mark.parametrize("given, minor", [("1.31", "1.31"), ("1.30.3", "1.30"), ("1.29", "1.29")])
def test_istio_versions_are_taken_by_minor(given, minor):
    opts, problems = parse_options(istio_version=given)
    assert problems == [] and opts.istio_version == minor


@pytest.mark.parametrize("bad", ["1.27", "1.32", "2", "latest"])
def test_unsupported_istio_versions_are_refused(bad):
    opts, problems = parse_options(istio_version=bad)
    assert opts is None and problems[0][0] == "istio-version"


@pytest.mark.parametrize("version", ["1.28", "1.29", "1.30"])
def test_failover_for_an_older_istio_names_the_version_needed(version):
    opts, _ = parse_options(istio_version=version)
    result = compile_text(FAILOVER, opts, "failover.yaml")
    assert not result.ok
    (diag,) = [d for d in result.diagnostics.sorted() if d.code == "LLMC234"]
    assert diag.path == "spec.rules[0].retries"
    assert "Istio 1.31" in diag.message and version in diag.message


def test_priority_alone_for_an_older_istio_gets_the_version_diagnostic():
    text = FAILOVER.replace("    retries: {attempts: 2, perTryTimeout: 30s}\n", "")
    opts, _ = parse_options(istio_version="1.30")
    assert codes(compile_text(text, opts, "f.yaml")) == [("LLMC234", "spec.rules[0].backendRefs[1].priority")]


def test_cli_istio_version_flag(tmp_path):
    src = tmp_path / "f.yaml"
    src.write_text(FAILOVER)
    res = runner.invoke(app, ["render", "-f", str(src), "--istio-version", "1.30"])
    assert res.exit_code == 1 and "LLMC234" in res.output
    assert runner.invoke(app, ["render", "-f", str(src)]).exit_code == 0
    res = runner.invoke(app, ["render", "-f", str(src), "--istio-version", "1.27"])
    assert res.exit_code == 2 and "--istio-version" in res.output


def test_krm_function_config_takes_istio_version():
    from ruamel.yaml import YAML

    items = list(YAML().load_all(FAILOVER))
    _, result = transform(items, {"istioVersion": "1.30"}, YAML())
    assert "LLMC234" in [d.code for d in result.diagnostics.sorted()]
    _, result = transform(items, {"istioVersion": "1.31"}, YAML())
    assert result.ok
    _, result = transform(items, {"istioVersion": "9"}, YAML())
    assert [d.code for d in result.diagnostics.sorted()] == ["LLMC010"]


@pytest.mark.parametrize("version, pinned", [("1.31.0", True), ("1.31.2-distroless", True), ("1.32.1", True),
                                             ("1.40.0", True), ("1.30.3", False), ("1.29.0", False),
                                             ("1.3.1", False), ("1.310.0", False)])
def test_failover_patches_are_pinned_to_istio_131_and_newer(version, pinned):
    assert bool(re.search(FAILOVER_PROXY_VERSION, version)) is pinned


def test_tries_follow_priority_then_weight():
    from compiler.ir import Backend, Retries, Rule

    def backend(name, weight, priority):
        return Backend(provider=type("P", (), {"name": name})(), weight=weight, config=None, priority=priority)

    a, b, c, d = backend("a", 10, 0), backend("b", 30, 0), backend("c", 1, 2), backend("d", 5, 1)
    rule = Rule("r", (), (a, b, c, d), Retries(4, None, ("5xx",)))
    assert rule.first_choices == (a, b) and rule.pinned == (a, b)
    assert rule.failover_order(a) == (a, b, d, c)
    assert rule.failover_order(b) == (b, a, d, c)


@pytest.mark.parametrize("sample", ["samples/seed", "samples/secret-ref", "tests/testdata/golden/telemetry.in.yaml"])
def test_outputs_without_failover_are_the_same_for_every_supported_istio(sample):
    outs = {runner.invoke(app, ["render", "-f", str(REPO / sample), "--istio-version", v]).output
            for v in ("1.29", "1.30", "1.31")}
    assert len(outs) == 1
    older, newer = (runner.invoke(app, ["render", "-f", str(REPO / sample), "--istio-version", v]) for v in ("1.28", "1.29"))
    assert older.exit_code == 0 and older.stdout == newer.stdout
    assert "warning[LLMC011]" in older.stderr and "LLMC011" not in newer.stderr


def test_a_try_removes_every_credential_header_and_sets_only_its_own():
    """The upstream entry point under LuaJIT: the header map a try sees may hold a key an earlier try
    set for another provider, in any protocol's header; all are removed, then this provider's set."""
    import json

    from compiler.protocols import OPENAI
    from tests.support.lua import LuaFilter

    lua = LuaFilter()
    ctx = {"id": "t1", "route": "default/chat", "rule": "backup",
           "attempt": {"provider": "p-two", "protocol": "openai", "host": "two.example.com",
                       "path": "/two/chat/completions", "weight": 1, "max_body": 1 << 20, "model": "two-model",
                       "api_key": "sk-two"},
           "protocols": {"openai": OPENAI.context()},
           "credential_headers": ["api-key", "authorization", "x-api-key"],
           "internal_headers": ["x-llmc-provider", "x-llmc-order"]}
    sent = {"authorization": "Bearer sk-one", "api-key": "sk-one", "x-api-key": "sk-one", "x-llmc-order": "0",
            ":authority": "one.example.com"}
    r = lua.request(ctx, '{"model":"one-model","messages":[],"stream":false}', headers=sent,
                    path="/one/chat/completions?x=1", route="llmc/default/chat/backup/p-one")
    assert r.status is None, r.response_body
    assert r.headers["authorization"] == "Bearer sk-two"
    assert not {"api-key", "x-api-key", "x-llmc-order"} & set(r.headers)
    assert r.headers[":path"] == "/two/chat/completions?x=1" and r.headers[":authority"] == "two.example.com"
    assert json.loads(r.body) == {"model": "two-model", "messages": [], "stream": False}
