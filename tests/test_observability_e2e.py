"""Token usage in access logs, in real Envoy, with the access-log format `llmc meshconfig` prints.

The sidecar gets two access logs: the one istiod builds from llmc's MeshConfig provider, and one
whose fields are the CEL expressions of llmc's token-metric EnvoyFilter (`render --telemetry`) put
through Envoy's CEL formatter — istio.stats is not in upstream Envoy, so this is how its
expressions are checked against the same dynamic metadata.

The official ``openai`` SDK is the client (tests/support/sdk.py): it asks for gzip and sends
``stream_options`` itself; raw HTTP only for a body that is not JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import openai
import pytest
import trustme
from ruamel.yaml import YAML

from tests.conftest import REPO
from tests.support.envoy_harness import Envoy, access_log
from tests.support.mesh import llmc_render, seed_mesh
from tests.support.sdk import APP_KEY, SENT, chat, chat_stream
from tests.support.upstream import start_upstreams
from tests.test_envoy_e2e import call

pytestmark = pytest.mark.envoy
HOSTS = ("dashscope.aliyuncs.com", "api.moonshot.cn", "stream.example.com", "tiny.example.com", "keyed.example.com")


def meshconfig_labels() -> dict[str, str]:
    out = subprocess.run([sys.executable, "-m", "compiler.cli", "meshconfig"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    (doc,) = [d for d in YAML(typ="safe").load_all(out) if d]
    (provider,) = doc["extensionProviders"]
    return provider["envoyFileAccessLog"]["logFormat"]["labels"]


def metric_expressions() -> dict[str, str]:
    objects = llmc_render("-f", "samples/seed", "--telemetry")
    (ef,) = [o for o in objects if o["metadata"]["name"] == "llmc-token-metrics"]
    cfg = ef["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]
    exprs = {d["name"]: f"%CEL(int({d['value']}))%" for d in cfg["definitions"]}
    exprs.update({k: f"%CEL({v})%" for k, v in cfg["metrics"][0]["dimensions"].items()})
    return exprs


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("obs")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    ups = start_upstreams(ca, HOSTS[:2], HOSTS[2:], sse_pause=0.3)
    (d / "secrets" / "llm-keys").mkdir(parents=True)
    (d / "secrets" / "llm-keys" / "keyed").write_text("k")
    logs = [access_log(str(d / "access.log"), meshconfig_labels()),
            access_log(str(d / "metrics.log"), metric_expressions())]
    layout = seed_mesh({h: u.port for h, u in ups.items()}, str(d / "ca.pem"), d / "secrets", access_logs=logs)
    assert layout.unmatched == []
    # a connection buffer below llmc's largest buffered response (Istio 1.31's gateway profile has
    # 32 KiB): the route's body buffer limit, which llmc sets, must be what bounds it
    layout.bootstrap["static_resources"]["listeners"][0]["per_connection_buffer_limit_bytes"] = 16384
    envoy = Envoy(layout.bootstrap)
    yield envoy, d, ups
    envoy.stop()
    for u in ups.values():
        u.stop()


def last_line(path, previous: int, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        lines = text[:text.rfind("\n") + 1].splitlines()  # complete lines only: Envoy may be mid-write
        if len(lines) > previous:
            return json.loads(lines[-1])
        time.sleep(0.02)
    raise AssertionError(f"no new access-log line in {path}")


def logged(env, send) -> tuple[object, dict, dict]:
    """``send(port)``'s result (or the SDK's exception for an error status) and the two new log lines."""
    envoy, d, _ = env
    before = {n: len((d / n).read_text().splitlines()) if (d / n).exists() else 0 for n in ("access.log", "metrics.log")}
    try:
        result = send(envoy.port)
    except openai.APIStatusError as err:
        result = err
    return result, last_line(d / "access.log", before["access.log"]), last_line(d / "metrics.log", before["metrics.log"])


def test_non_streaming_usage(env):
    completion, log, metrics = logged(env, lambda port: chat(port, "dashscope.aliyuncs.com",
                                                             headers={"user-type": "subscriber"}))
    assert completion.model == "qwen-turbo-2026" and completion.usage.total_tokens == 18  # what the app got
    assert log["method"] == "POST" and log["authority"] == "dashscope.aliyuncs.com"  # the SDK's Host header
    assert log["response_code"] == 200
    assert log["llm_provider"] == "dashscope-qwen" and log["route_name"] == "llmc/default/dashscope-route/vip-route"
    assert log["llm_rule"] == "default/dashscope-route/vip-route"
    assert log["request_model"] == "qwen-turbo" and log["response_model"] == "qwen-turbo-2026"
    assert (log["request_prompt_tokens"], log["request_completion_tokens"], log["request_total_tokens"]) == (11, 7, 18)
    # the CEL formatter prints values as text; istio.stats parses a COUNTER's value as an integer
    assert tuple(int(metrics[k]) for k in ("llm_prompt_tokens", "llm_completion_tokens", "llm_total_tokens")) == (11, 7, 18)
    assert metrics["llm_provider"] == "dashscope-qwen" and metrics["llm_model"] == "qwen-turbo"
    assert metrics["source_workload"] == "sleep" and metrics["source_workload_namespace"] == "default"


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
    completion, log, _ = logged(env, lambda port: chat(port, host, headers=headers))
    assert completion.choices[0].message.content == "hi" + "." * pad
    assert log["response_code"] == 200 and log["response_model"] == model
    assert (log["request_prompt_tokens"], log["request_completion_tokens"], log["request_total_tokens"]) == (11, 7, 18)


def test_streaming_usage_is_read_from_the_last_event(env):
    """The app streams and asks for usage: the provider's last event carries it, llmc logs it."""
    streamed, log, _ = logged(env, lambda port: chat_stream(port, "stream.example.com"))
    assert streamed.lead > 0.15, streamed.lead  # first event well before the end: the upstream pauses 0.3 s after it
    req = env[2]["stream.example.com"].requests[-1]
    assert req.json() == {**SENT, "model": "stream-model", "stream": True, "stream_options": {"include_usage": True}}
    assert streamed.chunks[-1].choices == [] and streamed.usage.prompt_tokens == 11
    assert log["authority"] == "stream.example.com"
    assert log["request_model"] == "stream-model" and log["response_model"] == "stream-model-2026"
    assert (log["request_prompt_tokens"], log["request_completion_tokens"], log["request_total_tokens"]) == (11, 7, 18)


def test_streamed_usage_is_kept_when_the_client_leaves_at_done(env):
    """The official SDK stops reading at ``data: [DONE]`` and closes the connection; the provider's
    stream ends a moment later (here 0.5 s), so Envoy never sees its end. The model and the usage
    passed before [DONE]: llmc records them as they pass, and they are in the log."""
    streamed, log, metrics = logged(env, lambda port: chat_stream(port, "stream.example.com",
                                                                   headers={"x-test-linger": "0.5"}))
    assert streamed.usage.prompt_tokens == 11
    assert "DC" in log["response_flags"]  # the client left before the end (downstream connection termination)
    assert log["request_model"] == "stream-model" and log["response_model"] == "stream-model-2026"
    assert (log["request_prompt_tokens"], log["request_completion_tokens"], log["request_total_tokens"]) == (11, 7, 18)
    assert tuple(int(metrics[k]) for k in ("llm_prompt_tokens", "llm_completion_tokens", "llm_total_tokens")) == (11, 7, 18)


def test_an_app_that_streams_by_itself_gets_the_stream_it_asked_for(env):
    """`stream: true` sent by the app is the app's choice: llmc adds no usage event the app did not ask
    for (code reading `chunk.choices[0]` would break on it); the log then has no token counts."""
    streamed, log, _ = logged(env, lambda port: chat_stream(port, "stream.example.com", stream_options={}))
    req = env[2]["stream.example.com"].requests[-1]
    assert req.json() == {**SENT, "model": "stream-model", "stream": True}
    assert all(c.choices for c in streamed.chunks) and streamed.usage is None
    assert log["request_model"] == "stream-model" and log["request_prompt_tokens"] is None


def test_llmc_asks_for_usage_when_config_turns_streaming_on(env):
    """A caller that says nothing about streaming (the seed's curl) is streamed by config: llmc asks
    the provider for the usage event and logs the tokens."""
    (status, _, payload), log, _ = logged(env, lambda _: call(env[0], "stream.example.com"))
    assert status == 200 and b'"usage":' in payload
    req = env[2]["stream.example.com"].requests[-1]
    assert req.json()["stream"] is True and req.json()["stream_options"] == {"include_usage": True}
    assert (log["request_prompt_tokens"], log["request_completion_tokens"], log["request_total_tokens"]) == (11, 7, 18)


@pytest.mark.parametrize("headers", [{"x-test-usage": "none"}, {"x-test-usage": "malformed"},
                                     {"x-test-status": "503"}], ids=["no-usage", "malformed", "5xx"])
def test_responses_without_usable_usage_log_cleanly(env, headers):
    result, log, metrics = logged(env, lambda port: chat(port, "api.moonshot.cn", headers=headers))
    if "x-test-status" in headers:
        assert type(result) is openai.InternalServerError and result.status_code == 503
    else:
        assert result.model == "moonshot-v1-8k-2026"
    assert log["response_code"] == int(headers.get("x-test-status", 200))
    assert log["llm_provider"] == "moonshot" and log["request_model"] == "moonshot-v1-8k"
    assert log["request_prompt_tokens"] is None and log["request_total_tokens"] is None
    assert metrics["llm_model"] == "moonshot-v1-8k"
    envoy = env[0]
    assert "internal error" not in envoy.logs()


def test_client_stream_options_are_kept(env):
    streamed, log, _ = logged(env, lambda port: chat_stream(port, "stream.example.com",
                                                            stream_options={"include_usage": False}))
    req = env[2]["stream.example.com"].requests[-1]
    assert req.json()["stream_options"] == {"include_usage": False}
    assert streamed.text == "Hello" and streamed.usage is None  # no usage event: the app did not ask
    assert req.headers["authorization"] == f"Bearer {APP_KEY}"  # streamer configures no key of its own
    assert log["request_prompt_tokens"] is None


def test_rejected_requests_are_attributed_without_usage(env):
    """llmc's own error replies carry the rule and the provider in the access log."""
    (status, _, _), log, _ = logged(env, lambda _: call(env[0], "dashscope.aliyuncs.com", body="not json"))
    assert status == 400 and log["response_code"] == 400
    assert log["llm_provider"] == "dashscope-qwen" and log["llm_rule"] == "default/dashscope-route/rule-1"
    assert log["request_prompt_tokens"] is None
