"""Observability on stock Istio: the access-log provider, Telemetry resources, token metrics.

The Lua filter records, as dynamic metadata in namespace ``llmc``: ``provider``, ``rule``
(``<namespace>/<LLMRoute or LLMProvider>/<rule>``), ``request_model``
(the model llmc set), ``response_model`` (the model the provider reported), ``api_key_id`` (which
of a provider's several keys the request used: its index; docs/api-keys.md), and
``request_prompt_tokens``, ``request_completion_tokens``, ``request_total_tokens`` (the seed
system's names).

* :func:`mesh_config` — the MeshConfig ``extensionProviders`` entry (an Envoy file access log with a
  JSON format) that ``llmc meshconfig`` prints; istiod turns ``logFormat.labels`` into Envoy's
  ``json_format``.
* ``compiler/translate/telemetry.py`` — with ``llmc render --telemetry``, per namespace whose proxies shape
  LLM traffic: a ``Telemetry`` enabling that provider and adding ``llm_model``/``llm_provider`` as
  dimensions of ``istio_requests_total`` and ``istio_request_duration_milliseconds``
  (``tagOverrides``), and an EnvoyFilter that MERGEs token
  counter ``definitions`` into Istio's stats filter (the Telemetry API cannot define metrics).
"""

from __future__ import annotations

PROVIDER_NAME = "llmc-access-log"
NS = "llmc"


def _md(key: str) -> str:
    return f"%DYNAMIC_METADATA({NS}:{key})%"


ACCESS_LOG_LABELS: dict[str, str] = {
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
    "llm_provider": _md("provider"),
    "llm_rule": _md("rule"),
    "llm_api_key_id": _md("api_key_id"),  # several keys per provider: the key's index (docs/api-keys.md)
    "request_model": _md("request_model"),
    "response_model": _md("response_model"),
    "request_prompt_tokens": _md("request_prompt_tokens"),
    "request_completion_tokens": _md("request_completion_tokens"),
    "request_total_tokens": _md("request_total_tokens"),
}


def cel(key: str) -> str:
    return f"metadata.filter_metadata['{NS}']['{key}']"


#: Token counters through Istio's stats filter: COUNTER values are added per request.
TOKEN_METRICS = {
    "llm_prompt_tokens": cel("request_prompt_tokens"),
    "llm_completion_tokens": cel("request_completion_tokens"),
    "llm_total_tokens": cel("request_total_tokens"),
}
TOKEN_DIMENSIONS = {
    "llm_provider": cel("provider"),
    "llm_model": cel("request_model"),
    "llm_api_key_id": cel("api_key_id"),
    "source_workload": "xds.node.metadata['WORKLOAD_NAME']",
    "source_workload_namespace": "xds.node.metadata['NAMESPACE']",
}
REQUEST_TAGS = {"llm_model": cel("request_model"), "llm_provider": cel("provider"),
                "llm_api_key_id": cel("api_key_id")}


def mesh_config() -> dict:
    return {"extensionProviders": [{"name": PROVIDER_NAME, "envoyFileAccessLog": {
        "path": "/dev/stdout", "logFormat": {"labels": dict(ACCESS_LOG_LABELS)}}}]}
