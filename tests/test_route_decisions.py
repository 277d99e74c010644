"""Decisions where features cross (issue 24, item 10), each documented in docs/failover.md ("Where features cross")
("Where features cross") and held here: what ``GET /v1/models`` lists, whether a client's
``anthropic-beta`` reaches Anthropic with the platform's key, what ``hostRewrite`` may name, and
which model a request with duplicate ``model`` members sends on every endpoint."""

from __future__ import annotations

import json

import pytest

from compiler.options import parse_options
from compiler.pipeline import compile_text

PROVIDERS = """\
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {name: claude}
spec:
  host: claude.example.com
  configs: {defaultConfig: {anthropicConfig: {model: claude-test, apiKeySecretRef: {name: keys, key: claude}}}}
---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {name: byok}
spec:
  host: byok.example.com
  configs: {defaultConfig: {anthropicConfig: {model: claude-test}}}
---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {name: qwen}
spec:
  host: qwen.example.com
  path: /v1/chat/completions
  configs: {defaultConfig: {openAIConfig: {model: qwen-plus, apiKeySecretRef: {name: keys, key: qwen}}}}
"""

ROUTE = """\
---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMRoute
metadata: {name: models}
spec:
  host: models.example.com
  rules:
  - name: gated
    matches: [{headers: {x-team: {exact: blue}}, model: {exact: secret-model}}]
    backendRefs: [{providerHost: qwen.example.com}]
  - name: open
    matches: [{model: {exact: open-model}}]
    backendRefs: [{providerHost: claude.example.com}]
"""


def _objects(text: str) -> list[dict]:
    opts, _ = parse_options()
    result = compile_text(text, opts, "decisions.yaml")
    assert result.ok, [d.format() for d in result.diagnostics.sorted()]
    return result.objects


def _routes(objects: list[dict], host: str) -> list[dict]:
    vs = next(o for o in objects if o["kind"] == "VirtualService" and o["spec"]["hosts"] == [host])
    return vs["spec"]["http"]


def test_models_list_names_the_models_of_header_gated_rules_too():
    """Decided: GET /v1/models is a catalogue, not an access check (header conditions route; an
    AuthorizationPolicy authorizes), so a header-gated rule's exact models are listed, owned by the
    provider's LLMProvider name."""
    routes = _routes(_objects(PROVIDERS + ROUTE), "models.example.com")
    models = next(r for r in routes if "directResponse" in r and r["match"][0].get("uri", {}).get("exact") == "/v1/models")
    listed = json.loads(models["directResponse"]["body"]["string"])["data"]
    assert {m["id"]: m["owned_by"] for m in listed} == {"secret-model": "qwen", "qwen-plus": "qwen",
                                                        "open-model": "claude", "claude-test": "claude"}


def test_a_clients_anthropic_beta_never_reaches_anthropic_with_the_platforms_key():
    """Decided: a beta feature is opted into with the platform's key and bill, so a keyed Anthropic
    provider's route removes the client's ``anthropic-beta``; with the client's own key (no key
    configured) the client's header passes."""
    objects = _objects(PROVIDERS)
    keyed, keyless = ([r for r in _routes(objects, host) if "route" in r][0]["headers"]["request"]["remove"]
                      for host in ("claude.example.com", "byok.example.com"))
    assert "anthropic-beta" in keyed and "anthropic-beta" not in keyless
    assert {"authorization", "api-key"} <= set(keyed) and "x-api-key" not in keyed  # its own key header stays
    assert not {"authorization", "x-api-key", "api-key"} & set(keyless)


def test_a_clients_openai_organization_and_project_never_reach_a_provider_with_the_platforms_key():
    """Decided: ``OpenAI-Organization`` and ``OpenAI-Project`` choose which organization and project a
    request is billed to; with the platform's key that is the platform's choice (the key's own
    default), and an app's leftover ``OPENAI_ORG_ID`` would otherwise get the platform's key refused
    (401 mismatched_organization). A keyed OpenAI-protocol provider's route removes both; with the
    client's own key they pass."""
    keyless = """\
---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {name: byo-openai}
spec:
  host: byo-openai.example.com
  path: /v1/chat/completions
  configs: {defaultConfig: {openAIConfig: {model: gpt-x}}}
"""
    objects = _objects(PROVIDERS + keyless)
    routes = {host: set([r for r in _routes(objects, host) if "route" in r][0]["headers"]["request"].get("remove", []))
              for host in ("qwen.example.com", "claude.example.com", "byo-openai.example.com")}
    billing = {"openai-organization", "openai-project"}
    assert billing <= routes["qwen.example.com"]
    assert not billing & (routes["claude.example.com"] | routes["byo-openai.example.com"])


def test_host_rewrite_to_another_name_with_a_key_is_a_warning_and_to_the_same_name_is_not():
    route = """\
---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMRoute
metadata: {name: r}
spec:
  host: qwen.example.com
  rules:
  - backendRefs: [{providerHost: qwen.example.com, hostRewrite: %s}]
"""
    opts, _ = parse_options()
    other = compile_text(PROVIDERS + route % "cdn-front.example.net", opts, "d.yaml")
    same = compile_text(PROVIDERS + route % "QWEN.example.com", opts, "d.yaml")
    assert [(d.code, d.path) for d in other.diagnostics.sorted() if d.code == "LLMC240"] == [
        ("LLMC240", "spec.rules[0].backendRefs[0].hostRewrite")]
    assert other.ok and not [d for d in same.diagnostics.sorted() if d.code == "LLMC240"]


DUP_EMBEDDINGS = """\
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {name: p-a}
spec:
  host: a.example.com
  path: /v1/chat/completions
  basePath: /v1
  configs: {defaultConfig: {openAIConfig: {model: chat-a, apiKey: sk-a-000000000000000000}}}
---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {name: p-b}
spec:
  host: b.example.com
  path: /v1/chat/completions
  basePath: /v1
  configs: {defaultConfig: {openAIConfig: {apiKey: sk-b-000000000000000000}}}
---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMRoute
metadata: {name: emb}
spec:
  host: emb.example.com
  rules:
  - matches: [{model: {exact: emb-cheap}}]
    backendRefs: [{providerHost: a.example.com}]
  - matches: [{model: {exact: emb-dear}}]
    backendRefs: [{providerHost: b.example.com}%s
"""


@pytest.mark.parametrize("backup", ["]", ", {providerHost: a.example.com, priority: 1}]\n    retries: {perTryTimeout: 2s}"],
                         ids=["rule", "failover"])
@pytest.mark.parametrize("path", ["/v1/embeddings", "/v1/completions"])
def test_duplicate_models_collapse_to_the_one_that_routed_on_every_endpoint(backup, path):
    """The model that routed a request (the last `model` member, as providers' parsers read
    duplicates) is the one every try sends, on every endpoint; a configured chat model never replaces
    it there (was: chat only, so an embeddings or completions request kept both members and a
    provider that reads the first took a model no rule chose: a KNOWN cell of the crossing matrix)."""
    from compiler.explain import Request, explain

    result = compile_text(DUP_EMBEDDINGS % backup, parse_options(istio_version="1.31")[0], "emb.yaml")
    assert result.ok, [d.format() for d in result.diagnostics.sorted()]
    body = b'{"model":"emb-cheap","input":"hi","model":"emb-dear"}'
    x = explain(result.objects, Request(host="emb.example.com", body=body, path=path))
    tries = x.get("attempts") or [x["upstream"]]
    assert [t["url"].split("/")[2] for t in tries] == ["b.example.com", "a.example.com"][:len(tries)], x
    assert len(tries) == (1 if backup == "]" else 2)
    for t in tries:
        assert json.loads(t["body"], object_pairs_hook=list) == [("model", "emb-dear"), ("input", "hi")], t
