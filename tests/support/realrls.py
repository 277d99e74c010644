"""The token-limit end-to-end tests against a **real** envoyproxy/ratelimit, where one runs.

By default the tests run the double (:mod:`tests.support.ratelimit`). With ``LLMC_RLS=host:port`` the
same tests run against the service at that address instead; it needs two more variables:

* ``LLMC_RLS_REDIS=host:port`` — the Redis the service counts in (its ``REDIS_URL``): the tests read
  the counters there and **flush it** before every test, so give the tests a Redis of their own;
* ``LLMC_RLS_CONFIG=<directory>`` — the directory the service loads its configuration from
  (``$RUNTIME_ROOT/$RUNTIME_SUBDIRECTORY/config``, with ``RUNTIME_WATCH_ROOT=false``): the fixture writes
  the ConfigMap llmc emitted there and waits until the service answers with its limits.

Envoy calls a :class:`RecordingProxy` on a loopback port that forwards every call, unchanged, to the
service and keeps the requests (the tests count checks and charges, as with the double). Tests that
need a service the double alone can play (service or Redis down, an image before per-descriptor
``hits_addend``, another input's configuration) keep the double.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import redis
import yaml
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from tests.support.ratelimit import RateLimitDouble, RedisServer, configmap_files, serving

_ADDRESS = re.compile(r"([A-Za-z0-9.\-]+|\[[0-9a-fA-F:]+\]):([0-9]{1,5})")


@dataclass(frozen=True)
class RealService:
    address: str  # host:port of the service's gRPC port
    redis: tuple[str, int]
    config_dir: Path


def _address(name: str, value: str | None) -> tuple[str, int]:
    m = _ADDRESS.fullmatch(value or "")
    if not m or not 0 < int(m.group(2)) < 65536:
        pytest.fail(f"{name}={value!r}: expected host:port")
    return m.group(1).strip("[]"), int(m.group(2))


def real_service(env: dict[str, str] | None = None) -> RealService | None:
    """The service ``LLMC_RLS`` names, or None (the double runs); an incomplete setting fails."""
    env = dict(os.environ) if env is None else env
    if not env.get("LLMC_RLS"):
        return None
    host, port = _address("LLMC_RLS", env["LLMC_RLS"])
    redis_at = _address("LLMC_RLS_REDIS", env.get("LLMC_RLS_REDIS"))
    config = env.get("LLMC_RLS_CONFIG")
    if not config or not Path(config).is_dir():
        pytest.fail(f"LLMC_RLS_CONFIG={config!r}: the directory the service loads its configuration from")
    return RealService(f"{host}:{port}", redis_at, Path(config))


class ExternalRedis(RedisServer):
    """The service's own Redis, with :class:`RedisServer`'s reading helpers; never started or stopped here."""

    def __init__(self, host: str, port: int) -> None:  # noqa: D107 (no process: RedisServer's is not called)
        self.port = port
        self.client = redis.Redis(host=host, port=port, socket_timeout=5)
        self.client.ping()

    def stop(self) -> None:
        self.client.close()


class RecordingProxy(rls_pb2_grpc.RateLimitServiceServicer):
    """Forwards ``ShouldRateLimit`` to the real service unchanged and keeps every request (the
    double's ``requests``); a failure of the service is passed on with its status."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target)
        self.stub = rls_pb2_grpc.RateLimitServiceStub(self.channel)
        self.requests: list = []
        self._lock = threading.Lock()
        self.port = 0

    def ShouldRateLimit(self, request, context):  # noqa: N802 (the proto's name)
        try:
            return self.stub.ShouldRateLimit(request, timeout=5)
        except grpc.RpcError as err:
            context.abort(err.code(), err.details() or "")
        finally:  # kept once answered: a test that counted N calls sees their effects in Redis
            with self._lock:
                self.requests.append(request)

    def close(self) -> None:
        self.channel.close()


def probe(files: dict[str, str]) -> rls_pb2.RateLimitRequest:
    """A check (``hits_addend`` 0) for the first limit of llmc's configuration: a value for each
    level of its descriptor tree down to the first leaf that has a limit."""
    doc = yaml.safe_load(next(iter(sorted(files.items())))[1])
    entries, node = [], (doc.get("descriptors") or [None])[0]
    while node is not None:
        entries.append(ratelimit_pb2.RateLimitDescriptor.Entry(key=node["key"], value=node.get("value", "probe")))
        node = None if "rate_limit" in node else (node.get("descriptors") or [None])[0]
    descriptor = ratelimit_pb2.RateLimitDescriptor(entries=entries)
    descriptor.hits_addend.value = 0
    return rls_pb2.RateLimitRequest(domain=doc["domain"], descriptors=[descriptor])


def load(service: RealService, files: dict[str, str], proxy: RecordingProxy, timeout: float = 90.0) -> None:
    """Write llmc's configuration where the service loads it (atomically: a temporary name, then a
    rename, as the kubelet's symlink swap) and wait until it answers the first limit with its budget."""
    for name, text in files.items():
        tmp = service.config_dir / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(service.config_dir / name)
    request = probe(files)
    deadline = time.monotonic() + timeout
    while True:
        try:
            answer = proxy.stub.ShouldRateLimit(request, timeout=5)
            if answer.statuses and answer.statuses[0].HasField("current_limit"):
                return
        except grpc.RpcError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"the rate-limit service at {service.address} did not load llmc's configuration "
                        f"from {service.config_dir}")
        time.sleep(0.2)


def rate_limit_service(real: RealService | None, redis_client, objects: list[dict]) -> Iterator:
    """What the sidecars of an e2e module call, loaded with the ConfigMap llmc emitted for
    ``objects``: the double counting in ``redis_client``, or (``real``, from LLMC_RLS) a recording
    proxy to the real service. A generator for a module-scoped fixture to ``yield from``; what it
    yields has ``port`` (the loopback port to route the rate-limit cluster to) and ``requests``."""
    if real:
        proxy = RecordingProxy(real.address)
        with serving(proxy) as port:
            proxy.port = port
            load(real, configmap_files(objects), proxy)
            yield proxy
        proxy.close()
        return
    double = RateLimitDouble(redis_client, configmap_files(objects))
    with serving(double) as port:
        double.port = port
        yield double
