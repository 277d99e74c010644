"""Failover in the compiler: the Istio version option, its diagnostics, the order of tries, the
proxy-version pin, and that outputs without failover do not depend on the target version."""

from __future__ import annotations

import json
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
    one = {"provider": "p-one", "protocol": "openai", "host": "one.example.com", "authority": "one.example.com",
           "path": "/one/chat/completions", "weight": 1, "max_body": 1 << 20, "model": "one-model", "api_key": "sk-one"}
    ctx = {"id": "t1", "route": "default/chat", "rule": "backup",
           "tries": [one, {"provider": "p-two", "protocol": "openai", "host": "two.example.com",
                           "authority": "two.example.com", "path": "/two/chat/completions", "weight": 1,
                           "max_body": 1 << 20, "model": "two-model", "api_key": "sk-two"}],
           "protocols": {"openai": OPENAI.context()},
           "credential_headers": ["api-key", "authorization", "x-api-key"],
           "internal_headers": ["x-llmc-provider", "x-llmc-order"]}
    sent = {"authorization": "Bearer sk-one", "api-key": "sk-one", "x-api-key": "sk-one", "x-llmc-order": "0",
            ":authority": "one.example.com", "x-envoy-attempt-count": "2"}  # the second try
    r = lua.request(ctx, '{"model":"one-model","messages":[],"stream":false}', headers=sent,
                    path="/one/chat/completions?x=1", route="llmc/default/chat/backup/p-one")
    assert r.status is None, r.response_body
    assert r.headers["authorization"] == "Bearer sk-two"
    assert not {"api-key", "x-api-key", "x-llmc-order"} & set(r.headers)
    assert r.headers[":path"] == "/two/chat/completions?x=1" and r.headers[":authority"] == "two.example.com"
    assert json.loads(r.body) == {"model": "two-model", "messages": [], "stream": False}


@pytest.mark.parametrize("count", [None, "0", "3", "x"])
def test_a_try_envoy_did_not_number_or_beyond_the_list_is_refused_never_sent(count):
    """The upstream filter picks the try's provider by x-envoy-attempt-count: without it (or past the
    route's list) it cannot know which provider's key and body the try needs, so it sends nothing."""
    from compiler.protocols import OPENAI
    from tests.support.lua import LuaFilter

    lua = LuaFilter()
    b = {"provider": "p", "protocol": "openai", "host": "p.example.com", "authority": "p.example.com",
         "path": "/v1/chat/completions", "weight": 1, "max_body": 1 << 20, "api_key": "sk-p"}
    ctx = {"id": "t3", "route": "default/chat", "rule": "r", "tries": [b, {**b, "provider": "q"}],
           "protocols": {"openai": OPENAI.context()}, "credential_headers": ["authorization"],
           "internal_headers": ["x-llmc-order"]}
    headers = {} if count is None else {"x-envoy-attempt-count": count}
    r = lua.request(ctx, '{"messages":[]}', headers=headers, route="x")
    assert r.status == 503 and "failover_unknown_try" in r.response_body and "sk-p" not in str(r.headers)


def test_the_upstream_filter_is_one_router_filter_for_every_provider_cluster():
    """Failover tries are shaped by one Lua filter in the router's upstream_http_filters (its own
    EnvoyFilter, 1.31+ proxies only), not one per provider cluster; each pinned route lists its tries
    in the order of its weighted clusters, and failover hosts number their tries."""
    result = compile_text(FAILOVER, parse_options(istio_version="1.31")[0], "f.yaml")
    efs = {o["metadata"]["name"]: o for o in result.objects if o["kind"] == "EnvoyFilter"}
    patches = efs["llmc-failover"]["spec"]["configPatches"]
    assert {p["applyTo"] for p in patches} == {"HTTP_FILTER"}
    assert not [p for o in efs.values() for p in o["spec"]["configPatches"] if p["applyTo"] == "CLUSTER"]
    (router,) = {json.dumps(p["patch"]["value"]) for p in patches}
    assert router.count('"name": "llmc.upstream"') == 1 and "envoy.filters.http.upstream_codec" in router
    http = {h["name"]: h for o in result.objects if o["kind"] == "VirtualService" for h in o["spec"]["http"]}
    for ef in efs.values():
        for p in ef["spec"]["configPatches"]:
            ctx = (p["patch"]["value"].get("typed_per_filter_config") or {}).get("llmc.upstream")
            if ctx is None:
                continue
            route = http[p["match"]["routeConfiguration"]["vhost"]["route"]["name"]]
            assert [t["host"] for t in ctx["filter_context"]["tries"]] == [d["destination"]["host"] for d in route["route"]]
    assert any(p["patch"]["value"].get("include_request_attempt_count") for ef in efs.values()
               for p in ef["spec"]["configPatches"] if p["applyTo"] == "VIRTUAL_HOST")


# --- where failover crosses other features (issue 24) ---------------------------------------------

CROSSINGS = (TESTDATA / "e2e" / "failover-crossings.yaml").read_text()


def _compile_cross(text: str):
    opts, _ = parse_options(istio_version="1.31")
    return compile_text(text, opts, "cross.yaml")


def test_weights_compare_only_within_one_priority():
    """[{a, w50}, {b, w50}, {c, priority 1}]: c is a lone backup and needs no weight (it was weight 0,
    dropped, and attempts 3 was refused as more than the 2 backends left)."""
    result = _compile_cross(CROSSINGS)
    assert result.ok, [d.format() for d in result.diagnostics.sorted()]
    assert not [d for d in result.diagnostics.sorted() if d.code == "LLMC229"]
    vs = next(o for o in result.objects if o["kind"] == "VirtualService" and o["spec"]["hosts"] == ["cross.example.com"])
    weights = next(r for r in vs["spec"]["http"] if r["name"].endswith("/weights/p-one"))
    assert [d["destination"]["host"] for d in weights["route"]] == ["one.example.com", "two.example.com",
                                                                    "raw.example.com"]
    assert weights["retries"]["attempts"] == 2


def test_an_unset_weight_next_to_set_ones_still_counts_0_within_its_priority():
    before = "    - {providerHost: two.example.com, weight: 50}\n    - {providerHost: raw.example.com, priority: 1}"
    text = CROSSINGS.replace(before, before.replace(", weight: 50", ""))
    result = _compile_cross(text)
    assert ("LLMC229", "spec.rules[3].backendRefs[1]") in codes(result)
    assert not result.ok  # attempts 3 > the 2 backends left (p-two got weight 0)


def test_failover_providers_must_agree_on_base_path():
    text = CROSSINGS.replace("  path: /api/v1/chat/completions\n  basePath: /api/v1\n", "  path: /api/v1/chat/completions\n")
    result = _compile_cross(text)
    (diag,) = [d for d in result.diagnostics.sorted() if d.code == "LLMC235"]
    assert diag.path == "spec.rules[2].backendRefs" and "basePath" in diag.message and "p-base1" in diag.hint


def test_a_keyless_provider_on_a_failover_rule_is_warned_about():
    result = _compile_cross(CROSSINGS)
    assert ("LLMC239", "spec.rules[5].backendRefs[1]") in codes(result)
    assert not [d for d in result.diagnostics.sorted() if d.code == "LLMC239" and "rules[7]" in d.path]


def test_host_rewrite_with_a_key_is_warned_about():
    result = _compile_cross(CROSSINGS)
    assert ("LLMC240", "spec.rules[4].backendRefs[0].hostRewrite") in codes(result)
    assert ("LLMC240", "spec.rules[4].backendRefs[1].hostRewrite") in codes(result)
    keyless = CROSSINGS.replace("{providerHost: nokey.example.com, priority: 1}",
                                "{providerHost: nokey.example.com, priority: 1, hostRewrite: front.example.net}")
    assert not [d for d in _compile_cross(keyless).diagnostics.sorted() if d.code == "LLMC240" and "rules[5]" in d.path]


def test_every_route_removes_every_internal_header_and_other_providers_credential_headers():
    from compiler import names

    result = _compile_cross(CROSSINGS)
    vs = next(o for o in result.objects if o["kind"] == "VirtualService" and o["spec"]["hosts"] == ["cross.example.com"])
    routes = {r["name"].rsplit("/", 2)[-2] + "/" + r["name"].rsplit("/", 1)[-1]: r for r in vs["spec"]["http"]
              if "route" in r}
    for name, r in routes.items():
        removed = r["headers"]["request"]["remove"]
        assert set(names.INTERNAL_HEADERS) <= set(removed), name
    # a keyed provider: every credential header but its own; a keyless one: the client's pass
    assert set(routes["cross/single"]["headers"]["request"]["remove"]) >= {"x-api-key", "api-key", "x-gw-key"}
    assert "authorization" not in routes["cross/single"]["headers"]["request"]["remove"]
    assert not {"authorization", "x-api-key"} & set(routes["cross/open"]["headers"]["request"]["remove"])
    # a failover route: every credential header (each try sets its own upstream)
    assert {"authorization", "x-api-key", "api-key", "x-gw-key"} <= set(routes["gwfirst/p-gw"]["headers"]["request"]["remove"])


def test_each_try_of_a_failover_rule_removes_every_auth_header_of_the_rule_and_uses_its_host_rewrite():
    result = _compile_cross(CROSSINGS)
    text = "\n".join(str(o) for o in result.objects if o["kind"] == "EnvoyFilter")
    assert "'credential_headers': ['api-key', 'authorization', 'x-api-key', 'x-goog-api-key', 'x-gw-key']" in text
    assert "'authority': 'two-front.example.net'" in text


def test_a_try_after_a_try_that_rewrote_the_body_sends_its_own_content_length_and_the_clients_path():
    """The header map a later try sees holds what an earlier try set: Content-Length of that try's
    body, its path. A try whose shaped body is the client's own (no setBytes) must still set its own
    length; the endpoint and query come from the client's path (dynamic metadata), not the map."""
    import json

    from compiler.protocols import OPENAI
    from tests.support.lua import LuaFilter

    lua = LuaFilter()
    ctx = {"id": "t2", "route": "default/chat", "rule": "backup",
           "tries": [{"provider": "p-raw", "protocol": "openai", "host": "raw.example.com", "authority": "raw.example.com",
                      "path": "/raw/v1/chat/completions", "base_path": "/raw/v1", "weight": 1, "max_body": 1 << 20,
                      "api_key": "sk-raw"}],
           "protocols": {"openai": OPENAI.context()},
           "credential_headers": ["api-key", "authorization", "x-api-key", "x-gw-key"],
           "internal_headers": ["x-llmc-provider", "x-llmc-order"]}
    client = '{"model":"text-embedding-3-small","input":"hi"}'
    sent = {"x-gw-key": "sk-gw", "content-length": "999", ":authority": "gw.example.com", "x-envoy-attempt-count": "1"}
    md = {"llmc:client_path": "/v1/embeddings?trace=1", "llmc:failover": True}
    r = lua.request(ctx, client, headers=sent, path="/gw/v1/chat/completions", route="x", metadata=md)
    assert r.status is None, r.response_body
    assert r.headers["content-length"] == str(len(client)) and r.body == client
    assert r.headers[":path"] == "/raw/v1/embeddings?trace=1"
    assert r.headers["authorization"] == "Bearer sk-raw" and "x-gw-key" not in r.headers
    assert json.loads(r.body) == json.loads(client)


def test_explain_predicts_every_try_of_a_failover_embeddings_request():
    """explain runs each try as the upstream filter does, with the route's removals applied first
    and the downstream filter's metadata: try 2 serves the client's endpoint (was: chat, from try
    1's path), carries only its own credential header and its own length."""
    from compiler.explain import Request, explain

    objects = [o for o in _compile_cross(CROSSINGS).objects]
    body = b'{"model":"text-embedding-3-small","input":"hi"}'
    x = explain(objects, Request(host="cross.example.com", path="/v1/embeddings?trace=1",
                                 headers={"x-case": "endpoints", "x-gw-key": "sk-client", "x-llmc-order": "9"},
                                 body=body))
    first, second = x["attempts"]
    assert first["url"].endswith("base1.example.com/v1/embeddings?trace=1")
    assert second["url"].endswith("base2.example.com/api/v1/embeddings?trace=1")
    for up in (first, second):
        assert up["headers"]["content-length"] == str(len(body)) and up["body"] == body.decode()
        assert not [k for k in up["headers"] if k.startswith("x-llmc-") or k in ("x-gw-key", "x-api-key")]
        assert up["headers"]["authorization"].startswith("Bearer ")


def test_an_azure_provider_with_base_path_sends_its_api_version_to_every_endpoint():
    """Found by the crossing matrix: `<basePath>/embeddings` went to Azure without api-version. (The
    unquoted date `apiVersion: 2024-10-21` is the string the API server would read, not an error.)"""
    from compiler.options import parse_options as options
    from compiler.translate.envoyfilter import lua_context
    from tests.support.lua import LuaFilter

    text = """\
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {name: azure}
spec:
  host: res.openai.azure.com
  basePath: /openai/deployments/emb
  configs: {defaultConfig: {azureOpenAIConfig: {deployment: chat, apiVersion: 2024-10-21, apiKey: sk-azure-0000000000000000}}}
"""
    opts, _ = options()
    result = compile_text(text, opts, "azure.yaml")
    assert result.ok, [d.format() for d in result.diagnostics.sorted()]
    (vh,) = result.program.vhosts
    ctx = lua_context(vh, "/etc/llmc/secrets")
    r = LuaFilter().request(ctx, '{"model":"text-embedding-3-small","input":"hi"}', path="/v1/embeddings?x=1")
    assert r.status is None, r.response_body
    assert r.headers[":path"] == "/openai/deployments/emb/embeddings?api-version=2024-10-21"
    assert r.headers["api-key"] == "sk-azure-0000000000000000"


MIXED_FIRST_PRIORITY = """\
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {name: p-openai}
spec:
  host: openai.example.com
  path: /v1/chat/completions
  configs: {defaultConfig: {openAIConfig: {model: gpt-x, apiKey: sk-openai-00000000000000}}}
---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {name: p-gemini}
spec:
  host: gemini.example.com
  configs: {defaultConfig: {geminiConfig: {model: gemini-x, apiKey: sk-gemini-00000000000000}}}
---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {name: p-backup}
spec:
  host: backup.example.com
  path: /v1/chat/completions
  configs: {defaultConfig: {openAIConfig: {model: gpt-y, apiKey: sk-backup-00000000000000}}}
---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMRoute
metadata: {name: chat}
spec:
  host: chat.example.com
  rules:
  - backendRefs:
    - {providerHost: openai.example.com, weight: 50}
    - {providerHost: gemini.example.com, weight: 50}
    - {providerHost: backup.example.com, priority: 1}
    retries: {perTryTimeout: 2s}
"""


@pytest.mark.parametrize("picked, other", [("p-openai", "gemini"), ("p-gemini", "openai")])
def test_a_first_choice_not_picked_is_a_later_try_and_its_format_is_validated(picked, other):
    """First choices of mixed formats: the one not picked is the second try, so the request is
    validated for its format too (was: only formats no first choice speaks, so with OpenAI picked a
    request Gemini refuses went out, and its Gemini try got the client's OpenAI body at the path
    template; a stream's usage the client asked for was never asked of that translated try)."""
    from compiler.explain import Request, explain

    result = compile_text(MIXED_FIRST_PRIORITY, parse_options(istio_version="1.31")[0], "mixed.yaml")
    assert result.ok, [d.format() for d in result.diagnostics.sorted()]
    refused = b'{"model":"m","n":2,"messages":[{"role":"user","content":"hi"}]}'  # Gemini refuses n != 1
    x = explain(result.objects, Request(host="chat.example.com", body=refused), provider=picked)
    assert x["result"]["status"] == 400 and json.loads(x["result"]["body"])["error"]["param"] == "n", x
    ok = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
    x = explain(result.objects, Request(host="chat.example.com", body=ok), provider=picked)
    assert "result" not in x, x
    urls = [a["url"] for a in x["attempts"]]
    assert urls[1] == ("https://gemini.example.com/v1beta/models/gemini-x:generateContent" if other == "gemini"
                       else "https://openai.example.com/v1/chat/completions"), urls


SAME_FORMAT_MODEL = """\
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {name: p-first}
spec:
  host: first.example.com
  configs: {defaultConfig: {%(config)s: {model: %(model)s, apiKey: sk-first-000000000000000}}}
---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {name: p-backup}
spec:
  host: backup.example.com
  configs: {defaultConfig: {%(config)s: {apiKey: sk-backup-00000000000000}}}
---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMRoute
metadata: {name: chat}
spec:
  host: chat.example.com
  rules:
  - backendRefs:
    - {providerHost: first.example.com}
    - {providerHost: backup.example.com, priority: 1}
    retries: {perTryTimeout: 2s}
"""


@pytest.mark.parametrize("config, model, body", [
    ("anthropicConfig", "claude-x", b'{"messages":[{"role":"user","content":"hi"}]}'),
    ("geminiConfig", "gemini-x", b'{"messages":[{"role":"user","content":"hi"}]}'),
    ("geminiConfig", "gemini-x", b'{"model":"no such/model","messages":[{"role":"user","content":"hi"}]}'),
], ids=["anthropic-no-model", "gemini-no-model", "gemini-bad-model"])
def test_a_later_try_of_the_same_format_without_a_model_is_validated_too(config, model, body):
    """A translated format takes the model from the provider's config, else the client's: a first
    choice with a model accepts a request its backup of the same format (no model) must refuse. The
    request is validated for the backup too and refused (400, param model) before any try; before,
    the backup's try got the client's OpenAI body as it was, a request shaped for no provider."""
    from compiler.explain import Request, explain

    text = SAME_FORMAT_MODEL % {"config": config, "model": model}
    result = compile_text(text, parse_options(istio_version="1.31")[0], "same.yaml")
    assert result.ok, [d.format() for d in result.diagnostics.sorted()]
    x = explain(result.objects, Request(host="chat.example.com", body=body))
    assert x.get("result", {}).get("status") == 400, x
    assert json.loads(x["result"]["body"])["error"]["param"] == "model", x
    assert "attempts" not in x or x["attempts"] == [], x
    ok = body.replace(b'"no such/model"', b'"gemini-y"') if b"model" in body else \
        body.replace(b'{"messages"', b'{"model":"m-1","messages"')
    x = explain(result.objects, Request(host="chat.example.com", body=ok))
    assert "result" not in x and len(x["attempts"]) == 2, x


def test_a_try_whose_request_step_refuses_is_answered_never_sent_as_the_client_wrote_it():
    """The upstream filter's last guard: should a try's provider refuse what the downstream filter
    validated (it validates once per Driver.validation_key, so only a stale or hand-made context can
    get here), the try gets the OpenAI-format 400 a plain rule gives, not the client's OpenAI body
    at the provider's path template."""
    from compiler.protocols import ANTHROPIC, OPENAI
    from tests.support.lua import LuaFilter

    lua = LuaFilter()
    one = {"provider": "p-one", "protocol": "openai", "host": "one.example.com", "authority": "one.example.com",
           "path": "/v1/chat/completions", "weight": 1, "max_body": 1 << 20, "api_key": "sk-one"}
    two = {"provider": "p-two", "protocol": "anthropic", "format": "anthropic", "host": "two.example.com",
           "authority": "two.example.com", "path": "/v1/messages", "weight": 1, "max_body": 1 << 20,
           "api_key": "sk-two"}
    ctx = {"id": "t4", "route": "default/chat", "rule": "r", "tries": [one, two],
           "protocols": {"openai": OPENAI.context(), "anthropic": ANTHROPIC.context()},
           "credential_headers": ["authorization", "x-api-key"], "internal_headers": ["x-llmc-order"]}
    r = lua.request(ctx, '{"messages":[{"role":"user","content":"hi"}]}', headers={"x-envoy-attempt-count": "2"},
                    path="/v1/chat/completions", route="x")
    assert r.status == 400, (r.headers, r.body)
    error = json.loads(r.response_body)["error"]
    assert error["param"] == "model" and error["type"] == "invalid_request_error"
    assert "sk-two" not in str(r.headers)


BACKUP_LIMIT = """\
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {name: p-first}
spec:
  host: first.example.com
  path: /v1/chat/completions
  configs: {defaultConfig: {openAIConfig: {model: m-1, apiKey: sk-first-000000000000000}}}
---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {name: p-backup}
spec:
  host: backup.example.com
  path: /v1/chat/completions
  maxRequestBytes: 2048
  configs: {defaultConfig: {openAIConfig: {model: m-2, apiKey: sk-backup-00000000000000}}}
---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMRoute
metadata: {name: chat}
spec:
  host: chat.example.com
  rules:
  - %(matches)sbackendRefs:
    - {providerHost: first.example.com}
    - {providerHost: backup.example.com, priority: 1}
    retries: {perTryTimeout: 2s}
"""


@pytest.mark.parametrize("matches", ["", "matches: [{model: {prefix: m}}]\n    "], ids=["rule", "model-routed"])
def test_a_body_over_a_backups_limit_is_refused_before_any_try(matches):
    """maxRequestBytes is the largest body a provider is sent; on a failover rule any try may be
    sent the body, so the rule's limit is the smallest of its providers' (413 before any try). Was:
    only the first choice's limit was checked, and the backup's try carried a body over its own."""
    from compiler.explain import Request, explain

    result = compile_text(BACKUP_LIMIT % {"matches": matches}, parse_options(istio_version="1.31")[0], "lim.yaml")
    assert result.ok, [d.format() for d in result.diagnostics.sorted()]
    big = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * 4000}]}).encode()
    x = explain(result.objects, Request(host="chat.example.com", body=big))
    assert x.get("result", {}).get("status") == 413, x
    assert json.loads(x["result"]["body"])["error"]["code"] == "request_too_large"
    assert "2048 bytes" in json.loads(x["result"]["body"])["error"]["message"]
    assert not x.get("attempts"), x
    small = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * 1000}]}).encode()
    x = explain(result.objects, Request(host="chat.example.com", body=small))
    assert "result" not in x and len(x["attempts"]) == 2, x


BETA = """\
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {name: p-openai}
spec:
  host: openai.example.com
  path: /v1/chat/completions
  configs: {defaultConfig: {openAIConfig: {model: m-1, apiKey: sk-openai-00000000000000}}}
---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {name: p-claude}
spec:
  host: claude.example.com
  configs: {defaultConfig: {anthropicConfig: {model: claude-x, apiKey: sk-claude-00000000000000}}}
---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMRoute
metadata: {name: chat}
spec:
  host: chat.example.com
  rules:
  - backendRefs:
    - {providerHost: %s}
    - {providerHost: %s, priority: 1}
    retries: {perTryTimeout: 2s}
"""


@pytest.mark.parametrize("first, backup", [("openai.example.com", "claude.example.com"),
                                           ("claude.example.com", "openai.example.com")])
def test_a_keyed_anthropic_try_never_gets_the_clients_anthropic_beta(first, backup):
    """A client's anthropic-beta is removed before a keyed Anthropic provider (a beta feature is opted
    into with the platform's key and bill), on a failover rule too, first try or backup. Was: a
    plain rule's route removed it, a failover rule's did not, so every Anthropic try carried it."""
    from compiler.explain import Request, explain

    result = compile_text(BETA % (first, backup), parse_options(istio_version="1.31")[0], "beta.yaml")
    assert result.ok, [d.format() for d in result.diagnostics.sorted()]
    body = b'{"messages":[{"role":"user","content":"hi"}]}'
    x = explain(result.objects, Request(host="chat.example.com", body=body, headers={"anthropic-beta": "b-1"}))
    tries = {a["url"].split("/")[2]: a["headers"] for a in x["attempts"]}
    assert set(tries) == {"openai.example.com", "claude.example.com"}, x
    assert "anthropic-beta" not in tries["claude.example.com"], tries
