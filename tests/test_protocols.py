"""Protocol drivers (issue 27): one module per provider API under ``compiler/protocols/``, one table
(``DRIVERS``), and no protocol knowledge anywhere else in the compiler."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from compiler import protocols
from compiler.api import ProviderConfig
from compiler.ir import RequestConfig

ROOT = Path(__file__).resolve().parent.parent
COMPILER = ROOT / "compiler"
#: the one place outside the drivers that names each protocol: the API model of its config
ALLOWED = {COMPILER / "api.py"}


def _protocol_words() -> set[str]:
    words = set(protocols.DRIVERS) | {d.record.format for d in protocols.DRIVERS.values()} - {"openai"}
    return words | {d.config_field for d in protocols.DRIVERS.values()}


def _branches(path: Path, words: set[str]) -> list[str]:
    """Comparisons and ``isinstance`` checks in ``path`` that ask which protocol a value is."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            consts = [n.value for n in [node.left, *node.comparators]
                      if isinstance(n, ast.Constant) and isinstance(n.value, str)]
            for c in consts:
                if c in words or c == "openai":
                    found.append(f"{where}:{node.lineno}: compares with {c!r}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance":
            text = ast.unparse(node)
            if any(d.config_field[0].upper() + d.config_field[1:] in text for d in protocols.DRIVERS.values()):
                found.append(f"{where}:{node.lineno}: {text}")
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in words - {"openai"}:
            found.append(f"{where}:{node.lineno}: names protocol {node.value!r}")
    return found


def test_nothing_outside_the_drivers_branches_on_a_protocol():
    words = _protocol_words()
    found = []
    for path in sorted(COMPILER.rglob("*.py")):
        if path.is_relative_to(COMPILER / "protocols") or path in ALLOWED:
            continue
        found += _branches(path, words)
    assert not found, "protocol knowledge outside compiler/protocols/:\n" + "\n".join(found)


def test_the_scan_finds_a_branch(tmp_path):
    """The check above can fail: the kind of code it forbids is found."""
    bad = tmp_path / "probe.py"
    bad.write_text('def f(p, c):\n    return p.protocol == "anthropic" or isinstance(c, AzureOpenAIConfig)\n',
                   encoding="utf-8")
    assert len(_branches(bad, _protocol_words())) == 3


def test_every_config_field_has_one_driver():
    fields = set(ProviderConfig.model_fields)
    assert set(protocols.CONFIG_FIELDS) == fields
    assert len(set(protocols.CONFIG_FIELDS.values())) == len(fields)
    assert protocols.DEFAULT_PROTOCOL in protocols.DRIVERS


@pytest.mark.parametrize("name, spec_path, config, want", [
    ("openai", "/v1/chat/completions", RequestConfig(), "/v1/chat/completions"),
    ("azure-openai", None, RequestConfig(deployment="gpt4o"),
     "/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21"),
    ("azure-openai", "/custom", RequestConfig(api_version="2025-01-01-preview"),
     "/custom?api-version=2025-01-01-preview"),
    ("azure-openai", "/custom?x=1", RequestConfig(), "/custom?x=1"),
    ("anthropic", None, RequestConfig(), "/v1/messages"),
    ("anthropic", "/proxy/v1/messages", RequestConfig(), "/proxy/v1/messages"),
])
def test_endpoints(name, spec_path, config, want):
    assert protocols.endpoint(name, spec_path, config) == want


def test_openai_needs_a_path():
    with pytest.raises(ValueError):
        protocols.endpoint("openai", None, RequestConfig())


def test_filter_settings_refine_the_record():
    assert protocols.get("openai").filter_settings(RequestConfig(auth_header="x-key")) == {
        "auth_header": "x-key", "auth_prefix": ""}
    assert protocols.get("openai").filter_settings(RequestConfig(auth_prefix="Token ")) == {
        "auth_header": "authorization", "auth_prefix": "Token "}
    assert protocols.get("anthropic").filter_settings(RequestConfig(max_tokens=5)) == {
        "max_tokens": 5, "headers": {"anthropic-version": "2023-06-01"}}
    assert protocols.get("azure-openai").base_query(RequestConfig(), "/openai") == "?api-version=2024-10-21"
    assert protocols.get("azure-openai").base_query(RequestConfig(), "/openai?v=1") is None


def test_format_of_an_upstream_request():
    assert protocols.format_of("https://a/v1/messages", {"anthropic-version": "2023-06-01"}) == "anthropic"
    assert protocols.format_of("https://a/v1/chat/completions", {"authorization": "Bearer <key>"}) == "openai"


def test_gemini_endpoint_is_a_template():
    """Gemini takes the model in the path: the filter fills ``{model}`` per request (docs/protocols.md)."""
    assert protocols.endpoint("gemini", None, RequestConfig()) == "/v1beta/models/{model}:generateContent"
    assert protocols.get("gemini").filter_settings(RequestConfig(max_tokens=9)) == {"max_tokens": 9}
    assert protocols.get("gemini").filter_settings(RequestConfig()) == {}
    assert protocols.format_of("https://g/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", {}) == "gemini"
    assert protocols.format_of("https://g/v1beta/models/gemini-2.5-flash:generateContent", {}) == "gemini"


def test_every_drivers_key_header_is_a_credential_everywhere():
    """Each driver's auth header is removed before keyed providers and never a token-limit key."""
    from compiler.resolve.limits import forbidden_headers

    for d in protocols.DRIVERS.values():
        assert d.record.auth_header in protocols.credential_headers()
        assert d.record.auth_header in forbidden_headers([])
