"""The requests `llmc diff` replays: a JSON Lines file, llmc's own access log, or one request per rule.

* **JSON Lines** (``--requests FILE``): one object per line with ``host`` (required), ``path``
  (default ``/v1/chat/completions``), ``method`` (``POST``), ``headers`` (object), ``body`` (an
  object, or a string sent as is), and optionally the caller: ``namespace``, ``labels``, ``via``
  (``mesh`` or a Gateway as ``namespace/name``), ``port``. Blank lines and lines starting with ``#``
  are skipped.
* **llmc's access log** (``--requests FILE`` whose lines carry ``route_name``; the format `llmc
  meshconfig` prints). The log does not hold the client's headers, its ``model`` or its body, and
  its ``authority``/``path`` are the provider's after rewriting. So a logged request is rebuilt
  from its route: the host is the route's VirtualService host (read from the *base*
  configuration), the endpoint from the logged path's last segment, and the headers and model are
  ``unknown``: such a request is replayed without them, and when its replay on the base does not
  reach the rule the log names, the report says it cannot be reproduced instead of comparing it
  (decided in issue 36: extending the log with request headers would put client credentials into
  logs).
* **Generated** (``--generate``): one request per match of every rule of both sides: its header
  conditions satisfied (``exact`` the value, ``prefix`` the prefix, ``present`` any value; a
  ``regex`` header condition is not generated), its model (``exact`` the value; ``prefix`` a
  provider's model with that prefix, else the prefix; ``regex`` the providers' models the regex
  accepts, else not generated), from the caller the match names (source labels, gateway).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..constants import VIRTUAL_SERVICE
from ..explain import Request
from ..ir import Program

DEFAULT_MESSAGES = [{"role": "user", "content": "Hello"}]


@dataclass
class Case:
    """One request of the corpus, with what is not known of it."""

    name: str
    request: Request
    unknown: tuple[str, ...] = ()  # e.g. ("headers", "model") for a request rebuilt from the access log
    logged_rule: str | None = None  # the rule the access log names (rebuilt requests)
    notes: list[str] = field(default_factory=list)


class CorpusError(Exception):
    """A request file that cannot be read; the message names the file and line."""


def _body(value) -> bytes:
    if value is None:
        return json.dumps({"messages": DEFAULT_MESSAGES}).encode()
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value, ensure_ascii=False).encode()


def read_requests(path: str, base_objects: list[dict]) -> list[Case]:
    """Requests from a JSON Lines file or an access log (told apart line by line)."""
    cases = []
    route_hosts: dict[str, tuple[str, str, str]] | None = None
    text = Path(path).read_text(encoding="utf-8")
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusError(f"{path}:{n}: not JSON ({exc.msg})") from None
        if not isinstance(item, dict):
            raise CorpusError(f"{path}:{n}: expected a JSON object")
        if "route_name" in item and "host" not in item:
            if route_hosts is None:  # read once, from the base, for every logged line
                route_hosts = _route_hosts(base_objects)
            case = _from_log(item, route_hosts, f"{Path(path).name}:{n}")
            if case is not None:
                cases.append(case)
            continue
        if not isinstance(item.get("host"), str) or not item["host"]:
            raise CorpusError(f"{path}:{n}: `host` is required")
        headers = item.get("headers") or {}
        if not isinstance(headers, dict):
            raise CorpusError(f"{path}:{n}: `headers` must be an object")
        req = Request(host=item["host"], method=str(item.get("method", "POST")).upper(),
                      path=item.get("path", "/v1/chat/completions"),
                      headers={str(k).lower(): str(v) for k, v in headers.items()}, body=_body(item.get("body")),
                      namespace=item.get("namespace", "default"), labels=dict(item.get("labels") or {}),
                      via=item.get("via", "mesh"), port=int(item.get("port", 80)))
        cases.append(Case(item.get("name") or f"{Path(path).name}:{n}", req))
    return cases


def _route_hosts(objects: list[dict]) -> dict[str, tuple[str, str, str]]:
    """route name -> (host, namespace, via) from the VirtualServices of a configuration."""
    out: dict[str, tuple[str, str, str]] = {}
    for o in objects:
        if o.get("kind") != VIRTUAL_SERVICE:
            continue
        gateways = o["spec"].get("gateways") or ["mesh"]
        ns = o["metadata"].get("namespace", "default")
        via = "mesh" if "mesh" in gateways else (gateways[0] if "/" in gateways[0] else f"{ns}/{gateways[0]}")
        for http in o["spec"].get("http", []):
            out.setdefault(http.get("name", ""), (o["spec"]["hosts"][0], ns, via))
    return out


def _from_log(item: dict, route_hosts: dict[str, tuple[str, str, str]], name: str) -> Case | None:
    route = item.get("route_name") or ""
    found = route_hosts.get(route)
    if found is None:
        return None  # not llmc traffic, or a route the base no longer has: nothing to replay
    host, ns, via = found
    logged = str(item.get("path") or "").split("?")[0]
    path = ("/v1/embeddings" if logged.endswith("/embeddings") else
            "/v1/completions" if logged.endswith("/completions") and not logged.endswith("/chat/completions") else
            "/v1/chat/completions")
    body = {"input": "Hello"} if path == "/v1/embeddings" else {"messages": DEFAULT_MESSAGES}
    req = Request(host=host, method=str(item.get("method") or "POST").upper(), path=path, body=_body(body),
                  namespace=ns, via=via)
    rule = item.get("llm_rule")
    return Case(f"{name} ({route})", req, unknown=("headers", "model"),
                logged_rule=rule if rule and rule != "-" else None)


def generate(programs: list[Program]) -> tuple[list[Case], list[str]]:
    """One request per match of every rule of the programs (both sides), deduplicated; and what could
    not be generated (a regex header condition, a regex model no provider's model satisfies)."""
    import re2

    cases: dict[str, Case] = {}
    skipped: list[str] = []
    for program in programs:
        for vh in program.vhosts:
            models = sorted({b.config.model for r in vh.rules for b in r.backends if b.config.model})
            via = "mesh" if "mesh" in vh.gateways else sorted(vh.gateways)[0]
            for rule in vh.rules:
                where = f"{vh.namespace}/{vh.label}/{rule.name}"
                for k, m in enumerate(rule.matches or (None,)):
                    headers: dict[str, str] = {}
                    problem = None
                    for h in (m.headers if m else ()):
                        if h.kind == "regex":
                            problem = f"{where}: match {k}: header {h.name} is a regex condition"
                        headers[h.name] = h.value if h.kind in ("exact", "prefix") else "any"
                    model_values: list[str | None] = [None]
                    if m is not None and m.model is not None:
                        if m.model.kind == "exact":
                            model_values = [m.model.value]
                        elif m.model.kind == "prefix":
                            model_values = [x for x in models if x.startswith(m.model.value)] or [m.model.value]
                        else:
                            model_values = [x for x in models if re2.fullmatch(m.model.value, x)]
                            if not model_values:
                                problem = f"{where}: match {k}: no provider's model satisfies model regex {m.model.value!r}"
                    # other body fields: the exact value, or the prefix itself
                    fields = {b.field: b.value for b in (m.body if m else ()) if b.field != "model"}
                    for b in (m.body if m else ()):
                        if b.field != "model" and b.kind == "regex":
                            problem = f"{where}: match {k}: body field {b.field} is a regex condition"
                    if problem:
                        skipped.append(problem + ": not generated")
                        continue
                    gateway = next((g for g in (m.gateways if m else ()) if g != "mesh"), None)
                    caller = gateway or via
                    labels = dict(m.source_labels) if m else {}
                    for model in model_values:
                        body: dict = {"messages": DEFAULT_MESSAGES, **fields}
                        if model is not None:
                            body["model"] = model
                        host = vh.host if vh.host != "*" else "llm.example.com"
                        req = Request(host=host, headers=dict(sorted(headers.items())), body=_body(body),
                                      namespace=vh.namespace, labels=labels, via=caller, port=vh.port)
                        key = json.dumps([req.host, req.path, req.headers, body, req.namespace, labels, caller],
                                         sort_keys=True)
                        label = f"{where}" + (f" [{model}]" if model else "") + (f" match {k}" if k else "")
                        cases.setdefault(key, Case(label, req))
    return list(cases.values()), sorted(set(skipped))
