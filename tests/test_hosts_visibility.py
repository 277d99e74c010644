"""Host validation, Istio's exportTo rules for LLMProviders, placement of gateway-bound rules, and the
gateway workload option."""

from __future__ import annotations

import pytest

from compiler import Options, Severity, compile_text
from compiler.hosts import host_problem
from compiler.ir import Provider, RequestConfig
from compiler.options import parse_options
from compiler.visibility import Catalog, check_export_to, visible


@pytest.mark.parametrize(("host", "hint"), [
    ("https://api.openai.com/v1", "write host: api.openai.com, path: /v1/chat/completions"),
    ("https://dashscope.aliyuncs.com/compatible-mode/v1",
     "write host: dashscope.aliyuncs.com, path: /compatible-mode/v1/chat/completions"),
    ("https://api.anthropic.com/v1/messages", "write host: api.anthropic.com, path: /v1/messages"),
    ("api.openai.com:443", "write host: api.openai.com, port: 443"),
    ("api.openai.com/", "write host: api.openai.com"),
    ("api openai com", "write a DNS name such as api.openai.com"),
])
def test_invalid_hosts_get_a_hint_saying_what_to_write(host, hint):
    problem = host_problem(host)
    assert problem is not None and problem.hint == hint


@pytest.mark.parametrize("host", ["api.openai.com", "demo-llm-server", "vllm.llm.svc.cluster.local"])
def test_host_names_pass(host):
    assert host_problem(host) is None


def test_wildcards_only_as_star_on_routes():
    assert host_problem("*") is not None  # a provider host
    assert host_problem("*.openai.com") is not None
    assert host_problem("*", wildcard=True) is None
    assert host_problem("*.example.com", wildcard=True) is not None


def _provider(ns: str, name: str, host: str, export: tuple[str, ...]) -> Provider:
    return Provider(namespace=ns, name=name, host=host, path="/v1", port=443, service_port=80, in_mesh=False,
                    tls=True, sni=host, subject_alt_names=(host,), ca_certificates=None, timeout=None,
                    max_request_bytes=1024, selector=(), default=RequestConfig(), overrides=(),
                    source=f"LLMProvider {ns}/{name}", export_to=export)


def test_export_to_defaults_follow_istio_root_namespace():
    assert check_export_to(None, "istio-system").value == ("*",)
    assert check_export_to(None, "platform").value == (".",)
    assert check_export_to([], "platform").value == (".",)
    assert check_export_to(["platform", "team-a"], "platform").value == (".", "team-a")


@pytest.mark.parametrize("values", [["*", "team-a"], ["~"], ["Team_A"], ["team-a", "team-a"]])
def test_export_to_rejected_like_istio(values):
    assert check_export_to(values, "platform").problems


def test_visibility_is_istios():
    everywhere = _provider("istio-system", "a", "a.example.com", ("*",))
    own = _provider("platform", "b", "b.example.com", (".",))
    named = _provider("platform", "c", "c.example.com", ("team-a",))
    assert visible(everywhere, "team-a") and visible(everywhere, "istio-system")
    assert visible(own, "platform") and not visible(own, "team-a")
    assert visible(named, "team-a") and not visible(named, "platform") and not visible(named, "team-b")


def test_own_namespace_wins_and_other_namespaces_are_ambiguous():
    root = _provider("istio-system", "root", "api.openai.com", ("*",))
    local = _provider("team-a", "local", "api.openai.com", (".",))
    other = _provider("platform", "other", "api.openai.com", ("team-b",))
    catalog = Catalog([root, local, other])
    assert catalog.find("api.openai.com", "team-a").provider is local
    assert catalog.find("api.openai.com", "team-c").provider is root
    found = catalog.find("api.openai.com", "team-b")
    assert found.provider is None and {p.name for p in found.ambiguous} == {"root", "other"}


ASM_INGRESS = """
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {name: dashscope-qwen, namespace: istio-system}
spec:
  workloadSelector: {labels: {istio: ingressgateway}}
  host: dashscope.aliyuncs.com
  path: /compatible-mode/v1/chat/completions
  configs:
    defaultConfig: {openAIConfig: {model: qwen-1.8b-chat, stream: false}}
---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMRoute
metadata: {name: ingress-route, namespace: default}
spec:
  host: chat.example.com
  gateways: [llm/llm-gateway]
  rules:
  - backendRefs: [{providerHost: dashscope.aliyuncs.com}]
"""


def _placements(result):
    return {(vh.namespace, vh.label): [(p.namespace, p.gateway) for p in vh.placements]
            for vh in result.program.vhosts}


def test_objects_stay_in_their_source_namespace_and_gateway_rules_run_where_the_pods_are():
    result = compile_text(ASM_INGRESS, Options())
    assert result.ok, result.diagnostics.format_text()
    assert _placements(result)[("default", "ingress-route")] == [("llm", "llm/llm-gateway")]
    opts, problems = parse_options(gateway_workload_namespace="llm/llm-gateway=istio-system")
    assert not problems and opts is not None
    moved = compile_text(ASM_INGRESS, opts)
    assert _placements(moved)[("default", "ingress-route")] == [("istio-system", "llm/llm-gateway")]
    kinds = {(o["kind"], o["metadata"]["namespace"]) for o in moved.objects}
    assert ("ServiceEntry", "istio-system") in kinds and ("VirtualService", "default") in kinds
    assert ("EnvoyFilter", "istio-system") in kinds and ("EnvoyFilter", "llm") not in kinds
    se = next(o for o in moved.objects if o["kind"] == "ServiceEntry")
    assert se["spec"]["exportTo"] == ["*"]


@pytest.mark.parametrize(("value", "ok"), [
    ("llm/llm-gateway=istio-system", True), (["a/b=c", "d/e=f"], True), ("llm-gateway=istio-system", False),
    ("llm/llm-gateway", False), ("a/b=c,a/b=d", False)])
def test_gateway_workload_namespace_option(value, ok):
    opts, problems = parse_options(gateway_workload_namespace=value)
    assert (opts is not None) is ok and (not problems) is ok


def test_remote_provider_keys_are_reported_for_sidecar_shaping():
    text = """
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {name: openai, namespace: platform}
spec:
  host: api.openai.com
  path: /v1/chat/completions
  exportTo: [team-a]
  configs: {defaultConfig: {openAIConfig: {apiKeySecretRef: {name: keys, key: openai}}}}
---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMRoute
metadata: {name: chat, namespace: team-a}
spec:
  host: chat
  rules: [{backendRefs: [{providerHost: api.openai.com}]}]
"""
    result = compile_text(text, Options())
    assert result.ok
    assert [d.code for d in result.diagnostics.items if d.severity is Severity.WARNING] == ["LLMC231"]
    egress, _ = parse_options(egress_gateway="istio-system/istio-egressgateway")
    assert egress is not None
    assert not compile_text(text, egress).diagnostics.items


def test_tabs_get_a_hint():
    text = "apiVersion: istio.alibabacloud.com/v1beta1\nkind: LLMProvider\nmetadata:\n\tname: x\n"
    result = compile_text(text, Options())
    assert [d.code for d in result.diagnostics.items] == ["LLMC001"]
    assert "tabs" in result.diagnostics.items[0].hint


def _big_route(rules: int, pad: int = 60) -> str:
    text = """
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {name: p}
spec: {host: api.openai.com, path: /v1/chat/completions}
---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMRoute
metadata: {name: big}
spec:
  host: chat
  rules:
"""
    for i in range(rules):
        text += (f"  - name: r{i}\n    matches: [{{headers: {{x-tenant: {{exact: tenant-{i:05d}-"
                 f"{'x' * pad}}}}}}}]\n    backendRefs: [{{providerHost: api.openai.com}}]\n")
    return text


@pytest.mark.parametrize(("pad", "code", "ok"), [(60, None, True), (2200, "LLMC232", True),
                                                 (16000, "LLMC233", False)])
def test_objects_kubernetes_cannot_store_are_reported(pad, code, ok):
    result = compile_text(_big_route(120, pad), Options())  # the CRD allows 128 rules
    codes = {d.code for d in result.diagnostics.items}
    assert result.ok is ok
    assert (code in codes) if code else not codes & {"LLMC232", "LLMC233"}
    if code:
        diag = next(d for d in result.diagnostics.items if d.code == code)
        assert diag.object.startswith(("VirtualService default/", "EnvoyFilter default/"))
        assert "LLMRoute default/big" in diag.message + diag.hint
        assert diag.line > 0 and diag.path == "spec.rules", "located at the LLMRoute the object comes from"
    if code == "LLMC232":  # fits objects of any shape (a failover rule of two providers is one)
        assert "kubectl apply --server-side" in diag.hint and "docs/failover.md#" in diag.hint


STAR = """
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {name: p, namespace: istio-system}
spec: {host: api.openai.com, path: /v1/chat/completions, workloadSelector: {labels: {istio: ingressgateway}}}
---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMRoute
metadata: {name: one, namespace: %s}
spec:
  host: "*"
  gateways: [istio-system/ingress-gw]
  rules: [{backendRefs: [{providerHost: api.openai.com}]}]
---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMRoute
metadata: {name: two, namespace: %s}
spec:
  host: "*"
  gateways: [%s]
  rules: [{backendRefs: [{providerHost: api.openai.com}]}]
"""


@pytest.mark.parametrize(("ns1", "ns2", "gw2", "conflict"), [
    ("team-a", "team-a", "istio-system/ingress-gw", True),   # same host, port and gateways
    ("team-a", "team-a", "istio-system/other-gw", False),    # another gateway
    ("team-a", "team-b", "istio-system/ingress-gw", False),  # two teams on one Gateway: Istio merges them
])
def test_route_uniqueness_is_per_host_port_and_gateways(ns1, ns2, gw2, conflict):
    result = compile_text(STAR % (ns1, ns2, gw2), Options())
    assert ("LLMC210" in {d.code for d in result.diagnostics.items}) is conflict, result.diagnostics.format_text()
    assert result.ok is not conflict
    if not conflict:
        vs = [o for o in result.objects if o["kind"] == "VirtualService"]
        assert all(o["spec"]["hosts"] == ["*"] for o in vs)
        patches = [p for o in result.objects if o["kind"] == "EnvoyFilter" for p in o["spec"]["configPatches"]]
        assert not [p for p in patches if p["applyTo"] == "VIRTUAL_HOST"]  # shared vhost: per-route only
