"""The rate-limit service double (tests/support/ratelimit.py) behaves as envoyproxy/ratelimit's source
says (f2fb157; the file:line of each behaviour is in the double's docstring), counting in a real Redis."""

from __future__ import annotations

import grpc
import pytest
import redis
import yaml
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from compiler import Options, compile_text
from tests.conftest import TESTDATA
from tests.support.ratelimit import (
    OK,
    OVER_LIMIT,
    UNITS,
    ConfigError,
    RateLimitDouble,
    RedisServer,
    ServiceError,
    Settings,
    configmap_files,
    load_config,
    serving,
)

NOW = 1_800_000_030  # a fixed clock: 30 s into a minute window
CONFIG = """
domain: test
descriptors:
- key: tenant
  value: acme
  rate_limit: {unit: minute, requests_per_unit: 10}
- key: tenant
  rate_limit: {unit: hour, requests_per_unit: 100}
- key: path
  value: "/v1/*/chat"
  rate_limit: {unit: second, requests_per_unit: 5}
- key: nested
  value: a
  descriptors:
  - key: user
    rate_limit: {unit: day, requests_per_unit: 50}
- key: audit
  rate_limit: {unit: minute, requests_per_unit: 1}
  shadow_mode: true
- key: quota
  rate_limit: {unit: minute, requests_per_unit: 1}
  quota_mode: true
- key: free
  rate_limit: {unlimited: true}
"""


@pytest.fixture(scope="module")
def redis_server():
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture
def double(redis_server):
    redis_server.flush()
    return RateLimitDouble(redis_server.client, {"test.yaml": CONFIG}, Settings(), clock=lambda: NOW)


def desc(*entries: tuple[str, str], addend: int | None = None, limit: tuple[int, str] | None = None):
    d = ratelimit_pb2.RateLimitDescriptor(
        entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v) for k, v in entries])
    if addend is not None:
        d.hits_addend.value = addend
    if limit is not None:
        d.limit.requests_per_unit = limit[0]
        d.limit.unit = rls_pb2.RateLimitResponse.RateLimit.Unit.Value(limit[1].upper())
    return d


def call(double, *descriptors, domain: str = "test", hits_addend: int = 0):
    return double.should_rate_limit(rls_pb2.RateLimitRequest(domain=domain, descriptors=descriptors,
                                                             hits_addend=hits_addend))


def test_a_domain_once_unless_merging():
    with pytest.raises(ConfigError, match="duplicate domain"):
        load_config({"a.yaml": "domain: d", "b.yaml": "domain: d"})
    assert "d" in load_config({"a.yaml": "domain: d", "b.yaml": "domain: d"}, merge_domains=True)
    with pytest.raises(ConfigError, match="invalid rate limit unit"):
        load_config({"a.yaml": "domain: d\ndescriptors: [{key: k, rate_limit: {unit: fortnight}}]"})
    with pytest.raises(ConfigError, match="unlimited"):
        load_config({"a.yaml": "domain: d\ndescriptors: [{key: k, rate_limit: {unit: second, unlimited: true}}]"})


def test_a_value_wins_over_the_key_and_each_value_counts_apart(double, redis_server):
    assert call(double, desc(("tenant", "acme"), addend=3)).statuses[0].current_limit.requests_per_unit == 10
    other = call(double, desc(("tenant", "zeta"), addend=4)).statuses[0]
    assert other.current_limit.requests_per_unit == 100 and other.limit_remaining == 96
    call(double, desc(("tenant", "yota"), addend=5))
    minute, hour = NOW // 60 * 60, NOW // 3600 * 3600
    assert {k.decode(): int(redis_server.client.get(k)) for k in redis_server.client.scan_iter("test_*")} == {
        f"test_tenant_acme_{minute}": 3, f"test_tenant_zeta_{hour}": 4, f"test_tenant_yota_{hour}": 5}


def test_wildcard_values(double):
    assert call(double, desc(("path", "/v1/x/chat"))).statuses[0].current_limit.requests_per_unit == 5
    assert not call(double, desc(("path", "/v2/x/chat"))).statuses[0].HasField("current_limit")


def test_a_limit_applies_only_at_the_descriptors_depth(double, redis_server):
    assert call(double, desc(("nested", "a"), ("user", "u1"))).statuses[0].current_limit.requests_per_unit == 50
    shallow = call(double, desc(("nested", "a"))).statuses[0]
    deep = call(double, desc(("tenant", "acme"), ("extra", "x"))).statuses[0]
    assert not shallow.HasField("current_limit") and not deep.HasField("current_limit")


def test_no_match_is_ok_without_a_counter(double, redis_server):
    response = call(double, desc(("unknown", "x"), addend=1000))
    assert response.overall_code == OK and not response.statuses[0].HasField("current_limit")
    assert call(double, desc(("tenant", "acme")), domain="other").overall_code == OK
    assert list(redis_server.client.scan_iter("*")) == []


def test_units_windows_and_reset():
    assert UNITS == {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 604800,
                     "month": 2592000, "year": 31536000}


def test_window_start_and_duration_until_reset(double, redis_server):
    status = call(double, desc(("tenant", "acme"))).statuses[0]
    assert status.duration_until_reset.seconds == 30
    (key,) = redis_server.client.scan_iter("test_*")
    assert key.decode().endswith(f"_{NOW // 60 * 60}")


def test_incrby_then_expire_with_jitter(double, redis_server):
    call(double, desc(("tenant", "acme"), addend=7))
    (key,) = redis_server.client.scan_iter("test_*")
    assert int(redis_server.client.get(key)) == 7
    assert 60 <= redis_server.client.ttl(key) <= 60 + 300


def test_hits_addend_zero_checks_without_charging(double, redis_server):
    call(double, desc(("tenant", "acme"), addend=4))
    check = call(double, desc(("tenant", "acme"), addend=0)).statuses[0]
    assert check.code == OK and check.limit_remaining == 6
    (key,) = redis_server.client.scan_iter("test_*")
    assert int(redis_server.client.get(key)) == 4


def test_without_a_descriptor_addend_the_request_addend_or_one(double):
    assert call(double, desc(("tenant", "acme"))).statuses[0].limit_remaining == 9
    assert call(double, desc(("tenant", "acme")), hits_addend=3).statuses[0].limit_remaining == 6


def test_legacy_images_count_every_call_as_one(redis_server):
    """Trap 2 of the notes: an image before 38500fe ignores per-descriptor hits_addend."""
    redis_server.flush()
    old = RateLimitDouble(redis_server.client, {"test.yaml": CONFIG}, Settings(legacy=True), clock=lambda: NOW)
    assert call(old, desc(("tenant", "acme"), addend=0)).statuses[0].limit_remaining == 9
    assert call(old, desc(("tenant", "acme"), addend=5)).statuses[0].limit_remaining == 8


def test_over_limit_iff_after_exceeds_and_counting_goes_on(double, redis_server):
    assert call(double, desc(("tenant", "acme"), addend=10)).overall_code == OK  # 10 of 10: not over
    over = call(double, desc(("tenant", "acme"), addend=1))
    assert over.overall_code == OVER_LIMIT and over.statuses[0].limit_remaining == 0
    assert call(double, desc(("tenant", "acme"), addend=0)).overall_code == OVER_LIMIT  # a check sees it
    (key,) = redis_server.client.scan_iter("test_*")
    assert int(redis_server.client.get(key)) == 11


def test_shadow_mode_counts_but_says_ok(double, redis_server):
    response = call(double, desc(("audit", "x"), addend=5))
    assert response.overall_code == OK and response.statuses[0].code == OK
    (key,) = redis_server.client.scan_iter("test_*")
    assert int(redis_server.client.get(key)) == 5


def test_any_normal_descriptor_over_is_over(double):
    response = call(double, desc(("tenant", "acme"), addend=1), desc(("tenant", "zeta"), addend=101))
    assert response.overall_code == OVER_LIMIT and [s.code for s in response.statuses] == [OK, OVER_LIMIT]


def test_quota_mode_is_over_only_when_every_quota_descriptor_is(double):
    response = call(double, desc(("quota", "q"), addend=2), desc(("tenant", "acme"), addend=1))
    assert response.overall_code == OVER_LIMIT  # the one quota descriptor is over
    assert call(double, desc(("quota", "q"), addend=5), desc(("quota", "other"), addend=1)).overall_code == OK


def test_global_shadow_mode(redis_server):
    redis_server.flush()
    shadow = RateLimitDouble(redis_server.client, {"test.yaml": CONFIG}, Settings(shadow_mode=True), clock=lambda: NOW)
    assert call(shadow, desc(("tenant", "acme"), addend=50)).overall_code == OK


def test_unlimited_has_no_counter(double, redis_server):
    status = call(double, desc(("free", "x"), addend=10**6)).statuses[0]
    assert status.code == OK and status.limit_remaining == 2**32 - 1
    assert list(redis_server.client.scan_iter("*")) == []


def test_a_request_limit_overrides_the_configuration(double):
    status = call(double, desc(("tenant", "acme"), addend=3, limit=(2, "hour"))).statuses[0]
    assert status.code == OVER_LIMIT and status.current_limit.requests_per_unit == 2


def test_service_errors(double):
    with pytest.raises(ServiceError):
        call(double)
    with pytest.raises(ServiceError):
        call(double, desc(("tenant", "acme")), domain="")


def test_over_grpc_and_redis_down_is_a_grpc_error(redis_server):
    redis_server.flush()
    down = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    for client, expect in ((redis_server.client, OK), (down, None)):
        double = RateLimitDouble(client, {"test.yaml": CONFIG}, clock=lambda: NOW)
        with serving(double) as port, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = rls_pb2_grpc.RateLimitServiceStub(channel)
            request = rls_pb2.RateLimitRequest(domain="test", descriptors=[desc(("tenant", "acme"))])
            if expect is None:
                with pytest.raises(grpc.RpcError) as err:
                    stub.ShouldRateLimit(request, timeout=10)
                assert err.value.code() == grpc.StatusCode.UNKNOWN
            else:
                assert stub.ShouldRateLimit(request, timeout=10).overall_code == expect


def test_llmcs_configmap_loads_and_matches_what_envoy_sends(redis_server):
    """The generated configuration: a limit keyed by a header counts per value, at the right depth."""
    redis_server.flush()
    objects = compile_text((TESTDATA / "golden" / "token-limits.in.yaml").read_text(),
                           Options(rate_limit_service=("llmc-system", "ratelimit", 8081))).objects
    double = RateLimitDouble(redis_server.client, configmap_files(objects), clock=lambda: NOW)
    limit = ("llmc_limit", "route/team-a/chat/per-user/user-tpm")
    alice = desc(limit, ("header.x-user-id", "alice"), addend=61)
    assert call(double, alice, domain="llmc").overall_code == OVER_LIMIT
    assert call(double, desc(limit, ("header.x-user-id", "bob"), addend=0), domain="llmc").overall_code == OK
    provider = desc(("llmc_limit", "provider/platform/shared-openai/provider-tpm"), addend=0)
    assert call(double, provider, domain="llmc").statuses[0].current_limit.requests_per_unit == 100000


def test_llmc_rls_is_read_whole_or_not_at_all(tmp_path):
    """LLMC_RLS unset: the double runs; set, it needs the service's Redis and configuration directory
    (an incomplete or malformed setting fails the run, never silently falls back to the double)."""
    from tests.support.realrls import real_service

    assert real_service({}) is None
    got = real_service({"LLMC_RLS": "rls.local:8081", "LLMC_RLS_REDIS": "127.0.0.1:6380",
                        "LLMC_RLS_CONFIG": str(tmp_path)})
    assert got is not None and got.address == "rls.local:8081" and got.redis == ("127.0.0.1", 6380)
    for env in ({"LLMC_RLS": "rls.local:8081"}, {"LLMC_RLS": "rls.local", "LLMC_RLS_REDIS": "h:1",
                                                 "LLMC_RLS_CONFIG": str(tmp_path)},
                {"LLMC_RLS": "h:1", "LLMC_RLS_REDIS": "h:1", "LLMC_RLS_CONFIG": str(tmp_path / "missing")}):
        with pytest.raises(pytest.fail.Exception):
            real_service(env)


def test_the_recording_proxy_forwards_to_a_service_and_keeps_the_requests(redis_server, tmp_path):
    """The LLMC_RLS wiring, with the double standing in for the real service: the configuration is
    written where the service loads it, the probe waits for its limits, and every call through the
    proxy gets the service's answer (errors too) and is recorded."""
    from tests.support.realrls import ExternalRedis, RealService, RecordingProxy, load, probe

    redis_server.flush()
    files = configmap_files(compile_text((TESTDATA / "e2e" / "token-limits.yaml").read_text(),
                                         Options(rate_limit_service=("llmc-system", "ratelimit", 8081)),
                                         "in.yaml").objects)
    service = RateLimitDouble(redis_server.client, files)
    assert probe(files).descriptors[0].entries[0].key == "llmc_limit"
    with serving(service) as service_port:
        proxy = RecordingProxy(f"127.0.0.1:{service_port}")
        with serving(proxy) as port:
            load(RealService(f"127.0.0.1:{service_port}", ("127.0.0.1", redis_server.port), tmp_path), files, proxy)
            assert {p.name: p.read_text() for p in tmp_path.iterdir()} == files
            stub = rls_pb2_grpc.RateLimitServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
            request = probe(files)
            request.descriptors[0].hits_addend.value = 7
            answer = stub.ShouldRateLimit(request)
            assert answer.statuses[0].HasField("current_limit") and len(proxy.requests) == 1  # the probe is not kept
            assert sum(ExternalRedis("127.0.0.1", redis_server.port).counters().values()) == 7
            with pytest.raises(grpc.RpcError) as err:
                stub.ShouldRateLimit(rls_pb2.RateLimitRequest(domain="llmc"))  # no descriptors: the service's error
            assert err.value.code() == grpc.StatusCode.UNKNOWN
        proxy.close()


def test_a_call_is_kept_once_answered_so_a_counted_call_is_in_redis(double, redis_server):
    """Tests wait for N calls, then read Redis: the double and the recording proxy keep a call only
    once the service answered it, never while its counters are still being written (CI saw a charge
    counted before its INCRBY landed)."""
    from tests.support.realrls import RecordingProxy

    seen: list[int] = []
    counting = double._do_limit

    def do_limit(request, limits):
        seen.append(len(double.requests))
        return counting(request, limits)

    double._do_limit = do_limit
    with serving(double) as service_port:
        proxy = RecordingProxy(f"127.0.0.1:{service_port}")
        forward = proxy.stub.ShouldRateLimit

        def forwarding(request, timeout):
            seen.append(len(proxy.requests))
            return forward(request, timeout=timeout)

        proxy.stub.ShouldRateLimit = forwarding
        with serving(proxy) as port:
            stub = rls_pb2_grpc.RateLimitServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
            stub.ShouldRateLimit(rls_pb2.RateLimitRequest(domain="test", descriptors=[desc(("tenant", "acme"),
                                                                                         addend=4)]))
        proxy.close()
    assert seen == [0, 0], "kept before the answer"
    assert len(double.requests) == len(proxy.requests) == 1
    assert sum(redis_server.counters("test").values()) == 4


def test_stats_follow_the_service_and_map_through_deploys_mapper(redis_server):
    """The double keeps the service's per-limit stats (weighted by hits_addend: a check counts 0,
    even refused) and deploy/ratelimit's mapper turns them into Prometheus samples per limit and key;
    with detailed_metric (llmc's money budgets) the key holds the request's values."""
    from tests.conftest import REPO
    from tests.support.ratelimit import prometheus

    redis_server.flush()
    config = """
domain: llmc
descriptors:
- key: llmc_limit
  value: namespace/team-a/team
  descriptors:
  - key: header.x-team
    rate_limit: {unit: day, requests_per_unit: 500}
    detailed_metric: true
- key: llmc_limit
  value: route/team-a/chat/r/tph
  rate_limit: {unit: hour, requests_per_unit: 10}
  shadow_mode: true
"""
    double = RateLimitDouble(redis_server.client, {"llmc.yaml": config}, clock=lambda: NOW)
    team = [("llmc_limit", "namespace/team-a/team"), ("header.x-team", "blue")]
    for addend in (345, 320, 0):  # 345 within; 665: 165 over, 100 near; the check after: 0 everywhere
        call(double, desc(*team, addend=addend), domain="llmc")
    call(double, desc(("llmc_limit", "route/team-a/chat/r/tph"), addend=18), domain="llmc")
    base = "ratelimit.service.rate_limit.llmc.llmc_limit_namespace/team-a/team.header.x-team_blue"
    assert {k: v for k, v in double.stats.items() if k.startswith(base)} == {
        f"{base}.total_hits": 665, f"{base}.within_limit": 345, f"{base}.near_limit": 100,
        f"{base}.over_limit": 165}
    mapper = yaml.safe_load((REPO / "deploy" / "ratelimit" / "prometheus-mapper.yaml").read_text())["data"]["mapper.yaml"]
    samples = prometheus(double.stats, mapper)
    labels = (("domain", "llmc"), ("key", "header.x-team_blue"), ("limit", "namespace/team-a/team"))
    assert samples[("ratelimit_service_rate_limit_total_hits", labels)] == 665
    shadow = (("domain", "llmc"), ("key", ""), ("limit", "route/team-a/chat/r/tph"))
    assert samples[("ratelimit_service_rate_limit_shadow_mode", shadow)] == 8
    assert samples[("ratelimit_service_rate_limit_over_limit", shadow)] == 8


def test_redis_starts_when_its_chosen_port_is_taken_before_it_binds(monkeypatch):
    """The port is chosen free, then bound by redis-server: another process can take it in between
    (here a listener that accepts and never answers). redis exits; the fixture tries a new port."""
    import socket

    from tests.support import ratelimit

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = [taken.getsockname()[1]]
        chosen = ratelimit.free_port
        monkeypatch.setattr(ratelimit, "free_port", lambda: ports.pop() if ports else chosen())
        server = RedisServer()
        try:
            assert server.port != taken.getsockname()[1] and not ports
            assert server.client.ping()
        finally:
            server.stop()
