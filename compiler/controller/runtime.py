"""The controller process: watches, the reconcile loop, leader election, health and metrics.

Two watch threads (LLMProvider, LLMRoute) keep a cache of sources: list, then watch from the
list's resourceVersion; a dropped watch is resumed from the last version seen, and ``410 Gone``
(history compacted) or any error leads to a fresh list — so no event is lost, only coalesced.
Every change marks the state dirty; the reconcile loop (leader only) compiles all sources with
the same pipeline as ``llmc render``, applies changed objects (a content hash makes a second
reconcile of unchanged input write nothing), prunes objects it owns that are no longer produced,
and patches status conditions. It also reconciles every ``resync`` seconds (Secrets referenced
by ``apiKeySecretRef`` are checked for existence then; their contents are never read).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from kubernetes.client.rest import ApiException

from ..resolve import Options
from .kube import SOURCE_PLURALS, Kube
from .leader import LeaderElector, LeadershipLost, LeaseConfig
from .reconcile import HASH_ANNOTATION, conditions, desired_state, source_key

log = logging.getLogger("llmc.controller")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": round(record.created, 3), "level": record.levelname.lower(), "msg": record.getMessage()}
        for key in ("op", "status", "attempt", "kind", "object", "objects", "applied", "pruned", "error",
                    "duration_ms", "leader", "plural"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        return json.dumps(entry)


class Metrics:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values = {"llmc_reconciles_total": 0, "llmc_reconcile_errors_total": 0, "llmc_applies_total": 0,
                       "llmc_deletes_total": 0, "llmc_reconcile_duration_seconds_sum": 0.0,
                       "llmc_reconcile_duration_seconds_count": 0, "llmc_objects_managed": 0, "llmc_leader": 0}

    def add(self, name: str, value: float = 1) -> None:
        with self.lock:
            self.values[name] += value

    def set(self, name: str, value: float) -> None:
        with self.lock:
            self.values[name] = value

    def render(self) -> str:
        with self.lock:
            return "".join(f"{k} {v}\n" for k, v in sorted(self.values.items()))


class Controller:
    """``on_lost`` runs when leadership is lost (after every write has stopped); the CLI exits the
    process then, as controller-runtime does, so Kubernetes restarts it as a follower."""

    def __init__(self, api, opts: Options, identity: str, lease_namespace: str, namespaces: list[str] | None = None,
                 resync: float = 30.0, watch_timeout: int = 30, lease: LeaseConfig | None = None,
                 on_lost=None):
        lease = lease or LeaseConfig()
        api.user_agent = f"llmc-controller/{identity}"  # tells replicas apart in API server logs
        self.elector = LeaderElector(api, lease_namespace, "llmc-controller", identity, lease)
        self.kube = Kube(api, fence=self.elector.check_fence, timeout=lease.request_timeout)
        self.opts, self.namespaces, self.resync, self.watch_timeout = opts, set(namespaces or []), resync, watch_timeout
        self.on_lost = on_lost
        self.lost = threading.Event()
        self.sources: dict[str, dict[str, dict]] = {p: {} for p in SOURCE_PLURALS.values()}
        self.synced = {p: False for p in SOURCE_PLURALS.values()}
        self.lock = threading.Lock()
        self.dirty = threading.Event()
        self.stop_event = threading.Event()
        self.metrics = Metrics()
        self.threads: list[threading.Thread] = []
        self.loops: list[threading.Thread] = []
        self.server: ThreadingHTTPServer | None = None

    @property
    def leader(self) -> bool:
        """True while writes may start (the fence is open)."""
        return self.elector.is_leader() and not self.lost.is_set()

    # watches ---------------------------------------------------------------------------------------

    def _in_scope(self, obj: dict) -> bool:
        return not self.namespaces or obj["metadata"].get("namespace") in self.namespaces

    def _watch_loop(self, plural: str) -> None:
        rv = None
        while not self.stop_event.is_set():
            try:
                if rv is None:
                    items, rv = self.kube.list_sources(plural)
                    with self.lock:
                        self.sources[plural] = {source_key(o): o for o in items if self._in_scope(o)}
                        self.synced[plural] = True
                    self.dirty.set()
                w, stream = self.kube.watch_sources(plural, rv, self.watch_timeout)
                for event in stream:
                    if self.stop_event.is_set():
                        w.stop()
                        break
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        code = obj.get("code") if isinstance(obj, dict) else None
                        log.info("watch expired, relisting", extra={"plural": plural, "status": code})
                        rv = None
                        break
                    rv = obj["metadata"]["resourceVersion"]
                    if not self._in_scope(obj):
                        continue
                    with self.lock:
                        if event["type"] == "DELETED":
                            self.sources[plural].pop(source_key(obj), None)
                        else:
                            self.sources[plural][source_key(obj)] = obj
                    self.dirty.set()
            except ApiException as exc:
                log.info("watch failed, relisting", extra={"plural": plural, "status": exc.status})
                rv = None
                self.stop_event.wait(0.2)
            except Exception as exc:  # connection resets and the like: resume from the last version
                log.info("watch interrupted", extra={"plural": plural, "error": type(exc).__name__})
                self.stop_event.wait(0.1)

    # reconcile -----------------------------------------------------------------------------------

    def reconcile_once(self) -> None:
        start = time.monotonic()
        with self.lock:
            sources = [o for group in self.sources.values() for o in group.values()]
        outcome = desired_state(sources, self.opts)
        live = self.kube.list_managed()
        desired = {(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]): o for o in outcome.objects}
        applied_ok = True
        applied = pruned = 0
        for key, obj in sorted(desired.items()):
            current = live.get(key)
            if current is not None and (current["metadata"].get("annotations") or {}).get(HASH_ANNOTATION) == \
                    obj["metadata"]["annotations"][HASH_ANNOTATION]:
                continue
            try:
                self.kube.apply(obj)
                applied += 1
                self.metrics.add("llmc_applies_total")
            except ApiException as exc:
                applied_ok = False
                log.warning("apply failed", extra={"object": f"{key[0]} {key[1]}/{key[2]}", "status": exc.status})
        if outcome.program is not None or not sources:
            for key in sorted(set(live) - set(desired)):
                self.kube.delete(*key)
                pruned += 1
                self.metrics.add("llmc_deletes_total")
        missing = self._missing_secrets(outcome)
        for src in sources:
            conds = conditions(src, outcome, applied_ok, missing.get(source_key(src), []))
            old = [{k: v for k, v in c.items() if k != "lastTransitionTime"}
                   for c in (src.get("status") or {}).get("conditions") or []]
            if old != conds:
                stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                self.kube.patch_status(src, {"conditions": [{**c, "lastTransitionTime": stamp} for c in conds]})
        self.metrics.set("llmc_objects_managed", len(desired))
        self.metrics.add("llmc_reconciles_total")
        elapsed = time.monotonic() - start
        self.metrics.add("llmc_reconcile_duration_seconds_sum", elapsed)
        self.metrics.add("llmc_reconcile_duration_seconds_count")
        log.info("reconciled", extra={"objects": len(desired), "applied": applied, "pruned": pruned,
                                      "duration_ms": round(elapsed * 1000, 1)})
        if not applied_ok:
            raise RuntimeError("some objects could not be applied")

    def _missing_secrets(self, outcome) -> dict[str, list[str]]:
        """Source key → the Secrets it references that are missing where its proxies need them
        (the namespace of the sidecars or gateway that shape its traffic). Each Secret is checked once."""
        if outcome.program is None:
            return {}
        from ..translate.common import placements

        exists: dict[tuple[str, str], bool] = {}
        missing: dict[str, list[str]] = {}
        for vh in outcome.program.vhosts:
            for rule in vh.rules:
                for b in rule.backends:
                    ref = b.config.api_key_secret
                    if ref is None:
                        continue
                    for pl in placements(outcome.program, vh):
                        key = (pl.namespace, ref.name)
                        if key not in exists:
                            exists[key] = self.kube.secret_exists(*key)
                        if not exists[key]:
                            for source in (*vh.sources, b.provider.source):
                                gone = missing.setdefault(source, [])
                                if f"{key[0]}/{key[1]}" not in gone:
                                    gone.append(f"{key[0]}/{key[1]}")
        return missing

    def _reconcile_loop(self) -> None:
        backoff = 0.1
        last = 0.0
        while not self.stop_event.is_set():
            due = self.dirty.wait(timeout=0.1) or time.monotonic() - last > self.resync
            if not due or not self.leader or not all(self.synced.values()):
                continue
            self.dirty.clear()
            try:
                self.reconcile_once()
                backoff = 0.1
                last = time.monotonic()
            except LeadershipLost:
                log.warning("pass aborted: leadership lost", extra={"leader": False})
                continue
            except Exception as exc:
                self.metrics.add("llmc_reconcile_errors_total")
                log.warning("reconcile failed, will retry", extra={"error": f"{type(exc).__name__}: {exc}"[:300]})
                self.dirty.set()
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def _leader_loop(self) -> None:
        def started() -> None:
            self.metrics.set("llmc_leader", 1)
            self.dirty.set()

        self.elector.run(self.stop_event, on_started=started, on_lost=self._lost)

    def _lost(self) -> None:
        self.lost.set()
        self.metrics.set("llmc_leader", 0)
        if self.on_lost is not None:
            self.on_lost()

    # process -------------------------------------------------------------------------------------

    def ready(self) -> bool:
        return all(self.synced.values())

    def healthy(self) -> bool:
        """False once a loop thread has died or leadership was lost (the process should restart)."""
        if self.lost.is_set():
            return False
        return self.stop_event.is_set() or all(t.is_alive() for t in self.loops)

    def serve_health(self, host: str, port: int) -> int:
        controller = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path == "/healthz":
                    code, body = (200, "ok\n") if controller.healthy() else (503, "loops not running\n")
                elif self.path == "/readyz":
                    code, body = (200, "ok\n") if controller.ready() else (503, "caches not synced\n")
                elif self.path == "/metrics":
                    code, body = 200, controller.metrics.render()
                else:
                    code, body = 404, "not found\n"
                data = body.encode()
                self.send_response(code)
                self.send_header("content-type", "text/plain; version=0.0.4")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.threads.append(threading.Thread(target=self.server.serve_forever, daemon=True))
        self.threads[-1].start()
        return self.server.server_address[1]

    def start(self) -> None:
        targets = [self._leader_loop, self._reconcile_loop] + [
            (lambda p=p: self._watch_loop(p)) for p in SOURCE_PLURALS.values()]
        for target in targets:
            t = threading.Thread(target=target, daemon=True)
            t.start()
            self.threads.append(t)
            self.loops.append(t)

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.loops[:2]:  # leader and reconcile: a pass in progress ends before the Lease is handed back
            if t is not threading.current_thread():
                t.join(timeout=self.elector.config.request_timeout * 2)
        if self.leader:
            self.elector.release()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def run(opts: Options, kubeconfig: str | None, namespaces: list[str] | None, lease_namespace: str,
        identity: str | None, health_port: int, resync: float, lease: LeaseConfig | None = None) -> int:
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
    ctrl = Controller(client.ApiClient(), opts, identity or socket.gethostname(), lease_namespace,
                      namespaces=namespaces, resync=resync, lease=lease, on_lost=done.set)
    ctrl.serve_health("0.0.0.0", health_port)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    ctrl.start()
    log.info("started", extra={"leader": False})
    done.wait()
    if ctrl.lost.is_set():
        log.warning("exiting: leadership lost", extra={"leader": False})
        return 1
    ctrl.stop()  # stop watches and loops, hand the Lease back
    return 0
