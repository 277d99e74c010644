"""Token usage in access logs, in real Envoy, with the access-log format `llmc meshconfig` prints:
OpenTelemetry's GenAI names (issue 34), the legacy names of ``--legacy-telemetry-names``, and the
same fields as OTLP log records (``--otel``) received by a collector built on opentelemetry-proto.

The sidecar gets the access logs istiod builds from llmc's MeshConfig providers, and one whose
fields are the CEL expressions of llmc's metrics EnvoyFilter (`render --telemetry`) put through
Envoy's CEL formatter — istio.stats is not in upstream Envoy, so this is how its expressions are
checked against the same dynamic metadata.

The official ``openai`` SDK is the client (tests/support/sdk.py): it asks for gzip and sends
``stream_options`` itself; raw HTTP only for a body that is not JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass

import openai
import pytest
import trustme
from ruamel.yaml import YAML

from tests.conftest import REPO
from tests.support.envoy_harness import Envoy, access_log, grpc_cluster, otel_access_log
from tests.support.mesh import llmc_render, seed_mesh
from tests.support.otlp import Receiver
from tests.support.sdk import APP_KEY, SENT, chat, chat_stream
from tests.support.upstream import start_upstreams
from tests.test_envoy_e2e import call

pytestmark = pytest.mark.envoy
HOSTS = ("dashscope.aliyuncs.com", "api.moonshot.cn", "stream.example.com", "tiny.example.com", "keyed.example.com")
TOKENS = ("gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens")
LEGACY_TOKENS = ("request_prompt_tokens", "request_completion_tokens", "request_total_tokens")


def meshconfig_provider(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "compiler.cli", "meshconfig", *args], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    (doc,) = [d for d in YAML(typ="safe").load_all(out) if d]
    (provider,) = doc["extensionProviders"]
    return provider


def meshconfig_labels(*args: str) -> dict[str, str]:
    return meshconfig_provider(*args)["envoyFileAccessLog"]["logFormat"]["labels"]


def metric_expressions(*render_args: str) -> dict[str, str]:
    """Every value and label of the metrics EnvoyFilter as a CEL access-log field: ``<metric>`` for a
    value, ``<metric>/<label>`` for a label; the token histogram's two samples are
    ``gen_ai_client_token_usage.input`` and ``….output`` (Istio's filter and llmc's second one)."""
    objects = llmc_render("-f", "samples/seed", "--telemetry", *render_args)
    (ef,) = [o for o in objects if o["metadata"]["name"] == "llmc-token-metrics"]
    exprs: dict[str, str] = {}
    for patch in ef["spec"]["configPatches"]:
        cfg = patch["patch"]["value"]["typed_config"]
        dims = {m["name"]: m["dimensions"] for m in cfg["metrics"] if "dimensions" in m}
        for d in cfg["definitions"]:
            key = d["name"]
            if key == "gen_ai_client_token_usage":
                key += ".output" if patch["patch"]["operation"] == "INSERT_AFTER" else ".input"
            exprs[key] = f"%CEL({d['value']})%"
            exprs.update({f"{key}/{label}": f"%CEL({v})%" for label, v in dims[d["name"]].items()})
    return exprs


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("obs")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    ups = start_upstreams(ca, HOSTS[:2], HOSTS[2:], sse_pause=0.3)
    (d / "secrets" / "llm-keys").mkdir(parents=True)
    (d / "secrets" / "llm-keys" / "keyed").write_text("k")
    receiver = Receiver()
    logs = [access_log(str(d / "access.log"), meshconfig_labels()),
            access_log(str(d / "legacy.log"), meshconfig_labels("--legacy-telemetry-names")),
            access_log(str(d / "metrics.log"), metric_expressions()),
            otel_access_log("otel-collector", meshconfig_provider("--otel", "otel-collector.observability.svc"))]
    layout = seed_mesh({h: u.port for h, u in ups.items()}, str(d / "ca.pem"), d / "secrets", access_logs=logs)
    assert layout.unmatched == []
    layout.bootstrap["static_resources"]["clusters"].append(grpc_cluster("otel-collector", receiver.port))
    # a connection buffer below llmc's largest buffered response (Istio 1.31's gateway profile has
    # 32 KiB): the route's body buffer limit, which llmc sets, must be what bounds it
    layout.bootstrap["static_resources"]["listeners"][0]["per_connection_buffer_limit_bytes"] = 16384
    envoy = Envoy(layout.bootstrap)
    yield envoy, d, ups, receiver
    envoy.stop()
    receiver.stop()
    for u in ups.values():
        u.stop()


LOGS = ("access.log", "legacy.log", "metrics.log")


def last_line(path, previous: int, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        lines = text[:text.rfind("\n") + 1].splitlines()  # complete lines only: Envoy may be mid-write
        if len(lines) > previous:
            return json.loads(lines[-1])
        time.sleep(0.02)
    raise AssertionError(f"no new access-log line in {path}")


@dataclass
class Logged:
    result: object  # what the client got (or the SDK's exception for an error status)
    log: dict  # the access log in GenAI names
    legacy: dict  # the access log in the legacy names
    metrics: dict  # the metrics' CEL expressions, evaluated


def logged(env, send) -> Logged:
    """``send(port)``'s result and the new line of each log."""
    envoy, d = env[0], env[1]
    before = {n: len((d / n).read_text().splitlines()) if (d / n).exists() else 0 for n in LOGS}
    try:
        result = send(envoy.port)
    except openai.APIStatusError as err:
        result = err
    return Logged(result, *(last_line(d / n, before[n]) for n in LOGS))


def tokens(entry: dict) -> tuple:
    return tuple(entry[k] for k in TOKENS)


def metric_tokens(metrics: dict) -> tuple[int, int]:
    return int(metrics["gen_ai_client_token_usage.input"]), int(metrics["gen_ai_client_token_usage.output"])


def test_non_streaming_usage(env):
    out = logged(env, lambda port: chat(port, "dashscope.aliyuncs.com", headers={"user-type": "subscriber"}))
    completion, log, metrics = out.result, out.log, out.metrics
    assert completion.model == "qwen-turbo-2026" and completion.usage.total_tokens == 18  # what the app got
    assert log["method"] == "POST" and log["authority"] == "dashscope.aliyuncs.com"  # the SDK's Host header
    assert log["response_code"] == 200
    assert log["llm_provider"] == "dashscope-qwen" and log["route_name"] == "llmc/default/dashscope-route/vip-route"
    assert log["llm_rule"] == "default/dashscope-route/vip-route"
    # DashScope has no well-known gen_ai.provider.name: the LLMProvider's name
    assert log["gen_ai.provider.name"] == "dashscope-qwen" and log["gen_ai.operation.name"] == "chat"
    assert log["gen_ai.request.model"] == "qwen-turbo" and log["gen_ai.response.model"] == "qwen-turbo-2026"
    assert tokens(log) == (11, 7) and log["gen_ai.response.finish_reasons"] == ["stop"]
    # not reported by this provider, and not a stream: no value (null), never 0
    assert log["gen_ai.usage.cache_read.input_tokens"] is None and log["gen_ai.usage.reasoning.output_tokens"] is None
    assert log["gen_ai.response.time_to_first_chunk"] is None
    assert "request_model" not in log and "request_total_tokens" not in log  # renamed, not duplicated
    # the legacy names (--legacy-telemetry-names), same request
    legacy = out.legacy
    assert legacy["request_model"] == "qwen-turbo" and legacy["response_model"] == "qwen-turbo-2026"
    assert tuple(legacy[k] for k in LEGACY_TOKENS) == (11, 7, 18) and legacy["llm_provider"] == "dashscope-qwen"
    assert not any(k.startswith("gen_ai.") for k in legacy)
    # the CEL formatter prints values as text; istio.stats parses a value as an unsigned integer
    assert metric_tokens(metrics) == (11, 7)
    for sample, token_type in (("input", "input"), ("output", "output")):
        m = f"gen_ai_client_token_usage.{sample}"
        assert metrics[f"{m}/gen_ai_token_type"] == token_type
        assert metrics[f"{m}/gen_ai_provider_name"] == "dashscope-qwen"
        assert metrics[f"{m}/gen_ai_request_model"] == "qwen-turbo"
        assert metrics[f"{m}/gen_ai_response_model"] == "qwen-turbo-2026"
        assert metrics[f"{m}/gen_ai_operation_name"] == "chat"
        assert metrics[f"{m}/source_workload"] == "sleep" and metrics[f"{m}/source_workload_namespace"] == "default"
    duration = "gen_ai_client_operation_duration_milliseconds"
    assert 0 <= int(metrics[duration]) <= int(log["duration_ms"]) + 1
    assert metrics[f"{duration}/gen_ai_operation_name"] == "chat"
    # no stream: the time-to-first-chunk sample istio.stats records anyway is labelled unknown
    ttfc = "gen_ai_client_operation_time_to_first_chunk_milliseconds"
    assert metrics[f"{ttfc}/gen_ai_operation_name"] == "unknown" and metrics[f"{ttfc}/gen_ai_request_model"] == "unknown"


@pytest.mark.parametrize("host,pad,model", [
    ("dashscope.aliyuncs.com", 40_000, "qwen-turbo-2026"),
    # tiny's maxRequestBytes (4096) gives its routes the smallest buffer limit llmc sets (4 KiB +
    # 64 KiB): an answer just under 64 KiB fits it, one over it would not, so it must stream
    ("tiny.example.com", 65_000, "tiny-model-2026"), ("tiny.example.com", 80_000, "tiny-model-2026")],
    ids=["read-whole", "read-whole-at-the-smallest-route-limit", "read-by-chunks-over-the-route-limit"])
def test_usage_of_large_answers_is_read_whole_or_by_chunks(env, host, pad, model):
    """JSON answers up to 64 KiB are read with body() (one yield), larger ones chunk by chunk; all
    pass whole, over a listener whose connection buffer (16 KiB) is smaller than any of them: the
    route's body buffer limit bounds a buffered answer, and an answer over it is never buffered."""
    headers = {"user-type": "subscriber", "x-test-pad": str(pad)}
    out = logged(env, lambda port: chat(port, host, headers=headers))
    assert out.result.choices[0].message.content == "hi" + "." * pad
    assert out.log["response_code"] == 200 and out.log["gen_ai.response.model"] == model
    assert tokens(out.log) == (11, 7) and out.log["gen_ai.response.finish_reasons"] == ["stop"]


def test_streaming_usage_is_read_from_the_last_event(env):
    """The app streams and asks for usage: the provider's last event carries it, llmc logs it, and
    the time to the stream's first chunk."""
    out = logged(env, lambda port: chat_stream(port, "stream.example.com", hold=env[2]["stream.example.com"]))
    streamed, log, metrics = out.result, out.log, out.metrics
    assert streamed.lead > 0.15, streamed.lead  # first event well before the end: the upstream pauses 0.3 s after it
    req = env[2]["stream.example.com"].requests[-1]
    assert req.json() == {**SENT, "model": "stream-model", "stream": True, "stream_options": {"include_usage": True}}
    assert streamed.chunks[-1].choices == [] and streamed.usage.prompt_tokens == 11
    assert log["authority"] == "stream.example.com"
    assert log["gen_ai.request.model"] == "stream-model" and log["gen_ai.response.model"] == "stream-model-2026"
    assert tokens(log) == (11, 7) and log["gen_ai.response.finish_reasons"] == ["stop"]
    # the first chunk came before the upstream's 0.3 s pause, so at least 0.2 s before the end
    first = float(log["gen_ai.response.time_to_first_chunk"])
    assert 0 <= first * 1000 <= int(log["duration_ms"]) - 200, (first, log["duration_ms"])
    ttfc = "gen_ai_client_operation_time_to_first_chunk_milliseconds"
    assert abs(int(metrics[ttfc]) - first * 1000) <= 1 and metrics[f"{ttfc}/gen_ai_request_model"] == "stream-model"
    assert metric_tokens(metrics) == (11, 7)


def test_streamed_usage_is_kept_when_the_client_leaves_at_done(env):
    """The official SDK stops reading at ``data: [DONE]`` and closes the connection; the provider's
    stream would end later (the double waits until Envoy closed its connection), so Envoy never sees
    its end. The model and the usage passed before [DONE]: llmc records them as they pass, and they
    are in the log."""
    out = logged(env, lambda port: chat_stream(port, "stream.example.com", headers={"x-test-linger": "10"}))
    log = out.log
    assert out.result.usage.prompt_tokens == 11
    assert "DC" in log["response_flags"]  # the client left before the end (downstream connection termination)
    assert log["gen_ai.request.model"] == "stream-model" and log["gen_ai.response.model"] == "stream-model-2026"
    assert tokens(log) == (11, 7) and log["gen_ai.response.finish_reasons"] == ["stop"]
    assert log["gen_ai.response.time_to_first_chunk"] is not None
    assert tuple(out.legacy[k] for k in LEGACY_TOKENS) == (11, 7, 18)
    assert metric_tokens(out.metrics) == (11, 7)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_cache_and_reasoning_tokens(env, stream):
    """OpenAI's usage details: cached prompt tokens and reasoning tokens, from a JSON answer and from
    a stream's usage event."""
    headers = {"x-test-usage": "details"}
    if stream:
        out = logged(env, lambda port: chat_stream(port, "stream.example.com", headers=headers))
    else:
        out = logged(env, lambda port: chat(port, "api.moonshot.cn", headers=headers))
    log = out.log
    assert tokens(log) == (11, 7)
    assert log["gen_ai.usage.cache_read.input_tokens"] == 4 and log["gen_ai.usage.reasoning.output_tokens"] == 3
    assert log["gen_ai.usage.cache_creation.input_tokens"] is None  # OpenAI reports no cache writes
    assert log["gen_ai.provider.name"] == ("streamer" if stream else "moonshot_ai")  # LLMProvider streamer: none well known


def test_otlp_records_carry_the_genai_attributes(env):
    """``llmc meshconfig --otel``: the same fields reach an OTLP/gRPC collector as log attributes."""
    receiver = env[3]
    marker = "otlp-record"
    # Envoy's gRPC access logger is best effort: entries buffered while its stream to the collector
    # fails (a starved machine) are dropped, not resent. The test is about what a record carries, so
    # it sends the request again (5 s apart, a minute at most) until one arrives.
    record = None
    for _ in range(12):
        chat(env[0].port, "api.moonshot.cn", headers={"x-test-usage": "details"}, extra_query={"t": marker})
        try:
            record = receiver.wait_for_attribute("path", marker, timeout=5.0)
            break
        except AssertionError:
            continue
    assert record is not None, f"no OTLP record with {marker!r} among {len(receiver.records)} in a minute"
    # Envoy's OpenTelemetry access logger sends every attribute as a string
    assert record["gen_ai.provider.name"] == "moonshot_ai" and record["gen_ai.operation.name"] == "chat"
    assert record["gen_ai.request.model"] == "moonshot-v1-8k" and record["gen_ai.response.model"] == "moonshot-v1-8k-2026"
    assert (record["gen_ai.usage.input_tokens"], record["gen_ai.usage.output_tokens"]) == ("11", "7")
    assert record["gen_ai.usage.cache_read.input_tokens"] == "4"
    assert record["gen_ai.usage.reasoning.output_tokens"] == "3"
    assert json.loads(record["gen_ai.response.finish_reasons"]) == ["stop"]
    assert record["llm_provider"] == "moonshot" and record["route_name"] == "llmc/default/moonshot/default"


def test_an_app_that_streams_by_itself_gets_the_stream_it_asked_for(env):
    """`stream: true` sent by the app is the app's choice: llmc adds no usage event the app did not ask
    for (code reading `chunk.choices[0]` would break on it); the log then has no token counts."""
    out = logged(env, lambda port: chat_stream(port, "stream.example.com", stream_options={}))
    req = env[2]["stream.example.com"].requests[-1]
    assert req.json() == {**SENT, "model": "stream-model", "stream": True}
    assert all(c.choices for c in out.result.chunks) and out.result.usage is None
    assert out.log["gen_ai.request.model"] == "stream-model" and out.log["gen_ai.usage.input_tokens"] is None
    assert out.log["gen_ai.response.finish_reasons"] == ["stop"]  # from the choices, with or without usage


def test_llmc_asks_for_usage_when_config_turns_streaming_on(env):
    """A caller that says nothing about streaming (the seed's curl) is streamed by config: llmc asks
    the provider for the usage event and logs the tokens."""
    out = logged(env, lambda _: call(env[0], "stream.example.com"))
    status, _, payload = out.result
    assert status == 200 and b'"usage":' in payload
    req = env[2]["stream.example.com"].requests[-1]
    assert req.json()["stream"] is True and req.json()["stream_options"] == {"include_usage": True}
    assert tokens(out.log) == (11, 7)


@pytest.mark.parametrize("headers", [{"x-test-usage": "none"}, {"x-test-usage": "malformed"},
                                     {"x-test-status": "503"}], ids=["no-usage", "malformed", "5xx"])
def test_responses_without_usable_usage_log_cleanly(env, headers):
    out = logged(env, lambda port: chat(port, "api.moonshot.cn", headers=headers))
    if "x-test-status" in headers:
        assert type(out.result) is openai.InternalServerError and out.result.status_code == 503
    else:
        assert out.result.model == "moonshot-v1-8k-2026"
    log = out.log
    assert log["response_code"] == int(headers.get("x-test-status", 200))
    assert log["llm_provider"] == "moonshot" and log["gen_ai.request.model"] == "moonshot-v1-8k"
    assert log["gen_ai.provider.name"] == "moonshot_ai"
    assert tokens(log) == (None, None) and out.legacy["request_total_tokens"] is None
    # no usage: the token samples istio.stats records anyway are labelled unknown, the duration's not
    assert out.metrics["gen_ai_client_token_usage.input/gen_ai_operation_name"] == "unknown"
    assert out.metrics["gen_ai_client_operation_duration_milliseconds/gen_ai_request_model"] == "moonshot-v1-8k"
    envoy = env[0]
    assert "internal error" not in envoy.logs()


def test_client_stream_options_are_kept(env):
    out = logged(env, lambda port: chat_stream(port, "stream.example.com", stream_options={"include_usage": False}))
    req = env[2]["stream.example.com"].requests[-1]
    assert req.json()["stream_options"] == {"include_usage": False}
    assert out.result.text == "Hello" and out.result.usage is None  # no usage event: the app did not ask
    assert req.headers["authorization"] == f"Bearer {APP_KEY}"  # streamer configures no key of its own
    assert out.log["gen_ai.usage.input_tokens"] is None


def test_rejected_requests_are_attributed_without_usage(env):
    """llmc's own error replies carry the rule and the provider in the access log."""
    out = logged(env, lambda _: call(env[0], "dashscope.aliyuncs.com", body="not json"))
    status, _, _ = out.result
    log = out.log
    assert status == 400 and log["response_code"] == 400
    assert log["llm_provider"] == "dashscope-qwen" and log["llm_rule"] == "default/dashscope-route/rule-1"
    assert log["gen_ai.provider.name"] == "dashscope-qwen" and log["gen_ai.usage.input_tokens"] is None
    assert log["gen_ai.response.finish_reasons"] is None


def test_requests_llmc_does_not_shape_have_no_genai_fields(env):
    """A host without llmc (the mesh's other traffic): every GenAI field is null, and the metrics'
    labels are unknown (istio.stats records every request on the listener)."""
    out = logged(env, lambda _: call(env[0], "other", path="/anything", body="{}"))
    assert all(v is None for k, v in out.log.items() if k.startswith("gen_ai.")), out.log
    # (no llmc metadata at all: the CEL formatter logs the error as null, istio.stats as "unknown")
    assert all(v is None for k, v in out.metrics.items() if "/gen_ai_" in k), out.metrics
