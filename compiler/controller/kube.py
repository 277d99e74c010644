"""The controller's Kubernetes API calls, on the official client, with retries and backoff.

Generated objects are applied with server-side apply (field manager ``llmc``, forced), pruned only
when they carry llmc's ``managed-by`` label *and* its sources annotation, and never read or
written otherwise. Secrets are only checked for existence: their contents are never read.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from kubernetes import client
from kubernetes.client.rest import ApiException
from urllib3.exceptions import HTTPError as TransportError

from .reconcile import SOURCE_GROUP, SOURCES_ANNOTATION

log = logging.getLogger("llmc.controller")
FIELD_MANAGER = "llmc"
MANAGED_SELECTOR = "app.kubernetes.io/managed-by=llmc"
SOURCE_VERSION = "v1beta1"
SOURCE_PLURALS = {"LLMProvider": "llmproviders", "LLMRoute": "llmroutes"}
#: kind → (group, version, plural) of everything llmc generates
GENERATED = {
    "ServiceEntry": ("networking.istio.io", "v1", "serviceentries"),
    "DestinationRule": ("networking.istio.io", "v1", "destinationrules"),
    "Gateway": ("networking.istio.io", "v1", "gateways"),
    "VirtualService": ("networking.istio.io", "v1", "virtualservices"),
    "EnvoyFilter": ("networking.istio.io", "v1alpha3", "envoyfilters"),
    "Telemetry": ("telemetry.istio.io", "v1", "telemetries"),
}
T = TypeVar("T")


def retrying(call: Callable[[], T], what: str, attempts: int = 6, base: float = 0.05,
             fence: Callable[[], None] | None = None) -> T:
    """Retry transient API failures (5xx, 409 conflicts, 429, connection errors) with jittered
    exponential backoff; other errors are raised at once. ``fence`` (writes only) is checked before
    every attempt: it raises :class:`~.leader.LeadershipLost` rather than let a write start."""
    for attempt in range(attempts):
        try:
            if fence is not None:
                fence()
            return call()
        except ApiException as exc:
            if exc.status not in (409, 429, 500, 502, 503, 504) or attempt == attempts - 1:
                raise
            log.info("retrying", extra={"op": what, "status": exc.status, "attempt": attempt + 1})
        except (OSError, TransportError) as exc:  # resets, refused connections, timeouts
            if attempt == attempts - 1:
                raise
            log.info("retrying", extra={"op": what, "error": type(exc).__name__, "attempt": attempt + 1})
        time.sleep(base * (2 ** attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


def _no_fence() -> None:
    return None


class Kube:
    """Every call carries ``timeout`` (seconds); every write first passes ``fence``."""

    def __init__(self, api: client.ApiClient, fence: Callable[[], None] = _no_fence, timeout: float = 5.0):
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.fence, self.timeout = fence, timeout

    # sources ---------------------------------------------------------------------------------------

    def list_sources(self, plural: str) -> tuple[list[dict], str]:
        data = retrying(lambda: self.custom.list_cluster_custom_object(
            SOURCE_GROUP, SOURCE_VERSION, plural, _request_timeout=self.timeout),
                        f"list {plural}")
        items = data.get("items", [])
        for item in items:  # list items may omit apiVersion/kind
            item.setdefault("apiVersion", f"{SOURCE_GROUP}/{SOURCE_VERSION}")
            item.setdefault("kind", next(k for k, p in SOURCE_PLURALS.items() if p == plural))
        return items, data["metadata"]["resourceVersion"]

    def watch_sources(self, plural: str, resource_version: str, timeout: int):
        from kubernetes import watch

        w = watch.Watch()
        return w, w.stream(self.custom.list_cluster_custom_object, SOURCE_GROUP, SOURCE_VERSION, plural,
                           resource_version=resource_version, timeout_seconds=timeout,
                           _request_timeout=timeout + self.timeout)

    def patch_status(self, obj: dict, status: dict) -> None:
        meta = obj["metadata"]
        plural = SOURCE_PLURALS[obj["kind"]]
        retrying(lambda: self.custom.patch_namespaced_custom_object_status(
            SOURCE_GROUP, SOURCE_VERSION, meta["namespace"], plural, meta["name"], {"status": status},
            _request_timeout=self.timeout),
            f"status {obj['kind']} {meta['namespace']}/{meta['name']}", fence=self.fence)

    def secret_exists(self, namespace: str, name: str) -> bool:
        try:
            # The raw response is drained unread: only the status code is used, the data never decoded.
            resp = retrying(lambda: self.core.read_namespaced_secret(
                name, namespace, _preload_content=False, _request_timeout=self.timeout),
                            f"get secret {namespace}/{name}")
            try:
                resp.drain_conn()
            finally:
                resp.release_conn()
            return True
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise

    # generated objects ---------------------------------------------------------------------------

    def list_managed(self) -> dict[tuple[str, str, str], dict]:
        """(kind, namespace, name) → live object, for objects llmc owns (label and annotation)."""
        out = {}
        for kind, (group, version, plural) in GENERATED.items():
            try:
                data = retrying(lambda g=group, v=version, p=plural: self.custom.list_cluster_custom_object(
                    g, v, p, label_selector=MANAGED_SELECTOR, _request_timeout=self.timeout), f"list {plural}")
            except ApiException as exc:
                if exc.status == 404:  # that kind's CRD is not installed: nothing of it can be ours
                    continue
                raise
            for item in data.get("items", []):
                meta = item["metadata"]
                if SOURCES_ANNOTATION in (meta.get("annotations") or {}):
                    out[(kind, meta["namespace"], meta["name"])] = item
        return out

    def apply(self, obj: dict) -> None:
        group, version, plural = GENERATED[obj["kind"]]
        meta = obj["metadata"]
        retrying(lambda: self.custom.patch_namespaced_custom_object(
            group, version, meta["namespace"], plural, meta["name"], obj, field_manager=FIELD_MANAGER,
            force=True, _content_type="application/apply-patch+yaml", _request_timeout=self.timeout),
            f"apply {obj['kind']} {meta['name']}", fence=self.fence)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        group, version, plural = GENERATED[kind]
        try:
            retrying(lambda: self.custom.delete_namespaced_custom_object(
                group, version, namespace, plural, name, _request_timeout=self.timeout),
                f"delete {kind} {namespace}/{name}", fence=self.fence)
        except ApiException as exc:
            if exc.status != 404:
                raise
