"""An in-process fake Kubernetes API server, for driving `llmc controller` through the real
`kubernetes` Python client.

Implements (enough of the real REST and watch protocol for a controller, on 127.0.0.1):
* custom and built-in resources at ``/apis/<group>/<version>/namespaces/<ns>/<plural>[/<name>[/status]]``
  and ``/api/v1/...``; cluster-wide lists at ``/apis/<group>/<version>/<plural>``;
* LIST with ``labelSelector`` (``k=v`` terms) returning ``metadata.resourceVersion``;
* WATCH (``?watch=true&resourceVersion=N``): a chunked stream of ``{"type", "object"}`` lines for
  events after N, open until ``timeoutSeconds``; N older than the compacted history gets an
  ``ERROR`` event with a ``410 Gone`` Status, as etcd compaction causes;
* server-side apply (``PATCH`` with ``application/apply-patch+yaml``): creates, or replaces the
  applied fields (labels, annotations, ownerReferences, spec/data); a no-op apply changes nothing
  (same resourceVersion); ``generation`` moves when ``spec`` changes;
* the ``status`` subresource (merge patch), ``DELETE``, ``POST`` (409 if it exists) and ``PUT`` with
  optimistic concurrency (409 on a stale ``resourceVersion``) — what leader election needs;
* fault injection (:meth:`FakeAPIServer.fail`), dropping all watches (:meth:`drop_watches`),
  history compaction (:meth:`compact`), and a request log for asserting on writes.

Not implemented: field managers and conflicts between them, strategic merge, field selectors,
bookmarks, pagination, admission, authentication, and garbage collection of ownerReferences
(tests assert the references instead).
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
import uuid
from copy import deepcopy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import yaml


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

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        # A fresh cluster's namespaces, plus llmc-system as after `kubectl apply -k deploy/`.
        for ns in ("default", "kube-system", "kube-public", "kube-node-lease", "llmc-system"):
            self.create_namespace(ns)

    # -- test controls -----------------------------------------------------------------------------

    def fail(self, method: str, path_part: str, status: int, times: int = 1) -> None:
        with self.lock:
            self.faults.append({"method": method, "path": path_part, "status": status, "times": times})

    def outage(self, seconds: float, mode: str = "reset") -> None:
        """For ``seconds``, every request fails at the connection level: ``reset`` closes it with a
        TCP RST, ``hang`` holds it unanswered until the outage ends, then closes it. Watches drop."""
        with self.lock:
            self.outage_until, self.outage_mode = time.monotonic() + seconds, mode
        self.drop_watches()

    def delay(self, method: str, seconds: float) -> None:
        """Every ``method`` request takes ``seconds`` before it is handled (a slow API server)."""
        with self.lock:
            self.delays[method] = seconds

    def writes_by(self, agent_part: str, since: float = 0.0, leases: bool = False) -> list[tuple[float, str, str]]:
        """(time, method, path) of writes whose User-Agent contains ``agent_part``, received at or
        after ``since`` (monotonic); Lease writes only with ``leases``."""
        with self.lock:
            return [(t, m, p) for t, m, p, ua in self.log
                    if m in ("POST", "PUT", "PATCH", "DELETE") and agent_part in ua and t >= since
                    and (leases or "/leases" not in p)]

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
            return self._store(key, deepcopy(obj), "MODIFIED" if key in self.objects else "ADDED")

    def delete_object(self, prefix: str, plural: str, ns: str, name: str) -> None:
        with self.lock:
            self._delete((prefix, plural, ns, name))

    def stop(self) -> None:
        self.drop_watches()
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- storage -----------------------------------------------------------------------------------

    def _store(self, key: tuple, obj: dict, event: str) -> dict:
        self.rv += 1
        meta = obj.setdefault("metadata", {})
        old = self.objects.get(key)
        meta["resourceVersion"] = str(self.rv)
        if old is None:
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
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
        plural = rest[0]
        name = rest[1] if len(rest) > 1 else None
        status = len(rest) > 2 and rest[2] == "status"
        return prefix, plural, ns, name, status

    def _send(self, h: BaseHTTPRequestHandler, code: int, body: dict) -> None:
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
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        length = int(h.headers.get("content-length") or 0)
        body = h.rfile.read(length) if length else b""
        with self.lock:
            self.log.append((time.monotonic(), method, url.path, h.headers.get("user-agent", "")))
            outage_left, mode = self.outage_until - time.monotonic(), self.outage_mode
            delay = self.delays.get(method, 0.0)
        if outage_left > 0:
            if mode == "hang":
                time.sleep(outage_left)
            return self._reset(h)
        if delay:
            time.sleep(delay)
        with self.lock:
            self.requests.append((method, url.path))
            for fault in self.faults:
                if fault["method"] == method and fault["path"] in url.path and fault["times"] > 0:
                    fault["times"] -= 1
                    if fault["status"] == "reset":
                        return self._reset(h)
                    reason = {409: "Conflict", 500: "InternalError"}.get(fault["status"], "Error")
                    return self._status(h, fault["status"], reason, "injected fault")
        prefix, plural, ns, name, status = self._parse(url.path)
        if method == "GET" and name is None and query.get("watch") in ("true", "1"):
            return self._watch(h, prefix, plural, ns, query)
        with self.lock:
            if method == "GET" and name is None:
                items = [deepcopy(o) for k, o in sorted(self.objects.items())
                         if k[:2] == (prefix, plural) and (ns is None or k[2] == ns)
                         and _selected(o, query.get("labelSelector", ""))]
                return self._send(h, 200, {"kind": "List", "apiVersion": "v1", "items": items,
                                           "metadata": {"resourceVersion": str(self.rv)}})
            key = (prefix, plural, ns or "", name)
            current = self.objects.get(key)
            if method == "GET":
                if current is None:
                    return self._status(h, 404, "NotFound", f"{plural} {name} not found")
                return self._send(h, 200, current)
            if method == "DELETE":
                if self._delete(key) is None:
                    return self._status(h, 404, "NotFound", f"{plural} {name} not found")
                return self._send(h, 200, {"kind": "Status", "status": "Success"})
            doc = yaml.safe_load(body) if body else {}
            creates = method == "POST" or method == "PATCH" and current is None and not status
            if creates and ns and ("api/v1", "namespaces", "", ns) not in self.objects:
                return self._status(h, 404, "NotFound", f'namespaces "{ns}" not found')
            if method == "POST":
                key = (prefix, plural, ns or "", doc["metadata"]["name"])
                if key in self.objects:
                    return self._status(h, 409, "AlreadyExists", "already exists")
                return self._send(h, 201, self._store(key, doc, "ADDED"))
            if method == "PUT":
                if current is None:
                    return self._status(h, 404, "NotFound", "not found")
                if doc["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
                    return self._status(h, 409, "Conflict", "the object has been modified")
                return self._send(h, 200, self._store(key, doc, "MODIFIED"))
            if method == "PATCH" and status:
                if current is None:
                    return self._status(h, 404, "NotFound", "not found")
                updated = deepcopy(current)
                updated["status"] = doc.get("status", {})
                if updated == current:
                    return self._send(h, 200, current)
                return self._send(h, 200, self._store(key, updated, "MODIFIED"))
            if method == "PATCH" and "apply-patch" in h.headers.get("content-type", ""):
                if current is None:
                    return self._send(h, 201, self._store(key, doc, "ADDED"))
                updated = deepcopy(current)
                for field, value in doc.items():
                    if field != "metadata":
                        updated[field] = value
                for field in ("labels", "annotations", "ownerReferences"):
                    if field in doc.get("metadata", {}):
                        updated["metadata"][field] = doc["metadata"][field]
                if updated == current:
                    return self._send(h, 200, current)
                return self._send(h, 200, self._store(key, updated, "MODIFIED"))
            return self._status(h, 405, "MethodNotAllowed", f"{method} {url.path}")

    def _watch(self, h: BaseHTTPRequestHandler, prefix: str, plural: str, ns: str | None, query: dict) -> None:
        since = int(query.get("resourceVersion") or 0)
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
                    pending = [e for e in self.events if e[0] > since and e[1][:2] == (prefix, plural)
                               and (ns is None or e[1][2] == ns)]
                    if not pending:
                        self.lock.wait(timeout=0.2)
                        continue
                for rv, _, kind, obj in pending:
                    send({"type": kind, "object": obj})
                    since = rv
            h.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass


def _selected(obj: dict, selector: str) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    for term in filter(None, selector.split(",")):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True
