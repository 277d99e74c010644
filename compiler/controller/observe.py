"""The controller's JSON log lines and Prometheus counters (served on ``/metrics``)."""

from __future__ import annotations

import json
import logging
import threading


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
