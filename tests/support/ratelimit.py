"""A protocol-faithful double of envoyproxy/ratelimit: Envoy's ``envoy.service.ratelimit.v3``
gRPC API in Python (``grpcio`` + the ``xds-protos`` wheel), counting in a **real redis-server**.

envoyproxy/ratelimit is Go and cannot be built on the CI machine (docs/budgets.md), so the
end-to-end tests run this double, loaded with **the ConfigMap llmc emits** (never a hand-written
copy). Its semantics are copied from the service's source, envoyproxy/ratelimit at f2fb157
(2026-07-05); each behaviour names the Go it follows and has a unit test
(tests/test_ratelimit_double.py):

* configuration — ``src/config/config_impl.go``: a ``domain`` per file, a duplicate domain is an
  error unless MERGE_DOMAIN_CONFIG (``loadConfig`` L406-420); nested ``descriptors[]{key, value?}``;
  ``rate_limit{unit, requests_per_unit, unlimited, name, replaces}``, ``shadow_mode``,
  ``quota_mode``; a unit outside second..year is an error (``loadDescriptors`` L266-281).
* descriptor matching — ``GetLimit`` L446-610: per entry ``key_value`` first, then wildcard values
  (``wildcardMatch`` L202, ``*`` anywhere), then ``key`` alone (any value, each value its own
  counter); a limit applies only when found at the request descriptor's last entry (L571); a
  request ``limit`` override replaces the configured limit (L459-473); no match → no limit.
* units and windows — ``src/utils/utilities.go`` ``UnitToDivider`` L20-39 (week 7 d, month 30 d,
  year 365 d); the window starts at ``now / divider * divider`` (``src/limiter/cache_key.go``
  ``GenerateCacheKey``: key = ``CACHE_KEY_PREFIX + domain + "_" + key + "_" + value + "_" … + start``);
  ``duration_until_reset`` = ``divider - now % divider`` (``CalculateReset`` L41-45).
* counting — ``src/redis/fixed_cache_impl.go`` ``pipelineAppend`` L35-38: ``INCRBY key addend`` then
  ``EXPIRE key divider + jitter`` (``EXPIRATION_JITTER_MAX_SECONDS``, default 300, L166-169); the
  counter grows even when over the limit (no STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT here).
* ``hits_addend`` — ``GetHitsAddends`` (utilities.go L75-90): the descriptor's own ``hits_addend``
  when set, **0 allowed = check only**; otherwise ``max(1, request.hits_addend)``. ``legacy=True``
  is the rule of images before 38500fe (Istio's sample ``envoyproxy/ratelimit:30a4ce1``):
  ``max(1, request.hits_addend)`` for every descriptor, so each call counts 1 — trap 2 of the notes.
* decision — ``src/limiter/base_limiter.go`` ``GetResponseDescriptorStatus`` L83-142: OVER_LIMIT
  iff ``after > requests_per_unit``; ``limit_remaining = limit - after`` (0 when over); a
  ``shadow_mode`` limit says OK (L134-140); ``unlimited`` → OK with remaining MaxUint32 and no counter
  (``src/service/ratelimit.go`` ``constructLimitsToCheck`` L119-183, ``shouldRateLimitWorker`` L226-229);
  overall OVER_LIMIT iff a normal descriptor is over or every ``quota_mode`` descriptor is (L251-255);
  the global SHADOW_MODE turns OVER_LIMIT into OK (L267-270).
* failures — ``ShouldRateLimit`` L400-444: a Redis error or a service error (empty domain, no
  descriptors, ``checkServiceErr`` L113-117) is a gRPC error; Envoy's ``failure_mode_deny`` decides.

* stats — the per-limit counters ``ratelimit.service.rate_limit.<key>.{total_hits, over_limit,
  near_limit, within_limit, shadow_mode}`` (``src/stats/manager_impl.go`` L12-38; amounts per
  ``src/limiter/base_limiter.go``, :func:`count_stats`), ``<key>`` the configured descriptor path, or
  the request's values with ``detailed_metric`` (``GetLimit`` L614-660); :func:`prometheus` maps
  them with ``deploy/ratelimit``'s mapper, as the service's ``USE_PROMETHEUS`` does.

Not reproduced (off by default in the service): the local over-limit cache, the per-second Redis,
STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT, response headers (LIMIT_RESPONSE_HEADERS_ENABLED), the
service's other stats (call counts, errors, config loads).
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc
import pytest
import redis
import yaml
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from redis.backoff import NoBackoff
from redis.retry import Retry

UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 7 * 86400, "month": 30 * 86400,
         "year": 365 * 86400}
UNIT_ENUM = {name: rls_pb2.RateLimitResponse.RateLimit.Unit.Value(name.upper()) for name in UNITS}
MAX_UINT32 = 2**32 - 1
OK, OVER_LIMIT = rls_pb2.RateLimitResponse.OK, rls_pb2.RateLimitResponse.OVER_LIMIT


class ConfigError(ValueError):
    pass


@dataclass
class Limit:
    unit: str
    requests_per_unit: int
    full_key: str
    unlimited: bool = False
    shadow: bool = False
    quota: bool = False
    name: str = ""
    replaces: tuple[str, ...] = ()
    detailed: bool = False  # detailed_metric: stats per request values, not per configured descriptor


@dataclass
class Node:
    limit: Limit | None = None
    children: dict[str, Node] = field(default_factory=dict)  # "key_value" or "key" → node
    wildcards: list[tuple[str, list[str]]] = field(default_factory=list)  # ("key_val*ue", parts)


def _load_descriptors(node: Node, parent: str, items: list[dict], where: str) -> None:
    """config_impl.go ``loadDescriptors``."""
    for d in items or []:
        key = d.get("key")
        if not key:
            raise ConfigError(f"{where}: descriptor has empty key")
        final = f"{key}_{d['value']}" if d.get("value") else key
        if final in node.children:
            raise ConfigError(f"{where}: duplicate descriptor composite key '{parent}{final}'")
        child = Node()
        rl = d.get("rate_limit")
        if rl is not None:
            unit = str(rl.get("unit", "")).lower()
            if rl.get("unlimited"):
                if unit:
                    raise ConfigError(f"{where}: should not specify rate limit unit when unlimited")
            elif unit not in UNITS:
                raise ConfigError(f"{where}: invalid rate limit unit '{rl.get('unit')}'")
            rpu = int(rl.get("requests_per_unit", 0))
            if not 0 <= rpu <= MAX_UINT32:
                raise ConfigError(f"{where}: requests_per_unit must be a uint32")
            child.limit = Limit(unit=unit or "second", requests_per_unit=rpu, full_key=parent + final,
                                unlimited=bool(rl.get("unlimited")), shadow=bool(d.get("shadow_mode")),
                                quota=bool(d.get("quota_mode")), name=str(rl.get("name", "")),
                                replaces=tuple(r["name"] for r in rl.get("replaces") or []),
                                detailed=bool(d.get("detailed_metric")))
        _load_descriptors(child, parent + final + ".", d.get("descriptors"), where)
        node.children[final] = child
        if "*" in final:
            node.wildcards.append((final, final.split("*")))


def _wildcard_match(parts: list[str], value: str) -> bool:
    """config_impl.go ``wildcardMatch`` L202: each ``*`` matches zero or more characters."""
    if len(parts) == 1:
        return parts[0] == value
    if not value.startswith(parts[0]) or not value.endswith(parts[-1]) or len(value) < sum(map(len, parts)):
        return False
    rest = value[len(parts[0]):len(value) - len(parts[-1])]
    for part in parts[1:-1]:
        i = rest.find(part)
        if i < 0:
            return False
        rest = rest[i + len(part):]
    return True


def load_config(files: dict[str, str], merge_domains: bool = False) -> dict[str, Node]:
    """{domain: tree} from config files (``name → YAML``), e.g. the data of llmc's ConfigMap."""
    domains: dict[str, Node] = {}
    for name, text in sorted(files.items()):
        root = yaml.safe_load(text) or {}
        domain = root.get("domain")
        if not domain:
            raise ConfigError(f"{name}: config file cannot have empty domain")
        if domain in domains and not merge_domains:
            raise ConfigError(f"{name}: duplicate domain '{domain}' in config file")
        _load_descriptors(domains.setdefault(domain, Node()), domain + ".", root.get("descriptors"), name)
    return domains


def get_limit(domains: dict[str, Node], domain: str, descriptor) -> Limit | None:
    """config_impl.go ``GetLimit``."""
    node = domains.get(domain)
    if node is None:
        return None
    if descriptor.HasField("limit"):  # L459-473: the override, never in shadow mode
        unit = rls_pb2.RateLimitResponse.RateLimit.Unit.Name(descriptor.limit.unit).lower()
        return Limit(unit=unit, requests_per_unit=descriptor.limit.requests_per_unit, full_key=domain)
    found = None
    entries = list(descriptor.entries)
    for i, entry in enumerate(entries):
        final = f"{entry.key}_{entry.value}"
        nxt = node.children.get(final)
        if nxt is None:
            for pattern, parts in node.wildcards:
                if _wildcard_match(parts, final):
                    nxt = node.children[pattern]
                    break
        if nxt is None:
            nxt = node.children.get(entry.key)
        if nxt is not None and nxt.limit is not None and i == len(entries) - 1:
            found = nxt.limit
        if nxt is None or not nxt.children:
            break
        node = nxt
    if found is not None and found.detailed:  # L614-660: the stats key holds the request's values
        key = domain + "".join(f".{e.key}_{e.value}" if e.value else f".{e.key}" for e in entries)
        found = dataclasses.replace(found, full_key=key)
    return found


#: the service's stats of one limit (src/stats/manager_impl.go ``NewStats`` L28-38), under the scope
#: ``ratelimit.service.rate_limit`` (L12-15): ``<scope>.<full key>.<stat>``
STATS = ("total_hits", "over_limit", "near_limit", "within_limit", "shadow_mode")
STATS_SCOPE = "ratelimit.service.rate_limit"
NEAR_LIMIT_RATIO = 0.8  # NEAR_LIMIT_RATIO, the service's default


def count_stats(stats: dict[str, int], limit: Limit, before: int, after: int, addend: int) -> None:
    """base_limiter.go: ``total_hits`` += addend (``GenerateCacheKeys`` L58); over the limit,
    ``over_limit`` (and ``near_limit``) per ``checkOverLimitThreshold`` L159-174, ``shadow_mode`` per
    ``increaseShadowModeStats`` L190-198; within it, ``near_limit`` per ``checkNearLimitThreshold``
    L176-188 and ``within_limit`` += addend (L130). All weighted by the addend: a check (addend 0)
    counts nothing, even when it is refused."""
    def add(stat: str, n: int) -> None:
        name = f"{STATS_SCOPE}.{limit.full_key}.{stat}"
        stats[name] = stats.get(name, 0) + n

    threshold = limit.requests_per_unit
    near = math.floor(float(go_float32(threshold) * go_float32(NEAR_LIMIT_RATIO)))
    add("total_hits", addend)
    if after > threshold:
        if before >= threshold:
            add("over_limit", addend)
        else:
            add("over_limit", after - threshold)
            add("near_limit", threshold - max(near, before))
        if limit.shadow:
            add("shadow_mode", addend if before >= threshold else after - threshold)
    else:
        if after > near:
            add("near_limit", addend if before >= near else after - near)
        add("within_limit", addend)


def go_float32(x: float) -> float:
    """Go's float32 rounding (``float32(limit) * nearLimitRatio``)."""
    return struct.unpack("f", struct.pack("f", x))[0]


def prometheus(stats: dict[str, int], mapper: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], int]:
    """The service's stats as Prometheus samples through a statsd_exporter mapping file (the
    ``PROMETHEUS_MAPPER_YAML`` of ``deploy/ratelimit``): ``{(name, sorted labels): value}``; the first
    mapping that matches wins (statsd_exporter's order); a name no mapping matches is dropped."""
    rules = []
    for m in yaml.safe_load(mapper)["mappings"]:
        assert m.get("match_type") == "regex", "the mapper uses regex mappings only"
        rules.append((re.compile(m["match"]), m["name"], m.get("labels") or {}))
    out: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}
    for name, value in stats.items():
        for pattern, metric, labels in rules:
            hit = pattern.fullmatch(name)
            if hit:
                key = (hit.expand(metric.replace("$", "\\")),
                       tuple(sorted((k, hit.expand(v.replace("$", "\\"))) for k, v in labels.items())))
                out[key] = out.get(key, 0) + value
                break
    return out


def hits_addends(request, legacy: bool = False) -> list[int]:
    """utilities.go ``GetHitsAddends`` L75-90 (``legacy``: before ratelimit 38500fe)."""
    default = max(1, request.hits_addend)
    if legacy:
        return [default for _ in request.descriptors]
    return [d.hits_addend.value if d.HasField("hits_addend") else default for d in request.descriptors]


def cache_key(prefix: str, domain: str, descriptor, limit: Limit, now: int) -> str:
    """cache_key.go ``GenerateCacheKey``: every entry's key and value, then the window's start."""
    divider = UNITS[limit.unit]
    parts = "".join(f"{e.key}_{e.value}_" for e in descriptor.entries)
    return f"{prefix}{domain}_{parts}{now // divider * divider}"


@dataclass
class Settings:
    """The service's environment settings this double honours."""

    cache_key_prefix: str = ""  # CACHE_KEY_PREFIX
    expiration_jitter_max_seconds: int = 300  # EXPIRATION_JITTER_MAX_SECONDS
    shadow_mode: bool = False  # SHADOW_MODE (global)
    merge_domains: bool = False  # MERGE_DOMAIN_CONFIG
    legacy: bool = False  # an image before per-descriptor hits_addend (ratelimit 38500fe)


class RateLimitDouble(rls_pb2_grpc.RateLimitServiceServicer):
    def __init__(self, redis_client: redis.Redis, files: dict[str, str], settings: Settings | None = None,
                 clock=time.time):
        self.redis = redis_client
        self.settings = settings or Settings()
        self.clock = clock
        self.domains = load_config(files, self.settings.merge_domains)
        #: every RateLimitRequest answered over gRPC (tests count checks and charges). A call is kept
        #: once its answer is ready, so a test that counted N calls sees all N in Redis.
        self.requests: list = []
        self.stats: dict[str, int] = {}  # the service's own stats, by their statsd names (count_stats)
        self._lock = threading.Lock()
        self._jitter = random.Random(0)

    def reload(self, files: dict[str, str]) -> None:
        """A new configuration (the service's runtime watch on its mounted ConfigMap)."""
        self.domains = load_config(files, self.settings.merge_domains)

    def should_rate_limit(self, request) -> rls_pb2.RateLimitResponse:
        """ratelimit.go ``shouldRateLimitWorker``; raises on a service or Redis error."""
        if not request.domain:
            raise ServiceError("rate limit domain must not be empty")
        if not request.descriptors:
            raise ServiceError("rate limit descriptor list must not be empty")
        limits = [get_limit(self.domains, request.domain, d) for d in request.descriptors]
        unlimited = [lim is not None and lim.unlimited for lim in limits]
        replaced = {r for lim in limits if lim is not None for r in lim.replaces}
        limits = [None if lim is None or lim.unlimited or (lim.name and lim.name in replaced) else lim
                  for lim in limits]
        statuses = self._do_limit(request, limits)
        response = rls_pb2.RateLimitResponse()
        over = quota_over = quota_total = 0
        for i, status in enumerate(statuses):
            if unlimited[i]:
                status = rls_pb2.RateLimitResponse.DescriptorStatus(code=OK, limit_remaining=MAX_UINT32)
            elif limits[i] is not None and limits[i].quota:
                quota_total += 1
                quota_over += status.code == OVER_LIMIT
            elif status.code == OVER_LIMIT:
                over += 1
            response.statuses.append(status)
        code = OVER_LIMIT if over or (quota_total and quota_total == quota_over) else OK
        if code == OVER_LIMIT and self.settings.shadow_mode:
            code = OK
        response.overall_code = code
        return response

    def _do_limit(self, request, limits: list[Limit | None]) -> list:
        """fixed_cache_impl.go ``DoLimit``: one pipeline of INCRBY + EXPIRE, then the statuses."""
        addends = hits_addends(request, self.settings.legacy)
        now = int(self.clock())
        keys = [cache_key(self.settings.cache_key_prefix, request.domain, d, lim, now) if lim else ""
                for d, lim in zip(request.descriptors, limits, strict=True)]
        pipe = self.redis.pipeline(transaction=False)
        for key, lim, addend in zip(keys, limits, addends, strict=True):
            if key and lim is not None:
                expire = UNITS[lim.unit]
                if self.settings.expiration_jitter_max_seconds > 0:
                    expire += self._jitter.randrange(self.settings.expiration_jitter_max_seconds)
                pipe.incrby(key, addend)
                pipe.expire(key, expire)
        results = iter(pipe.execute()[::2])
        out = []
        for key, lim, addend in zip(keys, limits, addends, strict=True):
            if not key or lim is None:
                out.append(rls_pb2.RateLimitResponse.DescriptorStatus(code=OK))
                continue
            after = int(next(results))
            with self._lock:
                count_stats(self.stats, lim, after - addend, after, addend)
            divider = UNITS[lim.unit]
            current = rls_pb2.RateLimitResponse.RateLimit(requests_per_unit=lim.requests_per_unit,
                                                          unit=UNIT_ENUM[lim.unit])
            status = rls_pb2.RateLimitResponse.DescriptorStatus(current_limit=current)
            status.duration_until_reset.seconds = divider - now % divider
            if after > lim.requests_per_unit:
                status.code = OK if lim.shadow else OVER_LIMIT
                status.limit_remaining = 0
            else:
                status.code = OK
                status.limit_remaining = lim.requests_per_unit - after
            out.append(status)
        return out

    # gRPC
    def ShouldRateLimit(self, request, context):  # noqa: N802 (the proto's name)
        try:
            return self.should_rate_limit(request)
        except (ServiceError, redis.RedisError) as exc:
            context.abort(grpc.StatusCode.UNKNOWN, f"{type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self.requests.append(request)


class ServiceError(RuntimeError):
    pass


def configmap_files(objects: list[dict]) -> dict[str, str]:
    """The service's config files from llmc's output: the data of its rate-limit ConfigMap(s)."""
    files = {}
    for o in objects:
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("ratelimit-config"):
            files.update(o["data"])
    assert files, "llmc emitted no rate-limit ConfigMap"
    return files


@contextmanager
def serving(double: RateLimitDouble):
    """The double on a loopback port (HTTP/2 gRPC); yields the port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(double, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(None)


RLS_CLUSTER = "outbound|8081||ratelimit.llmc-system.svc.cluster.local"


def rls_cluster(port: int, host: str = "127.0.0.1") -> dict:
    """What istiod builds for the service's Kubernetes Service (a grpc port: HTTP/2)."""
    return {"name": RLS_CLUSTER, "type": "STATIC", "connect_timeout": "1s",
            "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}},
            "load_assignment": {"cluster_name": RLS_CLUSTER, "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"socket_address": {"address": host, "port_value": port}}}}]}]}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A real redis-server on a loopback port with a temporary directory, no persistence.

    redis-server cannot bind port 0 and say which port it got, so the port is chosen free and bound
    by redis a moment later; another process (a parallel suite, an outgoing connection's ephemeral
    port) can take it in between. redis then exits at once (``Could not create server TCP listening
    socket``): a new port is tried, a few times, rather than failing the module."""

    ATTEMPTS = 5

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            message = "needs redis-server (Debian package redis-server; .ci/run installs it)"
            if os.environ.get("CI") == "true":
                pytest.fail(message + ": missing under CI=true")
            pytest.skip(message)
        self.dir = tempfile.mkdtemp(prefix="llmc-redis-")
        for _ in range(self.ATTEMPTS):
            if self._start(binary):
                return
        self.stop()
        raise RuntimeError(f"redis-server did not start on any of {self.ATTEMPTS} free ports")

    def _start(self, binary: str) -> bool:
        """Start redis on a free port and wait until it answers; False when it exited (the port was
        taken before it bound it). The deadline only matters when redis hangs without exiting."""
        self.port = free_port()
        self.proc = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
                                      "--save", "", "--appendonly", "no", "--protected-mode", "yes"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)
        # the startup probe: one try per call with a short timeout, so that a foreign listener that
        # accepts and never answers costs a second per round, not the client's retries
        probe = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1, socket_connect_timeout=1,
                            retry=Retry(NoBackoff(), 0))
        deadline = time.monotonic() + 20
        try:
            while self.proc.poll() is None:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("redis-server did not start")
                try:
                    # whoever answers must be ours: another process's redis could hold the port
                    if probe.config_get("dir").get("dir") == os.path.realpath(self.dir):
                        return True
                except redis.RedisError:  # not listening yet, or a foreign listener
                    pass
                time.sleep(0.05)
            return False
        finally:
            probe.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def counters(self, domain: str = "llmc") -> dict[str, int]:
        """Counters of ``domain``, no domain or window: {"llmc_limit_<id>_<key>_<value>": n} (summed over windows)."""
        out = {}
        for key in self.client.scan_iter(f"{domain}_*"):
            text = key.decode()
            # summed over windows: a test that straddles a window boundary sees all its charges
            name = text[len(domain) + 1:].rsplit("_", 1)[0]
            out[name] = out.get(name, 0) + int(self.client.get(key) or 0)
        return out

    def flush(self) -> None:
        self.client.flushall()


def counter(limit_id: str, *parts: tuple[str, str]) -> str:
    """The name :meth:`RedisServer.counters` gives a limit's counter (``parts``: (key, value) entries)."""
    return "_".join([f"llmc_limit_{limit_id}", *(f"{k}_{v}" for k, v in parts)])
