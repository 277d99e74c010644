"""Failover across providers, end to end through a real Envoy laid out as istiod 1.31 would.

Needs Envoy 1.39 or newer (Istio 1.31: ``RetryPolicy.refresh_cluster_on_retry``): the pinned test
Envoy (1.38.3) skips these tests, and ``python -m tests.envoy_versions 1.39.3`` (run by ``.ci/run``)
runs them. ``test_an_older_proxy_fails_closed`` runs on every Envoy: it lays the same output out for
an Istio 1.30 proxy, which the failover patches (``proxyVersion``) do not reach.

Each provider answers with its own key, path and model checked (``assert_shaped``), so a try shaped
for one provider and sent to another fails the test.
"""

from __future__ import annotations

import json
import subprocess

import openai
import pytest

from tests.conftest import TESTDATA
from tests.support.envoy_harness import Envoy, access_log, build_bootstrap, envoy_binary, envoy_minor, logged_entries
from tests.support.mesh import llmc_render, running_envoy
from tests.support.sdk import APP_KEY, SENT, chat, chat_stream, status_error
from tests.support.upstream import start_upstreams

pytestmark = pytest.mark.envoy

HOSTS = ("one.example.com", "two.example.com", "three.example.com")
KEYS = {"one.example.com": "sk-one-0000000000000000", "two.example.com": "sk-two-0000000000000000",
        "three.example.com": "sk-three-000000000000000"}
PATHS = {h: f"/{h.split('.')[0]}/chat/completions" for h in HOSTS}
MODELS = {h: f"{h.split('.')[0]}-model" for h in HOSTS}
ROUTE_HOST = "chat.example.com"

needs_failover = pytest.mark.skipif(
    envoy_minor() < (1, 39),
    reason="failover needs Envoy 1.39+ (Istio 1.31); run `python -m tests.envoy_versions 1.39.3` (.ci/run does)")


@pytest.fixture(scope="module")
def objects():
    return llmc_render("-f", str(TESTDATA / "e2e" / "failover.yaml"), "--istio-version", "1.31")


@pytest.fixture(scope="module")
def upstreams():
    ups = start_upstreams(None, (), HOSTS)
    yield ups
    for u in ups.values():
        u.stop()


LOG_FORMAT = {"provider": "%DYNAMIC_METADATA(llmc:provider)%", "first": "%DYNAMIC_METADATA(llmc:first_provider)%",
              "tries": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%", "mark": "%REQ(x-test-mark)%"}


@pytest.fixture(scope="module")
def access_log_path(tmp_path_factory):
    return tmp_path_factory.mktemp("failover") / "access.log"


@pytest.fixture(scope="module")
def envoy(objects, upstreams, access_log_path):
    if envoy_minor() < (1, 39):
        pytest.skip("failover needs Envoy 1.39+")
    with running_envoy(objects, upstreams, every_patch=True,
                       access_logs=[access_log(str(access_log_path), LOG_FORMAT)]) as proxy:
        yield proxy


@pytest.fixture(autouse=True)
def _clear(upstreams):
    for u in upstreams.values():
        u.clear()


def tries(upstreams) -> list[str]:
    """The providers that received a request, in arrival order of this test's requests."""
    got = [(r, h) for h, u in upstreams.items() for r in u.requests]
    return [h for _, h in got]


def assert_shaped(host: str, req, stream: bool | None = None) -> None:
    """A try as ``host`` must receive it: its key only, its path, its model, the client's body."""
    assert req.headers["authorization"] == f"Bearer {KEYS[host]}", (host, req.headers.get("authorization"))
    for other, key in KEYS.items():
        if other != host:
            assert key not in json.dumps(req.headers) and key.encode() not in req.body
    assert APP_KEY not in json.dumps(req.headers)
    assert req.path == PATHS[host]
    assert req.headers["host"] == host
    body = req.json()
    assert body["model"] == MODELS[host]
    assert body["messages"] == SENT["messages"]
    if stream is not None:
        assert body.get("stream") is stream
    assert not any(k.startswith("x-llmc-") for k in req.headers), req.headers


@needs_failover
def test_the_patched_config_passes_envoy_validate(objects, upstreams, tmp_path):
    """The harness's config (istiod's layout with llmc's failover patches) in Envoy's own validator."""
    layout = build_bootstrap(objects, {h: u.port for h, u in upstreams.items()}, None)
    text = json.dumps(layout.bootstrap)
    assert '"refresh_cluster_on_retry": true' in text and '"header_name": "x-llmc-order"' in text
    # one upstream Lua filter, in the router, for every provider cluster (none on the clusters)
    assert text.count('"name": "llmc.upstream"') == 1 and '"upstream_http_filters"' in text
    assert '"http_filters"' not in json.dumps(layout.bootstrap["static_resources"]["clusters"])
    path = tmp_path / "envoy.json"
    path.write_text(text)
    res = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and f"configuration '{path}' OK" in res.stdout + res.stderr, res.stderr[-2000:]


def case(name: str) -> dict:
    return {"x-case": name}


@needs_failover
@pytest.mark.parametrize("failure", ["429", "503", "reset"])
def test_a_failing_primary_moves_to_the_backup_shaped_for_it(envoy, upstreams, failure):
    upstreams["one.example.com"].fail = failure
    completion = chat(envoy.port, ROUTE_HOST, headers=case("backup"))
    assert completion.model == "two-model-2026"
    one, two = upstreams["one.example.com"].requests, upstreams["two.example.com"].requests
    assert len(one) == 1 and len(two) == 1
    assert_shaped("one.example.com", one[0])
    assert_shaped("two.example.com", two[0])


@needs_failover
def test_a_primary_that_hangs_past_the_per_try_timeout_moves_on(envoy, upstreams):
    """Rule `timeout` retries on `timeout` only (perTryTimeout 1s); p-one answers nothing for 3 s."""
    upstreams["one.example.com"].fail, upstreams["one.example.com"].hang = "hang", 3.0
    completion = chat(envoy.port, ROUTE_HOST, headers=case("timeout"))
    assert completion.model == "two-model-2026"
    assert_shaped("two.example.com", upstreams["two.example.com"].requests[0])


@needs_failover
def test_a_rule_that_retries_only_on_timeouts_does_not_retry_a_429(envoy, upstreams):
    upstreams["one.example.com"].fail = "429"
    err = status_error(chat, envoy.port, ROUTE_HOST, headers=case("timeout"))
    assert err.status_code == 429 and err.code == "rate_limit_exceeded"
    assert tries(upstreams) == ["one.example.com"]


@needs_failover
def test_a_stream_that_fails_after_its_first_event_is_not_retried(envoy, upstreams):
    """The first bytes reached the client: the client sees the broken stream; no second try."""
    upstreams["one.example.com"].fail = "stream-reset"
    with pytest.raises(openai.APIError):
        chat_stream(envoy.port, ROUTE_HOST, headers=case("backup"))
    assert tries(upstreams) == ["one.example.com"]
    assert_shaped("one.example.com", upstreams["one.example.com"].requests[0], stream=True)


@needs_failover
def test_a_stream_longer_than_the_per_try_timeout_is_not_cut(envoy, upstreams):
    """perTryTimeout (1s) bounds the wait for the response; a stream that has started runs on."""
    upstreams["one.example.com"].sse_pause = 2.0
    try:
        streamed = chat_stream(envoy.port, ROUTE_HOST, headers=case("backup"))
    finally:
        upstreams["one.example.com"].sse_pause = 0.6
    assert streamed.text == "Hello" and streamed.usage.total_tokens == 18
    assert tries(upstreams) == ["one.example.com"]


@needs_failover
def test_a_stream_fails_over_before_its_first_byte(envoy, upstreams):
    upstreams["one.example.com"].fail = "503"
    streamed = chat_stream(envoy.port, ROUTE_HOST, headers=case("backup"))
    assert streamed.text == "Hello" and streamed.usage.total_tokens == 18
    assert_shaped("two.example.com", upstreams["two.example.com"].requests[0], stream=True)
    # the route's and the upstream filter's internal response headers never reach the client
    assert not any(k.startswith("x-llmc-") for k in streamed.headers), streamed.headers


@needs_failover
def test_all_providers_failing_returns_the_last_error(envoy, upstreams):
    """Rule `chain`: p-one, then p-two, then p-three, each once; the client gets p-three's error."""
    for u in upstreams.values():
        u.fail = "503"
    err = status_error(chat, envoy.port, ROUTE_HOST)
    assert err.status_code == 503 and err.body["message"] == "The server is overloaded or not ready yet."
    assert tries(upstreams) == list(HOSTS)
    assert not any(k.lower().startswith("x-llmc-") for k in err.response.headers), err.response.headers
    for host in HOSTS:
        assert_shaped(host, upstreams[host].requests[0])


@needs_failover
def test_tries_follow_the_priorities(envoy, upstreams):
    upstreams["one.example.com"].fail = "reset"
    upstreams["two.example.com"].fail = "429"
    assert chat(envoy.port, ROUTE_HOST).model == "three-model-2026"
    for host in HOSTS:
        (req,) = upstreams[host].requests
        assert_shaped(host, req)


@needs_failover
def test_all_providers_resetting_gets_an_openai_format_error(envoy, upstreams):
    """The last failure is Envoy's own local reply (a reset): still an OpenAI-format error."""
    for u in upstreams.values():
        u.fail = "reset"
    err = status_error(chat, envoy.port, ROUTE_HOST)
    assert err.status_code == 503
    assert err.response.headers["content-type"] == "application/json"
    assert err.code == "upstream_unavailable" and err.type == "server_error"
    assert len(tries(upstreams)) == 3
    assert not any(k.lower().startswith("x-llmc-") for k in err.response.headers), err.response.headers


@needs_failover
def test_every_try_timing_out_gets_an_openai_format_504(envoy, upstreams):
    for u in upstreams.values():
        u.fail, u.hang = "hang", 2.0
    err = status_error(chat, envoy.port, ROUTE_HOST, headers=case("timeout"))
    assert err.status_code == 504 and err.response.headers["content-type"] == "application/json"
    assert err.code == "upstream_unavailable" and "upstream request timeout" in err.body["message"]
    assert tries(upstreams) == ["one.example.com", "two.example.com"]


@needs_failover
def test_weighted_primaries_share_first_tries_and_the_backup_gets_none(envoy, upstreams):
    for _ in range(30):
        chat(envoy.port, ROUTE_HOST, headers=case("weighted"))
    got = tries(upstreams)
    assert len(got) == 30 and "three.example.com" not in got
    assert {"one.example.com", "two.example.com"} == set(got)
    for host in ("one.example.com", "two.example.com"):
        for req in upstreams[host].requests:
            assert_shaped(host, req)


@needs_failover
def test_weighted_primaries_fail_over_to_each_other_then_the_backup(envoy, upstreams):
    upstreams["one.example.com"].fail = "503"
    upstreams["two.example.com"].fail = "503"
    for _ in range(6):
        assert chat(envoy.port, ROUTE_HOST, headers=case("weighted")).model == "three-model-2026"
    for host in HOSTS:
        assert len(upstreams[host].requests) == 6
        for req in upstreams[host].requests:
            assert_shaped(host, req)


def stat(envoy: Envoy, name: str) -> int:
    import urllib.request

    with urllib.request.urlopen(f"http://{envoy.admin}/stats?filter={name}&format=json", timeout=5) as r:
        found = [s for s in json.load(r)["stats"] if s["name"].endswith(name)]
    return found[0]["value"] if found else 0


def wait_for_log_lines(path, mark: str, n: int) -> list[dict]:
    import time

    deadline = time.monotonic() + 20  # a bounded wait for Envoy's access log flush on a loaded machine
    while True:
        lines = [x for x in logged_entries(path) if x["mark"] == mark]
        if len(lines) >= n or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)  # not a busy loop: Envoy needs the CPU to write the line


@needs_failover
def test_the_access_log_and_a_counter_record_the_provider_that_answered(envoy, upstreams, access_log_path):
    counter = "lua.llmc.failovers.default_chat_backup.p-two"
    before = stat(envoy, counter)
    upstreams["one.example.com"].fail = "429"
    chat(envoy.port, ROUTE_HOST, headers=case("backup") | {"x-test-mark": "failed-over"})
    upstreams["one.example.com"].fail = None
    chat(envoy.port, ROUTE_HOST, headers=case("backup") | {"x-test-mark": "direct"})
    entries = wait_for_log_lines(access_log_path, "failed-over", 1) + wait_for_log_lines(access_log_path, "direct", 1)
    assert [(e["first"], e["provider"], e["tries"]) for e in entries] == [("p-one", "p-two", 2), ("p-one", "p-one", 1)]
    assert stat(envoy, counter) == before + 1


@needs_failover
def test_one_attempt_means_no_retry(envoy, upstreams):
    upstreams["one.example.com"].fail = "503"
    err = status_error(chat, envoy.port, ROUTE_HOST, headers=case("single"))
    assert err.status_code == 503
    assert tries(upstreams) == ["one.example.com"]


@needs_failover
def test_without_failures_one_try_reaches_the_primary(envoy, upstreams):
    assert chat(envoy.port, ROUTE_HOST, headers=case("backup")).model == "one-model-2026"
    assert tries(upstreams) == ["one.example.com"]
    assert_shaped("one.example.com", upstreams["one.example.com"].requests[0])


def test_an_older_proxy_fails_closed(objects, upstreams):
    """An Istio 1.30 proxy gets the failover VirtualService but not the patches pinned to 1.31 (no
    upstream filters, no ordered clusters): an OpenAI-format 503, and nothing reaches a provider."""
    layout = build_bootstrap(objects, {h: u.port for h, u in upstreams.items()}, None, proxy_version="1.30.3")
    assert layout.unmatched == [] and layout.skipped, "the failover patches must be pinned to Istio 1.31+"
    proxy = Envoy(layout.bootstrap)
    try:
        for name in ("backup", "weighted", "single", None):
            err = status_error(chat, proxy.port, ROUTE_HOST, headers=case(name) if name else None)
            assert err.status_code == 503 and err.code == "failover_unsupported"
            assert err.response.headers["content-type"] == "application/json"
    finally:
        proxy.stop()
    assert tries(upstreams) == []


@needs_failover
def test_failover_between_tls_providers_keeps_tls_and_sni(tmp_path):
    """Tries go through the router's upstream filter chain (the Lua, then upstream_codec) to each
    provider's cluster as istiod built it; TLS origination (DestinationRule: SNI and SAN pinned) must
    keep working on every try."""
    import trustme

    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    source = (TESTDATA / "e2e" / "failover.yaml").read_text().replace("  tls: {mode: DISABLE}\n", "")
    (tmp_path / "failover.yaml").write_text(source)
    objects = llmc_render("-f", str(tmp_path / "failover.yaml"))
    ups = start_upstreams(ca, HOSTS, ())
    proxy = None
    try:
        layout = build_bootstrap(objects, {h: u.port for h, u in ups.items()}, str(ca_file))
        assert layout.unmatched == []
        proxy = Envoy(layout.bootstrap)
        ups["one.example.com"].fail = "503"
        assert chat(proxy.port, ROUTE_HOST, headers=case("backup")).model == "two-model-2026"
        for host in ("one.example.com", "two.example.com"):
            (req,) = ups[host].requests
            assert req.sni == host
            assert_shaped(host, req)
    finally:
        if proxy is not None:
            proxy.stop()
        for u in ups.values():
            u.stop()


@needs_failover
def test_explain_predicts_every_try(envoy, upstreams, objects):
    """`llmc explain` runs each try through its cluster's upstream filter: the requests it predicts
    are the ones the failing primary and the backup received (keys masked)."""
    from compiler.explain import Request, explain
    from tests.test_envoy_e2e import call

    headers = {"content-type": "application/json", "x-case": "backup", "authorization": f"Bearer {APP_KEY}"}
    body = json.dumps(SENT)
    upstreams["one.example.com"].fail = "503"
    status, _, payload = call(envoy, ROUTE_HOST, body=body, headers=headers, path="/v1/chat/completions")
    assert status == 200, payload
    received = [upstreams[h].requests[0] for h in ("one.example.com", "two.example.com")]
    x = explain(objects, Request(host=ROUTE_HOST, headers=headers, body=body.encode()))
    assert len(x["attempts"]) == 2
    for predicted, got, host in zip(x["attempts"], received, ("one.example.com", "two.example.com"), strict=True):
        assert predicted["url"] == f"http://{host}{got.path}"
        assert json.loads(predicted["body"]) == got.json()
        assert predicted["headers"]["authorization"] == got.headers["authorization"].replace(KEYS[host], "***")
    assert not any(k in json.dumps(x) for k in KEYS.values())
