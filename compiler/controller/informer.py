"""A list-then-watch cache of one kind in one namespace (or all), as client-go's informers keep.

List, then watch from the list's resourceVersion; a dropped watch resumes from the last version
seen; ``410 Gone`` (history compacted) or any API error leads to a fresh list, whose differences
from the cache are delivered as events — so no change is lost, only coalesced. ``on_event(old, new)``
gets the previous and the current object (either may be None). A list that fails with 404 (the
kind's CRD is not installed) counts as synced and empty, and is retried.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from kubernetes.client.rest import ApiException

from .kube import Kube

log = logging.getLogger("llmc.controller")
Event = Callable[[dict | None, dict | None], None]


class Informer:
    def __init__(self, kube: Kube, kind: str, namespace: str | None, selector: str | None, on_event: Event,
                 stop: threading.Event, watch_timeout: int = 30, keep: Callable[[dict], bool] = lambda o: True):
        self.kube, self.kind, self.namespace, self.selector = kube, kind, namespace, selector
        self.on_event, self.stop, self.watch_timeout, self.keep = on_event, stop, watch_timeout, keep
        self.cache: dict[tuple[str, str], dict] = {}
        self.lock = threading.Lock()
        self.synced = threading.Event()

    def items(self) -> list[dict]:
        with self.lock:
            return list(self.cache.values())

    def _key(self, obj: dict) -> tuple[str, str]:
        meta = obj["metadata"]
        return meta.get("namespace", ""), meta["name"]

    def _relist(self) -> str | None:
        try:
            items, rv = self.kube.list(self.kind, self.namespace, self.selector)
        except ApiException as exc:
            if exc.status != 404:
                raise
            items, rv = [], None
        fresh = {self._key(o): o for o in items if self.keep(o)}
        with self.lock:
            old, self.cache = self.cache, fresh
        self.synced.set()
        for key in sorted(set(old) | set(fresh)):
            if old.get(key) != fresh.get(key):
                self.on_event(old.get(key), fresh.get(key))
        return rv

    def _apply(self, kind: str, obj: dict) -> None:
        obj.setdefault("kind", self.kind)
        key = self._key(obj)
        with self.lock:
            old = self.cache.get(key)
            if kind == "DELETED" or not self.keep(obj):
                self.cache.pop(key, None)
                new = None
            else:
                self.cache[key] = new = obj
        if old is not None or new is not None:
            self.on_event(old, new)

    def run(self) -> None:
        rv: str | None = None
        listed = False
        while not self.stop.is_set():
            try:
                if not listed:
                    rv = self._relist()
                    listed = True
                    if rv is None:  # the kind does not exist (yet): look again later
                        listed = False
                        self.stop.wait(max(self.watch_timeout, 1))
                        continue
                w, stream = self.kube.watch(self.kind, self.namespace, self.selector, rv, self.watch_timeout)
                for event in stream:
                    if self.stop.is_set():
                        w.stop()
                        break
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        code = obj.get("code") if isinstance(obj, dict) else None
                        log.info("watch expired, relisting", extra={"kind": self.kind, "status": code})
                        listed = False
                        break
                    rv = obj["metadata"]["resourceVersion"]
                    if event["type"] != "BOOKMARK":
                        self._apply(event["type"], obj)
            except ApiException as exc:
                log.info("watch failed, relisting", extra={"kind": self.kind, "status": exc.status})
                listed = False
                self.stop.wait(0.2)
            except Exception as exc:  # connection resets and the like: resume from the last version
                log.info("watch interrupted", extra={"kind": self.kind, "error": type(exc).__name__})
                self.stop.wait(0.2)
