"""Several keys per provider (issue 33; docs/api-keys.md) in real Envoy, with the official ``openai``
client: requests spread over a provider's keys by round robin (exactly, per worker) or at random by
weight (within a tolerance), each key's mounted file rotates on its own, the access log names the key
by its index (``llm_api_key_id``), and no key ever reaches another provider — on a failover rule
neither (each try's upstream filter chooses among its own provider's keys).

Failover needs Envoy >= 1.39 (``LLMC_ENVOY``); those tests are skipped on older binaries."""

from __future__ import annotations

import collections
import json
import time

import pytest

from tests.support.envoy_harness import Envoy, access_log, build_bootstrap, envoy_minor
from tests.support.mesh import llmc_render
from tests.support.sdk import chat, chat_stream, status_error
from tests.support.upstream import start_upstreams
from tests.test_observability_e2e import meshconfig_labels

pytestmark = pytest.mark.envoy

RR, WEIGHTED, SINGLE, PRIMARY, BACKUP = ("rr.example.com", "weighted.example.com", "single.example.com",
                                         "primary.example.com", "backup.example.com")
RETRY, NORETRY = "retry.example.com", "noretry.example.com"
FKA, FKB = "fka.example.com", "fkb.example.com"  # a failover rule: A retries its keys on 429, then B
HOSTS = (RR, WEIGHTED, SINGLE, PRIMARY, BACKUP, RETRY, NORETRY, FKA, FKB)
LITERALS = {PRIMARY: ["sk-primary-a-000000000001", "sk-primary-b-000000000002"],
            SINGLE: ["sk-single-0000000000000001"],
            RETRY: ["sk-retry-0-00000000000001", "sk-retry-1-00000000000002", "sk-retry-2-00000000000003"],
            NORETRY: ["sk-noretry-0-000000000001", "sk-noretry-1-000000000002"],
            FKA: ["sk-fka-0-0000000000000001", "sk-fka-1-0000000000000002"],
            FKB: ["sk-fkb-00000000000000001"]}
FILES = {RR: {"a": "sk-rr-a-1", "b": "sk-rr-b-1", "c": "sk-rr-c-1"},
         WEIGHTED: {"x": "sk-weighted-x-1", "y": "sk-weighted-y-1"},
         BACKUP: {"one": "sk-backup-one-1", "two": "sk-backup-two-1"}}


def _provider(name: str, host: str, config: dict) -> str:
    return json.dumps({"apiVersion": "istio.alibabacloud.com/v1beta1", "kind": "LLMProvider",
                       "metadata": {"name": name, "namespace": "default"},
                       "spec": {"host": host, "path": "/v1/chat/completions", "tls": {"mode": "DISABLE"},
                                "configs": {"defaultConfig": {"openAIConfig": {"model": f"{name}-model", **config}}}}})


def _refs(secret: str, weights: dict[str, int]) -> list[dict]:
    return [{"name": secret, "key": k, "weight": w} for k, w in weights.items()]


def manifest() -> str:
    docs = [
        _provider("rr", RR, {"apiKeySecretRefs": _refs("rr-keys", {"a": 2, "b": 1, "c": 1})}),
        _provider("weighted", WEIGHTED, {"apiKeySecretRefs": _refs("weighted-keys", {"x": 3, "y": 1}),
                                         "keySelection": "Weighted"}),
        _provider("single", SINGLE, {"apiKey": LITERALS[SINGLE][0]}),
        _provider("primary", PRIMARY, {"apiKeys": LITERALS[PRIMARY]}),
        _provider("backup", BACKUP, {"apiKeySecretRefs": _refs("backup-keys", {"one": 1, "two": 1})}),
        _provider("retry", RETRY, {"apiKeys": LITERALS[RETRY], "retryKeysOn": [429, 401, 402]}),
        _provider("noretry", NORETRY, {"apiKeys": LITERALS[NORETRY]}),
        json.dumps({"apiVersion": "istio.alibabacloud.com/v1beta1", "kind": "LLMRoute",
                    "metadata": {"name": "failover", "namespace": "default"},
                    "spec": {"host": PRIMARY, "rules": [{"name": "default", "backendRefs": [
                        {"providerHost": PRIMARY}, {"providerHost": BACKUP, "priority": 1}],
                        "retries": {"attempts": 2}}]}}),
        _provider("fka", FKA, {"apiKeys": LITERALS[FKA], "retryKeysOn": [429]}),
        _provider("fkb", FKB, {"apiKey": LITERALS[FKB][0]}),
        # the next key before the next provider (docs/failover.md): `strict` moves to B on a 5xx only,
        # the default rule (retryOn: connect-failure, reset, 5xx, 429) on a 429 too
        json.dumps({"apiVersion": "istio.alibabacloud.com/v1beta1", "kind": "LLMRoute",
                    "metadata": {"name": "keyed-failover", "namespace": "default"},
                    "spec": {"host": FKA, "rules": [
                        {"name": "strict", "matches": [{"headers": {"x-case": {"exact": "strict"}}}],
                         "backendRefs": [{"providerHost": FKA}, {"providerHost": FKB, "priority": 1}],
                         "retries": {"retryOn": ["5xx"]}},
                        {"name": "default", "backendRefs": [{"providerHost": FKA}, {"providerHost": FKB, "priority": 1}],
                         "retries": {}}]}}),
    ]
    return "\n---\n".join(docs)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    for host, files in FILES.items():
        secret = {RR: "rr-keys", WEIGHTED: "weighted-keys", BACKUP: "backup-keys"}[host]
        (d / "secrets" / secret).mkdir(parents=True)
        for k, v in files.items():
            (d / "secrets" / secret / k).write_text(v + "\n")
    (d / "in.yaml").write_text(manifest())
    objects = llmc_render("-f", str(d / "in.yaml"), "--secrets-dir", str(d / "secrets"), "--istio-version", "1.31")
    ups = start_upstreams(None, (), HOSTS)
    layout = build_bootstrap(objects, {h: u.port for h, u in ups.items()}, None,
                             access_logs=[access_log(str(d / "access.log"), meshconfig_labels())])
    assert layout.unmatched == [], layout.unmatched
    # one worker: round robin is per worker (docs/api-keys.md), so one worker's turn is exact
    envoy = Envoy(layout.bootstrap, concurrency=1)
    yield envoy, d, ups
    envoy.stop()
    for u in ups.values():
        u.stop()


@pytest.fixture(autouse=True)
def _clear(env):
    for u in env[2].values():
        u.clear()
        u.fail = None
        u.fail_keys = {}


def received(ups, host) -> list[str]:
    return [r.headers.get("authorization", "") for r in ups[host].requests]


def every_key() -> dict[str, str]:
    """key -> the host it belongs to."""
    out = {k: h for h, ks in LITERALS.items() for k in ks}
    out.update({v: h for h, files in FILES.items() for v in files.values()})
    return out


def assert_no_key_crossed(ups) -> None:
    owners = every_key()
    for host, u in ups.items():
        for r in u.requests:
            text = json.dumps(dict(r.headers)) + r.body.decode(errors="replace")
            for key, owner in owners.items():
                if key in text:
                    assert owner == host, (host, "got a key of", owner)


def tagged(port: int, host: str, tag: str, n: int = 1) -> None:
    """``n`` chat completions whose access-log lines carry ``tag`` (in the query string)."""
    for _ in range(n):
        chat(port, host, extra_query={"t": tag})


def log_lines(d, tag: str, n: int, timeout: float = 20.0) -> list[dict]:
    """The access-log lines of the requests sent with ``tag``, once there are ``n`` (Envoy flushes late)."""
    deadline = time.monotonic() + timeout
    while True:
        text = (d / "access.log").read_text() if (d / "access.log").exists() else ""
        lines = [json.loads(x) for x in text[:text.rfind("\n") + 1].splitlines()]
        mine = [x for x in lines if (x.get("path") or "").endswith(f"t={tag}")]
        if len(mine) >= n or time.monotonic() > deadline:
            return mine


def test_round_robin_spreads_exactly_by_weight_and_logs_the_key_index(env):
    envoy, d, ups = env
    tagged(envoy.port, RR, "rr", 40)
    got = received(ups, RR)
    files = FILES[RR]
    assert collections.Counter(got) == {f"Bearer {files['a']}": 20, f"Bearer {files['b']}": 10,
                                        f"Bearer {files['c']}": 10}
    assert got[:4] == [f"Bearer {files[k]}" for k in ("a", "b", "c", "a")]  # smooth: a b c a
    lines = log_lines(d, "rr", 40)
    assert len(lines) == 40 and collections.Counter(x["llm_api_key_id"] for x in lines) == {"0": 20, "1": 10, "2": 10}
    assert all(x["llm_provider"] == "rr" for x in lines)
    log = (d / "access.log").read_text() + envoy.logs()
    assert not any(v in log for v in files.values())
    assert_no_key_crossed(ups)


def test_weighted_spreads_within_tolerance(env):
    envoy, _, ups = env
    n = 200
    for _ in range(n):
        chat(envoy.port, WEIGHTED)
    counts = collections.Counter(received(ups, WEIGHTED))
    x = counts[f"Bearer {FILES[WEIGHTED]['x']}"]
    # 3:1 -> 150 of 200 expected; a binomial(200, 0.75) leaves 120..180 with p < 1e-6
    assert 120 <= x <= 180 and x + counts[f"Bearer {FILES[WEIGHTED]['y']}"] == n, counts


def test_each_key_file_rotates_without_restart(env):
    envoy, d, ups = env
    (d / "secrets" / "rr-keys" / "b").write_text("sk-rr-b-2\n")
    try:
        deadline = time.monotonic() + 15
        while "Bearer sk-rr-b-2" not in received(ups, RR):
            assert time.monotonic() < deadline, received(ups, RR)[-8:]
            chat(envoy.port, RR)
        seen = set(received(ups, RR)[-4:])
        assert f"Bearer {FILES[RR]['a']}" in seen and "Bearer sk-rr-b-1" not in received(ups, RR)[-4:]
    finally:
        (d / "secrets" / "rr-keys" / "b").write_text(FILES[RR]["b"] + "\n")


def test_one_key_logs_no_key_index(env):
    envoy, d, ups = env
    tagged(envoy.port, SINGLE, "single")
    assert received(ups, SINGLE) == [f"Bearer {LITERALS[SINGLE][0]}"]
    (line,) = log_lines(d, "single", 1)
    assert line["llm_provider"] == "single" and line["llm_api_key_id"] is None


@pytest.mark.skipif(envoy_minor() < (1, 39), reason="failover needs Envoy >= 1.39 (LLMC_ENVOY)")
def test_failover_tries_use_their_own_providers_keys(env):
    envoy, d, ups = env
    ups[PRIMARY].fail = "503"
    tagged(envoy.port, PRIMARY, "failover", 4)
    assert len(ups[PRIMARY].requests) == 4 and len(ups[BACKUP].requests) == 4
    assert set(received(ups, PRIMARY)) <= {f"Bearer {k}" for k in LITERALS[PRIMARY]}
    assert collections.Counter(received(ups, BACKUP)) == {f"Bearer {v}": 2 for v in FILES[BACKUP].values()}
    assert_no_key_crossed(ups)
    # the access log names the key of the try that answered (the upstream filter records it)
    lines = log_lines(d, "failover", 4)
    assert {x["llm_provider"] for x in lines} == {"backup"}
    assert collections.Counter(x["llm_api_key_id"] for x in lines) == {"0": 2, "1": 2}


@pytest.mark.skipif(envoy_minor() < (1, 39), reason="failover needs Envoy >= 1.39 (LLMC_ENVOY)")
def test_every_try_failing_is_the_providers_error(env):
    envoy, _, ups = env
    ups[PRIMARY].fail = ups[BACKUP].fail = "429"
    err = status_error(chat, envoy.port, PRIMARY)
    assert err.status_code == 429
    assert_no_key_crossed(ups)


# ---- retrying with the next key (retryKeysOn; Istio >= 1.31: the patches are for its proxies) ------

needs_1_39 = pytest.mark.skipif(envoy_minor() < (1, 39), reason="key retry is patched into Istio >= 1.31 proxies "
                                "(Envoy >= 1.39, LLMC_ENVOY)")


def bearer(host: str, i: int) -> str:
    return f"Bearer {LITERALS[host][i]}"


def first_key_next(envoy, ups, host: str) -> int:
    """Sends requests until the round robin's next first choice is key 0 (the turn is kept across tests)."""
    n = len(LITERALS[host])
    for _ in range(n):
        ups[host].clear()
        chat(envoy.port, host)
        if received(ups, host)[-1] == bearer(host, n - 1):
            ups[host].clear()
            return 0
    raise AssertionError(received(ups, host))


@needs_1_39
@pytest.mark.parametrize("status", [429, 401, 402])
def test_a_refused_key_is_retried_with_the_next_key(env, status):
    envoy, d, ups = env
    first_key_next(envoy, ups, RETRY)
    ups[RETRY].fail_keys = {bearer(RETRY, 0): status}
    completion = chat(envoy.port, RETRY, extra_query={"t": f"retry{status}"})
    assert completion.choices[0].message.content == "hi"
    assert received(ups, RETRY) == [bearer(RETRY, 0), bearer(RETRY, 1)]  # the same provider, the next key
    (line,) = log_lines(d, f"retry{status}", 1)
    assert line["llm_api_key_id"] == "1" and line["response_code"] == 200
    for r in ups[RETRY].requests:
        assert not [k for k in r.headers if k.lower().startswith("x-llmc")], r.headers
    assert_no_key_crossed(ups)


@needs_1_39
def test_every_key_refused_uses_each_key_once_and_the_client_gets_the_error(env):
    envoy, _, ups = env
    ups[RETRY].fail_keys = {bearer(RETRY, i): 429 for i in range(3)}
    err = status_error(chat, envoy.port, RETRY)
    assert err.status_code == 429 and err.code == "rate_limit_exceeded"
    got = received(ups, RETRY)
    assert sorted(got) == sorted(bearer(RETRY, i) for i in range(3))  # each key once, none twice


@needs_1_39
def test_a_status_not_in_retry_keys_on_is_not_retried(env):
    envoy, _, ups = env
    ups[RETRY].fail_keys = {bearer(RETRY, i): 503 for i in range(3)}
    err = status_error(chat, envoy.port, RETRY)
    assert err.status_code == 503
    # 503 is not a key's fault: Istio's default conditions do not retry it either
    assert len(received(ups, RETRY)) == 1


@needs_1_39
def test_without_retry_keys_on_a_401_reaches_the_client(env):
    envoy, _, ups = env
    ups[NORETRY].fail_keys = {bearer(NORETRY, i): 401 for i in range(2)}
    err = status_error(chat, envoy.port, NORETRY)
    assert err.status_code == 401 and len(received(ups, NORETRY)) == 1


@pytest.mark.skipif(envoy_minor() >= (1, 39), reason="older proxies only: an Istio <= 1.30 proxy (Envoy <= 1.38) "
                    "gets no key-retry patch")
def test_an_older_proxy_does_not_retry_keys_and_reuses_none(env):
    envoy, _, ups = env
    ups[RETRY].fail_keys = {bearer(RETRY, i): 429 for i in range(3)}
    err = status_error(chat, envoy.port, RETRY)
    assert err.status_code == 429 and len(received(ups, RETRY)) == 1


# ---- the next key before the next provider: a failover rule (docs/failover.md) ----------------------

STRICT = {"x-case": "strict"}  # the rule whose retryOn is 5xx only


def answered_by(completion) -> str:
    return completion.model.removesuffix("-2026").removesuffix("-model")


@needs_1_39
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_failover_429_on_a_key_moves_to_the_same_providers_next_key(env, stream):
    envoy, d, ups = env
    first_key_next(envoy, ups, FKA)
    ups[FKA].fail_keys = {bearer(FKA, 0): 429}
    tag = f"fk429{stream}"
    if stream:
        got = chat_stream(envoy.port, FKA, extra_query={"t": tag})
        assert got.text and got.chunks[0].model.startswith("fka-model")
    else:
        assert answered_by(chat(envoy.port, FKA, extra_query={"t": tag})) == "fka"
    assert received(ups, FKA) == [bearer(FKA, 0), bearer(FKA, 1)] and received(ups, FKB) == []
    for r in ups[FKA].requests:
        assert r.json()["model"] == "fka-model" and r.json().get("stream", False) is stream
        assert not [k for k in r.headers if k.lower().startswith("x-llmc")], r.headers
    (line,) = log_lines(d, tag, 1)
    assert (line["llm_provider"], line["llm_api_key_id"], line["response_code"]) == ("fka", "1", 200)
    assert_no_key_crossed(ups)


@needs_1_39
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_every_key_of_a_provider_refused_moves_to_the_next_provider_when_retry_on_allows(env, stream):
    envoy, d, ups = env
    ups[FKA].fail_keys = {bearer(FKA, 0): 429, bearer(FKA, 1): 429}
    tag = f"fkall{stream}"
    if stream:
        got = chat_stream(envoy.port, FKA, extra_query={"t": tag})
        assert got.text and got.chunks[0].model.startswith("fkb-model")
    else:
        assert answered_by(chat(envoy.port, FKA, extra_query={"t": tag})) == "fkb"
    # each of A's keys once (a refused key is never sent twice), then B with its own key
    assert sorted(received(ups, FKA)) == [bearer(FKA, 0), bearer(FKA, 1)]
    assert received(ups, FKB) == [bearer(FKB, 0)]
    (line,) = log_lines(d, tag, 1)
    # B has one key: no key index (not A's last one)
    assert (line["llm_provider"], line["llm_api_key_id"], line["response_code"]) == ("fkb", None, 200)
    assert_no_key_crossed(ups)


@needs_1_39
def test_every_key_refused_is_the_clients_429_when_retry_on_does_not_allow_the_next_provider(env):
    envoy, d, ups = env
    ups[FKA].fail_keys = {bearer(FKA, 0): 429, bearer(FKA, 1): 429}
    err = status_error(chat, envoy.port, FKA, headers=STRICT, extra_query={"t": "fkstrict"})
    assert err.status_code == 429 and err.code == "rate_limit_exceeded"
    assert sorted(received(ups, FKA)) == [bearer(FKA, 0), bearer(FKA, 1)] and received(ups, FKB) == []
    # the upstream filter's mark that stopped Envoy's retry never reaches the client
    assert "x-envoy-ratelimited" not in err.response.headers
    assert not any(k.lower().startswith("x-llmc-") for k in err.response.headers)
    (line,) = log_lines(d, "fkstrict", 1)
    assert (line["llm_provider"], line["llm_api_key_id"], line["response_code"]) == ("fka", "1", 429) or \
        (line["llm_provider"], line["llm_api_key_id"], line["response_code"]) == ("fka", "0", 429)
    assert_no_key_crossed(ups)


@needs_1_39
@pytest.mark.parametrize("headers", [None, STRICT], ids=["default", "strict"])
def test_a_401_not_in_retry_keys_on_is_final(env, headers):
    envoy, _, ups = env
    ups[FKA].fail_keys = {bearer(FKA, 0): 401, bearer(FKA, 1): 401}  # whichever key comes first
    err = status_error(chat, envoy.port, FKA, headers=headers)
    assert err.status_code == 401
    assert len(received(ups, FKA)) == 1 and received(ups, FKB) == []
    assert "x-envoy-ratelimited" not in err.response.headers


@needs_1_39
@pytest.mark.parametrize("failure", ["503", "reset"])
def test_a_provider_failure_tries_its_next_key_then_the_next_provider(env, failure):
    """A 503 or a reset that the rule's retryOn names: Envoy's next try is the provider's next key
    (its next cluster in the route's order; no filter can skip it), each key once, then B."""
    envoy, d, ups = env
    ups[FKA].fail = failure
    assert answered_by(chat(envoy.port, FKA, extra_query={"t": f"fkfail{failure}"})) == "fkb"
    assert sorted(received(ups, FKA)) == [bearer(FKA, 0), bearer(FKA, 1)] and received(ups, FKB) == [bearer(FKB, 0)]
    (line,) = log_lines(d, f"fkfail{failure}", 1)
    assert (line["llm_provider"], line["llm_api_key_id"], line["response_code"]) == ("fkb", None, 200)
    assert_no_key_crossed(ups)


@needs_1_39
def test_when_every_try_failed_the_client_gets_the_last_answer(env):
    """B answering 503 after A's keys: nothing follows B; a failed key is never sent twice."""
    envoy, _, ups = env
    ups[FKA].fail_keys = {bearer(FKA, 0): 429, bearer(FKA, 1): 429}
    ups[FKB].fail = "503"
    err = status_error(chat, envoy.port, FKA)
    assert err.status_code == 503
    assert sorted(received(ups, FKA)) == [bearer(FKA, 0), bearer(FKA, 1)] and received(ups, FKB) == [bearer(FKB, 0)]


@pytest.mark.skipif(envoy_minor() >= (1, 39), reason="older proxies only: an Istio <= 1.30 proxy (Envoy <= 1.38) "
                    "gets no failover patch")
def test_an_older_proxy_refuses_a_keyed_failover_rule_and_sends_nothing(env):
    """The per-key subsets reach every proxy, the failover patches only Istio >= 1.31 ones: an older
    proxy answers failover_unsupported and no key is sent anywhere."""
    envoy, _, ups = env
    err = status_error(chat, envoy.port, FKA)
    assert err.status_code == 503 and err.code == "failover_unsupported"
    assert received(ups, FKA) == [] and received(ups, FKB) == []
