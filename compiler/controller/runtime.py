"""The controller process: informers, a keyed work queue, leader election, probes and metrics.

Informers (:mod:`.informer`) cache the sources (LLMProvider, LLMRoute; per watched namespace, or
cluster-wide) and the objects the controller applied (every generated kind, by its owner label).
A source change queues the work keys whose compile set holds it (:mod:`.deps`: a key is the
namespace whose objects its pass writes); an edit or deletion of an applied object queues its
namespace, unless it is the controller's own write coming back (:mod:`.ownwrites`). A worker
(leader only) takes keys from the queue and, per key, compiles its sources with the same pipeline
as ``llmc render``, applies what drifted in that namespace (server-side
apply), prunes what is no longer produced, keeps objects of invalid sources as they are (last known
good), refuses writes into namespaces the operator did not allow, and patches status. A failing key
is retried with its own exponential backoff; the others go on. Every key is also queued every
``resync`` seconds (Secrets referenced by ``apiKeySecretRef`` are checked for existence then; their
contents are never read).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from http.server import ThreadingHTTPServer

from kubernetes.client.rest import ApiException

from .. import constants
from ..constants import PLURALS
from ..resolve import Options
from .deps import DependencyIndex, namespace_of
from .deps import describe as describe_source
from .informer import Informer
from .kube import MANAGED_SELECTOR, Kube, send_server_timeouts
from .leader import LeaderElector, LeadershipLost, LeaseConfig
from .observe import JsonFormatter, Metrics, serve_probes
from .ownwrites import DELETED, OwnWrites
from .queue import RateLimiter, WorkQueue
from .reconcile import Outcome, Scope, annotated_sources, conditions, desired_state, obj_key, plan, source_key
from .reports import Report, Reports
from .secretcheck import check_secrets

log = logging.getLogger("llmc.controller")


def describe(exc: Exception) -> str:
    """An error for logs and status: an API error by its status and reason only — its body may echo
    the object, and an EnvoyFilter can hold a literal apiKey."""
    if isinstance(exc, ApiException):
        return f"{exc.status} {exc.reason or ''}".strip()
    return f"{type(exc).__name__}: {exc}"[:300]


@dataclass(frozen=True)
class Tuning:
    """Durations and limits; the defaults suit a cluster, tests shrink them to run in seconds."""

    resync: float = 60.0  # every key is queued this often (drift is repaired at once via watches;
    # the periodic pass picks up Secrets created or deleted since, which are not watched)
    watch_timeout: int = 300
    debounce: float = 0.1  # a burst of events for one key costs one pass
    backoff_base: float = 0.2  # per-key retry: base * 2**failures, capped
    backoff_cap: float = 60.0
    # client-side rate limit of writes: a cold start of 1,000 providers + 1,000 routes is ~6,900
    # writes (objects and status), (6,900 - burst) / qps ~ 33 s; at 50/s it took ~138 s (issue 29)
    qps: float = 200.0
    burst: int = 400
    workers: int = 4  # keys processed in parallel (never one key twice at once)


class Controller:
    """``on_lost`` runs when leadership is lost (after every write has stopped); the CLI exits the
    process then, as controller-runtime does, so Kubernetes restarts it as a follower."""

    def __init__(self, api, opts: Options, identity: str, lease_namespace: str, namespaces: list[str] | None = None,
                 lease: LeaseConfig | None = None, on_lost=None, gateway_namespaces: list[str] | None = None,
                 istio_root_namespace: str = "istio-system", tuning: Tuning | None = None):
        lease, self.tuning = lease or LeaseConfig(), tuning or Tuning()
        api.user_agent = f"llmc-controller/{identity}"  # tells replicas apart in API server logs
        send_server_timeouts(api, lease.request_timeout)  # the API server drops a write it cannot finish
        self.elector = LeaderElector(api, lease_namespace, "llmc-controller", identity, lease)
        self.limiter = RateLimiter(self.tuning.qps, self.tuning.burst)
        self.kube = Kube(api, fence=self.elector.check_fence, timeout=lease.request_timeout, limiter=self.limiter.wait)
        self.opts, self.namespaces = opts, set(namespaces or [])
        self.scope = Scope(frozenset(gateway_namespaces or []), istio_root_namespace,
                           frozenset({opts.rate_limit.namespace}) if opts.rate_limit else frozenset())
        self.on_lost = on_lost
        self.lost = threading.Event()
        self.index = DependencyIndex(opts)  # which keys a source's change queues (issue 32)
        self.own = OwnWrites()  # our writes coming back through the watch queue nothing
        self.reports = Reports()  # per key: failures and last known good, per source, for status
        self.resync_lock = threading.Lock()
        self.last_resync = time.monotonic()
        self.stop_event = threading.Event()
        self.queue = WorkQueue(self.tuning.debounce, self.tuning.backoff_base, self.tuning.backoff_cap)
        self.metrics = Metrics()
        self.threads: list[threading.Thread] = []
        self.loops: list[threading.Thread] = []
        self.server: ThreadingHTTPServer | None = None
        watched: list[str | None] = [*sorted(self.namespaces)] or [None]
        t = self.tuning.watch_timeout
        self.sources = [Informer(self.kube, kind, ns, None, self._source_event, self.stop_event, t)
                        for kind in PLURALS for ns in watched]
        # generated objects live in the watched namespaces and the allowed gateway namespaces; a
        # service's configuration (the token limits' ConfigMap) in that service's namespace only: the
        # controller never lists the cluster's ConfigMaps (its RBAC is a Role there)
        targets = sorted(self.namespaces | self.scope.gateway_namespaces) if self.namespaces else [None]
        self.generated = [Informer(self.kube, k.kind, ns, MANAGED_SELECTOR, self._generated_event, self.stop_event, t)
                          for k in constants.GENERATED_KINDS for ns in targets]
        self.generated += [Informer(self.kube, k.kind, ns, MANAGED_SELECTOR, self._generated_event, self.stop_event, t)
                           for k in constants.SERVICE_CONFIG_KINDS for ns in sorted(self.scope.service_namespaces)]

    @property
    def leader(self) -> bool:
        """True while writes may start (the fence is open)."""
        return self.elector.is_leader() and not self.lost.is_set()

    # events → keys ---------------------------------------------------------------------------------

    def _source_event(self, old: dict | None, new: dict | None) -> None:
        keys = self.index.update(old, new)  # always: the index holds the latest object (and status)
        if old is not None and new is not None and all(
                old.get(k) == new.get(k) for k in ("spec",)) and \
                {k: v for k, v in old["metadata"].items() if k in ("labels", "annotations", "generation")} == \
                {k: v for k, v in new["metadata"].items() if k in ("labels", "annotations", "generation")}:
            return  # a status or resourceVersion change: nothing to compile
        for key in sorted(keys):
            self.queue.add(key)

    def _generated_event(self, old: dict | None, new: dict | None) -> None:
        obj = new or old
        assert obj is not None
        ours = self.own.ours(obj_key(obj), new)
        # the sources an object names are its key's contributors; news to that key queues it, unless
        # its own pass wrote the object (it compiled them)
        if new is not None and self.index.learn(new["metadata"]["namespace"], set(annotated_sources(new))) \
                and not ours:
            self.queue.add(new["metadata"]["namespace"])
        if ours:
            return  # our own write coming back: nothing to repair
        if self._mine(obj) or (old is not None and self._mine(old)):  # an edit or deletion: repair at once
            self.queue.add(obj["metadata"]["namespace"])

    def _mine(self, obj: dict) -> bool:
        """A live object is this instance's to change when it has a source of a watched namespace
        (all are, without --watch-namespace); objects shared with another instance's namespaces are
        computed from all their sources (:meth:`_foreign_sources`), so both write the same."""
        if not self.namespaces:
            return True
        return any(namespace_of(s) in self.namespaces for s in annotated_sources(obj))

    def keys(self) -> set[str]:
        out = self.index.keys()
        out |= {o["metadata"]["namespace"] for i in self.generated for o in i.items() if self._mine(o)}
        return out

    def enqueue_all(self) -> None:
        for key in sorted(self.keys()):
            self.queue.add(key)

    # one key ---------------------------------------------------------------------------------------

    def _foreign_sources(self, key: str, have: set[str]) -> list[dict]:
        """Sources of namespaces this scoped instance does not watch that live objects of ``key`` name
        (another instance's routes on a shared gateway): read, never written, so that both instances
        compute a shared object from all its sources and neither rewrites it. Which objects are shared
        is not known before compiling, so every object of the namespace counts."""
        if not self.namespaces:
            return []
        wanted: dict[tuple[str, str], set[str]] = {}
        for i in self.generated:
            for o in i.items():
                if o["metadata"].get("namespace") != key:
                    continue
                for s in annotated_sources(o):
                    kind, _, rest = s.partition(" ")
                    ns, _, name = rest.partition("/")
                    if ns not in self.namespaces and s not in have and kind in PLURALS:
                        wanted.setdefault((kind, ns), set()).add(name)
        out = []
        for (kind, ns), names in sorted(wanted.items()):
            items, _ = self.kube.list(kind, ns)
            out += [o for o in items if o["metadata"]["name"] in names]
        return out + self._foreign_providers(out, have)

    def _foreign_providers(self, foreign: list[dict], have: set[str]) -> list[dict]:
        """The providers the foreign routes name that the pass does not compile yet: an object's
        sources need not list them (the token limits' ConfigMap names only the limits' owners), and a
        route compiled without its provider would be invalid (LLMC202) and freeze the object."""
        hosts = {h for o in foreign if o.get("kind") == "LLMRoute" for h in describe_source(o, self.opts).refs}
        hosts -= {self.index.info[k].host for k in have if k in self.index.info and not k.startswith("LLMRoute ")}
        hosts -= {(o.get("spec") or {}).get("host") for o in foreign if o.get("kind") == "LLMProvider"}
        if not hosts:
            return []
        known = have | {source_key(o) for o in foreign}
        items, _ = self.kube.list("LLMProvider", None)
        return [o for o in items if (o.get("spec") or {}).get("host") in hosts and source_key(o) not in known]

    def reconcile_key(self, key: str) -> bool:
        """One pass over ``key`` (a namespace: the objects written there); False when something
        failed (the key is retried with backoff)."""
        start, cpu = time.monotonic(), time.thread_time()
        sources, own = self.index.compile_set(key)
        sources += self._foreign_sources(key, {source_key(s) for s in sources})
        outcome = desired_state(sources, self.opts)
        self._unknowable_warnings(outcome, own, {source_key(s) for s in sources})
        live = {obj_key(o): o for i in self.generated for o in i.items() if o["metadata"].get("namespace") == key}
        todo = plan(outcome, live, self.scope, namespace=key, mine=self._mine)
        self._learn(key, outcome, todo, live, {source_key(s) for s in sources})
        failures: dict[str, list[str]] = {}
        ok = True
        for obj in todo.apply:
            written = obj_key(obj)
            self.own.begin(written)
            version = None
            try:
                version = (self.kube.apply(obj) or {}).get("metadata", {}).get("resourceVersion")
                self.metrics.add("llmc_applies_total")
            except LeadershipLost:
                raise
            except Exception as exc:  # this object fails its own sources only
                ok = False
                what = f"{obj['kind']} {obj['metadata']['namespace']}/{obj['metadata']['name']}"
                reason = f"{what}: {describe(exc) if isinstance(exc, ApiException) else type(exc).__name__}"
                log.warning("apply failed", extra={"object": what, "error": reason[:200]})
                for s in annotated_sources(obj):
                    failures.setdefault(s, []).append(reason.strip())
            finally:
                if self.own.end(written, version):
                    self.queue.add(key)  # someone else changed it while we wrote
        for gone_key in todo.prune:
            self.own.begin(gone_key)
            gone = False
            try:
                self.kube.delete(*gone_key)
                gone = True
                self.metrics.add("llmc_deletes_total")
            except LeadershipLost:
                raise
            except Exception as exc:
                ok = False
                log.warning("prune failed", extra={"object": "{} {}/{}".format(*gone_key), "error": type(exc).__name__})
            finally:
                if self.own.end(gone_key, DELETED if gone else None):
                    self.queue.add(key)
        self._publish(key, todo, failures)
        missing, unchecked = check_secrets(outcome, own, self.kube, self.scope)
        for src in sources:
            k = source_key(src)
            if k not in own:
                continue
            fails, frozen = self.reports.merged(k)
            conds = conditions(src, outcome, fails, missing.get(k, []), unchecked.get(k, []),
                               todo.refused.get(k, []), frozen)
            ok = self._patch_status(src, conds) and ok
        self.metrics.set("llmc_objects_managed", sum(len(i.cache) for i in self.generated))
        self.metrics.add("llmc_reconciles_total")
        elapsed = time.monotonic() - start
        self.metrics.add("llmc_reconcile_duration_seconds_sum", elapsed)
        self.metrics.add("llmc_reconcile_duration_seconds_count")
        self.metrics.add("llmc_reconcile_cpu_seconds_sum", time.thread_time() - cpu)  # this pass's thread
        log.info("reconciled", extra={"key": key, "objects": len(outcome.objects), "applied": len(todo.apply),
                                      "pruned": len(todo.prune), "sources": len(sources),
                                      "duration_ms": round(elapsed * 1000, 1)})
        return ok

    def _learn(self, key: str, outcome: Outcome, todo, live: dict, compiled: set[str]) -> None:
        """Objects this pass compiled for other namespaces tell their keys which sources they have
        (a new contributor queues that key); sources compiled here that no object of ``key`` has now
        (desired, or kept as last known good) are no longer its contributors."""
        here: set[str] = set()
        for obj in outcome.objects:
            ns = obj["metadata"]["namespace"]
            if ns == key:
                here |= set(annotated_sources(obj))
            elif self.index.learn(ns, set(annotated_sources(obj))):
                self.queue.add(ns)
        for k in todo.kept:
            here |= set(annotated_sources(live[k]))
        self.index.forget(key, compiled - here)

    def _publish(self, key: str, todo, failures: dict[str, list[str]]) -> None:
        """Publish this pass's failures and last-known-good findings per source; a source of another
        namespace whose report changed gets its own key queued (its status is written there)."""
        reports = {s: Report(tuple(failures.get(s, ())), tuple(todo.frozen.get(s, ([], []))[0]),
                             tuple(todo.frozen.get(s, ([], []))[1])) for s in set(failures) | set(todo.frozen)}
        for s in sorted(self.reports.publish(key, reports)):
            home = namespace_of(s)
            if home != key and (not self.namespaces or home in self.namespaces):
                self.queue.add(home)

    def _unknowable_warnings(self, outcome: Outcome, own: set[str], compiled: set[str]) -> None:
        """LLMC203 (a routeSpecificConfigs entry no route uses) cannot be decided for a provider whose
        host routes outside this pass name: it is not reported then, rather than reported wrongly."""
        for s in own:
            diags = outcome.diagnostics.get(s)
            if diags and any(d.code == "LLMC203" for d in diags) and self.index.users_outside(s, compiled):
                outcome.diagnostics[s] = [d for d in diags if d.code != "LLMC203"]

    def _patch_status(self, src: dict, conds: list[dict]) -> bool:
        old = [{k: v for k, v in c.items() if k != "lastTransitionTime"}
               for c in (src.get("status") or {}).get("conditions") or []]
        if old == conds:
            return True
        stamps = {c["type"]: (c.get("status"), c.get("lastTransitionTime"))
                  for c in (src.get("status") or {}).get("conditions") or []}
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        body = [{**c, "lastTransitionTime": stamps[c["type"]][1] if stamps.get(c["type"], (None,))[0] == c["status"]
                 and stamps[c["type"]][1] else now} for c in conds]
        try:
            self.kube.patch_status(src, {"conditions": body})
            return True
        except LeadershipLost:
            raise
        except ApiException as exc:
            return exc.status == 404  # the source is gone: nothing to report on
        except Exception:
            return False

    # loops -----------------------------------------------------------------------------------------

    def _worker_loop(self) -> None:
        while not self.stop_event.is_set():
            if not self.leader or not self.ready():
                self.stop_event.wait(0.05)
                continue
            with self.resync_lock:
                if time.monotonic() - self.last_resync > self.tuning.resync:
                    self.last_resync = time.monotonic()
                    self.enqueue_all()
            key = self.queue.get(timeout=0.1)
            self.metrics.set("llmc_queue_depth", len(self.queue))
            if key is None:
                continue
            try:
                if self.reconcile_key(key):
                    self.queue.forget(key)
                    self.queue.done(key)
                else:
                    self.metrics.add("llmc_reconcile_errors_total")
                    delay = self.queue.retry(key)
                    log.info("key failed, retrying", extra={"key": key, "retry_in": round(delay, 2)})
            except LeadershipLost:
                log.warning("pass aborted: leadership lost", extra={"leader": False, "key": key})
                self.queue.done(key)
            except Exception as exc:
                self.metrics.add("llmc_reconcile_errors_total")
                delay = self.queue.retry(key)
                log.warning("reconcile failed, will retry", extra={
                    "key": key, "retry_in": round(delay, 2), "error": describe(exc)})

    def _leader_loop(self) -> None:
        def started() -> None:
            self.metrics.set("llmc_leader", 1)
            self.enqueue_all()

        self.elector.run(self.stop_event, on_started=started, on_lost=self._lost)

    def _lost(self) -> None:
        self.lost.set()
        self.metrics.set("llmc_leader", 0)
        if self.on_lost is not None:
            self.on_lost()

    # process -------------------------------------------------------------------------------------

    def ready(self) -> bool:
        return all(i.synced.is_set() for i in self.sources + self.generated)

    def healthy(self) -> bool:
        """False once a loop thread has died or leadership was lost (the process should restart)."""
        if self.lost.is_set():
            return False
        return self.stop_event.is_set() or all(t.is_alive() for t in self.loops)

    def serve_health(self, host: str, port: int) -> int:
        self.server = serve_probes(host, port, healthy=self.healthy, ready=self.ready, metrics=self.metrics)
        self.threads.append(threading.Thread(target=self.server.serve_forever, daemon=True))
        self.threads[-1].start()
        return self.server.server_address[1]

    def start(self) -> None:
        targets = [self._leader_loop] + [self._worker_loop] * self.tuning.workers + \
            [i.run for i in self.sources + self.generated]
        for target in targets:
            t = threading.Thread(target=target, daemon=True)
            t.start()
            self.threads.append(t)
            self.loops.append(t)

    def stop(self) -> None:
        self.stop_event.set()
        self.queue.close()
        for t in self.loops[:1 + self.tuning.workers]:  # leader and workers: passes end before the Lease goes
            if t is not threading.current_thread():
                t.join(timeout=self.elector.config.request_timeout * 2)
        if self.leader:
            self.elector.release()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def run(opts: Options, kubeconfig: str | None, namespaces: list[str] | None, lease_namespace: str,
        identity: str | None, health_port: int, lease: LeaseConfig | None = None, tuning: Tuning | None = None,
        gateway_namespaces: list[str] | None = None, istio_root_namespace: str = "istio-system") -> int:
    """The `llmc controller` process: until SIGTERM/SIGINT (a graceful stop, exit code 0) or lost
    leadership (exit code 1, so Kubernetes restarts the pod as a follower)."""
    import signal
    import socket
    import sys

    from kubernetes import client, config

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig)
    else:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
    done = threading.Event()
    cfg = client.Configuration.get_default_copy()
    cfg.connection_pool_maxsize = 64  # a dozen long-lived watches plus the workers' requests
    ctrl = Controller(client.ApiClient(cfg), opts, identity or socket.gethostname(), lease_namespace,
                      namespaces=namespaces, lease=lease, on_lost=done.set, tuning=tuning,
                      gateway_namespaces=gateway_namespaces, istio_root_namespace=istio_root_namespace)
    if ctrl.elector.config.stale_write_margin <= 0:
        log.warning("renew deadline + request timeout >= lease duration: a write of an ex-leader may land "
                    "after the new leader's", extra={"margin_s": ctrl.elector.config.stale_write_margin})
    ctrl.serve_health("0.0.0.0", health_port)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    ctrl.start()
    log.info("started", extra={"leader": False})
    done.wait()
    if ctrl.lost.is_set():
        log.warning("exiting: leadership lost", extra={"leader": False})
        # At once, as client-go's leader election does (klog.Fatal: os.Exit): every write has
        # stopped (on_lost runs after them), and the watches' and workers' daemon threads would
        # otherwise run on into the interpreter's shutdown, where one writing its log line to stderr
        # aborts the process (SIGABRT, exit code 134 instead of 1: seen once in CI's leader test).
        for h in logging.getLogger().handlers:
            h.flush()
        sys.stderr.flush()
        os._exit(1)
    ctrl.stop()  # stop watches and loops, hand the Lease back
    return 0
