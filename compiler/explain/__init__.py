"""`llmc explain`: what a request would become, offline, from the real filter code.

Given sources and a request (host, headers, body, method, path) and its caller (namespace, pod
labels, or a gateway), it compiles the sources exactly as ``llmc render`` does, then:

1. picks the objects the calling proxy would have: VirtualServices for the host visible from the
   caller's namespace (``exportTo``) and bound to ``mesh`` (or to the gateway), and the EnvoyFilters
   of the caller's namespace whose ``workloadSelector`` matches its labels (or of the gateway's);
2. matches the request against the VirtualService's ``http`` routes in order, following Istio's
   semantics (:mod:`.istio`, which also does step 1; :func:`.istio.route_matches`: every condition of
   one ``match`` entry must hold, any entry selects the route; StringMatch ``exact``/``prefix``/
   ``regex`` with RE2 full-match regexes through a real RE2 binding; ``uri``, ``method``,
   ``headers``, ``withoutHeaders``, ``sourceLabels``, ``gateways``, ``port``), and says why each
   earlier route did not match;
3. runs the exact Lua bundle the proxy's filter carries (``templates/lua/llmc/*.lua`` as bundled by
   ``compiler/luabundle.py``; each failover try the bundle of its cluster's upstream filter) under
   LuaJIT (``lupa``, the ``explain`` extra) with the compiled filter context and route metadata of
   that virtual host, on an emulated Envoy handle (``templates/lua/envoy_handle.lua``) whose route
   re-selection calls step 2 again;
4. reports the matched rule, the candidate providers and their weights, the pick (``--seed`` seeds
   the filter's PRNG; ``--provider`` forces one), the retry policy of the route, and the exact
   upstream request (URL, headers, body) — or the reply the client would get.

Secrets: a key file (``apiKeySecretRef``) is never read; the request shows ``<key from PATH>``.
Literal keys are masked in every header and body printed (``***``).

Not modelled: Envoy's own local replies (no route → 404 from the router, buffer limits), merging of
several VirtualServices for one host (the first visible one counts), DNS and TLS.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from typing import Any

from .. import names
from ..constants import DESTINATION_RULE, FILTER_NAME, TRAFFIC_EXTENSION
from ..translate.envoyfilter import UPSTREAM_FILTER, lua_source
from ..translate.trafficextension import TABLE_CALL, WRAP_HEAD, WRAP_TAIL, route_index
from .istio import (
    ExplainError,
    Request,
    describe_proxy,
    find_filter_context,
    find_filter_sources,
    find_virtualservice,
    select,
)
from .limits import request_limits

__all__ = ["ExplainError", "Request", "explain", "format_text"]


# ------------------------------------------------------------------------------------------------
# Running the filter
# ------------------------------------------------------------------------------------------------

def _lua_source(name: str) -> str:
    return resources.files("llmc_templates.lua").joinpath(name).read_text(encoding="utf-8")


class _Runtime:
    """One filter bundle under LuaJIT with the emulated handle: loaded once per process and bundle
    (loading the source costs more than explaining a request; `llmc diff` explains thousands), then
    per request seeded (:meth:`prepare`). The filter's caches (prepared contexts by digest, key
    files) hold nothing a later request of another configuration could mistake for its own."""

    def __init__(self, source: str) -> None:
        try:
            from lupa import luajit21
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise ExplainError("llmc explain runs the filter under LuaJIT (lupa), which is not installed: "
                               "install the explain extra from your clone, `pip install '.[explain]'` "
                               "(or `pip install lupa` into llmc's environment)") from exc
        self.lua = luajit21.LuaRuntime(unpack_returned_tuples=True)
        self.M = self.lua.execute(source)
        self.handle = self.lua.execute(_lua_source("envoy_handle.lua"))
        self._frozen: dict[tuple, tuple[Any, Any]] = {}
        # Both replaced in llmc.context, through which the other modules call them:
        # a key file is never read: the request shows where the proxy would read the key
        self.lua.execute("local M = require('llmc.context')\n"
                         "M.api_key = function(b) return '<key from ' .. b.api_key_file .. '>' end")
        # --provider: the weighted pick goes to that provider when the rule has it
        self._force = self.lua.execute("""local M = require("llmc.context")
          local pick, forced = M.pick, nil
          M.pick = function(cfg, r)
            if forced ~= nil then
              for _, b in ipairs(cfg.backends) do if b.provider == forced then return b end end
            end
            return pick(cfg, r)
          end
          return function(name) forced = name end""", self.M)

    def prepare(self, seed: int | None, forced: str | None) -> _Runtime:
        if seed is not None:
            self.lua.execute(f"math.randomseed({int(seed)})")
        self._force(forced)
        return self

    def frozen(self, value: Any) -> Any:
        """``table(value)`` for data the filter only reads (a filter context, route metadata),
        converted once per object: explaining many requests of one configuration (`llmc diff`)
        converts its contexts once."""
        return _remember(self._frozen, (), value, lambda: self.table(value))

    def table(self, value: Any) -> Any:
        if isinstance(value, dict):
            return self.lua.table_from({k: self.table(v) for k, v in value.items()})
        if isinstance(value, list):
            return self.lua.table_from([self.table(v) for v in value])
        return value


def _remember(cache: dict[tuple, tuple[Any, Any]], key: tuple, owner: Any, make: Callable[[], Any]) -> Any:
    """``make()``, computed once per (``owner`` object, ``key``): the objects of one compile are never
    changed afterwards, and `llmc diff` asks the same questions of them for thousands of requests.
    The entry holds ``owner``, so its id is not reused while cached; at most 256 entries."""
    full = (id(owner), *key)
    hit = cache.get(full)
    if hit is None or hit[0] is not owner:
        if len(cache) >= 256:
            cache.clear()
        hit = cache[full] = (owner, make())
    return hit[1]


_CONTEXTS: dict[tuple, tuple[Any, Any]] = {}
_METADATA: dict[tuple, tuple[Any, Any]] = {}


def _filter_context(objects: list[dict], req: Request, vhost: str) -> tuple[dict | None, dict[str, dict]]:
    """find_filter_context, remembered per objects list and caller."""
    return _remember(_CONTEXTS, (req.via, req.namespace, tuple(sorted(req.labels.items())), vhost), objects,
                     lambda: find_filter_context(objects, req, vhost))


def _waypoint_context(objects: list[dict], vs: dict) -> tuple[dict | None, dict[str, dict], str | None]:
    """Ambient target: the host's context from the route table in a waypoint's TrafficExtension (data
    written by ``compiler/luadata.py``, read back with LuaJIT), the route patches the sidecar target
    would have (each llmc route names itself in its metadata: on a waypoint the filter reads the name
    of the route Envoy selected instead, the same; every other route of the host has the filter off),
    and the bundle the waypoint's filter carries."""
    names_ = [h.get("name", "") for h in vs["spec"].get("http", [])]
    for ext in objects:
        if ext["kind"] != TRAFFIC_EXTENSION:
            continue
        code = ext["spec"]["lua"]["inlineCode"]
        if not code.startswith(WRAP_HEAD) or WRAP_TAIL not in code:
            continue
        bundle, rest = code[len(WRAP_HEAD):].split(WRAP_TAIL, 1)
        # the table starts right after the call (no string of the table can come before it)
        table_text = rest[rest.index(TABLE_CALL + "{contexts=") + len(TABLE_CALL):].rstrip().removesuffix(")")
        table = _plain(_runtime(None).lua.execute("return " + table_text))
        routes = route_index(table.get("contexts") or [])
        index = next((routes[n] for n in names_ if n in routes), None)
        if index is None:
            continue
        patches = {n: {"metadata": {"filter_metadata": {FILTER_NAME: {"route": n}}}} if routes.get(n) == index
                   else {"typed_per_filter_config": {FILTER_NAME: {"disabled": True}}} for n in names_}
        return {**table["contexts"][index - 1], "protocols": table["protocols"]}, patches, bundle
    return None, {}, None


def _plain(value: Any) -> Any:
    """A Lua data table to JSON-like Python: a sequence 1..n becomes a list."""
    if hasattr(value, "items") and not isinstance(value, dict):
        items = {k: _plain(v) for k, v in value.items()}
        if items and all(isinstance(k, int) for k in items) and sorted(items) == list(range(1, len(items) + 1)):
            return [items[i] for i in range(1, len(items) + 1)]
        return items
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _route_metadata(route_patches: dict[str, dict]) -> dict[str, dict]:
    """Each route's llmc route metadata, once per (remembered) set of route patches."""
    return _remember(_METADATA, (), route_patches, lambda: {
        name: ((v.get("metadata") or {}).get("filter_metadata") or {}).get(FILTER_NAME, {})
        for name, v in route_patches.items()})


_RUNTIMES: dict[str, _Runtime] = {}


def _runtime(source: str | None) -> _Runtime:
    """The runtime of a bundle (at most 8 kept; a render emits a few distinct bundles). ``None`` (no
    llmc filter applies to the proxy, e.g. explaining a partial set of objects): every module."""
    source = source if source is not None else lua_source()
    if source not in _RUNTIMES:
        if len(_RUNTIMES) >= 8:
            _RUNTIMES.clear()
        _RUNTIMES[source] = _Runtime(source)
    return _RUNTIMES[source]


_SOURCES: dict[tuple, tuple[Any, Any]] = {}


def _filter_sources(objects: list[dict], req: Request) -> tuple[str | None, dict[str, str]]:
    """find_filter_sources, remembered per objects list and caller."""
    return _remember(_SOURCES, (req.via, req.namespace, tuple(sorted(req.labels.items()))), objects,
                     lambda: find_filter_sources(objects, req))


def _py(value: Any) -> Any:
    """Lua tables to plain Python (string keys → dict)."""
    if hasattr(value, "items") and not isinstance(value, dict):
        return {k: _py(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def explain(objects: list[dict], req: Request, seed: int | None = None, provider: str | None = None) -> dict:
    """The explanation as data (``-o json``); :func:`format_text` prints it for people."""
    vs = find_virtualservice(objects, req)
    vs_ns = vs["metadata"].get("namespace", "default")
    # HTTP/1.1's Host is Envoy's :authority (req.host): a `host` among the headers is not another header
    headers = {k.lower(): v for k, v in req.headers.items() if k.lower() != "host"}
    headers.update({":method": req.method, ":path": req.path, ":authority": req.host})
    if req.body and "content-length" not in headers:
        headers["content-length"] = str(len(req.body))
    first, skipped = select(vs, headers, req)
    out: dict[str, Any] = {"virtual_service": f"{vs_ns}/{vs['metadata']['name']}", "proxy": describe_proxy(req),
                           "not_matched": [{"route": n, "why": w} for n, w in skipped]}
    if first is None:
        out["result"] = {"status": 404, "by": "envoy", "body": "", "reason": "no route of the host matches"}
        return out
    out["route"] = first.get("name", "")
    fqdn = vs["spec"]["hosts"][0]
    context, route_patches = _filter_context(objects, req, f"{_fqdn(fqdn, vs_ns, req.cluster_domain)}:{req.port}")
    waypoint_source = None
    if context is None and not route_patches:
        context, route_patches, waypoint_source = _waypoint_context(objects, vs)
    lua_disabled = ((route_patches.get(out["route"]) or {}).get("typed_per_filter_config") or {}).get(
        FILTER_NAME, {}).get("disabled")
    if context is None or lua_disabled:
        out["filter"] = "not run on this route"
        out["result"] = _envoy_result(first, headers, req)
        return out
    downstream, upstream_sources = _filter_sources(objects, req)
    rt = _runtime(waypoint_source or downstream).prepare(seed, provider)
    secrets = _literal_keys(context, route_patches)
    route_metadata = _route_metadata(route_patches)

    def reselect(lua_headers) -> str | None:
        current = {k: v for k, v in lua_headers.items()}
        http, _ = select(vs, current, req)
        return http.get("name", "") if http is not None else None

    lua_req = rt.table({"headers": dict(headers), "body": req.body or None, "route_name": out["route"]})
    lua_req.context, lua_req.route_metadata = rt.frozen(context), rt.frozen(route_metadata)
    lua_req.select = reselect
    h = rt.handle.new(lua_req)
    rt.lua.globals().envoy_on_request(h)
    out["rule"] = _py(h.dynamic_metadata).get("llmc:rule")
    out["candidates"] = _candidates(context, out["rule"])
    final_headers = _py(h.headers_map)
    final_route_name = h.current_route
    if h.response is not None:
        resp = h.response
        out["result"] = {"status": int(resp.headers[":status"]), "by": "llmc filter",
                         "body": _mask(resp.body, secrets)}
        return out
    final_http = next((r for r in vs["spec"]["http"] if r.get("name") == final_route_name), first) \
        if h.cleared else first
    out["final_route"] = final_http.get("name", "")
    out["provider"] = _py(h.dynamic_metadata).get("llmc:provider")
    key_id = _py(h.dynamic_metadata).get("llmc:api_key_id")
    if key_id is not None:  # several keys: which one (its index, never the key; docs/api-keys.md)
        out["api_key_id"] = key_id
    if final_http.get("directResponse") is not None:
        out["result"] = _envoy_result(final_http, final_headers, req)
        return out
    out["retries"] = final_http.get("retries") or "Istio's default (2 retries on connect-failure, refused-stream, " \
                                                  "unavailable, cancelled, retriable-status-codes)"
    policy = ((route_patches.get(out["final_route"]) or {}).get("route") or {}).get("retry_policy") or {}
    if policy.get("retriable_status_codes") and not _py(h.dynamic_metadata).get("llmc:failover"):
        # retryKeysOn (docs/api-keys.md): the route patch for Istio >= 1.31 proxies replaces the policy
        out["key_retry"] = {"on": policy["retriable_status_codes"], "retries": policy.get("num_retries")}
    limits = request_limits(objects, route_patches.get(out["final_route"], {}), final_headers,
                            _py(h.dynamic_metadata), _caller(req))
    if limits:
        out["limits"] = limits
    if _py(h.dynamic_metadata).get("llmc:failover"):
        # the router's body: the first try's when the downstream filter shaped it (llmc.failover)
        routed = _text(h)
        out["attempts"] = _attempts(upstream_sources, objects, final_http, route_patches.get(out["final_route"], {}),
                                    final_headers, routed.encode() if routed is not None else req.body, secrets,
                                    _py(h.dynamic_metadata))
        out["upstream"] = out["attempts"][0]
        return out
    out["upstream"] = _upstream(objects, final_http, final_headers, _text(h), secrets)
    return out


def _caller(req: Request) -> str:
    """The caller's service cluster, as Istio sets it (``<app label>.<namespace>``): the value of a
    ``sourceWorkload`` key part."""
    if req.via != "mesh":
        return f"<the service cluster of gateway {req.via}'s pods>"
    app = req.labels.get("app") or req.labels.get("app.kubernetes.io/name")
    return f"{app}.{req.namespace}" if app else f"<workload>.{req.namespace}"


def _attempts(sources: dict[str, str], objects: list[dict], http: dict, patch: dict, headers: dict[str, str],
              body: bytes, secrets: list[str], metadata: dict) -> list[dict]:
    """A failover route's tries, in order: each shaped by the upstream filter of its provider's
    cluster (the router's upstream filter bundle, with the try's provider from the route's context), on the original client
    body and on the request headers as the previous try left them (Envoy shares the header map; the
    route's header removals apply once, before the first try), with the stream's dynamic metadata
    the downstream filter set (upstream filters see the downstream stream info)."""
    per_filter = patch.get("typed_per_filter_config") or {}
    retries = http.get("retries") or {}
    tries = 1 + int(retries.get("attempts", 0))
    remove = set(((http.get("headers") or {}).get("request") or {}).get("remove") or [])
    shared = {k: v for k, v in headers.items() if k not in remove}
    ctx = (per_filter.get(UPSTREAM_FILTER) or {}).get("filter_context")
    out = []
    for n, dest in enumerate(http["route"][:tries], 1):
        d = dest["destination"]
        if ctx is None:
            out.append({"cluster": d["host"], "error": "no upstream filter context on this route"})
            continue
        rt = _runtime(sources.get(UPSTREAM_FILTER))
        # Envoy numbers the tries in x-envoy-attempt-count (include_request_attempt_count)
        lua_req = rt.table({"headers": {**shared, "x-envoy-attempt-count": str(n)}, "body": body or None,
                            "route_name": "", "route_metadata": {}})
        lua_req.context = rt.frozen(ctx)
        h = rt.handle.new(lua_req)
        for k, v in metadata.items():
            h.dynamic_metadata[k] = v
        rt.lua.globals().envoy_on_request(h)
        # the stream's metadata is shared by the tries too: e.g. the keys a provider's earlier tries
        # used (docs/failover.md, "The next key before the next provider")
        metadata = _py(h.dynamic_metadata)
        shared = {k: v for k, v in _py(h.headers_map).items() if k != "x-envoy-attempt-count"}
        one = {"route": [dest]}
        up = _upstream(objects, one, {**shared, ":authority": shared.get(":authority", d["host"])}, _text(h), secrets)
        up["headers"]["host"] = shared.get(":authority", d["host"])
        up["url"] = up["url"].split("://", 1)[0] + "://" + shared.get(":authority", d["host"]) + shared.get(":path", "/")
        out.append(up)
    return out


def _text(h: Any) -> str | None:
    """The handle's body as text (lupa decodes Lua strings as UTF-8; a body that is not UTF-8 was
    refused by the filter, so this only guards the printout)."""
    try:
        return h.body_text
    except UnicodeDecodeError as exc:
        return exc.object.decode("utf-8", "replace")


def _fqdn(host: str, ns: str, domain: str) -> str:
    return host if "." in host or host == "*" else f"{host}.{ns}.svc.{domain}"


def _candidates(context: dict, rule_id: str | None) -> list[dict]:
    if not rule_id:
        return []
    rule = rule_id.rsplit("/", 1)[-1]
    backends = (context.get("rules") or {}).get(rule, {}).get("backends", [])
    total = sum(b["weight"] for b in backends) or 1
    return [{"provider": b["provider"], "weight": b["weight"], "share": round(b["weight"] / total, 4)}
            for b in backends]


def _literal_keys(context: dict, route_patches: dict[str, dict]) -> list[str]:
    """Every literal key the proxy holds for this virtual host: the first choices' (the virtual host's
    context) and every failover try's (the upstream-filter contexts on the failover routes)."""
    backends = [b for r in (context.get("rules") or {}).values() for b in r.get("backends", [])]
    for patch in route_patches.values():
        for name, per_filter in (patch.get("typed_per_filter_config") or {}).items():
            if name == UPSTREAM_FILTER:
                fctx = (per_filter or {}).get("filter_context") or {}
                backends.extend(fctx.get("tries") or [])
                if fctx.get("key_retry"):  # a key-retry route's backend (docs/api-keys.md)
                    backends.append(fctx["key_retry"])
    keys = [k for b in backends for k in [b, *(b.get("keys") or ())]]  # several keys: each entry's
    return sorted({k["api_key"] for k in keys if k.get("api_key")}, key=len, reverse=True)


def _mask(text: str | None, secrets: list[str]) -> str | None:
    if text is None:
        return None
    for s in secrets:
        text = text.replace(s, "***")
    return text


def _envoy_result(http: dict, headers: dict[str, str], req: Request) -> dict:
    dr = http.get("directResponse")
    if dr is not None:
        return {"status": dr["status"], "by": "envoy (direct response)", "body": (dr.get("body") or {}).get("string", "")}
    return {"status": None, "by": "envoy", "reason": "forwarded without llmc shaping"}


def _upstream(objects: list[dict], http: dict, headers: dict[str, str], body: str | None,
              secrets: list[str]) -> dict:
    (dest,) = http["route"]
    d = dest["destination"]
    host, port = d["host"], d.get("port", {}).get("number", 80)
    tls = _tls(objects, host, port)
    set_headers = ((dest.get("headers") or {}).get("request") or {}).get("set") or {}
    remove = ((http.get("headers") or {}).get("request") or {}).get("remove") or []
    final = {k: v for k, v in headers.items() if k not in remove and not k.startswith(":")}
    authority = set_headers.get("host", headers.get(":authority"))
    final = {k: _mask(v, secrets) or "" for k, v in sorted(final.items())}
    scheme = "https" if tls else "http"
    return {"method": headers.get(":method"), "url": f"{scheme}://{authority}{headers.get(':path', '/')}",
            "cluster": f"outbound|{port}|{d.get('subset', '')}|{host}", "headers": {"host": authority, **final},
            "body": _mask(body, secrets)}


def _tls(objects: list[dict], host: str, port: int) -> bool:
    for dr in objects:
        if dr["kind"] == DESTINATION_RULE and dr["spec"]["host"] == host:
            for level in (dr["spec"].get("trafficPolicy") or {}).get("portLevelSettings", []):
                if level.get("port", {}).get("number") == port and (level.get("tls") or {}).get("mode") == "SIMPLE":
                    return True
    return False


# ------------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------------

#: what the internal headers mean, for the text trace: a route that needs one is passed over in
#: Istio's first pass and may well be the one the filter selects afterwards
_SET_BY_FILTER = {**{f.header: f"the filter sets it from the body's {f.name}, then Envoy selects again"
                     for f in names.BODY_FIELDS.values()},
                  names.ROUTING_HEADER: "the filter sets it after its weighted pick, then Envoy selects again"}


def _passed_over(why: str) -> str:
    for header, meaning in _SET_BY_FILTER.items():
        if why.startswith(f"header {header}: absent"):
            return f"not yet — {header} is absent ({meaning})"
    return f"no match — {why}"


def format_text(x: dict) -> str:
    lines = [f"proxy: {x['proxy']}", f"virtual service: {x['virtual_service']}"]
    if x.get("not_matched"):
        lines.append("Istio's first route selection (before the llmc filter runs):")
    for skipped in x.get("not_matched", []):
        lines.append(f"  route {skipped['route']}: {_passed_over(skipped['why'])}")
    if "route" in x:
        route = x["route"]
        if route.endswith("/*nomatch"):
            lines.append(f"entry route: {route} (llmc's catch-all: no rule matched before the filter; "
                         "the filter decides the rule below)")
        else:
            lines.append(f"matched route: {route}")
    if x.get("filter"):
        lines.append(f"llmc filter: {x['filter']}")
    if x.get("rule"):
        lines.append(f"rule: {x['rule']}")
    if x.get("candidates"):
        lines.append("candidates: " + ", ".join(f"{c['provider']} (weight {c['weight']}, {c['share']:.0%})"
                                                for c in x["candidates"]))
    if x.get("provider"):
        lines.append(f"provider: {x['provider']} (route {x.get('final_route')})")
    if x.get("api_key_id") is not None:
        lines.append(f"api key: #{x['api_key_id']} of the provider's list (llm_api_key_id)")
    if x.get("key_retry"):
        on = ", ".join(str(c) for c in x["key_retry"]["on"])
        lines.append(f"key retry: on {on} the provider's next unused key, up to {x['key_retry']['retries']} "
                     "more tries (Istio >= 1.31 proxies)")
    elif x.get("attempts"):
        lines.append(f"failover: {len(x['attempts'])} tries in order (route {x.get('final_route')})")
    if "upstream" in x:
        up = x["upstream"]
        lines.append(_retries_line(x))
        lines.append(f"upstream request: {up['method']} {up['url']}  [{up['cluster']}]")
        lines += [f"  {k}: {v}" for k, v in up["headers"].items()]
        if up["body"] is not None:
            lines.append(f"  body: {up['body']}")
    if x.get("limits"):
        lines.append("limits and budgets (checked before forwarding, charged when the stream is done):")
        for lim in x["limits"]:
            lines.append(f"  {lim['limit']}: {lim['budget']}")
            lines.append(f"    descriptor: {lim['descriptor']}")
            lines.append(f"    charge: {lim['charge']}")
            lines.append(f"    charged: {lim['charged']}")
    for i, up in enumerate(x.get("attempts", [])[1:], start=2):
        lines.append(f"try {i} if the previous one fails: {up.get('method')} {up.get('url')}  [{up.get('cluster')}]")
        lines += [f"  {k}: {v}" for k, v in up.get("headers", {}).items()]
        if up.get("body") is not None:
            lines.append(f"  body: {up['body']}")
    if "result" in x:
        r = x["result"]
        lines.append(f"client gets: {r.get('status')} from {r['by']}" + (f" — {r['reason']}" if r.get("reason") else ""))
        if r.get("body"):
            lines.append(f"  body: {r['body']}")
    return "\n".join(lines) + "\n"


def _retries_line(x: dict) -> str:
    """Istio's retry policy; for a failover rule also how it relates to the rule's ``retries.attempts``
    (Istio counts retries after the first try; llmc's ``attempts`` counts every try)."""
    retries = x["retries"]
    if not isinstance(retries, dict):
        return f"retries: {retries}"
    text = f"retries (Istio's retry policy): {json.dumps(retries)}"
    if len(x.get("attempts", [])) > 1:
        tries = 1 + int(retries.get("attempts", 0))
        text += (f" — {tries} tries in all: Istio's attempts count the retries after the first try, "
                 "the rule's retries.attempts counts every try")
    return text


__all__ = ["ExplainError", "Request", "explain", "format_text"]
