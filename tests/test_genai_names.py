"""Telemetry in OpenTelemetry GenAI names (issue 34): every name llmc emits is the convention's (the
vendored registry), the provider name mapping, the legacy switch, the OTel access-log provider and
the stats-filter objects of ``render --telemetry``."""

from __future__ import annotations

import subprocess
import sys

import pytest
from ruamel.yaml import YAML

from compiler import protocols
from compiler.options import parse_options
from compiler.telemetry import (
    GENAI_ACCESS_LOG,
    ISTIO_STANDARD_METRICS,
    LEGACY_ACCESS_LOG,
    OUTPUT_STATS_FILTER,
    PROVIDER_NAME,
    RENAMED,
    gen_ai_provider_name,
    genai_metrics,
    mesh_config,
    parse_collector,
    prometheus_name,
    request_tags,
)
from tests.conftest import REPO
from tests.support.mesh import llmc_render

REGISTRY = YAML(typ="safe").load((REPO / "tests" / "testdata" / "otel" / "genai-registry.yaml").read_text())


def test_every_access_log_name_is_in_the_registry():
    genai = [k for k in GENAI_ACCESS_LOG if k.startswith("gen_ai.")]
    assert genai and set(genai) <= set(REGISTRY["attributes"])
    # the fields that are not the convention's are the request's and llmc's own, none in GenAI's namespace
    assert {k for k in GENAI_ACCESS_LOG if "." in k} == set(genai)
    # the legacy names that were renamed are gone from the new format, and each has its new name
    assert not set(RENAMED) & set(GENAI_ACCESS_LOG) and set(RENAMED) < set(LEGACY_ACCESS_LOG)
    assert set(RENAMED.values()) <= set(genai)


def test_every_metric_and_label_is_the_registry_name_mapped_to_prometheus():
    metrics = genai_metrics()
    for m in metrics:
        spec = REGISTRY["metrics"][m.name]
        assert spec["instrument"] == m.type.lower() == "histogram"
        # OTel → Prometheus: dots become "_"; a time unit is the suffix of the unit llmc records in
        # (istio.stats records integers: milliseconds, not the convention's seconds)
        suffix = {"s": "_milliseconds", "{token}": ""}[spec["unit"]]
        assert m.definition == prometheus_name(m.name) + suffix
        assert m.unit == ("ms" if suffix else spec["unit"])
        for label, attribute in m.attributes.items():
            assert attribute in REGISTRY["attributes"] and label == prometheus_name(attribute)
        # Istio's workload labels and llmc's key index (several keys per provider) are not convention names
        assert set(m.dimensions) - set(m.attributes) == {"source_workload", "source_workload_namespace",
                                                         "llm_api_key_id"}
    tokens = [m for m in metrics if m.name == "gen_ai.client.token.usage"]
    assert [m.dimensions["gen_ai_token_type"].split(" ? ")[1].split(" : ")[0] for m in tokens] == ["'input'", "'output'"]
    assert set(request_tags()) - {"llm_api_key_id"} <= {prometheus_name(a) for a in REGISTRY["attributes"]}


def test_every_drivers_genai_name_is_the_conventions():
    """A protocol that is one vendor's API names it (its driver's ``gen_ai_name``, a well-known value
    of the registry); an OpenAI-compatible one does not (the host decides)."""
    members = REGISTRY["attributes"]["gen_ai.provider.name"]["members"]
    names = {name: d.gen_ai_name for name, d in protocols.DRIVERS.items()}
    assert names[protocols.DEFAULT_PROTOCOL] is None
    assert all(n in members for p, n in names.items() if p != protocols.DEFAULT_PROTOCOL), names
    hosts = [h for d in protocols.DRIVERS.values() for h in d.gen_ai_hosts]
    assert len(hosts) == len(set(hosts)) and all(d.gen_ai_name for d in protocols.DRIVERS.values() if d.gen_ai_hosts)


@pytest.mark.parametrize("protocol,host,name,expected", [
    ("openai", "api.openai.com", "gpt", "openai"),
    ("anthropic", "claude-proxy.internal", "claude", "anthropic"),  # the protocol names the provider
    ("gemini", "gemini-proxy.internal", "g", "gcp.gemini"),  # so does Gemini's (its driver's gen_ai_name)
    ("openai", "api.anthropic.com", "a", "anthropic"),  # Anthropic's OpenAI-compatible endpoint
    ("azure-openai", "myres.openai.azure.com", "az", "azure.ai.openai"),
    ("openai", "myres.openai.azure.com", "az", "azure.ai.openai"),  # Azure's OpenAI-compatible v1 path
    ("openai", "generativelanguage.googleapis.com", "gemini", "gcp.gemini"),
    ("openai", "us-central1-aiplatform.googleapis.com", "vertex", "gcp.vertex_ai"),
    ("openai", "API.DeepSeek.com", "ds", "deepseek"),
    ("openai", "api.moonshot.cn", "moonshot", "moonshot_ai"),
    ("openai", "bedrock-runtime.us-east-1.amazonaws.com", "br", "aws.bedrock"),
    ("openai", "dashscope.aliyuncs.com", "dashscope-qwen", "dashscope-qwen"),  # none well known: the name
    ("openai", "evilapi.openai.com.example", "x", "x"),  # a suffix match is a whole-label suffix only
])
def test_provider_name(protocol, host, name, expected):
    assert gen_ai_provider_name(protocols.get(protocol).gen_ai_name, host, name) == expected
    members = REGISTRY["attributes"]["gen_ai.provider.name"]["members"]
    assert expected in members or expected == name


def meshconfig(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "compiler.cli", "meshconfig", *args], cwd=REPO, capture_output=True,
                          text=True)


def test_meshconfig_prints_genai_names_legacy_on_request_and_otel():
    out = meshconfig()
    (doc,) = [d for d in YAML(typ="safe").load_all(out.stdout) if d]
    assert doc == mesh_config()
    assert doc["extensionProviders"][0]["envoyFileAccessLog"]["logFormat"]["labels"] == GENAI_ACCESS_LOG
    (legacy,) = [d for d in YAML(typ="safe").load_all(meshconfig("--legacy-telemetry-names").stdout) if d]
    assert legacy["extensionProviders"][0]["envoyFileAccessLog"]["logFormat"]["labels"] == LEGACY_ACCESS_LOG
    (otel,) = [d for d in YAML(typ="safe").load_all(meshconfig("--otel", "otel-collector.obs.svc.cluster.local").stdout)
               if d]
    (entry,) = otel["extensionProviders"]
    # the same provider name: the Telemetry of `render --telemetry` enables it, whichever sink it has
    assert entry["name"] == PROVIDER_NAME and entry["envoyOtelAls"]["service"] == "otel-collector.obs.svc.cluster.local"
    assert entry["envoyOtelAls"]["port"] == 4317 and entry["envoyOtelAls"]["logFormat"]["labels"] == GENAI_ACCESS_LOG


@pytest.mark.parametrize("text,problem", [("otel:4318", None), ("bad host", "HOST[:PORT]"), ("c:0", "port"),
                                          ("c:http", "port"), ("", "HOST[:PORT]")])
def test_collector_parse(text, problem):
    collector, found = parse_collector(text)
    assert (found is None) == (problem is None) and (problem is None or problem in found)
    if problem is None:
        assert collector is not None and (collector.host, collector.port) == ("otel", 4318)
    bad = meshconfig("--otel", text)
    assert (bad.returncode == 2) == (problem is not None) and (problem is None or bad.stdout == "")


def _stats_filter(objects: list[dict]) -> dict:
    (ef,) = [o for o in objects if o["metadata"]["name"] == "llmc-token-metrics"]
    return ef


def test_render_telemetry_emits_histograms_in_genai_names():
    ef = _stats_filter(llmc_render("-f", "samples/seed", "--telemetry"))
    merge, second = ef["spec"]["configPatches"]
    assert merge["patch"]["operation"] == "MERGE" and second["patch"]["operation"] == "INSERT_AFTER"
    assert second["match"] == merge["match"]  # after Istio's own stats filter, same listener and proxies
    first = merge["patch"]["value"]["typed_config"]
    assert [(d["name"], d["type"]) for d in first["definitions"]] == [
        ("gen_ai_client_token_usage", "HISTOGRAM"), ("gen_ai_client_operation_duration_milliseconds", "HISTOGRAM"),
        ("gen_ai_client_operation_time_to_first_chunk_milliseconds", "HISTOGRAM")]
    other = second["patch"]["value"]
    assert other["name"] == OUTPUT_STATS_FILTER and other["typed_config"]["@type"] == first["@type"]
    (out,) = other["typed_config"]["definitions"]
    assert out["name"] == "gen_ai_client_token_usage" and "request_completion_tokens" in out["value"]
    # the second instance records no standard metric (every request would count twice)
    dropped = [m["name"] for m in other["typed_config"]["metrics"] if m.get("drop")]
    assert dropped == list(ISTIO_STANDARD_METRICS)
    (telemetry,) = [o for o in llmc_render("-f", "samples/seed", "--telemetry") if o["kind"] == "Telemetry"]
    tags = telemetry["spec"]["metrics"][0]["overrides"][0]["tagOverrides"]
    assert set(tags) == {"gen_ai_provider_name", "gen_ai_request_model", "llm_api_key_id"}


def test_legacy_switch_renders_the_old_counters():
    objects = llmc_render("-f", "samples/seed", "--telemetry", "--legacy-telemetry-names")
    (patch,) = _stats_filter(objects)["spec"]["configPatches"]
    cfg = patch["patch"]["value"]["typed_config"]
    assert [(d["name"], d["type"]) for d in cfg["definitions"]] == [
        ("llm_prompt_tokens", "COUNTER"), ("llm_completion_tokens", "COUNTER"), ("llm_total_tokens", "COUNTER")]
    (telemetry,) = [o for o in objects if o["kind"] == "Telemetry"]
    assert set(telemetry["spec"]["metrics"][0]["overrides"][0]["tagOverrides"]) == {"llm_model", "llm_provider", "llm_api_key_id"}


def test_legacy_switch_needs_telemetry():
    _, problems = parse_options(legacy_telemetry_names=True)
    assert problems == [("legacy-telemetry-names", "--legacy-telemetry-names needs --telemetry")]
    opts, problems = parse_options(legacy_telemetry_names=True, telemetry=True)
    assert problems == [] and opts is not None and opts.legacy_telemetry_names


def test_every_emitted_metric_is_a_registry_name_but_llmcs_declared_cost_counter():
    """With priced providers, ``render --telemetry`` emits the GenAI metrics (each a registry name,
    above) and exactly one other: llmc's cost counter, which is declared as llmc's (``llmc_name``,
    not ``name``) and whose name the registry does not hold (tests/test_cost_metric.py)."""
    from compiler import Options, compile_text
    from compiler.telemetry import COST_DEFINITION, COST_NAME
    from tests.test_budgets import PROVIDERS, route
    from tests.test_cost_metric import cost_definitions

    result = compile_text(PROVIDERS + route("[]"), Options(telemetry=True), "in.yaml")
    emitted = {d["name"] for o in result.objects if o["kind"] == "EnvoyFilter"
               for p in o["spec"]["configPatches"] for d in p["patch"]["value"].get("typed_config", {}).get(
                   "definitions", [])}
    assert emitted - {m.definition for m in genai_metrics()} == {COST_DEFINITION}
    assert cost_definitions(result.objects) and COST_NAME not in REGISTRY["metrics"]
    assert all(m.name in REGISTRY["metrics"] for m in genai_metrics())
