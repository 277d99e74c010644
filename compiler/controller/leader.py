"""Leader election on a coordination.k8s.io/v1 Lease, by client-go's rules, plus a write fence.

The ``kubernetes`` package's own ``leaderelection`` catches only ``ApiException`` (a connection error
kills its thread while the replica still believes it leads) and sets no timeouts; this module
follows client-go's ``tools/leaderelection`` instead:

* Expiry is judged on a **locally observed** time on the monotonic clock: a replica takes the Lease
  only when it has seen the same record (holder, renew time, transitions) unchanged for
  ``lease_duration`` seconds of its own clock — other replicas' wall clocks are never compared.
* The holder renews every ``retry_period``; when no renewal has succeeded for ``renew_deadline``
  (< ``lease_duration``) it gives up leadership. Every exception is caught; every API call has
  ``request_timeout``.
* Optimistic concurrency (``resourceVersion``) makes exactly one of two racing replicas win.

**Fencing** (:meth:`LeaderElector.check_fence`): a write request is started only while the last
successful renewal — timed from when that renewal request was *sent* (R) — is younger than
``renew_deadline``. Because ``renew_deadline < lease_duration`` and another replica needs
``lease_duration`` of unchanged observation (which starts after our renewal was sent), no write is
started once another replica may lead, even by a replica that was paused (SIGSTOP) and resumed: the
monotonic clock kept running. A write already started is bounded by the API server: every write
carries the server-side ``timeout`` (:func:`.kube.send_server_timeouts`), so it is not applied later
than its receipt + ``request_timeout`` (plus an etcd transaction already in flight). The last write
of an ex-leader therefore lands by R + ``renew_deadline`` + transit + ``request_timeout`` + etcd
commit, and the next leader writes from R + ``lease_duration`` on: with the defaults (15, 10, 3) the
margin is 2 s for transit and the commit. :attr:`LeaseConfig.stale_write_margin` is that margin;
the controller warns when it is not positive. Kubernetes offers no fencing token to close it.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

log = logging.getLogger("llmc.controller")
FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
JITTER = 1.2  # client-go's JitterFactor: retries wait retry_period * [1, 1.2)


class LeadershipLost(Exception):
    """Raised instead of starting a write when this replica may no longer lead."""


@dataclass(frozen=True)
class LeaseConfig:
    """client-go's defaults are 15 s / 10 s / 2 s; tests shrink them to run in seconds. The request
    timeout (client and server side) is 3 s so that a write started just before the renew deadline
    is over 2 s before another replica may lead (see the module docstring)."""

    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    request_timeout: float = 3.0

    @property
    def stale_write_margin(self) -> float:
        """Seconds between the latest an ex-leader's write can be applied (renew deadline + request
        timeout after its last renewal, not counting transit and etcd's commit) and the earliest
        another replica may write (a lease duration after it): must cover transit and the commit."""
        return self.lease_duration - self.renew_deadline - self.request_timeout

    def __post_init__(self) -> None:
        if not self.lease_duration > self.renew_deadline:
            raise ValueError("lease duration must be greater than the renew deadline")
        if not self.renew_deadline > JITTER * self.retry_period:
            raise ValueError(f"renew deadline must be greater than {JITTER} x the retry period")
        if self.request_timeout <= 0 or self.retry_period <= 0:
            raise ValueError("retry period and request timeout must be positive")


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime(FORMAT)


class LeaderElector:
    def __init__(self, api: client.ApiClient, namespace: str, name: str, identity: str,
                 config: LeaseConfig | None = None, clock: Callable[[], float] = time.monotonic):
        self.api: Any = client.CoordinationV1Api(api)  # bodies are dicts; the generated types say V1Lease
        self.namespace, self.name, self.identity = namespace, name, identity
        self.config = config or LeaseConfig()
        self.clock = clock
        self.observed: tuple | None = None  # (holder, renewTime, transitions) last seen
        self.observed_at = 0.0  # local monotonic time the observed record last changed
        self.renewed_at: float | None = None  # send time of our last successful acquire/renew
        self._lock = threading.Lock()

    # -- the fence -------------------------------------------------------------------------------

    def is_leader(self) -> bool:
        with self._lock:
            return self.renewed_at is not None and self.clock() - self.renewed_at < self.config.renew_deadline

    def check_fence(self) -> None:
        """Raise :class:`LeadershipLost` unless a write may be started now."""
        if not self.is_leader():
            raise LeadershipLost("renew deadline passed without a renewal")

    # -- one attempt -----------------------------------------------------------------------------

    def _body(self, lease, acquire: bool) -> dict:
        spec = lease.spec if lease is not None else None
        transitions = (spec.lease_transitions or 0) if spec else 0
        now = _now()
        acquired = spec.acquire_time if spec is not None and not acquire else None
        if isinstance(acquired, dt.datetime):
            acquired = acquired.strftime(FORMAT)
        body: dict[str, Any] = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": {"holderIdentity": self.identity,
                         "leaseDurationSeconds": max(1, round(self.config.lease_duration)),
                         "renewTime": now, "acquireTime": acquired or now,
                         "leaseTransitions": transitions + (1 if acquire and lease is not None else 0)}}
        if lease is not None:
            body["metadata"]["resourceVersion"] = lease.metadata.resource_version
        return body

    def try_acquire_or_renew(self) -> bool:
        """One attempt (client-go's tryAcquireOrRenew); True when this replica holds the Lease now.
        Never raises: any failure is a failed attempt."""
        sent = self.clock()
        timeout = self.config.request_timeout
        try:
            try:
                lease = self.api.read_namespaced_lease(self.name, self.namespace, _request_timeout=timeout)
            except ApiException as exc:
                if exc.status != 404:
                    return False
                self.api.create_namespaced_lease(self.namespace, self._body(None, True), _request_timeout=timeout)
                self._renewed(sent)
                return True
            spec = lease.spec
            record = (spec.holder_identity, str(spec.renew_time), spec.lease_transitions)
            if record != self.observed:
                self.observed, self.observed_at = record, self.clock()
            holder = spec.holder_identity or ""
            mine = holder == self.identity
            if holder and not mine and self.clock() - self.observed_at < self.config.lease_duration:
                return False  # held by another replica that renewed within a lease duration we observed
            if mine and not self.is_leader() and self.renewed_at is not None:
                # We let our own deadline pass: acquire anew (and count a transition), never resume.
                mine = False
            self.api.replace_namespaced_lease(self.name, self.namespace, self._body(lease, not mine),
                                              _request_timeout=timeout)
            self._renewed(sent)
            return True
        except Exception as exc:  # connection errors, timeouts, 409s: a failed attempt, never a dead thread
            log.info("lease attempt failed", extra={"error": type(exc).__name__})
            return False

    def _renewed(self, sent: float) -> None:
        with self._lock:
            self.renewed_at = sent

    def release(self) -> None:
        """Hand the Lease back (graceful stop) so another replica need not wait for expiry."""
        if not self.is_leader():
            return
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace,
                                                   _request_timeout=self.config.request_timeout)
            if lease.spec.holder_identity == self.identity:
                body = self._body(lease, False)
                body["spec"]["holderIdentity"] = ""
                self.api.replace_namespaced_lease(self.name, self.namespace, body,
                                                  _request_timeout=self.config.request_timeout)
        except Exception as exc:
            log.info("lease release failed", extra={"error": type(exc).__name__})
        with self._lock:
            self.renewed_at = None

    # -- the loop --------------------------------------------------------------------------------

    def run(self, stop: threading.Event, on_started: Callable[[], None], on_lost: Callable[[], None],
            beat: Callable[[], None] = lambda: None) -> None:
        """Acquire (retrying every ``retry_period``), then renew until a renewal misses the
        ``renew_deadline``; then call ``on_lost`` and return (the process is expected to exit)."""
        while not stop.is_set():
            beat()
            if self.try_acquire_or_renew():
                break
            stop.wait(self.config.retry_period * random.uniform(1.0, JITTER))
        else:
            return
        log.info("leadership acquired", extra={"leader": True})
        on_started()
        while not stop.is_set():
            beat()
            stop.wait(self.config.retry_period)
            if stop.is_set():
                return
            while not self.try_acquire_or_renew():
                if not self.is_leader() or stop.is_set():
                    break
                stop.wait(self.config.retry_period / 4)
            if stop.is_set():
                return
            if not self.is_leader():
                log.warning("leadership lost", extra={"leader": False})
                on_lost()
                return
