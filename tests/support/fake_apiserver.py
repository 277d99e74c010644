"""An in-process fake Kubernetes API server, for driving `llmc controller` through the real
`kubernetes` Python client and the real `kubectl`.

Implements (enough of the real REST and watch protocol for a controller, on 127.0.0.1):
* custom and built-in resources at ``/apis/<group>/<version>/namespaces/<ns>/<plural>[/<name>[/status]]``
  and ``/api/v1/...``; cluster-wide lists at ``/apis/<group>/<version>/<plural>``; any resource path is
  served, whether or not a CRD for it is stored;
* discovery, OpenAPI v3 and ``Table`` responses (:mod:`tests.support.fake_discovery`), so ``kubectl
  apply --server-side`` and ``kubectl get`` (printer columns, short names, categories) work;
* LIST with ``labelSelector`` (``=``, ``==``, ``!=``, ``in``, ``notin``, exists, ``!``exists); a
  selector it cannot parse is answered with ``400``, never with an empty list;
* WATCH (``?watch=true&resourceVersion=N``, with ``labelSelector``): a chunked stream of
  ``{"type", "object"}`` lines for events after N, open until ``timeoutSeconds`` (an object that
  stops matching the selector is not announced as ``DELETED``, unlike a real server); N older than the compacted history gets an
  ``ERROR`` event with a ``410 Gone`` Status, as etcd compaction causes;
* server-side apply (``PATCH`` with ``application/apply-patch+yaml``, ``fieldManager`` required) with
  ``managedFields`` and field ownership (:mod:`tests.support.fake_ssa`): a second manager's fields
  survive, conflicts are 409 unless forced, a no-op apply changes nothing (same resourceVersion);
  ``generation`` moves when ``spec`` changes; JSON merge patch; creates, updates and the test's
  :meth:`FakeAPIServer.put_object` (manager ``test-edit``) record ownership too;
* pruning of unknown fields by a stored CRD's structural schema (``fieldValidation=Strict``: 400);
* the ``status`` subresource: ``/status`` writes change only ``status``, main-resource writes never
  change it; ``DELETE``, ``POST`` (409 if it exists) and ``PUT`` with optimistic concurrency (409 on a
  stale ``resourceVersion``) — what leader election needs;
* ``404`` for creates in a namespace that does not exist (a fresh cluster's namespaces and
  ``llmc-system`` exist; :meth:`FakeAPIServer.create_namespace` adds one; ``put_object`` creates the
  object's namespace as a test's ``kubectl create namespace`` would);
* TCP_NODELAY (no Nagle delay per response) and a listen backlog for a dozen concurrent watches;
* the ``timeout`` query parameter as kube-apiserver honours it (:func:`_parse_timeout`): the deadline
  is the request's receipt plus ``timeout``; a request still queued (:meth:`FakeAPIServer.hold`,
  :meth:`FakeAPIServer.delay`) at its deadline gets ``504 Timeout`` and a write is not applied; a
  malformed value is ``400``;
* fault injection: HTTP errors or connection resets per method and path (:meth:`FakeAPIServer.fail`),
  an outage of resets or hangs (:meth:`FakeAPIServer.outage`), slow requests
  (:meth:`FakeAPIServer.delay`; one client's requests: :meth:`FakeAPIServer.hold`), dropping all
  watches (:meth:`FakeAPIServer.drop_watches`), history compaction (:meth:`FakeAPIServer.compact`);
  a request log with times and User-Agents, the query of every request, and a log of the writes
  that changed the store (``committed``), with their times.

Not implemented: strategic merge patch, list-map merging by key in server-side apply (lists are
atomic), ownership of ``status`` fields, field selectors, bookmarks, pagination, aggregated discovery
(v2), OpenAPI v2 (protobuf), admission (CEL rules, defaults, webhooks), authentication and RBAC (no
403 unless injected), namespace deletion, finalizers, and garbage collection of ownerReferences (tests
assert the references instead).
"""

from __future__ import annotations

import bisect
import json
import re
import socket
import struct
import threading
import time
import uuid
from copy import deepcopy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import yaml

from tests.support import fake_ssa as ssa
from tests.support.fake_discovery import crds, discovery, table


class FakeAPIServer:
    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.objects: dict[tuple, dict] = {}  # (prefix, plural, ns, name) -> object
        self.events: list[tuple[int, tuple, str, dict]] = []  # (rv, (prefix, plural, ns), type, object)
        self.rv = 1
        self.compacted = 0
        self.faults: list[dict] = []
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request
        self.log: list[tuple[float, str, str, str]] = []  # (monotonic time, method, path, user agent)
        self.outage_until = 0.0
        self.outage_mode = "reset"
        self.delays: dict[str, float] = {}  # method -> seconds every such request takes
        self.holds: dict[str, float] = {}  # User-Agent part -> seconds every such request is held
        self.queries: list[tuple[str, str, dict]] = []  # (method, path, query) of every request
        self.committed: list[tuple[float, str, str, str]] = []  # writes that changed the store, as log
        self.request_local = threading.local()  # the request a handler thread is serving
        # requests received and not yet answered, watches aside: token -> (receipt, method, path, agent)
        self.open_requests: dict[int, tuple[float, str, str, str]] = {}
        self.next_token = 0
        self.chaos_rate, self.chaos_rng, self.chaos_count = 0.0, None, 0
        self.watch_generation = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()
                # Without it every small response waits for the client's delayed ACK (Nagle, ~40 ms).
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_GET(self):
                server._dispatch(self, "GET")

            def do_POST(self):
                server._dispatch(self, "POST")

            def do_PUT(self):
                server._dispatch(self, "PUT")

            def do_PATCH(self):
                server._dispatch(self, "PATCH")

            def do_DELETE(self):
                server._dispatch(self, "DELETE")

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # listen backlog: a controller opens a dozen watches at once

            def handle_error(self, request, client_address):
                import sys

                if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
                    super().handle_error(request, client_address)  # a client that gave up is no error

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        # A fresh cluster's namespaces, plus llmc-system as after `kubectl apply -k deploy/`.
        for ns in ("default", "kube-system", "kube-public", "kube-node-lease", "llmc-system"):
            self.create_namespace(ns)

    # -- test controls -----------------------------------------------------------------------------

    def fail(self, method: str, path_part: str, status: int | str, times: int = 1,
             message: str = "injected fault") -> None:
        """The next ``times`` requests matching: an HTTP ``status`` error (with ``message``), or
        ``"reset"`` for a connection reset."""
        with self.lock:
            self.faults.append({"method": method, "path": path_part, "status": status, "times": times,
                                "message": message})

    def outage(self, seconds: float, mode: str = "reset") -> None:
        """For ``seconds``, every request fails at the connection level: ``reset`` closes it with a
        TCP RST, ``hang`` holds it unanswered until the outage ends, then closes it. Watches drop."""
        with self.lock:
            self.outage_until, self.outage_mode = time.monotonic() + seconds, mode
        self.drop_watches()

    def chaos(self, rate: float, seed: int = 0) -> None:
        """Fail a ``rate`` fraction of requests (not watches), deterministically from ``seed``:
        alternately with a 500, a 429 and a connection reset."""
        import random

        with self.lock:
            self.chaos_rate, self.chaos_rng = rate, random.Random(seed)

    def delay(self, method: str, seconds: float) -> None:
        """Every ``method`` request takes ``seconds`` before it is handled (a slow API server)."""
        with self.lock:
            self.delays[method] = seconds

    def hold(self, agent_part: str, seconds: float) -> None:
        """Every request whose User-Agent contains ``agent_part`` is held ``seconds`` after it was
        received, before it is handled (an API server queueing one client's requests; 0 ends it)."""
        with self.lock:
            self.holds[agent_part] = seconds

    def writes_by(self, agent_part: str, since: float = 0.0, leases: bool = False) -> list[tuple[float, str, str]]:
        """(time, method, path) of writes whose User-Agent contains ``agent_part``, received at or
        after ``since`` (monotonic); Lease writes only with ``leases``."""
        with self.lock:
            return [(t, m, p) for t, m, p, ua in self.log
                    if m in ("POST", "PUT", "PATCH", "DELETE") and agent_part in ua and t >= since
                    and (leases or "/leases" not in p)]

    def unanswered(self, agent_part: str, received_before: float) -> list[tuple[float, str, str]]:
        """(receipt, method, path) of the requests, watches aside, whose User-Agent contains
        ``agent_part``, received before ``received_before`` (monotonic) and not answered yet: a held
        request is answered (applied, or refused past its deadline) only when it leaves this list."""
        with self.lock:
            return [(t, m, p) for t, m, p, ua in self.open_requests.values()
                    if agent_part in ua and t < received_before]

    def drop_watches(self) -> None:
        with self.lock:
            self.watch_generation += 1
            self.lock.notify_all()

    def compact(self) -> None:
        with self.lock:
            self.compacted = self.rv
            self.events.clear()

    def writes(self, path_part: str = "") -> list[tuple[str, str]]:
        return [r for r in self.requests if r[0] in ("POST", "PUT", "PATCH", "DELETE") and path_part in r[1]]

    def get(self, prefix: str, plural: str, ns: str, name: str) -> dict | None:
        with self.lock:
            obj = self.objects.get((prefix, plural, ns, name))
            return deepcopy(obj) if obj else None

    def list(self, prefix: str, plural: str) -> list[dict]:
        with self.lock:
            return [deepcopy(o) for k, o in sorted(self.objects.items()) if k[:2] == (prefix, plural)]

    def create_namespace(self, name: str) -> None:
        with self.lock:
            key = ("api/v1", "namespaces", "", name)
            if key not in self.objects:
                self._store(key, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}, "ADDED")

    def namespace_exists(self, name: str) -> bool:
        with self.lock:
            return ("api/v1", "namespaces", "", name) in self.objects

    def put_object(self, prefix: str, plural: str, obj: dict) -> dict:
        """Create or replace directly (as kubectl apply would), emitting the watch event; creates
        the object's namespace first if needed (as a test's `kubectl create namespace`)."""
        if obj["metadata"].get("namespace"):
            self.create_namespace(obj["metadata"]["namespace"])
        with self.lock:
            meta = obj["metadata"]
            key = (prefix, plural, meta.get("namespace", ""), meta["name"])
            current = self.objects.get(key)
            obj = ssa.update(current, _keep_status(current, obj) if "status" not in obj else obj, "test-edit")
            return self._store(key, obj, "MODIFIED" if current is not None else "ADDED")

    def delete_object(self, prefix: str, plural: str, ns: str, name: str) -> None:
        with self.lock:
            self._delete((prefix, plural, ns, name))

    def stop(self) -> None:
        self.drop_watches()
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- storage -----------------------------------------------------------------------------------

    def _committed(self) -> None:
        current = getattr(self.request_local, "request", None)
        if current is not None:
            self.committed.append((time.monotonic(), *current))

    def _store(self, key: tuple, obj: dict, event: str) -> dict:
        self._committed()
        self.rv += 1
        meta = obj.setdefault("metadata", {})
        old = self.objects.get(key)
        meta["resourceVersion"] = str(self.rv)
        if old is None:
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            meta["generation"] = 1
        else:
            meta["uid"] = old["metadata"]["uid"]
            meta["creationTimestamp"] = old["metadata"]["creationTimestamp"]
            changed = old.get("spec") != obj.get("spec")
            meta["generation"] = old["metadata"].get("generation", 1) + (1 if changed else 0)
        self.objects[key] = obj
        self.events.append((self.rv, key[:3], event, deepcopy(obj)))
        self.lock.notify_all()
        return deepcopy(obj)

    def _delete(self, key: tuple) -> dict | None:
        obj = self.objects.pop(key, None)
        if obj is not None:
            self._committed()
            self.rv += 1
            obj = deepcopy(obj)
            obj["metadata"]["resourceVersion"] = str(self.rv)
            self.events.append((self.rv, key[:3], "DELETED", obj))
            self.lock.notify_all()
        return obj

    # -- HTTP --------------------------------------------------------------------------------------

    @staticmethod
    def _parse(path: str) -> tuple[str, str, str | None, str | None, bool]:
        """(prefix, plural, namespace, name, status) from an API path."""
        parts = [p for p in path.split("/") if p]
        if parts[0] == "api":
            prefix, rest = "/".join(parts[:2]), parts[2:]
        else:
            prefix, rest = "/".join(parts[:3]), parts[3:]
        ns = None
        if rest and rest[0] == "namespaces" and len(rest) >= 3:
            ns, rest = rest[1], rest[2:]
        plural = rest[0] if rest else None
        name = rest[1] if len(rest) > 1 else None
        status = len(rest) > 2 and rest[2] == "status"
        return prefix, plural, ns, name, status

    def _send(self, h: BaseHTTPRequestHandler, code: int, body: dict) -> None:
        """Queue the response; :meth:`_dispatch` writes it once the store's lock is released (stored
        objects are never changed in place, so serializing later is safe)."""
        h.llmc_response = (code, body)

    @staticmethod
    def _flush(h: BaseHTTPRequestHandler) -> None:
        response = getattr(h, "llmc_response", None)
        if response is None:
            return
        h.llmc_response = None
        code, body = response
        data = json.dumps(body).encode()
        h.send_response(code)
        h.send_header("content-type", "application/json")
        h.send_header("content-length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _status(self, h: BaseHTTPRequestHandler, code: int, reason: str, message: str) -> None:
        self._send(h, code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
                             "reason": reason, "message": message})

    @staticmethod
    def _reset(h: BaseHTTPRequestHandler) -> None:
        """Close the connection with a TCP RST and no response."""
        h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        h.close_connection = True

    def _dispatch(self, h: BaseHTTPRequestHandler, method: str) -> None:
        url = urlparse(h.path)
        self.request_local.request = (method, url.path, h.headers.get("user-agent", ""))
        with self.lock:
            token, self.next_token = self.next_token, self.next_token + 1
            if "watch=" not in url.query:
                self.open_requests[token] = (time.monotonic(), *self.request_local.request)
        try:
            try:
                self._handle(h, method)
            finally:
                self.request_local.request = None
                self._flush(h)  # raises when the client left (it gave up waiting)
        finally:
            with self.lock:
                self.open_requests.pop(token, None)

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        url = urlparse(h.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        length = int(h.headers.get("content-length") or 0)
        body = h.rfile.read(length) if length else b""
        agent = h.headers.get("user-agent", "")
        received = time.monotonic()
        timeout = _parse_timeout(query.get("timeout")) if "watch=" not in url.query else None
        if timeout is False:
            return self._status(h, 400, "BadRequest", f"invalid timeout specified in the request URL - "
                                f"time: invalid duration {query.get('timeout')!r}")
        with self.lock:
            self.log.append((time.monotonic(), method, url.path, agent))
            self.queries.append((method, url.path, query))
            outage_left, mode = self.outage_until - time.monotonic(), self.outage_mode
            delay = self.delays.get(method, 0.0) + sum(t for a, t in self.holds.items() if a in agent)
        if outage_left > 0:
            if mode == "hang":
                time.sleep(outage_left)
            return self._reset(h)
        if delay:
            time.sleep(delay)
        with self.lock:
            self.requests.append((method, url.path))
            # kube-apiserver: the deadline runs from receipt, so time spent queued counts (see
            # _parse_timeout); a request that reaches the store after it is answered 504 unapplied
            if timeout and time.monotonic() > received + timeout:
                return self._status(h, 504, "Timeout", "request did not complete within requested timeout - "
                                    "context deadline exceeded")
            if self.chaos_rate and "watch=" not in url.query and self.chaos_rng.random() < self.chaos_rate:
                self.chaos_count += 1
                kind = self.chaos_count % 3
                if kind == 0:
                    return self._reset(h)
                return self._status(h, 500 if kind == 1 else 429, "InternalError", "injected fault")
            for fault in self.faults:
                if fault["method"] == method and fault["path"] in url.path and fault["times"] > 0:
                    fault["times"] -= 1
                    if fault["status"] == "reset":
                        return self._reset(h)
                    reason = {409: "Conflict", 500: "InternalError"}.get(fault["status"], "Error")
                    return self._status(h, fault["status"], reason, fault["message"])
        if method == "GET":
            with self.lock:
                found = discovery(self.objects, url.path)
            if found is not None:
                return self._send(h, 200, found)
        try:
            prefix, plural, ns, name, status = self._parse(url.path)
        except IndexError:
            return self._status(h, 404, "NotFound", f"the server could not find the requested resource {url.path}")
        if url.path.strip("/").split("/")[0] not in ("api", "apis") or plural is None:
            return self._status(h, 404, "NotFound", f"the server could not find the requested resource {url.path}")
        selector = query.get("labelSelector", "")
        try:
            parse_selector(selector)
        except ValueError as exc:
            return self._status(h, 400, "BadRequest", f"unable to parse requirement: {exc}")
        if method == "GET" and name is None and query.get("watch") in ("true", "1"):
            return self._watch(h, prefix, plural, ns, query)
        as_table = "as=Table" in h.headers.get("accept", "")
        group = prefix.split("/")[1] if prefix.startswith("apis/") else ""
        with self.lock:
            if method == "GET" and name is None:
                items = [deepcopy(o) for k, o in sorted(self.objects.items())
                         if k[:2] == (prefix, plural) and (ns is None or k[2] == ns)
                         and _selected(o, selector)]
                if as_table:
                    return self._send(h, 200, table(self.objects, group, plural, items))
                return self._send(h, 200, {"kind": "List", "apiVersion": "v1", "items": items,
                                           "metadata": {"resourceVersion": str(self.rv)}})
            key = (prefix, plural, ns or "", name)
            current = self.objects.get(key)
            if method == "GET":
                if current is None:
                    return self._status(h, 404, "NotFound", f"{plural} {name} not found")
                return self._send(h, 200, table(self.objects, group, plural, [current]) if as_table else current)
            if method == "DELETE":
                if self._delete(key) is None:
                    return self._status(h, 404, "NotFound", f"{plural} {name} not found")
                return self._send(h, 200, {"kind": "Status", "status": "Success"})
            doc = yaml.safe_load(body) if body else {}
            creates = method == "POST" or method == "PATCH" and current is None and not status
            if creates and ns and ("api/v1", "namespaces", "", ns) not in self.objects:
                return self._status(h, 404, "NotFound", f'namespaces "{ns}" not found')
            manager = query.get("fieldManager") or h.headers.get("user-agent", "unknown").split("/")[0]
            if method != "DELETE" and not status:
                unknown = self._prune(group, plural, doc)
                if unknown and query.get("fieldValidation") == "Strict":
                    return self._status(h, 400, "BadRequest", "strict decoding error: "
                                        + ", ".join(f'unknown field "{u}"' for u in unknown))
            if method == "POST":
                key = (prefix, plural, ns or "", doc["metadata"]["name"])
                if key in self.objects:
                    return self._status(h, 409, "AlreadyExists", "already exists")
                return self._send(h, 201, self._store(key, ssa.update(None, doc, manager), "ADDED"))
            if method == "PUT":
                if current is None:
                    return self._status(h, 404, "NotFound", "not found")
                if doc["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
                    return self._status(h, 409, "Conflict", "the object has been modified")
                doc = _keep_status(current, doc)
                return self._send(h, 200, self._store(key, ssa.update(current, doc, manager), "MODIFIED"))
            if method == "PATCH" and status:  # the status subresource: only status changes
                if current is None:
                    return self._status(h, 404, "NotFound", "not found")
                updated = deepcopy(current)
                updated["status"] = _merge(current.get("status") or {}, doc.get("status") or {})
                if updated == current:
                    return self._send(h, 200, current)
                return self._send(h, 200, self._store(key, updated, "MODIFIED"))
            if method == "PATCH" and "apply-patch" in h.headers.get("content-type", ""):
                if not query.get("fieldManager"):
                    return self._status(h, 400, "BadRequest", "PATCH with apply requires fieldManager")
                updated, conflicts = ssa.apply(current, doc, manager, query.get("force") == "true")
                if updated is None:
                    return self._status(h, 409, "Conflict", f"Apply failed with {len(conflicts)} conflict(s): "
                                        + ", ".join(conflicts))
                if current is None:
                    return self._send(h, 201, self._store(key, updated, "ADDED"))
                updated = _keep_status(current, updated)
                if _same(updated, current):  # a no-op apply writes nothing
                    return self._send(h, 200, current)
                return self._send(h, 200, self._store(key, updated, "MODIFIED"))
            if method == "PATCH" and "merge-patch" in h.headers.get("content-type", ""):
                if current is None:
                    return self._status(h, 404, "NotFound", "not found")
                updated = _keep_status(current, _merge(current, doc))
                if updated == current:
                    return self._send(h, 200, current)
                return self._send(h, 200, self._store(key, ssa.update(current, updated, manager), "MODIFIED"))
            return self._status(h, 405, "MethodNotAllowed", f"{method} {url.path}")

    def _prune(self, group: str, plural: str, doc: dict) -> list[str]:
        """Drop fields the stored CRD's structural schema does not specify (as the API server
        prunes them); the dropped paths. Kinds without a stored CRD are kept as they are."""
        schema = None
        for crd in crds(self.objects):
            if crd["spec"]["group"] == group and crd["spec"]["names"]["plural"] == plural:
                version = doc.get("apiVersion", "").rsplit("/", 1)[-1]
                for v in crd["spec"]["versions"]:
                    if v["name"] == version:
                        schema = (v.get("schema") or {}).get("openAPIV3Schema")
        if schema is None:
            return []
        dropped: list[str] = []
        _prune_node(doc, schema, "", dropped, root=True)
        return dropped

    def _watch(self, h: BaseHTTPRequestHandler, prefix: str, plural: str, ns: str | None, query: dict) -> None:
        since = int(query.get("resourceVersion") or 0)
        selector = query.get("labelSelector", "")
        deadline = time.monotonic() + float(query.get("timeoutSeconds", 30))
        h.send_response(200)
        h.send_header("content-type", "application/json")
        h.send_header("transfer-encoding", "chunked")
        h.end_headers()

        def send(event: dict) -> None:
            line = (json.dumps(event) + "\n").encode()
            h.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
            h.wfile.flush()

        try:
            with self.lock:
                generation = self.watch_generation
                if since and since < self.compacted:
                    send({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                                      "code": 410, "reason": "Expired",
                                                      "message": f"too old resource version: {since}"}})
                    h.wfile.write(b"0\r\n\r\n")
                    return
            while time.monotonic() < deadline:
                with self.lock:
                    if generation != self.watch_generation:
                        break
                    start = bisect.bisect_right(self.events, since, key=lambda e: e[0])  # events are in rv order
                    pending = [e for e in self.events[start:] if e[1][:2] == (prefix, plural)
                               and (ns is None or e[1][2] == ns) and _selected(e[3], selector)]
                    if not pending and start < len(self.events):
                        since = self.events[-1][0]
                    if not pending:
                        self.lock.wait(timeout=0.2)
                        continue
                for rv, _, kind, obj in pending:
                    send({"type": kind, "object": obj})
                    since = rv
            h.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass


#: kube-apiserver's --request-timeout default: a longer (or 0) ``timeout`` is capped to it
MAX_REQUEST_TIMEOUT = 60.0
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _parse_timeout(value: str | None) -> float | bool | None:
    """The ``timeout`` query parameter as kube-apiserver reads it: a Go duration (``5s``, ``1.5s``,
    ``1m30s``); malformed: False (400). None when absent; 0, negative or above the server's maximum:
    the maximum. The server gives the request the deadline *receipt time + timeout*
    (``WithRequestDeadline``, staging/src/k8s.io/apiserver/pkg/endpoints/filters/request_deadline.go
    L69-L96 at 08eaea4590821ab099551e334bfc0e0b2ebee348: ``started`` is the received timestamp), so
    queueing counts; the storage call of a write runs under that context, and the handler answers
    504 ``Timeout`` once it passes (finisher.go ``asyncFinisher``). Here: a write that has not
    reached the store by its deadline is answered 504 and not applied."""
    if value is None or value == "":
        return None
    text, total = value, 0.0
    sign = -1.0 if text.startswith("-") else 1.0
    text = text.lstrip("+-")
    if text == "0":
        return MAX_REQUEST_TIMEOUT
    pos = 0
    while pos < len(text):
        m = _DURATION.match(text, pos)
        if m is None:
            return False
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not text:
        return False
    total *= sign
    return total if 0 < total < MAX_REQUEST_TIMEOUT else MAX_REQUEST_TIMEOUT


def _prune_node(node, schema: dict, path: str, dropped: list[str], root: bool = False) -> None:
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return
    if isinstance(node, dict) and schema.get("type") == "object":
        props, extra = schema.get("properties") or {}, schema.get("additionalProperties")
        for key in list(node):
            if root and key in ("apiVersion", "kind", "metadata"):
                continue
            sub = props.get(key) or (extra if isinstance(extra, dict) else None)
            if sub is None and extra is not True:
                dropped.append(f"{path}{key}")
                del node[key]
            elif sub is not None:
                _prune_node(node[key], sub, f"{path}{key}.", dropped)
    elif isinstance(node, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(node):
            _prune_node(item, schema["items"], f"{path[:-1]}[{i}].", dropped)


def _merge(base, patch):
    """JSON merge patch (RFC 7386)."""
    if not isinstance(patch, dict) or not isinstance(base, dict):
        return deepcopy(patch)
    out = deepcopy(base)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge(out.get(k), v)
    return out


def _keep_status(current: dict | None, new: dict) -> dict:
    """Main-resource writes leave ``status`` alone (the status subresource is on)."""
    new = deepcopy(new)
    new.pop("status", None)
    if current is not None and "status" in current:
        new["status"] = deepcopy(current["status"])
    return new


def _same(a: dict, b: dict) -> bool:
    """Equal but for managedFields timestamps."""
    def strip(o: dict) -> dict:
        o = deepcopy(o)
        for e in o.get("metadata", {}).get("managedFields") or []:
            e.pop("time", None)
        return o
    return strip(a) == strip(b)


_TERM = re.compile(r"^\s*(!)?\s*([A-Za-z0-9][-A-Za-z0-9_./]*)\s*(?:(==|=|!=)\s*([-A-Za-z0-9_.]*)|"
                   r"\s+(in|notin)\s+\(([^()]*)\))?\s*$")


def _split_terms(selector: str) -> list[str]:
    terms, depth, cur = [], 0, ""
    for ch in selector:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            terms.append(cur)
            cur = ""
        else:
            cur += ch
    return [t for t in terms + [cur] if t.strip()]


def parse_selector(selector: str) -> list[tuple]:
    """Label selector terms (=, ==, !=, in, notin, exists, !exists); ValueError for anything else,
    which the server answers with 400 — never with an empty list."""
    out = []
    for term in _split_terms(selector):
        m = _TERM.match(term)
        if m is None:
            raise ValueError(repr(term))
        neg, key, op, value, set_op, values = m.groups()
        if neg and (op or set_op):
            raise ValueError(repr(term))
        if set_op:
            out.append((set_op, key, {v.strip() for v in values.split(",") if v.strip()}))
        elif op:
            out.append(("!=" if op == "!=" else "=", key, value))
        else:
            out.append(("!exists" if neg else "exists", key, None))
    return out


def _selected(obj: dict, selector: str) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    for op, key, value in parse_selector(selector):
        have = labels.get(key)
        if op == "=":
            ok = have == value
        elif op == "!=":
            ok = have != value
        elif op == "in":
            ok = have in value
        elif op == "notin":
            ok = have not in value
        else:
            ok = (key in labels) == (op == "exists")
        if not ok:
            return False
    return True
