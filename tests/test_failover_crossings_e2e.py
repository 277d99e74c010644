"""Where failover crosses the other features (issue 24), end to end through a real Envoy 1.39+ laid out
as istiod 1.31 would (``tests/support/envoy_harness.py``).

Each test names the defect it proves fixed. Envoy shares one request header map between the tries
of a request, so whatever one try set (a key in a custom header, a ``Content-Length``, a path) is
seen by the next: every try must set or remove all of it. Needs Envoy 1.39 (Istio 1.31); ``.ci/run``
runs this file through ``python -m tests.envoy_versions 1.39.3 1.40.0``, where a skip fails.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import TESTDATA
from tests.support.envoy_harness import envoy_minor
from tests.support.mesh import llmc_render, running_envoy
from tests.support.sdk import APP_KEY, APP_MODEL, MESSAGES, chat, post
from tests.support.upstream import serving

pytestmark = pytest.mark.envoy

SOURCE = TESTDATA / "e2e" / "failover-crossings.yaml"
KEYS = {"gw.example.com": ("x-gw-key", "sk-gw-00000000000000000"),
        "one.example.com": ("authorization", "Bearer sk-one-0000000000000000"),
        "two.example.com": ("authorization", "Bearer sk-two-0000000000000000"),
        "raw.example.com": ("authorization", "Bearer sk-raw-0000000000000000"),
        "base1.example.com": ("authorization", "Bearer sk-base1-00000000000000"),
        "base2.example.com": ("authorization", "Bearer sk-base2-00000000000000"),
        "nokey.example.com": None,
        "slow.example.com": ("authorization", "Bearer sk-slow-000000000000000")}
#: every header a credential travels in, for any provider of the test file or protocol
CREDENTIAL_HEADERS = ("authorization", "x-api-key", "api-key", "x-gw-key")
#: every internal header of llmc, as a client could send it
INTERNAL = ("x-llmc-provider", "x-llmc-model", "x-llmc-order", "x-llmc-translate", "x-llmc-failover",
            "x-llmc-answered-by")

needs_failover = pytest.mark.skipif(
    envoy_minor() < (1, 39),
    reason="failover needs Envoy 1.39+ (Istio 1.31); run `python -m tests.envoy_versions 1.39.3` (.ci/run does)")


@pytest.fixture(scope="module")
def upstreams():
    with serving(KEYS) as ups:
        yield ups


@pytest.fixture(scope="module")
def envoy(upstreams):
    if envoy_minor() < (1, 39):
        pytest.skip("failover needs Envoy 1.39+")
    with running_envoy(llmc_render("-f", str(SOURCE), "--istio-version", "1.31"), upstreams) as proxy:
        yield proxy


@pytest.fixture(autouse=True)
def _clear(upstreams):
    for u in upstreams.values():
        u.clear()


def assert_credentials_of(host: str, req) -> None:
    """The only credential header a provider receives is its own, with its own key."""
    own = KEYS[host]
    for name in CREDENTIAL_HEADERS:
        if own is not None and name == own[0]:
            assert req.headers.get(name) == own[1], (host, name, req.headers.get(name))
        else:
            assert name not in req.headers, (host, name, req.headers.get(name))
    sent = json.dumps(req.headers)
    for other, cred in KEYS.items():
        if other != host and cred is not None:
            assert cred[1].split()[-1] not in sent, (host, other)
    assert APP_KEY not in sent


def assert_framed(req) -> None:
    """The body is exactly Content-Length bytes and parses as JSON (no try inherits another's length)."""
    assert int(req.headers["content-length"]) == len(req.body)
    json.loads(req.body)


def assert_no_internal_headers(req) -> None:
    assert not [k for k in req.headers if k.startswith("x-llmc-")], req.headers


CLIENT_EXTRAS = {"x-api-key": "sk-client-x-api-key", "x-gw-key": "sk-client-gw-key",
                 **{h: "client-sent" for h in INTERNAL if h not in ("x-llmc-provider", "x-llmc-model")}}


@needs_failover
def test_a_custom_auth_header_key_never_reaches_the_next_providers(envoy, upstreams):
    """Defect 1: p-gw's x-gw-key was sent, with its key, to every later try."""
    upstreams["gw.example.com"].fail = "503"
    upstreams["one.example.com"].fail = "503"
    completion = chat(envoy.port, "cross.example.com", headers={"x-case": "gwfirst", **CLIENT_EXTRAS})
    assert completion.model == "two-model-2026"
    for host in ("gw.example.com", "one.example.com", "two.example.com"):
        (req,) = upstreams[host].requests
        assert_credentials_of(host, req)
        assert_no_internal_headers(req)
        assert_framed(req)


@needs_failover
@pytest.mark.parametrize("client_model", ["m", "a-client-model-name-much-longer-than-one-model-by-far"])
def test_every_try_is_sent_with_its_own_content_length(envoy, upstreams, client_model):
    """Defect 2: try 2's body is the client's own (p-raw configures no model: no setBytes), and it was
    sent with the Content-Length try 1 set: longer -> the provider waits (504), shorter -> the rest of
    the body stays on the keep-alive connection as the start of the next request (a desync)."""
    upstreams["one.example.com"].fail = "503"
    body = json.dumps({"model": client_model, "messages": MESSAGES}).encode()
    status, _, answer = post(envoy.port, "cross.example.com", "/v1/chat/completions", body, {"x-case": "length"})
    assert status == 200, answer
    (first,) = upstreams["one.example.com"].requests
    (second,) = upstreams["raw.example.com"].requests
    assert_framed(first) or json.loads(first.body)["model"] == "one-model"
    assert_framed(second)
    assert second.body == body  # the client's own body, byte for byte
    assert_credentials_of("raw.example.com", second)
    # the next request on the provider's pooled connection starts where it should
    status, _, _ = post(envoy.port, "cross.example.com", "/v1/chat/completions", body, {"x-case": "length"})
    assert status == 200
    assert [json.loads(r.body) for r in upstreams["raw.example.com"].requests[1:]] == [json.loads(body)]


@needs_failover
def test_failover_tries_serve_the_clients_endpoint(envoy, upstreams):
    """Defect 3: failover rules ignored basePath: embeddings went out as chat, any path with the key."""
    upstreams["base1.example.com"].fail = "503"
    body = json.dumps({"model": "text-embedding-3-small", "input": "hello"}).encode()
    status, _, answer = post(envoy.port, "cross.example.com", "/v1/embeddings", body, {"x-case": "endpoints"})
    assert status == 200, answer
    assert json.loads(answer)["object"] == "list"
    (first,) = upstreams["base1.example.com"].requests
    (second,) = upstreams["base2.example.com"].requests
    assert first.path == "/v1/embeddings" and second.path == "/api/v1/embeddings"
    for host, req in (("base1.example.com", first), ("base2.example.com", second)):
        assert json.loads(req.body) == {"model": "text-embedding-3-small", "input": "hello"}
        assert_credentials_of(host, req)
        assert_framed(req)


@needs_failover
@pytest.mark.parametrize("path", ["/v1/admin/keys", "/v1/files", "/v1/chat/completions/../../admin"])
def test_failover_rules_answer_unknown_endpoints_with_404_and_send_nothing(envoy, upstreams, path):
    body = json.dumps({"messages": MESSAGES}).encode()
    status, headers, answer = post(envoy.port, "cross.example.com", path, body, {"x-case": "endpoints"})
    assert status == 404, answer
    assert headers["content-type"] == "application/json"
    assert json.loads(answer)["error"]["code"] in ("unknown_url", "route_not_found")
    assert upstreams["base1.example.com"].requests == [] and upstreams["base2.example.com"].requests == []


@needs_failover
@pytest.mark.parametrize("first_fails", [False, True])
def test_a_model_routed_failover_rule_sends_one_model_member(envoy, upstreams, first_fails):
    """Defect 4: a body with two `model` members reached the provider with both."""
    if first_fails:
        upstreams["raw.example.com"].fail = "503"
    body = b'{"model":"decoy","messages":' + json.dumps(MESSAGES).encode() + b',"model":"pick-me"}'
    status, _, answer = post(envoy.port, "models.example.com", "/v1/chat/completions", body, {})
    assert status == 200, answer
    (req,) = upstreams["two.example.com" if first_fails else "raw.example.com"].requests
    assert req.body.count(b'"model"') == 1, req.body
    assert json.loads(req.body)["model"] == ("two-model" if first_fails else "pick-me")
    assert_framed(req)
    assert_no_internal_headers(req)


@needs_failover
@pytest.mark.parametrize(("host", "case", "model", "reaches"), [
    ("models.example.com", None, "plain", "one.example.com"),   # a plain rule of a host with failover
    ("cross.example.com", "single", None, "one.example.com"),   # a plain rule
    ("cross.example.com", "gwfirst", None, "gw.example.com"),   # a failover rule's first try
])
def test_no_internal_header_reaches_a_provider_whoever_set_it(envoy, upstreams, host, case, model, reaches):
    """Defect 5: x-llmc-order reached the providers of plain routes on a host with a failover rule;
    client-sent x-llmc-translate / -failover / -answered-by reached every provider."""
    headers = {h: "client-sent" for h in INTERNAL if h not in ("x-llmc-provider",)}
    if case:
        headers["x-case"] = case
    body = json.dumps({"model": model or "any", "messages": MESSAGES}).encode()
    status, resp_headers, answer = post(envoy.port, host, "/v1/chat/completions", body, headers)
    assert status == 200, answer
    (req,) = upstreams[reaches].requests
    assert_no_internal_headers(req)
    assert not [k for k in resp_headers if k.startswith("x-llmc-")]


@needs_failover
def test_weights_compare_within_one_priority(envoy, upstreams):
    """Defect 6: [{one, w50}, {two, w50}, {raw, priority 1}] was rejected (the backup counted weight 0)."""
    upstreams["one.example.com"].fail = "503"
    upstreams["two.example.com"].fail = "503"
    completion = chat(envoy.port, "cross.example.com", headers={"x-case": "weights"})
    assert completion.model == f"{APP_MODEL}-2026"  # p-raw configures no model: the client's own is kept
    assert [len(upstreams[h].requests) for h in ("one.example.com", "two.example.com", "raw.example.com")] == [1, 1, 1]
    for host in ("one.example.com", "two.example.com", "raw.example.com"):
        assert_credentials_of(host, upstreams[host].requests[0])


@needs_failover
def test_every_try_carries_its_own_host_rewrite(envoy, upstreams):
    """Defect 7: hostRewrite was ignored on failover tries."""
    upstreams["one.example.com"].fail = "503"
    chat(envoy.port, "cross.example.com", headers={"x-case": "rewrite"})
    assert upstreams["one.example.com"].requests[0].headers["host"] == "one-front.example.net"
    assert upstreams["two.example.com"].requests[0].headers["host"] == "two-front.example.net"


@needs_failover
def test_a_keyless_provider_reached_by_failover_gets_no_client_credential(envoy, upstreams):
    """Defect 7: on failover rules the client's own credentials never pass (the compiler warns,
    LLMC239); on a plain rule they reach a keyless provider, and never a keyed one."""
    upstreams["one.example.com"].fail = "503"
    completion = chat(envoy.port, "cross.example.com", headers={"x-case": "nokey", **CLIENT_EXTRAS})
    assert completion.model == "nokey-model-2026"
    assert_credentials_of("one.example.com", upstreams["one.example.com"].requests[0])
    assert_credentials_of("nokey.example.com", upstreams["nokey.example.com"].requests[0])


@needs_failover
def test_on_plain_rules_the_clients_credentials_reach_only_a_keyless_provider(envoy, upstreams):
    chat(envoy.port, "cross.example.com", headers={"x-case": "open", "x-api-key": "sk-client-x"})
    (req,) = upstreams["nokey.example.com"].requests
    assert req.headers["authorization"] == f"Bearer {APP_KEY}" and req.headers["x-api-key"] == "sk-client-x"
    chat(envoy.port, "cross.example.com", headers={"x-case": "single", **CLIENT_EXTRAS})
    assert_credentials_of("one.example.com", upstreams["one.example.com"].requests[0])


@pytest.mark.parametrize(("case", "host", "failure", "status"), [
    ("single", "one.example.com", "reset", 503),
    ("slow", "slow.example.com", "hang", 504),
])
def test_envoys_own_error_replies_reach_the_client_in_openai_format(envoy, upstreams, case, host, failure, status):
    """Found by the crossing matrix: on rules without failover, Envoy's own reply when the provider
    resets (503, text/plain "upstream connect error ...") or the route times out (504) reached the
    client as plain text, which the SDK cannot read as an error object."""
    upstreams[host].fail, upstreams[host].hang = failure, 3.0
    code, headers, answer = post(envoy.port, "cross.example.com", "/v1/chat/completions",
                                 json.dumps({"messages": MESSAGES}).encode(), {"x-case": case})
    assert code == status and headers["content-type"] == "application/json", (code, headers, answer)
    error = json.loads(answer)["error"]
    assert error["type"] == "server_error" and error["code"] == "upstream_error" and str(status) in error["message"]
    assert "content-encoding" not in headers and int(headers["content-length"]) == len(answer)
