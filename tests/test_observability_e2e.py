"""Token usage in access logs, in real Envoy, with the access-log format `llmc meshconfig` prints.

The sidecar gets two access logs: the one istiod builds from llmc's MeshConfig provider, and one
whose fields are the CEL expressions of llmc's token-metric EnvoyFilter (`render --telemetry`) put
through Envoy's CEL formatter — istio.stats is not in upstream Envoy, so this is how its
expressions are checked against the same dynamic metadata.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time

import pytest
import trustme
from ruamel.yaml import YAML

from tests.conftest import REPO
from tests.support.envoy_harness import Envoy, access_log
from tests.support.mesh import llmc_render, seed_mesh
from tests.support.upstream import start_upstreams
from tests.test_envoy_e2e import CHAT, call

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
    envoy = Envoy(layout.bootstrap)
    yield envoy, d
    envoy.stop()
    for u in ups.values():
        u.stop()


def last_line(path, previous: int, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) > previous:
            return json.loads(lines[-1])
        time.sleep(0.02)
    raise AssertionError(f"no new access-log line in {path}")


def logged(env, host: str, body: str = CHAT, headers: dict | None = None) -> tuple[int, dict, dict, bytes]:
    envoy, d = env
    before = {n: len((d / n).read_text().splitlines()) if (d / n).exists() else 0 for n in ("access.log", "metrics.log")}
    status, _, payload = call(envoy, host, body=body, headers=headers)
    return status, last_line(d / "access.log", before["access.log"]), last_line(d / "metrics.log", before["metrics.log"]), payload


def test_non_streaming_usage(env):
    status, log, metrics, _ = logged(env, "dashscope.aliyuncs.com", headers={"user-type": "subscriber"})
    assert status == 200
    assert log["llm_provider"] == "dashscope-qwen" and log["route_name"] == "llmc/default/dashscope-route/vip-route"
    assert log["llm_rule"] == "default/dashscope-route/vip-route"
    assert log["request_model"] == "qwen-turbo" and log["response_model"] == "qwen-turbo-2026"
    assert (log["request_prompt_tokens"], log["request_completion_tokens"], log["request_total_tokens"]) == (11, 7, 18)
    # the CEL formatter prints values as text; istio.stats parses a COUNTER's value as an integer
    assert tuple(int(metrics[k]) for k in ("llm_prompt_tokens", "llm_completion_tokens", "llm_total_tokens")) == (11, 7, 18)
    assert metrics["llm_provider"] == "dashscope-qwen" and metrics["llm_model"] == "qwen-turbo"
    assert metrics["source_workload"] == "sleep" and metrics["source_workload_namespace"] == "default"


def test_streaming_usage_is_requested_and_read_from_the_last_event(env):
    envoy, d = env
    before = len((d / "access.log").read_text().splitlines())
    conn = http.client.HTTPConnection("127.0.0.1", envoy.port, timeout=30)
    start = time.monotonic()
    conn.request("POST", "/", body=CHAT, headers={"host": "stream.example.com"})
    resp = conn.getresponse()
    first = resp.read1(65536)
    ttfb = time.monotonic() - start
    rest = resp.read()
    conn.close()
    assert first.startswith(b"data: ") and ttfb < 0.25, ttfb  # first event before the upstream's pause
    assert b'"usage": {"prompt_tokens": 11' in rest  # llmc asked for usage: stream_options.include_usage
    log = last_line(d / "access.log", before)
    assert log["request_model"] == "stream-model" and log["response_model"] == "stream-model-2026"
    assert (log["request_prompt_tokens"], log["request_completion_tokens"], log["request_total_tokens"]) == (11, 7, 18)


@pytest.mark.parametrize("headers", [{"x-test-usage": "none"}, {"x-test-usage": "malformed"},
                                     {"x-test-status": "503"}], ids=["no-usage", "malformed", "5xx"])
def test_responses_without_usable_usage_log_cleanly(env, headers):
    status, log, metrics, _ = logged(env, "api.moonshot.cn", headers=headers)
    assert status == int(headers.get("x-test-status", 200))
    assert log["llm_provider"] == "moonshot" and log["request_model"] == "moonshot-v1-8k"
    assert log["request_prompt_tokens"] is None and log["request_total_tokens"] is None
    assert metrics["llm_model"] == "moonshot-v1-8k"
    envoy = env[0]
    assert "internal error" not in envoy.logs()


def test_client_stream_options_are_kept(env):
    body = json.dumps({"messages": [], "stream_options": {"include_usage": False}})
    status, log, _, payload = logged(env, "stream.example.com", body=body)
    assert status == 200 and b'"usage": {' not in payload
    assert log["request_prompt_tokens"] is None


def test_rejected_requests_are_attributed_without_usage(env):
    """llmc's own error replies carry the rule and the provider in the access log."""
    status, log, _, _ = logged(env, "dashscope.aliyuncs.com", body="not json")
    assert status == 400 and log["response_code"] == 400
    assert log["llm_provider"] == "dashscope-qwen" and log["llm_rule"] == "default/dashscope-route/rule-1"
    assert log["request_prompt_tokens"] is None
