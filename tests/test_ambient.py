"""The ambient target (docs/ambient.md) without Envoy: the settings, the checks that refuse what a
waypoint cannot do (each located), the TrafficExtension's size limit, the Lua data serializer
(round-tripped through LuaJIT), namespaces, determinism and Istio's CRD schemas. End to end on a
real Envoy laid out as a waypoint: tests/test_ambient_e2e.py."""

from __future__ import annotations

import json
import random
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lupa import luajit21

from compiler import Options, compile_text
from compiler.diagnostics import Severity
from compiler.luadata import lua_key, lua_string, lua_value
from compiler.options import parse_options
from compiler.translate.trafficextension import INLINE_CODE_LIMIT, bundle, route_index, route_table

AMBIENT, _ = parse_options(target="ambient")

PROVIDER = """\
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {{name: {name}, namespace: {ns}}}
spec:
  host: {host}
  path: /v1/chat/completions
  configs: {{defaultConfig: {{openAIConfig: {{model: m-{name}, apiKey: sk-{name}-0000000000000000}}}}}}
"""


def provider(name: str, ns: str = "default", host: str | None = None) -> str:
    return PROVIDER.format(name=name, ns=ns, host=host or f"{name}.example.com")


def route(body: str, name: str = "chat", ns: str = "default", host: str = "a.example.com") -> str:
    return (f"apiVersion: istio.alibabacloud.com/v1beta1\nkind: LLMRoute\nmetadata: {{name: {name}, namespace: {ns}}}\n"
            f"spec:\n  host: {host}\n" + textwrap.indent(textwrap.dedent(body), "  "))


def compile_ambient(*docs: str, opts: Options = AMBIENT):
    return compile_text("\n---\n".join(docs), opts)


def found(result, severity=Severity.ERROR) -> set[tuple[str, str]]:
    return {(d.code, d.path) for d in result.diagnostics.items if d.severity is severity}


# --- settings --------------------------------------------------------------------------------

def test_target_and_waypoint_settings():
    assert AMBIENT.ambient and AMBIENT.waypoint == (None, "waypoint")
    assert not Options().ambient
    opts, problems = parse_options(target="ambient", waypoint="istio-egress/egress-waypoint")
    assert problems == [] and opts.waypoint == ("istio-egress", "egress-waypoint")
    assert parse_options(target="mesh")[1][0][0] == "target"
    assert parse_options(target="ambient", waypoint="Bad_Name")[1][0][0] == "waypoint"
    assert parse_options(waypoint="w")[1] == [("waypoint", "--waypoint needs --target")]
    for extra in ({"istio_version": "1.29"}, {"egress_gateway": "istio-system/egress"}, {"telemetry": True}):
        opts, problems = parse_options(target="ambient", **extra)
        assert opts is None and [p[0] for p in problems] == ["target"], extra
    assert parse_options(target="ambient", istio_version="1.30")[1] == []


# --- what a waypoint cannot do: refused, located --------------------------------------------

def test_failover_token_limits_gateways_and_source_labels_are_refused():
    result = compile_ambient(provider("a"), provider("b"), route("""\
        gateways: [mesh, istio-system/ingress]
        rules:
        - name: fo
          retries: {attempts: 2}
          backendRefs: [{providerHost: a.example.com, weight: 50}, {providerHost: b.example.com, weight: 50}]
        - name: prio
          matches: [{sourceLabels: {app: x}}]
          backendRefs: [{providerHost: a.example.com, priority: 1}]
        - name: limited
          tokenLimits: [{name: t, tokens: 100, per: Minute, key: [{header: x-user}]}]
          backendRefs: [{providerHost: b.example.com}]
        """))
    assert {c for c, _ in found(result)} >= {"LLMC271", "LLMC272", "LLMC273", "LLMC274"}
    assert ("LLMC271", "spec.gateways") in found(result)
    assert ("LLMC272", "spec.rules[0].retries") in found(result)
    assert ("LLMC272", "spec.rules[1].backendRefs") in found(result)
    assert ("LLMC273", "spec.rules[1].matches[0].sourceLabels") in found(result)
    assert ("LLMC274", "spec.rules[2].tokenLimits") in found(result)
    assert result.objects == []
    assert all(d.line > 0 for d in result.diagnostics.items if d.code.startswith("LLMC27"))
    # the same sources for sidecars: none of these codes
    sidecar = compile_ambient(provider("a"), provider("b"), route("""\
        rules:
        - name: fo
          retries: {attempts: 2}
          backendRefs: [{providerHost: a.example.com, weight: 50}, {providerHost: b.example.com, weight: 50}]
        """), opts=Options())
    assert not [d for d in sidecar.diagnostics.items if d.code.startswith("LLMC27")]


def test_matching_a_header_the_filter_rewrites_is_refused():
    result = compile_ambient(provider("a"), route("""\
        rules:
        - matches: [{headers: {authorization: {prefix: Bearer team-a}}}]
          backendRefs: [{providerHost: a.example.com}]
        - matches: [{headers: {user-type: {exact: vip}}}]
          backendRefs: [{providerHost: a.example.com}]
        """))
    assert found(result) == {("LLMC275", "spec.rules[0].matches[0].headers.authorization")}


ANTHROPIC_PROVIDER = """\
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {name: c, namespace: default}
spec:
  host: c.example.com
  configs: {defaultConfig: {anthropicConfig: {model: claude-x, apiKey: sk-c-0000000000000000}}}
"""


@pytest.mark.parametrize("header", ["x-b-key", "anthropic-version", "Anthropic-Version"])
def test_matching_a_header_the_filter_writes_for_a_later_rule_is_refused(header):
    """A waypoint selects the route again on the headers the filter shaped: an earlier rule matching a
    header the filter writes for a later rule's provider -- that provider's authHeader, a protocol's
    fixed header (anthropic-version, in any case) -- would take a request shaped for the later
    provider to the earlier rule's provider (tests/test_ambient_e2e.py shows it on a real waypoint).
    Was: only the auth headers of the rule itself and of earlier rules, and no fixed header."""
    b = provider("b").replace("apiKey: sk-b", "authHeader: x-b-key, apiKey: sk-b")
    result = compile_ambient(provider("a"), b, ANTHROPIC_PROVIDER, route(f"""\
        rules:
        - matches: [{{headers: {{{header}: {{}}}}}}]
          backendRefs: [{{providerHost: a.example.com}}]
        - matches: [{{headers: {{user-type: {{exact: vip}}}}}}]
          backendRefs: [{{providerHost: b.example.com}}]
        - backendRefs: [{{providerHost: c.example.com}}]
        """))
    assert {(c, p.lower()) for c, p in found(result)} == {("LLMC275", f"spec.rules[0].matches[0].headers.{header}".lower())}, \
        result.diagnostics.format_text()


def test_provider_token_limits_are_refused():
    doc = provider("a") + "  tokenLimits: [{name: t, tokens: 100, per: Minute, key: [{header: x-user}]}]\n"
    assert ("LLMC274", "spec.tokenLimits") in found(compile_ambient(doc))


def test_secret_keys_and_large_bodies_warn():
    doc = provider("a").replace("apiKey: sk-a-0000000000000000", "apiKeySecretRef: {name: keys, key: a}")
    doc += "  maxRequestBytes: 4194304\n"
    result = compile_ambient(doc)
    assert found(result, Severity.WARNING) == {("LLMC276", "spec.maxRequestBytes"), ("LLMC277", "spec.configs")}
    assert result.ok


# --- what is emitted ---------------------------------------------------------------------------

def kinds(result) -> list[tuple[str, str, str]]:
    return [(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]) for o in result.objects]


def test_objects_for_a_waypoint_of_the_sources_namespace():
    result = compile_ambient(provider("a", "team-a"))
    assert result.ok, result.diagnostics.format_text()
    assert kinds(result) == [("ServiceEntry", "team-a", "llmc-provider-a"), ("DestinationRule", "team-a", "llmc-provider-a"),
                             ("VirtualService", "team-a", "llmc-provider-a"),
                             ("TrafficExtension", "team-a", "llmc-waypoint")]
    se = result.objects[0]
    assert se["metadata"]["labels"]["istio.io/use-waypoint"] == "waypoint"
    assert "istio.io/use-waypoint-namespace" not in se["metadata"]["labels"]
    assert all(o["spec"].get("exportTo", ["."]) == ["."] for o in result.objects[:3])


def test_one_waypoint_of_another_namespace_serves_every_namespace():
    opts, _ = parse_options(target="ambient", waypoint="egress/llm-waypoint")
    result = compile_ambient(provider("a", "team-a"), provider("b", "team-b"), opts=opts)
    assert result.ok
    (ext,) = [o for o in result.objects if o["kind"] == "TrafficExtension"]
    assert (ext["metadata"]["namespace"], ext["spec"]["targetRefs"][0]["name"]) == ("egress", "llm-waypoint")
    assert ext["metadata"]["annotations"]["llmc.io/sources"] == "LLMProvider team-a/a, LLMProvider team-b/b"
    for o in (o for o in result.objects if o["kind"] != "TrafficExtension"):
        assert o["metadata"]["namespace"] in ("team-a", "team-b")  # a source's objects stay in its namespace
        assert o["spec"]["exportTo"] == [".", "egress"]  # and the waypoint sees them
        if o["kind"] == "ServiceEntry":
            assert o["metadata"]["labels"]["istio.io/use-waypoint-namespace"] == "egress"


def test_no_envoyfilter_and_the_sidecar_output_is_unchanged():
    sources = (provider("a"), provider("b"), route("""\
        rules:
        - backendRefs: [{providerHost: a.example.com, weight: 70}, {providerHost: b.example.com, weight: 30}]
        """))
    ambient, sidecar = compile_ambient(*sources), compile_ambient(*sources, opts=Options())
    assert "EnvoyFilter" not in {o["kind"] for o in ambient.objects}
    assert "TrafficExtension" not in {o["kind"] for o in sidecar.objects}
    side_vs = [o for o in sidecar.objects if o["kind"] == "VirtualService"]
    amb_vs = [o for o in ambient.objects if o["kind"] == "VirtualService"]
    assert side_vs == amb_vs  # the same routes, names and matches: the waypoint builds its routes from them


def test_translated_routes_carry_the_translate_header():
    claude = ("apiVersion: istio.alibabacloud.com/v1beta1\nkind: LLMProvider\nmetadata: {name: c}\n"
              "spec:\n  host: c.example.com\n"
              "  configs: {defaultConfig: {anthropicConfig: {model: x, apiKey: sk-ant-0000000000000000}}}\n")
    result = compile_ambient(claude)
    (vs,) = [o for o in result.objects if o["kind"] == "VirtualService"]
    forwarded = [h for h in vs["spec"]["http"] if "route" in h]
    assert forwarded and all(h["headers"]["response"]["set"] == {"x-llmc-translate": "anthropic"} for h in forwarded)


def test_output_is_independent_of_input_order():
    docs = [provider(n) for n in ("a", "b", "c")] + [route("""\
        rules:
        - backendRefs: [{providerHost: a.example.com, weight: 1}, {providerHost: c.example.com, weight: 1}]
        """)]
    first = compile_ambient(*docs).objects
    for seed in range(3):
        shuffled = docs[:]
        random.Random(seed).shuffle(shuffled)
        assert compile_ambient(*shuffled).objects == first


def test_output_validates_against_istio_crds(istio_crds):
    from tests.support.istio_schema import validate

    result = compile_ambient(provider("a"), provider("b"), route("""\
        rules:
        - name: vip
          matches: [{headers: {user-type: {exact: vip}}}]
          backendRefs: [{providerHost: a.example.com}]
        - backendRefs: [{providerHost: a.example.com, weight: 1}, {providerHost: b.example.com, weight: 1}]
        """))
    assert {o["kind"] for o in result.objects} == {"ServiceEntry", "DestinationRule", "VirtualService", "TrafficExtension"}
    for o in result.objects:
        assert validate(o, istio_crds) == [], o["kind"]


# --- the size limit -----------------------------------------------------------------------------

def providers_fitting(start: int = 1) -> int:
    """How many single-provider hosts (each its own implicit route) fit one waypoint's TrafficExtension
    (from ``start``, which must fit)."""
    n = start
    assert compile_ambient(*(provider(f"p{i:03d}") for i in range(n))).ok
    while compile_ambient(*(provider(f"p{i:03d}") for i in range(n + 1))).ok:
        n += 1
    return n


def test_the_documented_number_of_providers_fits():
    """docs/ambient.md, "Size": the bold figure is how many OpenAI-compatible providers fit, within 10%
    (every change of the filter moves the bundle's size a little)."""
    import re

    from tests.conftest import REPO

    documented = int(re.search(r"\*\*(\d+) OpenAI-compatible providers\*\*", (REPO / "docs" / "ambient.md").read_text())[1])
    measured = providers_fitting(int(documented * 0.9))
    assert abs(measured - documented) <= documented // 10, measured


def test_a_waypoint_over_the_limit_is_a_located_error_and_nothing_is_written():
    n = providers_fitting(60)
    docs = [provider(f"p{i:03d}") for i in range(n)]
    fits = compile_ambient(*docs)
    (ext,) = [o for o in fits.objects if o["kind"] == "TrafficExtension"]
    assert len(ext["spec"]["lua"]["inlineCode"]) <= INLINE_CODE_LIMIT
    over = compile_ambient(*docs, route("""\
        rules:
        - backendRefs: [{providerHost: p000.example.com}]
        """, host="p000-alias.example.com"))
    assert over.objects == [] and found(over) == {("LLMC279", "spec.rules")}
    (d,) = [x for x in over.diagnostics.items if x.code == "LLMC279"]
    assert "waypoint default/waypoint" in d.message and d.line > 0 and d.object == "TrafficExtension default/llmc-waypoint"
    assert len(bundle()) < INLINE_CODE_LIMIT and len(bundle(frozenset({"anthropic"}))) < INLINE_CODE_LIMIT


# --- the Lua data serializer --------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 53), 2 ** 53) | st.text(max_size=20),
    lambda inner: st.lists(inner.filter(lambda v: v is not None), max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)


def _from_lua(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if type(value).__name__ == "_LuaTable":
        items = dict(value.items())
        if items and all(isinstance(k, int) for k in items) and sorted(items) == list(range(1, len(items) + 1)):
            return [_from_lua(items[i]) for i in range(1, len(items) + 1)]
        return {_from_lua(k): _from_lua(v) for k, v in items.items()}
    return value


def _canon(value):
    """None members left out (nil); an empty list and an empty map are one Lua value (``{}``)."""
    if isinstance(value, dict):
        value = {k: v for k, v in value.items() if v is not None}
    if value in ({}, []):
        return "{}"
    if isinstance(value, dict):
        return {k: _canon(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canon(v) for v in value]
    return value


@settings(max_examples=200, deadline=None)
@given(JSON.filter(lambda v: v is not None))
def test_lua_data_round_trips_through_luajit(value):
    text = lua_value(value)
    assert text.isascii()
    lua = luajit21.LuaRuntime(encoding=None)
    back = _from_lua(lua.execute(("return " + text).encode()))
    assert _canon(back) == _canon(value)


@given(st.text(max_size=12))
def test_lua_keys_read_back_as_the_same_key(key):
    lua = luajit21.LuaRuntime(encoding=None)
    table = lua.execute(("return {" + lua_key(key) + "=1}").encode())
    assert list(table.keys()) == [key.encode("utf-8")]


def test_reserved_words_are_quoted_keys():
    assert lua_key("end") == '["end"]' and lua_key("model") == "model" and lua_key("x-y") == '["x-y"]'


@given(st.text())
def test_lua_strings_are_ascii_and_exact(text):
    lit = lua_string(text)
    assert lit.isascii()
    lua = luajit21.LuaRuntime(encoding=None)
    assert lua.execute(("return " + lit).encode()) == text.encode("utf-8")


def test_lua_data_refuses_what_has_no_exact_lua_value():
    for bad in (float("nan"), 2 ** 60, object()):
        with pytest.raises((ValueError, TypeError)):
            lua_value(bad)


def test_route_table_names_every_shaping_route_but_the_model_list():
    result = compile_ambient(provider("a"), provider("b"), route("""\
        rules:
        - name: w
          backendRefs: [{providerHost: a.example.com, weight: 1}, {providerHost: b.example.com, weight: 1}]
        """))
    vh = next(v for v in result.program.vhosts if v.label == "chat")
    table = route_table([vh], "/etc/llmc/secrets")
    assert route_index(table["contexts"]) == {"llmc/default/chat/w": 1, "llmc/default/chat/w/a": 1,
                                              "llmc/default/chat/w/b": 1}
    assert list(table["protocols"]) == ["openai"] and "protocols" not in table["contexts"][0]
    assert json.dumps(table).count("sk-a-0000000000000000") == 1  # each key once


# --- llmc explain --target ambient ----------------------------------------------------------------

@pytest.mark.parametrize("host,method,path,headers", [
    ("demo-llm-server", "POST", "/v1/chat/completions", {}),
    ("demo-llm-server", "GET", "/v1/models", {}),
    ("demo-llm-server", "GET", "/v1/chat/completions", {}),
    ("demo-llm-server", "POST", "/", {"x-llmc-provider": "llmc/default/demo-llm-server/migrate-rule/moonshot"}),
    ("dashscope.aliyuncs.com", "POST", "/v1/chat/completions", {"user-type": "subscriber"}),
    ("dashscope.aliyuncs.com", "POST", "/v1/chat/completions", {}),
    ("api.moonshot.cn", "POST", "/v1/chat/completions", {}),
])
def test_explain_gives_the_same_answer_for_both_targets(host, method, path, headers):
    pytest.importorskip("re2")
    from compiler import compile_paths
    from compiler.explain import Request, explain

    body = b'{"messages":[{"role":"user","content":"hi"}]}'
    outs = []
    for opts in (Options(), AMBIENT):
        result = compile_paths(["samples/seed"], opts)
        assert result.ok
        req = Request(host=host, method=method, path=path, headers=headers, body=body if method == "POST" else b"")
        outs.append(explain(result.objects, req, seed=7))
    assert outs[0] == outs[1]
    assert "filter" not in outs[1] or method == "GET" and path == "/v1/models"  # the filter ran (but on /v1/models)


def test_mounts_prints_the_waypoints_deployment_customization():
    """``llmc mounts --target ambient``: per waypoint, a ConfigMap whose ``deployment`` patch mounts the
    Secrets at the path the filter reads; valid for Kubernetes, and parsed back to the patch."""
    import kubernetes_validate
    import yaml

    from compiler import compile_paths
    from compiler.mounts import plan
    from tests.test_deploy import K8S_VERSION

    result = compile_paths(["samples/secret-ref"], AMBIENT)
    (entry,) = plan(result.program)
    cm = entry["patch"]
    assert (entry["proxies"], cm["metadata"]) == ("waypoints", {"name": "waypoint-llmc-keys", "namespace": "llm-apps"})
    kubernetes_validate.validate(cm, K8S_VERSION, strict=True)
    patch = yaml.safe_load(cm["data"]["deployment"])["spec"]["template"]["spec"]
    assert patch["volumes"] == [{"name": "llmc-llm-provider-keys", "secret": {"secretName": "llm-provider-keys"}}]
    (mount,) = patch["containers"][0]["volumeMounts"]
    assert mount["mountPath"] == "/etc/llmc/secrets/llm-provider-keys"  # where the context says the key file is
    (ext,) = [o for o in result.objects if o["kind"] == "TrafficExtension"]
    assert "/etc/llmc/secrets/llm-provider-keys/dashscope" in ext["spec"]["lua"]["inlineCode"]


def test_diff_gives_the_same_report_for_both_targets(tmp_path):
    """``llmc diff --target ambient`` replays requests through both sides' waypoint renderings (the
    explain engine reads the TrafficExtension's route table): the same report as for sidecars."""
    import shutil

    from typer.testing import CliRunner

    from compiler.cli import app
    from tests.conftest import REPO

    for side in ("base", "head"):
        shutil.copytree(REPO / "samples" / "seed", tmp_path / side)
    route = tmp_path / "head" / "demo-llm-server-route.yaml"
    route.write_text(route.read_text().replace("weight: 50", "weight: 70", 1).replace("weight: 50", "weight: 30", 1))
    outs = []
    for target in ("sidecar", "ambient"):
        res = CliRunner().invoke(app, ["diff", "--base", str(tmp_path / "base"), "--head", str(tmp_path / "head"),
                                       "--generate", "--target", target])
        assert res.exit_code == 1, res.stderr  # something changes
        outs.append(res.stdout)
    assert outs[0] == outs[1] and "share 50% → 70%" in outs[1]
