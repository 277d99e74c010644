"""What each key's pass found about the sources of the objects it writes, for their status.

A key writes the objects of one namespace (:mod:`.deps`), but a source's status is written by the
key of its own namespace, and a gateway-bound route's objects live in its gateway's namespace too.
So each pass publishes, per source of the objects it wrote or kept, the apply failures and the
objects kept as last known good (and the invalid sources that froze them); a source's status
merges what every key published. When a key's report on a source of another namespace changes, the
controller queues that namespace's key so its status catches up.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class Report:
    failures: tuple[str, ...] = ()
    frozen: tuple[str, ...] = ()  # objects kept as last applied
    causes: tuple[str, ...] = ()  # the invalid sources that froze them


class Reports:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_key: dict[str, dict[str, Report]] = {}

    def publish(self, key: str, reports: dict[str, Report]) -> set[str]:
        """Replace what ``key`` reports; the sources whose report from it changed."""
        reports = {s: r for s, r in reports.items() if r != Report()}
        with self.lock:
            old = self.by_key.get(key, {})
            self.by_key[key] = reports
        return {s for s in set(old) | set(reports) if old.get(s) != reports.get(s)}

    def merged(self, source: str) -> tuple[list[str], tuple[list[str], list[str]] | None]:
        """(apply failures, (frozen objects, causes) or None) of ``source`` over every key."""
        failures: list[str] = []
        frozen: set[str] = set()
        causes: set[str] = set()
        with self.lock:
            for reports in self.by_key.values():
                r = reports.get(source)
                if r is not None:
                    failures += r.failures
                    frozen |= set(r.frozen)
                    causes |= set(r.causes)
        return failures, ((sorted(frozen), sorted(causes)) if frozen else None)
