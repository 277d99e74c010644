"""Several API keys per provider (issue 33; docs/api-keys.md): the API and its checks, the round-robin
order, the filter's choice per request (under LuaJIT with the emulated handle), rotation of each key's
mounted file, attribution (``llmc:api_key_id``), and that no key is ever printed. The same in real
Envoy: tests/test_several_keys_e2e.py."""

from __future__ import annotations

import collections
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ruamel.yaml import YAML
from typer.testing import CliRunner

from compiler import Options, compile_text
from compiler.emit import dump_yaml
from compiler.keys import round_robin_order
from compiler.protocols import DEFAULT_PROTOCOL, DRIVERS
from compiler.telemetry import (
    GENAI_ACCESS_LOG,
    GENAI_REQUEST_TAGS,
    LEGACY_ACCESS_LOG,
    LEGACY_REQUEST_TAGS,
    genai_metrics,
    legacy_metrics,
)
from compiler.translate.envoyfilter import FAILOVER_PROXY_VERSION
from tests.support.flow import to_flow
from tests.support.lua import LuaFilter

runner = CliRunner()
KEYS = ["sk-several-one-0000000001", "sk-several-two-0000000002", "sk-several-three-000000003"]
CHAT = '{"messages":[{"role":"user","content":"hi"}]}'


@pytest.fixture(scope="module")
def lua() -> LuaFilter:
    return LuaFilter()


def provider(config: dict, route_specific: dict | None = None) -> dict:
    configs: dict = {"defaultConfig": {"openAIConfig": {"model": "m", **config}}}
    if route_specific is not None:
        configs["routeSpecificConfigs"] = {"vip": {"openAIConfig": route_specific}}
    return {"apiVersion": "istio.alibabacloud.com/v1beta1", "kind": "LLMProvider",
            "metadata": {"name": "p", "namespace": "apps"},
            "spec": {"host": "p.example.com", "path": "/v1/chat/completions", "configs": configs}}


def route() -> dict:
    return {"apiVersion": "istio.alibabacloud.com/v1beta1", "kind": "LLMRoute",
            "metadata": {"name": "r", "namespace": "apps"},
            "spec": {"host": "p.example.com", "rules": [
                {"name": "vip", "matches": [{"headers": {"x-tier": {"exact": "vip"}}}],
                 "backendRefs": [{"providerHost": "p.example.com"}]},
                {"name": "default", "backendRefs": [{"providerHost": "p.example.com"}]}]}}


def compiled(*docs: dict):
    return compile_text("\n---\n".join(to_flow(d) for d in docs), Options())


def contexts(*docs: dict) -> dict:
    """The virtual host's filter context of the compiled input."""
    result = compiled(*docs)
    assert result.ok, result.diagnostics.format_text()
    objects = list(YAML(typ="safe").load_all(dump_yaml(result.objects)))
    patch = next(o for o in objects if o["kind"] == "EnvoyFilter" and o["metadata"]["name"] != "llmc-filter")
    return patch["spec"]["configPatches"][0]["patch"]["value"]["typed_per_filter_config"]["llmc.lua"]["filter_context"]


def codes(result) -> list[tuple[str, str]]:
    return [(d.code, d.path) for d in result.diagnostics.items]


# ---- the round-robin order (compiler/keys.py) ---------------------------------------------------

def test_round_robin_order_interleaves_by_weight():
    assert round_robin_order([1, 1, 1]) == [0, 1, 2]
    assert round_robin_order([2, 1, 1]) == [0, 1, 2, 0]
    assert round_robin_order([3, 1]) == [0, 0, 1, 0]
    assert round_robin_order([10, 20]) == [1, 0, 1]  # reduced by the weights' gcd
    with pytest.raises(ValueError):
        round_robin_order([1, 0])


@given(st.lists(st.integers(1, 100), min_size=1, max_size=16))
def test_round_robin_order_gives_each_key_its_share(weights):
    order = round_robin_order(weights)
    total = sum(weights)
    counts = collections.Counter(order)
    for i, w in enumerate(weights):
        assert counts[i] * total == w * len(order)
    # smooth: within any prefix no key is ahead of its exact share by a whole turn
    seen = collections.Counter()
    for n, k in enumerate(order, 1):
        seen[k] += 1
        assert seen[k] - n * weights[k] / total < 1 + 1e-9


# ---- the API and its checks ---------------------------------------------------------------------

def test_two_key_forms_in_one_config_is_a_located_error():
    result = compiled(provider({"apiKeys": KEYS[:2], "apiKeySecretRef": {"name": "s", "key": "k"}}), route())
    assert not result.ok
    assert ("LLMC211", "spec.configs.defaultConfig.openAIConfig.apiKeySecretRef") in codes(result)
    assert not result.objects


def test_a_key_listed_twice_is_an_error():
    result = compiled(provider({"apiKeys": [KEYS[0], KEYS[1], KEYS[0]]}), route())
    assert ("LLMC250", "spec.configs.defaultConfig.openAIConfig.apiKeys[2]") in codes(result)
    text = result.diagnostics.format_text()
    assert KEYS[0] not in text and KEYS[1] not in text
    refs = [{"name": "s", "key": "a"}, {"name": "s", "key": "b", "weight": 3}, {"name": "s", "key": "a"}]
    result = compiled(provider({"apiKeySecretRefs": refs}), route())
    assert ("LLMC250", "spec.configs.defaultConfig.openAIConfig.apiKeySecretRefs[2]") in codes(result)


def test_key_selection_with_one_key_warns():
    result = compiled(provider({"apiKeySecretRef": {"name": "s", "key": "a"}, "keySelection": "Weighted"}), route())
    assert result.ok and ("LLMC251", "spec.configs.defaultConfig.openAIConfig.keySelection") in codes(result)


def test_literal_keys_warn_each_and_never_print():
    result = compiled(provider({"apiKeys": KEYS}), route())
    assert result.ok
    assert [p for c, p in codes(result) if c == "LLMC215"] == [
        f"spec.configs.defaultConfig.openAIConfig.apiKeys[{i}]" for i in range(3)]
    assert not any(k in result.diagnostics.format_text() for k in KEYS)


def test_weights_must_be_positive_and_bounded():
    for weight in (0, 101):
        refs = [{"name": "s", "key": "a", "weight": weight}, {"name": "s", "key": "b"}]
        assert not compiled(provider({"apiKeySecretRefs": refs}), route()).ok


def test_context_of_secret_keys_round_robin_and_weighted():
    refs = [{"name": "keys", "key": "a", "weight": 2}, {"name": "keys", "key": "b"}]
    ctx = contexts(provider({"apiKeySecretRefs": refs}), route())
    b = ctx["rules"]["default"]["backends"][0]
    assert "api_key_file" not in b and "api_key" not in b
    assert b["keys"] == [{"api_key_file": "/etc/llmc/secrets/keys/a", "weight": 2, "id": "0"},
                         {"api_key_file": "/etc/llmc/secrets/keys/b", "weight": 1, "id": "1"}]
    assert b["key_order"] == [1, 2, 1] and "key_selection" not in b
    ctx = contexts(provider({"apiKeySecretRefs": refs, "keySelection": "Weighted"}), route())
    b = ctx["rules"]["default"]["backends"][0]
    assert b["key_selection"] == "Weighted" and "key_order" not in b


def test_route_specific_list_replaces_the_default_list():
    ctx = contexts(provider({"apiKeys": KEYS[:2]}, {"apiKeys": [KEYS[2]]}), route())
    vip = ctx["rules"]["vip"]["backends"][0]
    assert [k["api_key"] for k in vip["keys"]] == [KEYS[2]]
    default = ctx["rules"]["default"]["backends"][0]
    assert [k["api_key"] for k in default["keys"]] == KEYS[:2]
    # a single key in the route-specific config replaces the list too; a config without a key keeps it
    ctx = contexts(provider({"apiKeys": KEYS[:2]}, {"apiKeySecretRef": {"name": "s", "key": "vip"}}), route())
    assert ctx["rules"]["vip"]["backends"][0]["api_key_file"] == "/etc/llmc/secrets/s/vip"
    assert "keys" not in ctx["rules"]["vip"]["backends"][0]
    ctx = contexts(provider({"apiKeys": KEYS[:2]}, {"model": "vip-model"}), route())
    assert [k["api_key"] for k in ctx["rules"]["vip"]["backends"][0]["keys"]] == KEYS[:2]


@pytest.mark.parametrize("field", sorted(d.config_field for n, d in DRIVERS.items() if n != DEFAULT_PROTOCOL))
def test_every_protocol_takes_several_keys(field):
    """Every driver's config has the four key forms (a new protocol joins by itself: Gemini did)."""
    doc = provider({})
    doc["spec"]["configs"]["defaultConfig"] = {field: {"apiKeySecretRefs": [{"name": "s", "key": "a"},
                                                                            {"name": "s", "key": "b"}]}}
    if field == "azureOpenAIConfig":
        doc["spec"]["configs"]["defaultConfig"][field]["deployment"] = "d"
    del doc["spec"]["path"]
    b = contexts(doc, route())["rules"]["default"]["backends"][0]
    assert [k["id"] for k in b["keys"]] == ["0", "1"]


# ---- the filter's choice (templates/lua/llmc/keys.lua) -----------------------------------------

def _authorizations(lua: LuaFilter, ctx: dict, n: int) -> list[tuple[str, str]]:
    out = []
    for _ in range(n):
        r = lua.request(ctx, CHAT)
        assert r.status is None, r.response_body
        out.append((r.headers["authorization"], r.metadata["llmc:api_key_id"]))
    return out


def test_round_robin_spreads_exactly_by_weight_and_attributes(lua):
    ctx = contexts(provider({"apiKeys": KEYS}), route())  # literal keys: the request shows them
    got = _authorizations(lua, ctx, 9)
    assert got == [(f"Bearer {KEYS[i % 3]}", str(i % 3)) for i in range(9)]


def test_weighted_spreads_within_tolerance(lua):
    lua.lua.execute("math.randomseed(33)")
    ctx = contexts(provider({"apiKeys": KEYS, "keySelection": "Weighted"}), route())
    n = 3000
    counts = collections.Counter(k for k, _ in _authorizations(lua, ctx, n))
    for key in KEYS:  # each key 1/3; 5 sigma of a binomial(3000, 1/3) is about 129
        assert abs(counts[f"Bearer {key}"] - n / 3) < 130, counts


def test_each_keys_file_rotates_on_its_own(lua, tmp_path):
    files = [tmp_path / "a", tmp_path / "b"]
    files[0].write_text("sk-a-1\n")
    files[1].write_text("sk-b-1")
    ks = lua.module("keys").prepare(lua.table({"keys": [{"id": "0", "api_key_file": str(files[0])},
                                                        {"id": "1", "api_key_file": str(files[1])}],
                                               "key_order": [1, 2]}))
    first, second = ks.list[1], ks.list[2]
    now = 1_000_000
    assert (lua.M.api_key(first, now), lua.M.api_key(second, now)) == ("sk-a-1", "sk-b-1")
    files[1].write_text("sk-b-2\n")
    assert lua.M.api_key(second, now) == "sk-b-1"  # cached within the TTL
    assert (lua.M.api_key(first, now + 1), lua.M.api_key(second, now + 1)) == ("sk-a-1", "sk-b-2")
    keys = lua.module("keys")
    assert [keys.choose(ks, 0.5).id for _ in range(4)] == ["0", "1", "0", "1"]


def test_a_missing_key_file_is_a_503_naming_no_key(lua, tmp_path):
    (tmp_path / "a").write_text("sk-present")
    ctx = contexts(provider({"apiKeySecretRefs": [{"name": "x", "key": "a"}, {"name": "x", "key": "b"}]}), route())
    for k in (k for rule in ctx["rules"].values() for k in rule["backends"][0]["keys"]):
        k["api_key_file"] = str(tmp_path / k["api_key_file"].rsplit("/", 1)[-1])
    ctx["id"] = "missing-file-" + ctx["id"]
    replies = [lua.request(ctx, CHAT) for _ in range(2)]
    assert replies[0].status is None and replies[0].headers["authorization"] == "Bearer sk-present"
    assert replies[1].status == 503
    assert json.loads(replies[1].response_body)["error"]["code"] == "api_key_unavailable"
    assert replies[1].metadata["llmc:api_key_id"] == "1"


def test_one_key_records_no_key_id(lua):
    ctx = contexts(provider({"apiKey": KEYS[0]}), route())
    r = lua.request(ctx, CHAT)
    assert r.headers["authorization"] == f"Bearer {KEYS[0]}" and "llmc:api_key_id" not in r.metadata


# ---- attribution and what is printed ------------------------------------------------------------

def test_key_id_is_an_access_log_field_and_a_metric_dimension():
    for log in (GENAI_ACCESS_LOG, LEGACY_ACCESS_LOG):
        assert log["llm_api_key_id"] == "%DYNAMIC_METADATA(llmc:api_key_id)%"
    for tags in (GENAI_REQUEST_TAGS, LEGACY_REQUEST_TAGS):
        assert "api_key_id" in tags["llm_api_key_id"]
    for metric in genai_metrics() + legacy_metrics():
        assert "api_key_id" in metric.dimensions["llm_api_key_id"], metric.definition


def _app():
    from compiler.cli import app

    return app


def test_no_output_prints_a_key_and_explain_shows_the_choice(tmp_path):
    f = tmp_path / "in.yaml"
    f.write_text("\n---\n".join(to_flow(d) for d in (provider({"apiKeys": KEYS}), route())))
    for args in (["render", "-f", str(f), "--emit", "ir"], ["validate", "-f", str(f)],
                 ["validate", "-f", str(f), "-o", "json"]):
        res = runner.invoke(_app(), args)
        assert res.exit_code == 0, res.stderr
        assert not any(k in res.stdout + res.stderr for k in KEYS), args
    explain = ["explain", "-f", str(f), "--namespace", "apps", "--host", "p.example.com", "-d", CHAT]
    res = runner.invoke(_app(), [*explain, "-o", "json"])
    assert res.exit_code == 0, res.stdout + res.stderr
    assert not any(k in res.stdout + res.stderr for k in KEYS)
    out = json.loads(res.stdout)
    assert out["api_key_id"] in ("0", "1", "2")
    text = runner.invoke(_app(), explain).stdout
    assert "api key: #" in text and not any(k in text for k in KEYS)


# ---- retrying with the next key (retryKeysOn) ---------------------------------------------------

def failover_route() -> dict:
    backup = {"apiVersion": "istio.alibabacloud.com/v1beta1", "kind": "LLMProvider",
              "metadata": {"name": "b", "namespace": "apps"},
              "spec": {"host": "b.example.com", "path": "/v1/chat/completions",
                       "configs": {"defaultConfig": {"openAIConfig": {"apiKeySecretRef": {"name": "s", "key": "b"}}}}}}
    rt = route()
    rt["spec"]["rules"] = [{"name": "default", "retries": {}, "backendRefs": [
        {"providerHost": "p.example.com"}, {"providerHost": "b.example.com", "priority": 1}]}]
    return backup, rt


def _objects(result) -> list[dict]:
    return list(YAML(typ="safe").load_all(dump_yaml(result.objects)))


def test_retry_keys_on_a_failover_rule_gives_each_key_a_try_before_the_next_provider():
    """Issue 33: the provider with retryKeysOn owns one try per key, each its own cluster (a subset),
    before the backup; Envoy retries the union of retryOn and retryKeysOn; the rule's attempts count
    providers, so the route may make keys + 1 tries."""
    backup, rt = failover_route()
    rt["spec"]["rules"][0]["retries"] = {"retryOn": ["5xx"]}
    result = compiled(provider({"apiKeys": KEYS, "retryKeysOn": [429, 401]}), backup, rt)
    assert result.ok, result.diagnostics.format_text()
    objects = _objects(result)
    (dr,) = [o for o in objects if o["kind"] == "DestinationRule" and o["spec"]["host"] == "p.example.com"]
    assert [s["name"] for s in dr["spec"]["subsets"]] == ["llmc-key-2", "llmc-key-3"]
    assert all("labels" not in s for s in dr["spec"]["subsets"])
    routes = [r for o in objects if o["kind"] == "VirtualService" for r in o["spec"]["http"] if "retries" in r]
    (pinned,) = routes
    assert [(d["destination"]["host"], d["destination"].get("subset")) for d in pinned["route"]] == [
        ("p.example.com", None), ("p.example.com", "llmc-key-2"), ("p.example.com", "llmc-key-3"),
        ("b.example.com", None)]
    assert [d["weight"] for d in pinned["route"]] == [97, 1, 1, 1]
    assert pinned["retries"]["attempts"] == 3 and pinned["retries"]["retryOn"] == "401,429,5xx"
    patches = [p for o in objects if o["kind"] == "EnvoyFilter" for p in o["spec"]["configPatches"]]
    (ctx,) = [c["filter_context"] for p in patches if p["applyTo"] == "HTTP_ROUTE"
              for c in p["patch"]["value"].get("typed_per_filter_config", {}).values() if "tries" in c.get("filter_context", {})]
    assert ctx["slots"] == [1, 1, 1, 2] and ctx["retry_on"] == {"5xx": True, "statuses": []}
    assert ctx["tries"][0]["key_retry"] == [401, 429] and "key_retry" not in ctx["tries"][1]
    # no plain key-retry patch on a failover rule: its tries carry the keys
    assert not [p for p in patches if "retry_policy" in p["patch"]["value"].get("route", {})
                and "num_retries" in p["patch"]["value"]["route"]["retry_policy"]]


def test_attempts_count_providers_and_key_slots_come_on_top():
    backup, rt = failover_route()
    rt["spec"]["rules"][0]["retries"] = {"attempts": 1}
    result = compiled(provider({"apiKeys": KEYS, "retryKeysOn": [429]}), backup, rt)
    assert result.ok, result.diagnostics.format_text()
    (pinned,) = [r for o in _objects(result) if o["kind"] == "VirtualService" for r in o["spec"]["http"]
                 if "retries" in r]
    assert pinned["retries"]["attempts"] == 2  # the provider's three keys, never the backup


def test_a_failover_rule_without_retry_keys_on_is_unchanged():
    backup, rt = failover_route()
    result = compiled(provider({"apiKeys": KEYS}), backup, rt)
    objects = _objects(result)
    assert not [o for o in objects if o["kind"] == "DestinationRule" and o["spec"].get("subsets")]
    patches = [p for o in objects if o["kind"] == "EnvoyFilter" for p in o["spec"]["configPatches"]]
    ctxs = [c["filter_context"] for p in patches if p["applyTo"] == "HTTP_ROUTE"
            for c in p["patch"]["value"].get("typed_per_filter_config", {}).values() if "tries" in c.get("filter_context", {})]
    assert ctxs and all("slots" not in c for c in ctxs)


def test_retry_keys_on_needs_istio_1_31():
    text = "\n---\n".join(to_flow(d) for d in (provider({"apiKeys": KEYS, "retryKeysOn": [429]}), route()))
    result = compile_text(text, Options(istio_version="1.30"))
    assert ("LLMC253", "spec.rules[0].backendRefs[0]") in codes(result) and not result.objects


def test_retry_keys_on_with_one_key_warns():
    result = compiled(provider({"apiKey": KEYS[0], "retryKeysOn": [429]}), route())
    assert result.ok and ("LLMC251", "spec.configs.defaultConfig.openAIConfig.retryKeysOn") in codes(result)


def test_key_retry_patches_are_for_istio_1_31_proxies():
    result = compiled(provider({"apiKeys": KEYS, "retryKeysOn": [429, 401, 429]}), route())
    assert result.ok, result.diagnostics.format_text()
    objects = list(YAML(typ="safe").load_all(dump_yaml(result.objects)))
    patches = [p for o in objects if o["kind"] == "EnvoyFilter" for p in o["spec"]["configPatches"]]
    retry = [p for p in patches if p["applyTo"] == "HTTP_ROUTE" and "route" in p["patch"]["value"]]
    assert sorted(p["match"]["routeConfiguration"]["vhost"]["route"]["name"] for p in retry) == [
        "llmc/apps/r/default", "llmc/apps/r/vip"]
    for p in retry:
        assert p["match"]["proxy"]["proxyVersion"] == FAILOVER_PROXY_VERSION
        policy = p["patch"]["value"]["route"]["retry_policy"]
        assert policy["retriable_status_codes"] == [401, 429] and policy["num_retries"] == 2
        (ctx,) = [c["filter_context"] for c in p["patch"]["value"]["typed_per_filter_config"].values()]
        assert [k["id"] for k in ctx["key_retry"]["keys"]] == ["0", "1", "2"]
    # the upstream filter that chooses each retry's key: in the router (llmc-failover, Istio >= 1.31)
    (upstream,) = [o for o in objects if o["kind"] == "EnvoyFilter" and o["metadata"]["name"] == "llmc-failover"]
    (router,) = upstream["spec"]["configPatches"]
    assert router["match"]["proxy"]["proxyVersion"] == FAILOVER_PROXY_VERSION
    filters = router["patch"]["value"]["typed_config"]["upstream_http_filters"]
    assert [f["name"] for f in filters] == ["llmc.upstream", "envoy.filters.http.upstream_codec"]


def _on_try(lua: LuaFilter, ctx: dict, metadata: dict) -> tuple[str | None, dict]:
    r = lua.request(ctx, CHAT, headers={"authorization": "Bearer earlier-try"}, metadata=metadata)
    assert r.status is None
    return r.headers.get("authorization"), r.metadata


def test_each_retry_takes_the_next_key_not_used_and_never_one_used(lua, tmp_path):
    result = compiled(provider({"apiKeys": KEYS, "retryKeysOn": [429]}), route())
    objects = list(YAML(typ="safe").load_all(dump_yaml(result.objects)))
    ctx = next(c["filter_context"] for o in objects if o["kind"] == "EnvoyFilter"
               for p in o["spec"]["configPatches"] if p["applyTo"] == "HTTP_ROUTE"
               for c in (p["patch"]["value"].get("typed_per_filter_config") or {}).values()
               if "key_retry" in c.get("filter_context", {}))
    ctx["routes"] = {"x": "x"}  # LuaFilter's default route name only
    # the first try keeps the downstream filter's key and records it
    auth, md = _on_try(lua, ctx, {"llmc:api_key_id": "1"})
    assert auth == "Bearer earlier-try" and md["llmc:keys_tried"] == ",1,"
    # retries: the next keys after the first, in list order, each once
    auth, md = _on_try(lua, ctx, {"llmc:api_key_id": "1", "llmc:keys_tried": ",1,"})
    assert auth == f"Bearer {KEYS[2]}" and md["llmc:keys_tried"] == ",1,2," and md["llmc:api_key_id"] == "2"
    auth, md = _on_try(lua, ctx, {"llmc:api_key_id": "2", "llmc:keys_tried": ",1,2,"})
    assert auth == f"Bearer {KEYS[0]}" and md["llmc:keys_tried"] == ",1,2,0,"
    # every key used: the try goes without a key rather than with one that failed
    auth, md = _on_try(lua, ctx, {"llmc:api_key_id": "0", "llmc:keys_tried": ",1,2,0,"})
    assert auth is None


def test_a_retry_skips_a_key_whose_file_is_missing(lua, tmp_path):
    (tmp_path / "c").write_text("sk-file-c")
    refs = [{"name": "x", "key": k} for k in "abc"]
    result = compiled(provider({"apiKeySecretRefs": refs, "retryKeysOn": [429]}), route())
    objects = list(YAML(typ="safe").load_all(dump_yaml(result.objects)))
    ctx = next(c["filter_context"] for o in objects if o["kind"] == "EnvoyFilter"
               for p in o["spec"]["configPatches"] if p["applyTo"] == "HTTP_ROUTE"
               for c in (p["patch"]["value"].get("typed_per_filter_config") or {}).values()
               if "key_retry" in c.get("filter_context", {}))
    for k in ctx["key_retry"]["keys"]:
        k["api_key_file"] = str(tmp_path / k["api_key_file"].rsplit("/", 1)[-1])
    ctx["id"], ctx["routes"] = "missing-" + ctx["id"], {"x": "x"}
    auth, md = _on_try(lua, ctx, {"llmc:api_key_id": "0", "llmc:keys_tried": ",0,"})
    assert auth == "Bearer sk-file-c" and md["llmc:keys_tried"] == ",0,1,2,"


def test_explain_shows_the_key_retry_of_the_route(tmp_path):
    f = tmp_path / "in.yaml"
    f.write_text("\n---\n".join(to_flow(d) for d in (provider({"apiKeys": KEYS, "retryKeysOn": [402, 429]}), route())))
    explain = ["explain", "-f", str(f), "--namespace", "apps", "--host", "p.example.com", "-d", CHAT]
    out = json.loads(runner.invoke(_app(), [*explain, "-o", "json"]).stdout)
    assert out["key_retry"] == {"on": [402, 429], "retries": 2}
    text = runner.invoke(_app(), explain).stdout
    assert "key retry: on 402, 429 the provider's next unused key, up to 2 more tries" in text
    assert not any(k in text for k in KEYS)


def test_diff_names_several_keys_by_secret_or_fingerprint():
    from compiler.diff import _key_identity

    protocols = {"openai": {"auth_header": "authorization"}}
    ctx = contexts(provider({"apiKeySecretRefs": [{"name": "s", "key": "a", "weight": 3}, {"name": "s", "key": "b"}],
                             "keySelection": "Weighted"}), route())
    text = _key_identity(ctx["rules"]["default"]["backends"][0], protocols)
    assert text == "Weighted over [Secret s, key a (weight 3); Secret s, key b (weight 1)] in authorization"
    ctx = contexts(provider({"apiKeys": KEYS[:2]}), route())
    text = _key_identity(ctx["rules"]["default"]["backends"][0], protocols)
    assert text.startswith("RoundRobin over [literal apiKey sha256:") and not any(k in text for k in KEYS)


# ---- the ambient target (a waypoint's TrafficExtension) -----------------------------------------

def test_several_keys_on_a_waypoint_and_no_key_retry_there():
    from compiler.options import parse_options

    ambient, _ = parse_options(target="ambient")
    refs = [{"name": "s", "key": "a", "weight": 2}, {"name": "s", "key": "b"}]
    text = "\n---\n".join(to_flow(d) for d in (provider({"apiKeySecretRefs": refs}), route()))
    result = compile_text(text, ambient)
    assert result.ok, result.diagnostics.format_text()
    assert ("LLMC277", "spec.configs") in codes(result)  # the waypoint mounts the Secret
    (ext,) = [o for o in result.objects if o["kind"] == "TrafficExtension"]
    code = json.dumps(ext)
    assert "/etc/llmc/secrets/s/a" in code and "/etc/llmc/secrets/s/b" in code and "key_order" in code
    text = "\n---\n".join(to_flow(d) for d in (provider({"apiKeySecretRefs": refs, "retryKeysOn": [429]}), route()))
    result = compile_text(text, ambient)
    assert ("LLMC254", "spec.configs") in codes(result) and not result.objects
