"""The controller's Kubernetes API calls, on the official client, with retries and backoff.

Generated objects are applied with server-side apply (field manager ``llmc-controller``, forced)
and carry the owner label :data:`OWNER_LABEL` besides llmc's ``managed-by`` label: only objects with
both (and the sources annotation) are watched and ever pruned, so the output of
``llmc render | kubectl apply`` (same ``managed-by`` label, no owner label) is never deleted. An
object of the same name that ``render`` applied earlier is adopted: the forced apply takes its
fields over and adds the owner label. Secrets are only checked for existence: their contents are
never read. Every call has a timeout; writes pass the leader fence and a client-side rate limiter,
and carry the server-side ``timeout`` too (:func:`send_server_timeouts`).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from kubernetes import client
from kubernetes.client.rest import ApiException
from urllib3.exceptions import HTTPError as TransportError

from ..constants import GENERATED, GROUP, PLURALS, VERSION
from .reconcile import OWNER_LABEL, OWNER_VALUE

log = logging.getLogger("llmc.controller")
FIELD_MANAGER = "llmc-controller"
MANAGED_SELECTOR = f"app.kubernetes.io/managed-by=llmc,{OWNER_LABEL}={OWNER_VALUE}"


def resource(kind: str) -> tuple[str, str, str]:
    """(group, version, plural) of a source kind or a generated kind, from the tables of
    ``compiler/constants.py`` (read at call time: a kind added there is applied, watched and pruned)."""
    if kind in PLURALS:
        return GROUP, VERSION, PLURALS[kind]
    k = GENERATED[kind]
    return k.group, k.version, k.plural


def core_method(api: Any, verb: str, kind: str) -> Any:
    """``CoreV1Api.<verb>_namespaced_<name>`` for a generated kind of Kubernetes' core group (served at
    ``/api/v1``, which the custom-objects client cannot reach); callers ask it for raw JSON, so its
    objects are dicts like custom objects."""
    return getattr(api, f"{verb}_namespaced_{GENERATED[kind].core_name}")

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


WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def send_server_timeouts(api: client.ApiClient, seconds: float) -> None:
    """Add the server-side ``timeout`` query parameter to every write ``api`` sends (applies, deletes,
    status patches, Lease writes), so that the API server, not only this client, gives up on it.

    What kube-apiserver does with it (kubernetes/kubernetes, staging/src/k8s.io/apiserver):

    * ``pkg/endpoints/filters/request_deadline.go`` (``withRequestDeadline``, L69-L96 at commit
      08eaea4590821ab099551e334bfc0e0b2ebee348): ``timeout`` is parsed as a Go duration (malformed:
      400); a value that is 0 or above the server's ``--request-timeout`` (default 60 s) is replaced
      by that maximum; the request context gets the deadline ``started.Add(timeout)``, where
      ``started`` is the request's *received* timestamp. The filter wraps authentication, priority
      and fairness and the handlers (``DefaultBuildHandlerChain`` in ``pkg/server/config.go``), so
      time spent queued counts against it. Without the parameter a write may run for the server's
      60 s — that is what let an ex-leader's writes land 7-12 s after the new leader's (issue 29).
    * ``pkg/endpoints/handlers/finisher/finisher.go`` (``asyncFinisher``, L110-L162 at commit
      11d24f075cd5698ca8f09e92ac47cdbf253342ef): the create/update/patch/delete handler runs the
      storage call under that context and answers ``504 Timeout`` ("request did not complete within
      requested timeout") once it expires; the goroutine doing the write "may continue to run", but
      its etcd call carries the expired context, so it is not started after the deadline. A
      transaction already sent to etcd can still commit: that is the residual bound
      (docs/cluster.md#tenancy-fencing-rbac-and-sizing).

    The client's own timeout (``_request_timeout``) stays as it is; both are ``seconds``."""
    value = f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"  # a Go duration: "5s", "1.5s"
    call = api.call_api

    def call_api(method, url, *args, **kwargs):
        if str(method).upper() in WRITE_METHODS:
            url += ("&" if "?" in url else "?") + f"timeout={value}"
        return call(method, url, *args, **kwargs)

    api.call_api = call_api  # type: ignore[method-assign]


def _no_fence() -> None:
    return None


class Kube:
    """Every call carries ``timeout`` (seconds); every write first passes ``fence`` and ``limiter``."""

    def __init__(self, api: client.ApiClient, fence: Callable[[], None] = _no_fence, timeout: float = 5.0,
                 limiter: Callable[[], None] = _no_fence, list_timeout: float = 120.0):
        # Any: the generated client's signatures name model classes where it accepts (and we pass) dicts
        self.custom: Any = client.CustomObjectsApi(api)
        self.core: Any = client.CoreV1Api(api)
        self.timeout, self.limiter, self._fence = timeout, limiter, fence
        # a LIST of thousands of EnvoyFilters (each with the Lua source) takes far longer than a write
        self.list_timeout = max(list_timeout, timeout)

    def fence(self) -> None:
        self.limiter()
        self._fence()  # after the limiter's wait: the fence is checked right before the request

    # list and watch ------------------------------------------------------------------------------

    def list(self, kind: str, namespace: str | None, selector: str | None = None) -> tuple[list[dict], str]:
        """Items (with apiVersion and kind set) and the list's resourceVersion."""
        group, version, plural = resource(kind)
        kw = {"label_selector": selector} if selector else {}
        if not group:
            assert namespace is not None, "core kinds are read in one namespace"
            method = core_method(self.core, "list", kind)
            data = json.loads(retrying(lambda: method(namespace, _preload_content=False,
                                                      _request_timeout=self.list_timeout, **kw), f"list {plural}").data)
        elif namespace is None:
            data = retrying(lambda: self.custom.list_cluster_custom_object(
                group, version, plural, _request_timeout=self.list_timeout, **kw), f"list {plural}")
        else:
            data = retrying(lambda: self.custom.list_namespaced_custom_object(
                group, version, namespace, plural, _request_timeout=self.list_timeout, **kw), f"list {plural}")
        items = data.get("items", [])
        for item in items:  # list items may omit apiVersion/kind
            item.setdefault("apiVersion", f"{group}/{version}" if group else version)
            item.setdefault("kind", kind)
        return items, data["metadata"]["resourceVersion"]

    def watch(self, kind: str, namespace: str | None, selector: str | None, resource_version: str | None, timeout: int):
        from kubernetes import watch

        group, version, plural = resource(kind)
        kw = {"label_selector": selector} if selector else {}
        if not group:  # events as dicts, as for custom objects (not the client's model classes)
            w = watch.Watch(return_type="object")
            return w, w.stream(core_method(self.core, "list", kind), namespace,
                               resource_version=resource_version, timeout_seconds=timeout,
                               _request_timeout=timeout + self.timeout, **kw)
        w = watch.Watch()
        if namespace is None:
            return w, w.stream(self.custom.list_cluster_custom_object, group, version, plural,
                               resource_version=resource_version, timeout_seconds=timeout,
                               _request_timeout=timeout + self.timeout, **kw)
        return w, w.stream(self.custom.list_namespaced_custom_object, group, version, namespace, plural,
                           resource_version=resource_version, timeout_seconds=timeout,
                           _request_timeout=timeout + self.timeout, **kw)

    def patch_status(self, obj: dict, status: dict) -> None:
        meta = obj["metadata"]
        plural = PLURALS[obj["kind"]]
        retrying(lambda: self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, meta["namespace"], plural, meta["name"], {"status": status},
            _request_timeout=self.timeout),
            f"status {obj['kind']} {meta['namespace']}/{meta['name']}", fence=self.fence)

    def secret_exists(self, namespace: str, name: str) -> bool | None:
        """True or False; None when RBAC does not let the controller look (403)."""
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
            if exc.status == 403:
                return None
            raise

    # generated objects ---------------------------------------------------------------------------

    def apply(self, obj: dict) -> dict:
        """Server-side apply; the object as stored (its resourceVersion tells our write's watch event)."""
        group, version, plural = resource(obj["kind"])
        meta = obj["metadata"]
        if not group:
            method = core_method(self.core, "patch", obj["kind"])
            return json.loads(retrying(lambda: method(
                meta["name"], meta["namespace"], obj, field_manager=FIELD_MANAGER, force=True,
                _content_type="application/apply-patch+yaml", _preload_content=False,
                _request_timeout=self.timeout), f"apply {obj['kind']} {meta['name']}", fence=self.fence).data)
        return retrying(lambda: self.custom.patch_namespaced_custom_object(
            group, version, meta["namespace"], plural, meta["name"], obj, field_manager=FIELD_MANAGER,
            force=True, _content_type="application/apply-patch+yaml", _request_timeout=self.timeout),
            f"apply {obj['kind']} {meta['name']}", fence=self.fence)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        group, version, plural = resource(kind)
        if group:
            call = lambda: self.custom.delete_namespaced_custom_object(  # noqa: E731
                group, version, namespace, plural, name, _request_timeout=self.timeout)
        else:
            call = lambda: core_method(self.core, "delete", kind)(  # noqa: E731
                name, namespace, _preload_content=False, _request_timeout=self.timeout)
        try:
            retrying(call, f"delete {kind} {namespace}/{name}", fence=self.fence)
        except ApiException as exc:
            if exc.status != 404:
                raise
