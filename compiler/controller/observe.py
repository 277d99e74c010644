"""The controller's JSON log lines, its Prometheus counters, and the HTTP server of its probes
(``/healthz``, ``/readyz``) and ``/metrics``."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": round(record.created, 3), "level": record.levelname.lower(), "msg": record.getMessage()}
        for key in ("op", "status", "attempt", "kind", "object", "objects", "applied", "pruned", "error",
                    "duration_ms", "leader", "plural", "key", "retry_in"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        return json.dumps(entry)


class Metrics:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values = {"llmc_reconciles_total": 0, "llmc_reconcile_errors_total": 0, "llmc_applies_total": 0,
                       "llmc_deletes_total": 0, "llmc_reconcile_duration_seconds_sum": 0.0,
                       "llmc_reconcile_cpu_seconds_sum": 0.0,
                       "llmc_reconcile_duration_seconds_count": 0, "llmc_objects_managed": 0, "llmc_leader": 0,
                       "llmc_queue_depth": 0}

    def add(self, name: str, value: float = 1) -> None:
        with self.lock:
            self.values[name] += value

    def set(self, name: str, value: float) -> None:
        with self.lock:
            self.values[name] = value

    def render(self) -> str:
        with self.lock:
            return "".join(f"{k} {v}\n" for k, v in sorted(self.values.items()))


def serve_probes(host: str, port: int, healthy: Callable[[], bool], ready: Callable[[], bool],
                 metrics: Metrics) -> ThreadingHTTPServer:
    """A server (not yet serving: the caller runs ``serve_forever``) for the kubelet's probes and
    Prometheus: ``/healthz`` (503 once ``healthy()`` is false: the process should restart),
    ``/readyz`` (503 until ``ready()``: caches synced) and ``/metrics``."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            if self.path == "/healthz":
                code, body = (200, "ok\n") if healthy() else (503, "loops not running\n")
            elif self.path == "/readyz":
                code, body = (200, "ok\n") if ready() else (503, "caches not synced\n")
            elif self.path == "/metrics":
                code, body = 200, metrics.render()
            else:
                code, body = 404, "not found\n"
            data = body.encode()
            self.send_response(code)
            self.send_header("content-type", "text/plain; version=0.0.4")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return ThreadingHTTPServer((host, port), Handler)
