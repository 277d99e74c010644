"""Observability on stock Istio in OpenTelemetry GenAI names: the access-log provider, Telemetry
resources, token and latency metrics (docs/observability.md).

The Lua filter records, as dynamic metadata in namespace ``llmc`` (keys never renamed: budgets' CEL,
``llmc explain`` and ``llmc diff`` read them): ``provider`` (the LLMProvider), ``gen_ai_provider``
(its ``gen_ai.provider.name``, computed here at compile time: :func:`gen_ai_provider_name`),
``rule``, ``request_model``, ``response_model``, ``api_key_id`` (which of a provider's several keys
the request used: its index; docs/api-keys.md), ``request_prompt_tokens``,
``request_completion_tokens``, ``request_total_tokens``, and when the provider reports them
``cache_read_tokens``, ``cache_creation_tokens``, ``reasoning_tokens``, ``finish_reasons`` (a list),
``operation`` (only for an endpoint other than chat completions) and, for a stream,
``first_chunk_ms`` (the time its first body chunk passed, milliseconds since the epoch).

Two sets of names (``--legacy-telemetry-names``, one release): the GenAI names of the
OpenTelemetry semantic conventions (:data:`SEMCONV`; every name is in the vendored registry,
``tests/testdata/otel-genai-registry.yaml``), or llmc's first names (``llm_provider``,
``request_prompt_tokens``, ``istio_llm_total_tokens``, …).

* :func:`mesh_config` — the MeshConfig ``extensionProviders`` entry ``llmc meshconfig`` prints: an
  Envoy file access log with a JSON format (istiod turns ``logFormat.labels`` into ``json_format``),
  or with ``--otel`` the same fields as attributes of OpenTelemetry log records (``envoyOtelAls``).
* :func:`stats_patches` — what ``llmc render --telemetry`` adds to Istio's stats filter (the
  Telemetry API cannot define metrics): histograms in GenAI names, or the legacy counters.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from .cost import USAGE, Priced, answer_cost, answer_model, priced_guard
from .ir import Price
from .protocols import DRIVERS

PROVIDER_NAME = "llmc-access-log"
NS = "llmc"
#: The conventions followed: the registry of open-telemetry/semantic-conventions-genai (status
#: Development) at this commit; tests/testdata/otel-genai-registry.yaml vendors the names llmc uses.
SEMCONV = "open-telemetry/semantic-conventions-genai model/gen-ai/registry.yaml @ 002c8a6e"
#: OTLP/gRPC's port, when ``--otel`` names none
OTLP_PORT = 4317


def _md(key: str) -> str:
    return f"%DYNAMIC_METADATA({NS}:{key})%"


def cel(key: str) -> str:
    return f"metadata.filter_metadata['{NS}']['{key}']"


def _has(key: str) -> str:
    return f"'{key}' in metadata.filter_metadata['{NS}']"


# gen_ai.provider.name --------------------------------------------------------------------------

# A protocol that is one vendor's API names it: its driver's ``gen_ai_name`` (compiler/protocols/),
# which also lists that vendor's hosts (``gen_ai_hosts``), where an OpenAI-compatible endpoint is the
# same vendor.

#: by host, for OpenAI-compatible APIs: an exact host, or a suffix beginning with "." or "-"; the
#: drivers' vendors' hosts first
PROVIDER_BY_HOST = {
    **{h: d.gen_ai_name for d in DRIVERS.values() if d.gen_ai_name for h in d.gen_ai_hosts},
    "api.openai.com": "openai",
    ".services.ai.azure.com": "azure.ai.inference",
    "models.inference.ai.azure.com": "azure.ai.inference",
    "aiplatform.googleapis.com": "gcp.vertex_ai",
    "-aiplatform.googleapis.com": "gcp.vertex_ai",  # regional: us-central1-aiplatform.googleapis.com
    "api.deepseek.com": "deepseek",
    "api.moonshot.cn": "moonshot_ai",
    "api.moonshot.ai": "moonshot_ai",
    "api.mistral.ai": "mistral_ai",
    "api.groq.com": "groq",
    "api.x.ai": "x_ai",
    "api.perplexity.ai": "perplexity",
    "api.cohere.com": "cohere",
    "api.cohere.ai": "cohere",
}
_BEDROCK = re.compile(r"bedrock-runtime(-fips)?\.[a-z0-9-]+\.amazonaws\.com")


def gen_ai_provider_name(protocol_name: str | None, host: str, provider: str) -> str:
    """``gen_ai.provider.name`` of an LLMProvider: its protocol's (``protocol_name``, the driver's
    ``gen_ai_name``: None for an OpenAI-compatible API), else the convention's well-known value its
    host maps to, else the LLMProvider's own name (the convention allows any value; a DashScope or
    in-cluster vLLM endpoint has no well-known one)."""
    if protocol_name is not None:
        return protocol_name
    host = host.lower()
    for suffix, name in PROVIDER_BY_HOST.items():
        if host == suffix or (suffix[0] in ".-" and host.endswith(suffix)):
            return name
    if _BEDROCK.fullmatch(host):
        return "aws.bedrock"
    return provider


# Access log ------------------------------------------------------------------------------------

_REQUEST_FIELDS = {
    "start_time": "%START_TIME%",
    "method": "%REQ(:METHOD)%",
    "authority": "%REQ(:AUTHORITY)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "response_code": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    "duration_ms": "%DURATION%",
    "response_duration_ms": "%RESPONSE_DURATION%",
    "upstream_cluster": "%UPSTREAM_CLUSTER%",
    "route_name": "%ROUTE_NAME%",
}

#: the request's start in milliseconds since the epoch (CEL has no timestamp arithmetic in ms)
_START_MS = "(int(request.time) * 1000 + request.time.getMilliseconds())"
#: gen_ai.operation.name: the Lua records it only for an endpoint other than chat completions
OPERATION = f"{_has('operation')} ? {cel('operation')} : 'chat'"
#: the request's duration in milliseconds (a duration's getMilliseconds() is its millisecond part only)
DURATION_MS = "request.duration.getSeconds() * 1000 + request.duration.getMilliseconds()"
#: a stream's time to first chunk in milliseconds (from the request's start)
TTFC_MS = f"int({cel('first_chunk_ms')}) - {_START_MS}"

#: The access log in GenAI names: the request's fields, llmc's own (the LLMProvider, the rule),
#: and the convention's attributes. No total: the convention has none (input + output).
GENAI_ACCESS_LOG: dict[str, str] = {
    **_REQUEST_FIELDS,
    "llm_provider": _md("provider"),
    "llm_rule": _md("rule"),
    "llm_api_key_id": _md("api_key_id"),  # several keys per provider: the key's index (docs/api-keys.md)
    "gen_ai.provider.name": _md("gen_ai_provider"),
    # an error (no provider recorded: not an LLM request) logs null; CEL's null would print "NULL"
    "gen_ai.operation.name": f"%CEL({cel('provider')} != '' ? ({OPERATION}) : '')%",
    "gen_ai.request.model": _md("request_model"),
    "gen_ai.response.model": _md("response_model"),
    "gen_ai.usage.input_tokens": _md("request_prompt_tokens"),
    "gen_ai.usage.output_tokens": _md("request_completion_tokens"),
    "gen_ai.usage.cache_read.input_tokens": _md("cache_read_tokens"),
    "gen_ai.usage.cache_creation.input_tokens": _md("cache_creation_tokens"),
    "gen_ai.usage.reasoning.output_tokens": _md("reasoning_tokens"),
    "gen_ai.response.finish_reasons": _md("finish_reasons"),
    "gen_ai.response.time_to_first_chunk": f"%CEL(double({TTFC_MS}) / 1000.0)%",
}

#: llmc's first names (``--legacy-telemetry-names``, for one release)
LEGACY_ACCESS_LOG: dict[str, str] = {
    **_REQUEST_FIELDS,
    "llm_provider": _md("provider"),
    "llm_rule": _md("rule"),
    "llm_api_key_id": _md("api_key_id"),  # several keys per provider: the key's index (docs/api-keys.md)
    "request_model": _md("request_model"),
    "response_model": _md("response_model"),
    "request_prompt_tokens": _md("request_prompt_tokens"),
    "request_completion_tokens": _md("request_completion_tokens"),
    "request_total_tokens": _md("request_total_tokens"),
}

#: legacy name → GenAI name, for the docs' migration table and ``llmc diff`` (which reads either)
RENAMED = {"request_model": "gen_ai.request.model", "response_model": "gen_ai.response.model",
           "request_prompt_tokens": "gen_ai.usage.input_tokens",
           "request_completion_tokens": "gen_ai.usage.output_tokens"}


def access_log_labels(legacy: bool = False) -> dict[str, str]:
    return dict(LEGACY_ACCESS_LOG if legacy else GENAI_ACCESS_LOG)


@dataclass(frozen=True)
class Collector:
    """An OTLP/gRPC collector, as ``llmc meshconfig --otel HOST[:PORT]`` names it."""

    host: str
    port: int = OTLP_PORT


_HOST = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*")


def parse_collector(text: str) -> tuple[Collector | None, str | None]:
    """``HOST[:PORT]`` → (collector, problem): HOST is the collector Service's name as istiod knows
    it (e.g. ``otel-collector.observability.svc.cluster.local``)."""
    host, _, port = text.strip().partition(":")
    if not _HOST.fullmatch(host or "-"):
        return None, f"{text!r} is not HOST[:PORT], e.g. otel-collector.observability.svc.cluster.local:4317"
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        return None, f"{port!r} is not a port number (1-65535)"
    return Collector(host, int(port) if port else OTLP_PORT), None


def mesh_config(legacy: bool = False, otel: Collector | None = None) -> dict:
    """The MeshConfig ``extensionProviders`` entry named :data:`PROVIDER_NAME` (the name the
    Telemetry of ``render --telemetry`` enables): a JSON file access log on the proxy's stdout, or
    with ``otel`` OpenTelemetry log records sent to that collector, the same fields as attributes."""
    labels = access_log_labels(legacy)
    if otel is None:
        return {"extensionProviders": [{"name": PROVIDER_NAME, "envoyFileAccessLog": {
            "path": "/dev/stdout", "logFormat": {"labels": labels}}}]}
    return {"extensionProviders": [{"name": PROVIDER_NAME, "envoyOtelAls": {
        "service": otel.host, "port": otel.port, "logName": "llmc",
        "logFormat": {"text": "%REQ(:METHOD)% %REQ(:AUTHORITY)% %RESPONSE_CODE% %ROUTE_NAME%", "labels": labels}}}]}


# Metrics ---------------------------------------------------------------------------------------

#: which of a provider's several keys answered (its index; docs/api-keys.md): llmc's label, not a convention name
KEY_ID = {"llm_api_key_id": cel("api_key_id")}
#: Istio's own labels of the workload that sent the request (not convention names)
WORKLOAD = {"source_workload": "xds.node.metadata['WORKLOAD_NAME']",
            "source_workload_namespace": "xds.node.metadata['NAMESPACE']"}


def prometheus_name(name: str) -> str:
    """The OTel→Prometheus mapping of a name: every character outside [a-zA-Z0-9_] becomes "_"."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


@dataclass(frozen=True)
class Metric:
    """A custom metric of Istio's stats filter, exported as ``istio_<definition>``.

    ``name`` is the convention's name (None for a legacy counter) and ``unit`` the unit llmc
    records in: istio.stats evaluates a value to an unsigned integer, so durations are in
    milliseconds, not the convention's seconds (the Prometheus name says so: ``_milliseconds``)."""

    definition: str
    type: str  # COUNTER | HISTOGRAM
    value: str  # CEL, an integer
    dimensions: dict[str, str]  # Prometheus label → CEL
    name: str | None = None
    unit: str = ""
    #: llmc's own OTel-style name of a metric the conventions do not define (the cost counter)
    llmc_name: str | None = None
    #: convention name of each Prometheus label that is one (the rest are Istio's)
    attributes: dict[str, str] = field(default_factory=dict)


def _genai_dimensions(guard: str, extra: dict[str, str] | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """(dimensions, their convention names) of a GenAI histogram. istio.stats records every custom
    metric for every request through the filter (a value it cannot evaluate as 0), so each label
    is ``unknown`` unless ``guard`` holds: queries select ``gen_ai_operation_name!="unknown"``."""
    attrs = {"gen_ai.provider.name": cel("gen_ai_provider"), "gen_ai.request.model": cel("request_model"),
             "gen_ai.response.model": cel("response_model"), "gen_ai.operation.name": f"({OPERATION})",
             **(extra or {})}
    dims = {prometheus_name(k): f"{guard} ? {v} : 'unknown'" for k, v in attrs.items()}
    return {**dims, **KEY_ID, **WORKLOAD}, {prometheus_name(k): k for k in attrs}


def _token_usage(token_type: str, key: str) -> Metric:
    dims, attrs = _genai_dimensions(_has(key), {"gen_ai.token.type": f"'{token_type}'"})
    return Metric("gen_ai_client_token_usage", "HISTOGRAM", f"int({cel(key)})", dims,
                  name="gen_ai.client.token.usage", unit="{token}", attributes=attrs)


def _duration() -> Metric:
    dims, attrs = _genai_dimensions(_has("provider"))
    return Metric("gen_ai_client_operation_duration_milliseconds", "HISTOGRAM",
                  DURATION_MS, dims, name="gen_ai.client.operation.duration",
                  unit="ms", attributes=attrs)


def _time_to_first_chunk() -> Metric:
    dims, attrs = _genai_dimensions(_has("first_chunk_ms"))
    return Metric("gen_ai_client_operation_time_to_first_chunk_milliseconds", "HISTOGRAM", TTFC_MS, dims,
                  name="gen_ai.client.operation.time_to_first_chunk", unit="ms", attributes=attrs)


def genai_metrics() -> list[Metric]:
    """Every GenAI metric, input tokens before output tokens (see :func:`stats_patches`)."""
    return [_token_usage("input", "request_prompt_tokens"), _token_usage("output", "request_completion_tokens"),
            _duration(), _time_to_first_chunk()]


#: The cost counter's name: OpenTelemetry's GenAI conventions define no cost metric (cost is a
#: price table's, not the model call's), so it is llmc's own, outside the ``gen_ai.`` namespace
COST_NAME = "llmc.cost"
COST_DEFINITION = "llm_cost_total"


def cost_metric(prices: Sequence[tuple[str, tuple[Price, ...]]], cost_unit: str) -> Metric:
    """The cost counter ``istio_llm_cost_total`` (:data:`COST_NAME`): each answer adds what it cost
    in cost units (``--cost-unit``: millionths or thousandths of the prices' currency), computed by
    the expression money budgets charge with (compiler/cost.py) from the usage the filter recorded
    and ``prices`` — (LLMProvider name, its prices) of the providers the metric's proxies reach that
    have prices — for the model that answered (else the requested one). An error, an answer without
    usage, or an unpriced provider's answer adds 0 to the ``unknown`` series every non-LLM request
    adds 0 to: no series names an unpriced provider or model."""
    model = answer_model(f"(has({USAGE}.request_model) ? {USAGE}.request_model : '')")
    priced: list[Priced] = [(name, table, model) for name, table in prices]
    guard = priced_guard(priced)
    attrs = {"gen_ai.provider.name": cel("gen_ai_provider"), "gen_ai.request.model": cel("request_model"),
             "gen_ai.response.model": cel("response_model"), "gen_ai.operation.name": f"({OPERATION})"}
    dims = {prometheus_name(k): f"{guard} ? {v} : 'unknown'" for k, v in attrs.items()}
    dims["llm_provider"] = f"{guard} ? {cel('provider')} : 'unknown'"  # prices are an LLMProvider's
    return Metric(COST_DEFINITION, "COUNTER", answer_cost(priced), {**dims, **KEY_ID, **WORKLOAD},
                  unit=cost_unit, llmc_name=COST_NAME, attributes={prometheus_name(k): k for k in attrs})


_LEGACY_DIMENSIONS = {"llm_provider": cel("provider"), "llm_model": cel("request_model"), **KEY_ID, **WORKLOAD}


def legacy_metrics() -> list[Metric]:
    return [Metric(f"llm_{k}_tokens", "COUNTER", f"int({cel(f'request_{k}_tokens')})", dict(_LEGACY_DIMENSIONS))
            for k in ("prompt", "completion", "total")]


#: dimensions added to Istio's istio_requests_total and istio_request_duration_milliseconds
#: (Telemetry tagOverrides)
GENAI_REQUEST_TAGS = {"gen_ai_provider_name": cel("gen_ai_provider"), "gen_ai_request_model": cel("request_model"),
                      **KEY_ID}
LEGACY_REQUEST_TAGS = {"llm_model": cel("request_model"), "llm_provider": cel("provider"), **KEY_ID}

#: Istio's standard metrics: a second stats filter instance drops them all (Istio already counts them)
ISTIO_STANDARD_METRICS = ("requests_total", "request_duration_milliseconds", "request_bytes", "response_bytes",
                          "request_messages_total", "response_messages_total", "tcp_connections_opened_total",
                          "tcp_connections_closed_total", "tcp_sent_bytes_total", "tcp_received_bytes_total")
#: the name of llmc's second stats filter (its type is istio.stats'; Envoy picks a filter by type)
OUTPUT_STATS_FILTER = "llmc.stats.output_tokens"


@dataclass(frozen=True)
class StatsPatch:
    """One EnvoyFilter patch of the HTTP filter chain: ``MERGE`` into Istio's ``istio.stats``, or
    ``INSERT_AFTER`` it a second ``stats.PluginConfig`` filter that records only its own metrics."""

    operation: str
    metrics: tuple[Metric, ...]
    name: str | None = None  # the inserted filter's name
    drop: tuple[str, ...] = ()  # Istio's metrics this instance does not record


def stats_patches(legacy: bool = False, cost: Metric | None = None) -> list[StatsPatch]:
    """What ``render --telemetry`` adds to the stats filter.

    istio.stats keeps one custom metric per name and records it once per request with one set of
    labels (``istio_stats.cc``: ``custom_metrics_`` is keyed by name, ``recordCustomMetrics`` records
    each once), so ``gen_ai_client_token_usage{gen_ai_token_type="input"}`` and ``…="output"`` cannot
    come from one filter. The input sample comes from Istio's own filter; the output sample from a
    second instance of the same filter type inserted after it, which drops Istio's standard metrics
    (else each request would count twice) and defines the same histogram with the output value: the
    same stat name, so Prometheus sees one histogram with both label values. The cost counter
    (``cost``: where the proxies reach priced providers) joins Istio's filter, in either set of names
    (it is new: it has no legacy name)."""
    extra = (cost,) if cost is not None else ()
    if legacy:
        return [StatsPatch("MERGE", (*legacy_metrics(), *extra))]
    tokens_in, tokens_out, *times = genai_metrics()
    return [StatsPatch("MERGE", (tokens_in, *times, *extra)),
            StatsPatch("INSERT_AFTER", (tokens_out,), name=OUTPUT_STATS_FILTER, drop=ISTIO_STANDARD_METRICS)]


def request_tags(legacy: bool = False) -> dict[str, str]:
    return dict(LEGACY_REQUEST_TAGS if legacy else GENAI_REQUEST_TAGS)
