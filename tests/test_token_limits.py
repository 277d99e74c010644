"""Token limits in the compiler (issue 30): diagnostics, options, and the shape of the compiled
objects (the end-to-end proof through a real Envoy is tests/test_token_limits_e2e.py)."""

from __future__ import annotations

import json

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from compiler import Options, Severity, compile_text
from compiler.options import RateLimitOptions, parse_options
from compiler.translate.ratelimit import LIMIT_KEY
from compiler.translate.ratelimit import RATE_LIMIT_FILTER as FILTER_NAME
from tests.conftest import TESTDATA

RLS = RateLimitOptions(namespace="llmc-system", service="ratelimit", port=8081)
RLS_SERVICE = ("llmc-system", "ratelimit", 8081)  # Options.rate_limit_service: RLS as the options table holds it
GOLDEN_INPUT = (TESTDATA / "golden" / "token-limits.in.yaml").read_text()

PROVIDERS = """
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {name: openai}
spec:
  host: api.openai.com
  path: /v1/chat/completions
  configs: {defaultConfig: {openAIConfig: {authHeader: x-openai-key}}}
---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {name: qwen}
spec: {host: qwen.example.com, path: /v1/chat/completions}
"""


def route(limits: str, gateways: str = "", rule_extra: str = "") -> str:
    return PROVIDERS + f"""---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMRoute
metadata: {{name: chat}}
spec:
  host: {"'*'" if gateways else "api.openai.com"}
  {f"gateways: [{gateways}]" if gateways else ""}
  rules:
  - name: r
    backendRefs: [{{providerHost: api.openai.com}}]
    {rule_extra}
    tokenLimits: {limits}
"""


def diags(text: str, **opts) -> set[tuple[str, str, str]]:
    result = compile_text(text, Options(rate_limit_service=RLS_SERVICE, **opts))
    return {(d.code, d.severity.value, d.path) for d in result.diagnostics.items if d.severity is not Severity.NOTE}


def compiled(text: str = GOLDEN_INPUT, **opts) -> list[dict]:
    result = compile_text(text, Options(rate_limit_service=RLS_SERVICE, **opts))
    assert result.ok, result.diagnostics.format_text()
    return result.objects


@pytest.mark.parametrize("header", ["authorization", "Cookie", "proxy-authorization", "x-api-key", "api-key",
                                    "x-openai-key", "x-llmc-model", "x-llmc-provider"])
def test_credential_and_internal_headers_cannot_key_a_limit(header):
    got = diags(route(f"[{{name: a, tokens: 10, per: Minute, key: [{{header: {header}}}]}}]"))
    assert ("LLMC261", "error", "spec.rules[0].tokenLimits[0].key[0].header") in got


def test_a_plain_identity_header_is_accepted():
    assert diags(route("[{name: a, tokens: 10, per: Minute, key: [{header: x-user-id}]}]")) == set()


def test_tokens_beyond_uint32_and_duplicate_names():
    got = diags(route("[{name: a, tokens: 4294967296, per: Minute}, {name: a, tokens: 4294967295, per: Day}]"))
    assert got == {("LLMC264", "error", "spec.rules[0].tokenLimits[0].tokens"),
                   ("LLMC265", "error", "spec.rules[0].tokenLimits[1].name")}


def test_source_workload_in_egress_gateway_mode_is_an_error():
    got = diags(route("[{name: a, tokens: 10, per: Minute, key: [{sourceWorkload: true}]}]"),
                egress_gateway="istio-system/istio-egressgateway")
    assert ("LLMC262", "error", "spec.rules[0].tokenLimits[0].key[0].sourceWorkload") in got


def test_source_workload_on_a_gateway_is_a_warning():
    text = route("[{name: a, tokens: 10, per: Minute, key: [{sourceWorkload: true}]}]", gateways="llm/gw")
    text = text.replace("metadata: {name: openai}\nspec:\n",
                        "metadata: {name: openai}\nspec:\n  workloadSelector: {labels: {istio: ingressgateway}}\n")
    text = text.replace("spec: {host: qwen.example.com,", "spec: {workloadSelector: {labels: {istio: ingressgateway}}, "
                        "host: qwen.example.com,")
    got = diags(text)
    assert ("LLMC263", "warning", "spec.rules[0].tokenLimits[0].key[0].sourceWorkload") in got
    assert not [d for d in got if d[1] == "error"], got


def test_model_key_without_a_known_model_warns():
    got = diags(route("[{name: a, tokens: 10, per: Minute, key: [{model: true}]}]"))
    assert got == {("LLMC266", "warning", "spec.rules[0].tokenLimits[0].key")}


def test_provider_limits_are_checked_too():
    text = PROVIDERS.replace("spec: {host: qwen.example.com, path: /v1/chat/completions}",
                             "spec: {host: qwen.example.com, path: /v1/chat/completions, tokenLimits: "
                             "[{name: p, tokens: 10, per: Minute, key: [{header: authorization}]}]}")
    assert diags(text) == {("LLMC261", "error", "spec.tokenLimits[0].key[0].header")}


def test_options_parse_and_reject():
    opts, problems = parse_options(rate_limit_service="llmc-system/ratelimit:8081", rate_limit_timeout="250ms",
                                   rate_limit_fail_closed="true")
    assert problems == [] and opts.rate_limit == RateLimitOptions("llmc-system", "ratelimit", 8081, "0.25s", True)
    for kwargs, option in [({"rate_limit_service": "ratelimit:8081"}, "rate-limit-service"),
                           ({"rate_limit_service": "a/b:99999"}, "rate-limit-service"),
                           ({"rate_limit_service": "a/b:1", "rate_limit_timeout": "soon"}, "rate-limit-timeout"),
                           ({"rate_limit_fail_closed": True}, "rate-limit-fail-closed"),  # needs the service
                           ({"rate_limit_service": "a/b:1", "rate_limit_fail_closed": "maybe"}, "rate-limit-fail-closed")]:
        opts, problems = parse_options(**kwargs)
        assert opts is None and [p for p, _ in problems] == [option], (kwargs, problems)


def test_krm_function_config_keys(tmp_path):
    from compiler.diagnostics import Diagnostics
    from compiler.gitops import _function_options

    d = Diagnostics()
    opts, _ = _function_options({"rateLimitService": "llmc-system/ratelimit:8081", "rateLimitTimeout": "1s",
                                 "rateLimitFailClosed": "true"}, d, "fn.yaml")
    assert not d.items and opts.rate_limit == RateLimitOptions("llmc-system", "ratelimit", 8081, "1s", True)


def _per_route(objects: list[dict]) -> dict[str, dict]:
    out = {}
    for o in objects:
        if o["kind"] != "EnvoyFilter":
            continue
        for p in o["spec"]["configPatches"]:
            if p["applyTo"] == "HTTP_ROUTE":
                config = p["patch"]["value"].get("typed_per_filter_config", {}).get(FILTER_NAME)
                if config is not None:
                    out[p["match"]["routeConfiguration"]["vhost"]["route"]["name"]] = config
    return out


def test_every_final_route_and_only_those_carry_the_limits():
    per_route = _per_route(compiled())
    assert sorted(per_route) == [
        "llmc/platform/shared-openai/default",  # the provider's own host: the provider's limit
        "llmc/team-a/chat/default", "llmc/team-a/chat/per-user",
        # a weighted rule: its pinned routes (the entry route is a direct response)
        "llmc/team-a/chat/split/qwen", "llmc/team-a/chat/split/shared-openai",
        "llmc/team-a/models/any",  # keyed by the client's model
        "llmc/team-a/models/gpt",  # no limit of its own: the provider's
        "llmc/team-b/openai/rule-0",  # team-b reaches the platform provider: its limit
    ]
    pinned_openai = [e["actions"][0]["generic_key"]["descriptor_value"]
                     for e in per_route["llmc/team-a/chat/split/shared-openai"]["rate_limits"]]
    assert sorted(set(pinned_openai)) == ["provider/platform/shared-openai/provider-tpm", "route/team-a/chat/split/model-tpd"]


def test_each_limit_is_a_check_then_a_charge():
    for config in _per_route(compiled()).values():
        entries = config["rate_limits"]
        assert len(entries) % 2 == 0
        for check, charge in zip(entries[::2], entries[1::2], strict=True):
            assert check == {"actions": check["actions"], "hits_addend": {"number": 0}}
            assert charge["actions"] == check["actions"] and charge["apply_on_stream_done"] is True
            assert charge["hits_addend"]["format"].startswith("%CEL(") and charge["hits_addend"]["format"].endswith(")%")


def test_weights_reach_the_charge_expression():
    config = _per_route(compiled())["llmc/team-a/chat/per-user"]
    charges = {e["actions"][0]["generic_key"]["descriptor_value"]: e["hits_addend"]["format"]
               for e in config["rate_limits"] if e.get("apply_on_stream_done")}
    assert "uint(1.0 * metadata.filter_metadata.llmc.request_prompt_tokens + 4.0 * " in charges[
        "route/team-a/chat/per-user/user-tpm"]
    assert "uint(1.0 * metadata.filter_metadata.llmc.request_prompt_tokens + 1.0 * " in charges[
        "route/team-a/chat/per-user/audit"]


def test_limits_never_land_in_route_or_virtual_host_rate_limits():
    """Trap 1 (notes §2.2): Envoy drops hits_addend on RouteAction/VirtualHost rate_limits, so every
    call would count 1. Descriptors appear only in llmc.ratelimit's RateLimitPerRoute."""
    for o in compiled():
        for p in o.get("spec", {}).get("configPatches", []):
            value = dict(p["patch"]["value"])
            value.pop("typed_per_filter_config", None)
            assert "rate_limits" not in json.dumps(value), p


def test_the_configmap_holds_exactly_the_limits_the_routes_name():
    objects = compiled()
    (cm,) = [o for o in objects if o["kind"] == "ConfigMap"]
    assert cm["metadata"]["namespace"] == "llmc-system" and cm["metadata"]["name"] == "llmc-ratelimit-config"
    config = yaml.safe_load(cm["data"]["llmc.yaml"])
    assert config["domain"] == "llmc"
    in_config = {d["value"] for d in config["descriptors"] if d["key"] == LIMIT_KEY}
    in_routes = {e["actions"][0]["generic_key"]["descriptor_value"]
                 for c in _per_route(objects).values() for e in c["rate_limits"]}
    assert in_config == in_routes
    audit = next(d for d in config["descriptors"] if d["value"].endswith("/audit"))
    assert audit == {"key": LIMIT_KEY, "value": "route/team-a/chat/per-user/audit",
                     "rate_limit": {"unit": "hour", "requests_per_unit": 10}, "shadow_mode": True}


def test_output_is_deterministic_and_input_order_independent():
    docs = GOLDEN_INPUT.split("\n---\n")
    assert compiled() == compiled("\n---\n".join(reversed(docs)))


def test_no_rate_limit_service_means_no_rate_limit_objects():
    result = compile_text((TESTDATA / "golden" / "failover.in.yaml").read_text(), Options())
    text = json.dumps(result.objects)
    # (not the bare word: the failover Lua names Envoy's x-envoy-ratelimited, its final-answer mark)
    assert result.ok and not any(s in text for s in ("envoy.filters.http.ratelimit", "rate_limit_service",
                                                      '"rate_limits"', "llmc.ratelimit", "ratelimit.v3"))


def test_fail_closed_maps_the_service_failure():
    objects = compile_text(GOLDEN_INPUT, Options(rate_limit_service=RLS_SERVICE,
                                                 rate_limit_fail_closed=True)).objects
    text = json.dumps(objects)
    assert '"failure_mode_deny": true' in text and '"RLSE"' in text and "ServiceUnavailable" in text


# The filter's part (LuaJIT under lupa): on a limited rule it asks a streaming client's usage for the
# charge and drops the usage event the client did not ask for.

@pytest.fixture(scope="module")
def lua():
    from tests.support.lua import LuaFilter

    return LuaFilter()


def _ctx(**backend) -> dict:
    from tests.test_lua import ctx

    return ctx(**backend)


@pytest.mark.parametrize("body,asked,note", [
    ('{"messages":[],"stream":true}', True, True),  # streams, did not ask: llmc asks, and notes it
    ('{"messages":[],"stream":true,"stream_options":{"include_usage":false}}', False, False),  # chose
    ('{"messages":[],"stream":true,"stream_options":{"include_usage":true}}', True, False),  # asked itself
    ('{"messages":[]}', False, False),  # no stream: usage is in the answer
])
def test_limited_rules_ask_usage_for_streams(lua, body, asked, note):
    r = lua.request(_ctx(limit_usage=True), body)
    got = json.loads(r.body)
    assert (got.get("stream_options") == {"include_usage": True}) is asked
    assert (r.metadata.get("llmc:translate") == "openai+usage") is note


def test_unlimited_rules_do_not(lua):
    r = lua.request(_ctx(), '{"messages":[],"stream":true}')
    assert "stream_options" not in json.loads(r.body) and "llmc:translate" not in r.metadata


def _events(*objs) -> str:
    return "".join(f"data: {json.dumps(o, separators=(',', ':'))}\n\n" for o in objs) + "data: [DONE]\n\n"


@pytest.mark.parametrize("cut", [1, 7, 40, 1000])
def test_the_usage_event_is_dropped_however_the_stream_is_cut(lua, cut):
    chunk = {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "hi"}}],
             "usage": None}
    usage = {"id": "c", "object": "chat.completion.chunk", "choices": [], "usage": {"prompt_tokens": 11}}
    # Azure's first event has no choices either, and no usage: the client gets it as without llmc
    filters = {"id": "", "choices": [], "prompt_filter_results": [{"prompt_index": 0}], "usage": None}
    stream = _events(filters, chunk, chunk, usage)
    dropper = lua.M.new_usage_dropper()
    out = "".join(dropper.feed(stream[i:i + cut]) for i in range(0, len(stream), cut))
    assert out == _events(filters, chunk, chunk)


def test_deploy_ratelimit_is_valid_and_mounts_llmcs_configmap():
    """deploy/ratelimit: valid Kubernetes, the service mounts the ConfigMap llmc emits where its
    runtime loader reads it, with the watch settings that reload it without a restart, and Envoy's
    cluster for it speaks HTTP/2 (a grpc-* port)."""
    import kubernetes_validate
    from ruamel.yaml import YAML

    from compiler.translate.ratelimit import CONFIG_NAME
    from tests.conftest import REPO
    from tests.test_deploy import K8S_VERSION

    folder = REPO / "deploy" / "ratelimit"
    y = YAML(typ="safe")
    docs = [d for rel in y.load((folder / "kustomization.yaml").read_text())["resources"]
            for d in y.load_all((folder / rel).read_text()) if d]
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "config"]
    assert mount["mountPath"] == f"{env['RUNTIME_ROOT']}/{env['RUNTIME_SUBDIRECTORY']}/config"
    assert env["RUNTIME_WATCH_ROOT"] == "false" and env["RUNTIME_IGNOREDOTFILES"] == "true"
    # optional: the service starts before llmc (or the controller) has written its configuration
    assert pod["volumes"][0] == {"name": mount["name"], "configMap": {"name": CONFIG_NAME, "optional": True}}
    assert container["image"] != "envoyproxy/ratelimit:30a4ce1a"  # Istio's sample: before hits_addend
    service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "ratelimit")
    assert service["spec"]["ports"][0]["name"].startswith("grpc-") and service["spec"]["ports"][0]["port"] == 8081
    redis = next(d for d in docs if d["kind"] == "StatefulSet")
    assert "--appendonly" in redis["spec"]["template"]["spec"]["containers"][0]["args"]


# Property: whatever limits are written, each descriptor Envoy can send names a limit of the
# ConfigMap with exactly the ConfigMap's key path (envoyproxy/ratelimit applies a limit only at the
# depth of the descriptor), and every limit of the ConfigMap is reachable from some route.

PARTS = st.sampled_from(["{header: x-user-id}", "{header: x-team}", "{sourceWorkload: true}", "{model: true}"])
LIMIT = st.builds(lambda n, parts, per, shadow: (n, parts, per, shadow), st.integers(1, 4294967295),
                  st.lists(PARTS, max_size=3, unique=True), st.sampled_from(["Second", "Day", "Month", "Year"]),
                  st.booleans())


def _action_key(action: dict) -> str:
    (kind, spec), = action.items()
    return "source_cluster" if kind == "source_cluster" else spec["descriptor_key"]


def _config_paths(config: dict) -> dict[str, list[str]]:
    out = {}
    for d in config["descriptors"]:
        path, node = [], d
        while "descriptors" in node:
            node = node["descriptors"][0]
            path.append(node["key"])
        out[d["value"]] = path
    return out


@settings(max_examples=40, deadline=None)
@given(rule_limits=st.lists(LIMIT, max_size=3), provider_limits=st.lists(LIMIT, max_size=2))
def test_descriptors_and_configuration_agree(rule_limits, provider_limits):
    def yaml_limits(limits, prefix):
        return "[" + ", ".join(f"{{name: {prefix}{i}, tokens: {n}, per: {per}, key: [{', '.join(parts)}], "
                               f"mode: {'Shadow' if shadow else 'Enforce'}}}"
                               for i, (n, parts, per, shadow) in enumerate(limits)) + "]"

    text = f"""
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {{name: p}}
spec: {{host: p.example.com, path: /v1/chat/completions, tokenLimits: {yaml_limits(provider_limits, "p")}}}
---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {{name: q}}
spec: {{host: q.example.com, path: /v1/chat/completions, configs: {{defaultConfig: {{openAIConfig: {{model: m}}}}}}}}
---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMRoute
metadata: {{name: r}}
spec:
  host: r-gateway
  rules:
  - name: by-model
    matches: [{{model: {{prefix: gpt}}}}]
    backendRefs: [{{providerHost: p.example.com}}]
    tokenLimits: {yaml_limits(rule_limits, "r")}
  - name: split
    backendRefs: [{{providerHost: p.example.com}}, {{providerHost: q.example.com}}]
    tokenLimits: {yaml_limits(rule_limits, "s")}
"""
    objects = compiled(text)
    (cm,) = [o for o in objects if o["kind"] == "ConfigMap"]
    paths = _config_paths(yaml.safe_load(cm["data"]["llmc.yaml"]))
    reached = set()
    for config in _per_route(objects).values():
        for entry in config["rate_limits"]:
            head, *rest = entry["actions"]
            limit = head["generic_key"]["descriptor_value"]
            assert [_action_key(a) for a in rest] == paths[limit], (limit, entry)
            reached.add(limit)
    assert reached == set(paths)


def test_explain_and_mounts_take_the_options_and_explain_shows_the_usage_asked():
    """The other commands that compile take the options (else LLMC260); `llmc explain` shows the body
    a limited rule sends for a stream whose client did not ask for usage."""
    from typer.testing import CliRunner

    from compiler.cli import app
    from tests.conftest import REPO

    source = str((TESTDATA / "e2e" / "token-limits.yaml").relative_to(REPO))
    args = ["-f", source, "--rate-limit-service", "llmc-system/ratelimit:8081"]
    without = CliRunner().invoke(app, ["mounts", "-f", source])
    assert without.exit_code == 1 and "LLMC260" in without.stderr
    assert CliRunner().invoke(app, ["mounts", *args]).exit_code == 0
    res = CliRunner().invoke(app, ["explain", *args, "--host", "chat-gateway", "--namespace", "team-a",
                                   "-H", "x-tier: free", "-d", '{"model":"x","messages":[],"stream":true}'])
    assert res.exit_code == 0, res.stderr
    assert '"stream_options":{"include_usage":true}' in res.stdout.replace(" ", "")
