"""EnvoyFilters: the Lua filter once per namespace, and per-route Lua context per virtual host.

* ``llmc-filter`` (one per namespace, or ``llmc-gateway-filter-*`` per gateway namespace and
  selector) inserts the Lua filter ``llmc.lua`` before the router of the outbound HTTP listener of
  every port llmc routes on (gateways: every HTTP listener of the selected pods). It carries the Lua source once and has no
  default script, so it does nothing on routes without llmc's per-route config (no buffering, no
  header changes for any other traffic). ``clear_route_cache: false``: the script clears the route
  cache itself, exactly once, after it set the routing header (facts notes §1.5).
* ``llmc-route-*`` / ``llmc-provider-*`` (one per virtual host) MERGE a ``LuaPerRoute`` with the
  virtual host's context into the virtual host istiod builds for the VirtualService
  (``<fqdn>:<port>``), and raise its request buffer limit to the largest ``maxRequestBytes`` of
  its providers. One context per virtual host keeps each rule's data once, however many routes
  the rule becomes. A route with host ``*`` on a gateway shares its Envoy virtual host (``*:<port>``)
  with every other VirtualService with ``*`` on that Gateway, other teams' included: there the
  context and the buffer limit go on llmc's own routes (HTTP_ROUTE), so other routes of the virtual
  host carry no LuaPerRoute and the filter never touches them.

The per-route context is built by :func:`lua_context`, the one serializer between the IR and the
Lua program; the Lua reads it with ``filterContext()`` (a protobuf Struct, so it is data, never code).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

from .. import luabundle, names, protocols
from ..constants import FILTER_NAME
from ..ir import Backend, Program, RateLimitService, Rule, VirtualHost
from ..keys import key_context
from ..protocols import PROTOCOLS, credential_headers
from ..telemetry import gen_ai_provider_name
from .common import EnvoyPlacement, envoy_placements, metadata, rule_route_names
from .ratelimit import local_reply as rate_limit_reply
from .ratelimit import mark_usage, rate_limit_filter, with_rate_limits

SOURCE_NAME = "llmc"
LUA_TYPE = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
LUA_PER_ROUTE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute"
#: The upstream Lua filter of failover tries: one in the router of each listener llmc's filter is
#: on (``upstream_http_filters``), shared by every provider cluster (docs/failover.md).
UPSTREAM_FILTER = "llmc.upstream"
ROUTER = "envoy.filters.http.router"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
#: ``match.proxy.proxyVersion`` of failover patches: Istio 1.31 or newer (Envoy 1.39's
#: ``refresh_cluster_on_retry``); istiod matches it against the proxy's ISTIO_VERSION.
FAILOVER_PROXY_VERSION = r"^1\.(3[1-9]|[4-9][0-9])([.-].*)?$"


def lua_source(formats: Iterable[str] | None = None, failover: bool = True, keys: bool = False) -> str:
    """The Lua bundle (compiler/luabundle.py) of a filter whose providers speak ``formats`` (None:
    every module, what the Lua unit tests load)."""
    if formats is None:
        return luabundle.bundle()
    return luabundle.bundle(luabundle.modules_for(formats, failover, keys))


#: Room the shaped body may take beyond ``maxRequestBytes`` (docs/data-plane.md, "Request size limits"): the
#: filter adds ``model``/``stream``/``stream_options`` (later steps translate bodies too), and Envoy
#: answers a body over its buffer limit with a plain-text 413 the client cannot parse.
MIN_HEADROOM = 64 * 1024


def buffer_limit(max_request_bytes: int) -> int:
    """Envoy's per-route request buffer limit for a virtual host whose largest limit is given."""
    return max_request_bytes + max(MIN_HEADROOM, max_request_bytes // 4)


_KEYS = ("api_key", "api_key_file", "keys", "key_order", "key_selection")


def _later_validations(rule: Rule, listed: tuple[Backend, ...]) -> list[Backend]:
    """One backend (the first in failover order) of each kind of validation a later try needs
    (``Driver.validation_key``: the body format, and for a translated one whether the model comes from
    the client), besides the first choice the filter picks (``listed``). When the first choices
    differ in it, the ones not picked are later tries, and which is picked is known only per request:
    every kind of the rule is listed then (the picked one's is validated twice, which costs only there)."""
    def key(b: Backend) -> tuple:
        return protocols.get(b.provider.protocol).validation_key(b.config)

    firsts = {key(b) for b in listed}
    seen = firsts if len(firsts) == 1 else set()
    out = []
    for b in rule.backends:
        k = key(b)
        if k not in seen:
            seen.add(k)
            out.append(b)
    return out


def _backend_context(b: Backend, secrets_dir: str, pin: str | None) -> dict:
    p, c = b.provider, b.config  # (a failover rule's backends also carry their priority)
    driver = protocols.get(p.protocol)
    ctx: dict = {"provider": p.name, "protocol": p.protocol, "host": p.host, "path": driver.endpoint(p.path, c),
                 "weight": b.weight, "max_body": p.max_request_bytes}
    gen_ai = gen_ai_provider_name(driver.gen_ai_name, p.host, p.name)
    if gen_ai != p.name:  # the filter's default is the LLMProvider's name (a waypoint's Lua is size-capped)
        ctx["gen_ai_provider"] = gen_ai
    ctx.update(driver.filter_settings(c))
    if c.model is not None:
        ctx["model"] = c.model
    if c.stream is not None:
        ctx["stream"] = c.stream
    if c.stream is True and c.include_usage:
        ctx["include_usage"] = True
    ctx.update(key_context(c, secrets_dir))  # one key, or several (compiler/keys.py)
    if pin is not None:
        ctx["pin"] = pin
    if p.base_path is not None:
        ctx["base_path"] = p.base_path
        query = driver.base_query(c, p.base_path)
        if query is not None:
            ctx["base_query"] = query
    return ctx


def lua_context(vh: VirtualHost, secrets_dir: str, rate_limit: RateLimitService | None = None) -> dict:
    """The Lua filter's data for one virtual host: every rule once, and which route is which rule.

    Envoy hands the filter the virtual host's context on every route of it; the filter looks up
    its rule by the matched route's name (``routes``: the rules' own routes). Each backend of a
    weighted rule names its pinned route (``pin``), which is also the value of the internal
    routing header ``pin_header`` that selects it. ``protocols`` holds, once per virtual host, the
    record (auth header and prefix, fixed headers, usage format) of each provider API its backends
    speak; each backend names its ``protocol``. ``buffer_limit`` is the largest body the filter
    may hand to Envoy. ``id`` is a digest of everything else: the Lua caches its prepared form by
    id, parsing each context once per worker, never serving a stale one.
    """
    routes: dict[str, str] = {}
    rules: dict[str, dict] = {}
    for rule in vh.rules:
        entry, pinned = rule_route_names(vh, rule)
        routes[entry] = rule.name
        # A failover rule lists only its first choices: the filter picks one; tries are shaped upstream.
        listed = rule.first_choices if rule.retries is not None else rule.backends
        rules[rule.name] = {"backends": [_backend_context(b, secrets_dir, pinned.get(b.provider.name))
                                         for b in listed]}
        if rule.retries is not None:
            rules[rule.name]["failover"] = True
            # any try may be sent the body: the rule's limit is its smallest provider's, checked once
            # before the first try (a backup's try never carries a body over its maxRequestBytes)
            limit = min(b.provider.max_request_bytes for b in rule.backends)
            for ctx in rules[rule.name]["backends"]:
                ctx["max_body"] = limit
            # a later try's provider of each kind of validation no first choice has (no keys): the
            # filter validates the request for every try before the first one is sent
            later = [{k: v for k, v in _backend_context(b, secrets_dir, None).items() if k not in _KEYS}
                     for b in _later_validations(rule, listed)]
            if later:
                rules[rule.name]["later"] = later
        mark_usage(rules[rule.name], rule, rate_limit)
    by_body = body_context(vh)
    used = sorted({b.provider.protocol for r in vh.rules for b in r.backends})
    failover: dict = {"order_header": names.ORDER_HEADER} if any(r.retries for r in vh.rules) else {}
    body = {
        **failover,
        "route": f"{vh.namespace}/{vh.label}",
        "pin_header": names.ROUTING_HEADER,
        "protocols": {name: PROTOCOLS[name].context() for name in used},
        "buffer_limit": buffer_limit(max_request_bytes(vh)),
        "max_body": max_request_bytes(vh),
        "routes": routes,
        "rules": rules,
        **by_body,
    }
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    return {"id": digest[:16], **body}


def body_context(vh: VirtualHost) -> dict:
    """For a host whose rules match on body fields: the filter reads the body first, exposes each
    field in its internal header (``<field>_header``; values longer than ``<field>_limit`` match
    nothing) and selects the route once; ``nomatch`` is the route Envoy selects when no rule matches
    then. ``body_fields`` lists the fields, unless the model is the only one (the filter's default)."""
    if not vh.body_fields:
        return {}
    out: dict = {}
    for field in vh.body_fields:
        out[f"{field}_header"] = names.BODY_FIELDS[field].header
        out[f"{field}_limit"] = names.BODY_FIELDS[field].limit
    out["nomatch"] = names.special_route(vh.namespace, vh.label, "nomatch")
    if vh.body_fields != ("model",):
        out["body_fields"] = list(vh.body_fields)
    return out


def tries_context(vh: VirtualHost, rule: Rule, first: Backend, secrets_dir: str) -> dict:
    """What the upstream filter needs to shape each try of ``rule``'s pinned route for ``first``:
    ``tries``, one backend per try in the order Envoy takes them (the route's weighted clusters,
    ``rule.failover_order(first)``); the filter picks the one of the try it runs for by Envoy's
    ``x-envoy-attempt-count`` (docs/failover.md, "One upstream filter for every provider")."""
    order = rule.failover_order(first)
    # the Host of each try: Envoy applies a weighted cluster's host rewrite to the first try only
    tries = [{**_backend_context(b, secrets_dir, None), "authority": b.host_header} for b in order]
    keyed: dict = {}
    if any(Rule.key_slots(b) > 1 for b in order):
        # the next key before the next provider (docs/failover.md): a backend with retryKeysOn owns
        # one try per key; `slots` names each try's backend (1-based, in `tries`), up to the tries
        # the rule allows, and `retry_on` the statuses the rule's retryOn retries (5xx: every one)
        for t, b in zip(tries, order, strict=True):
            if Rule.key_slots(b) > 1:
                t["key_retry"] = list(b.config.key_retry)
        index = {id(b): i + 1 for i, b in enumerate(order)}
        assert rule.retries is not None
        keyed = {"slots": [index[id(b)] for b, _ in rule.try_slots(first)][: rule.allowed_tries(first)],
                 "retry_on": {"5xx": "5xx" in rule.retries.retry_on,
                              "statuses": [429] if "429" in rule.retries.retry_on else []}}
    body = {"route": f"{vh.namespace}/{vh.label}", "rule": rule.name, "tries": tries, **keyed,
            "protocols": {p: PROTOCOLS[p].context() for p in sorted({b.provider.protocol for b in order})},
            # the header map is shared by the tries: every header an earlier try of this rule may
            # have set a key in (each protocol's, every backend's authHeader) is removed first
            "credential_headers": credential_headers(rule.auth_headers),
            "internal_headers": list(names.INTERNAL_HEADERS)}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    return {"id": digest[:16], **body}


def failover_routes(vh: VirtualHost, secrets_dir: str) -> list[dict]:
    """The failover patch of each pinned route of a failover rule (applied to Istio >= 1.31 proxies
    only): the route marked for the filter (route metadata for the request path, the internal
    response header ``names.FAILOVER_HEADER`` for the response path), the order header as the
    weighted clusters' random value, clusters refreshed on retry, and the upstream filter's context."""
    out = []
    for rule in vh.rules:
        if rule.retries is None:
            continue
        _, pinned = rule_route_names(vh, rule)
        for first in rule.pinned:
            name = pinned[first.provider.name]
            route: dict = {}
            if len(rule.backends) > 1:
                route["weighted_clusters"] = {"header_name": names.ORDER_HEADER}
            if rule.retries.attempts > 1:
                route["retry_policy"] = {"refresh_cluster_on_retry": True}
            out.append({"name": name, "value": {
                "metadata": {"filter_metadata": {FILTER_NAME: {"route": name, "failover": True}}},
                **({"route": route} if route else {}),
                "response_headers_to_add": [{"header": {"key": names.FAILOVER_HEADER, "value": "1"},
                                             "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
                "typed_per_filter_config": {UPSTREAM_FILTER: {
                    "@type": LUA_PER_ROUTE_TYPE, "name": SOURCE_NAME,
                    "filter_context": tries_context(vh, rule, first, secrets_dir)}}}})
    return out


def _key_retry_sends(vh: VirtualHost) -> list[tuple[str, Rule, Backend]]:
    """(route name, rule, backend) of each route that sends to a backend with retryKeysOn: the rule's
    route (one backend) or each pinned route (weighted). Failover rules never: their tries carry
    the key slots (``tries_context``)."""
    out = []
    for rule in vh.rules:
        if rule.retries is not None:
            continue
        entry, pinned = rule_route_names(vh, rule)
        sends = [(pinned[b.provider.name], b) for b in rule.backends if b.provider.name in pinned] if pinned \
            else [(entry, rule.backends[0])]
        out += [(name, rule, b) for name, b in sends if b.config.key_retry]
    return out


def key_retry_routes(vh: VirtualHost, secrets_dir: str) -> list[dict]:
    """The key-retry patch of each route that sends to a provider with ``retryKeysOn`` (applied to
    Istio >= 1.31 proxies only, like the failover patches; docs/api-keys.md): Envoy retries the
    request on those statuses, on the same cluster, at most once per other key (``num_retries``),
    besides Istio's default conditions; the upstream filter (llmc.upstream, in the router) sends each retry with a
    key the request has not used (its context: ``key_retry``, the backend with its keys)."""
    out = []
    for name, rule, b in _key_retry_sends(vh):
        body = {"route": f"{vh.namespace}/{vh.label}", "rule": rule.name,
                "key_retry": _backend_context(b, secrets_dir, None),
                "protocols": {b.provider.protocol: PROTOCOLS[b.provider.protocol].context()}}
        digest = hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
        out.append({"name": name, "value": {
            "route": {"retry_policy": {
                "retry_on": KEY_RETRY_ON, "retriable_status_codes": list(b.config.key_retry),
                "num_retries": b.config.key_count - 1}},
            "typed_per_filter_config": {UPSTREAM_FILTER: {
                "@type": LUA_PER_ROUTE_TYPE, "name": SOURCE_NAME, "filter_context": {"id": digest[:16], **body}}}}})
    return out


#: Envoy's retry conditions of a key-retry route: Istio's default ones (a route without VirtualService
#: retries has them) and the statuses of retryKeysOn
KEY_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"


def several_keys(vh: VirtualHost) -> bool:
    """Whether a provider of ``vh`` has several keys (its filters then carry llmc.keys)."""
    return any(b.config.key_count > 1 for r in vh.rules for b in r.backends)


def failover_formats(vh: VirtualHost) -> set[str]:
    """The body formats of every provider a failover rule (or a key-retry route) of ``vh`` may send a
    try to (the upstream filter carries their translators)."""
    tries = {PROTOCOLS[b.provider.protocol].format for r in vh.rules if r.retries for b in r.backends}
    return tries | {PROTOCOLS[b.provider.protocol].format for _, _, b in _key_retry_sends(vh)}


def route_patches(vh: VirtualHost, shared_context: dict | None = None) -> list[dict]:
    """One HTTP_ROUTE MERGE per route of the virtual host. Every route the filter may shape on carries
    its own name as route metadata (``llmc.lua``: ``route``), which the filter reads after it made
    Envoy select a route again (``streamInfo():routeName()`` keeps naming the first route). On the
    ``GET /v1/models`` route (a direct response) the filter is disabled. On a shared ``*`` virtual
    host (``shared_context``) each llmc route also carries the filter context and buffer limit, which
    elsewhere sit on the virtual host: other teams' routes there must stay untouched. A route whose
    requests all go to a translated provider (a pinned route, or the route of a one-backend rule) also
    adds the internal response header ``names.TRANSLATE_HEADER`` naming the body format, so the
    response path needs no metadata read."""
    out = []
    formats: dict[str, str] = {}
    for rule in vh.rules:
        entry, pinned = rule_route_names(vh, rule)
        sends = [(pinned[b.provider.name], b) for b in rule.backends if b.provider.name in pinned] if pinned \
            else [(entry, rule.backends[0])]
        if rule.retries is not None:
            sends = []  # any try may answer: the upstream filter marks the answer of a translated one
        formats.update({name: PROTOCOLS[b.provider.protocol].format for name, b in sends
                        if PROTOCOLS[b.provider.protocol].translated})
        out += [*pinned.values(), entry]
    if vh.body_fields:
        out.append(names.special_route(vh.namespace, vh.label, "nomatch"))
    per_route = {}
    if shared_context is not None:
        per_route = {"request_body_buffer_limit": buffer_limit(max_request_bytes(vh)),
                     "typed_per_filter_config": {FILTER_NAME: {"@type": LUA_PER_ROUTE_TYPE, "name": SOURCE_NAME,
                                                               "filter_context": shared_context}}}
    patches = []
    for r in out:
        value: dict = {"metadata": {"filter_metadata": {FILTER_NAME: {"route": r}}}, **per_route}
        if r in formats:
            value["response_headers_to_add"] = [{"header": {"key": names.TRANSLATE_HEADER, "value": formats[r]},
                                                 "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]
        patches.append({"name": r, "value": value})
    patches.append({"name": names.special_route(vh.namespace, vh.label, "models"),
                    "value": {"typed_per_filter_config": {FILTER_NAME: {"@type": LUA_PER_ROUTE_TYPE, "disabled": True}}}})
    return patches


def max_request_bytes(vh: VirtualHost) -> int:
    return max(b.provider.max_request_bytes for r in vh.rules for b in r.backends)


def _filter_name(context: str, selector: tuple[tuple[str, str], ...], what: str = "filter") -> str:
    base = f"{names.PREFIX}-{what}" if context == "SIDECAR_OUTBOUND" else f"{names.PREFIX}-gateway-{what}"
    return names.selector_name(base, selector)


def _vhost_filter_name(vh: VirtualHost, placement: EnvoyPlacement) -> str:
    if placement.context == "SIDECAR_OUTBOUND":
        return vh.object_name
    # In a gateway's namespace, next to the EnvoyFilters of other namespaces' routes.
    tag = names.short_hash(f"{vh.namespace}/{vh.object_name}@{placement.namespace}", 6)
    return names.cap(f"{vh.object_name}-{names.to_label(vh.namespace)}-{tag}")


def translate_envoyfilters(program: Program) -> list[dict]:
    if program.waypoint is not None:  # ambient: waypoints ignore EnvoyFilters; a TrafficExtension instead
        return []
    out = []
    filters: dict[tuple, dict] = {}
    for vh in program.vhosts:
        seen = set()
        for pl in envoy_placements(vh):
            key = (pl.namespace, pl.context, pl.selector, pl.port, pl.vhost)
            if key in seen:  # two Gateways of one namespace share the patch
                continue
            seen.add(key)
            f = filters.setdefault((pl.namespace, pl.context, pl.selector),
                                   {"ports": set(), "sources": set(), "shared": False, "formats": set(),
                                    "failover": False, "key_retry": False, "keys": False,
                                    "failover_formats": set()})
            f["formats"].update(PROTOCOLS[b.provider.protocol].format for r in vh.rules for b in r.backends)
            f["failover"] = f["failover"] or any(r.retries is not None for r in vh.rules)
            f["key_retry"] = f["key_retry"] or bool(_key_retry_sends(vh))
            f["keys"] = f["keys"] or several_keys(vh)
            f["shared"] = f["shared"] or vh.shared
            f["ports"].add(pl.port if pl.context == "SIDECAR_OUTBOUND" else None)
            f["sources"].update(vh.all_sources)
            context_data = lua_context(vh, program.secrets_dir, program.rate_limit)
            out.append({
                "metadata": metadata(_vhost_filter_name(vh, pl), pl.namespace, vh.all_sources),
                "selector": [{"name": k, "value": v} for k, v in pl.selector],
                "kind": "vhost", "context": pl.context,
                "vhost": pl.vhost, "port": pl.port,
                "buffer_limit": buffer_limit(max_request_bytes(vh)),
                "context_data": context_data,
                "routes": with_rate_limits(route_patches(vh, context_data if vh.shared else None), vh,
                                           program.rate_limit),
                # `*` hosts: per-route context (the virtual host is shared with other teams' routes)
                "per_route": vh.shared,
                # patches for Istio >= 1.31 proxies only: failover, and retries with the next key
                "failover_routes": failover_routes(vh, program.secrets_dir) + key_retry_routes(vh, program.secrets_dir),
                # which try the upstream filter runs for: Envoy's x-envoy-attempt-count (Istio's default)
                "attempt_count": any(r.retries is not None for r in vh.rules),
                "proxy_version": FAILOVER_PROXY_VERSION,
                "filter_name": FILTER_NAME, "per_route_type": LUA_PER_ROUTE_TYPE,
                "source_name": SOURCE_NAME,
            })
            f["failover_formats"].update(failover_formats(vh))
    for (ns, context, selector), f in sorted(filters.items()):
        ports = sorted(f["ports"], key=lambda p: -1 if p is None else p)
        if f["failover"] or f["key_retry"]:
            # Failover tries and key retries (docs/api-keys.md): one upstream Lua filter in the router
            # of each listener, for every provider cluster (its own object: each stays far below
            # kubectl's 256 KiB, and a namespace with neither has none)
            out.append({
                "metadata": metadata(_filter_name(context, selector, "failover"), ns, sorted(f["sources"])),
                "selector": [{"name": k, "value": v} for k, v in selector],
                "kind": "upstream", "context": context, "ports": ports, "router": _upstream_view(f),
                "proxy_version": FAILOVER_PROXY_VERSION,
            })
        out.append({
            "metadata": metadata(_filter_name(context, selector), ns, sorted(f["sources"])),
            "selector": [{"name": k, "value": v} for k, v in selector],
            "kind": "filter", "context": context,
            # Sidecars: one patch per outbound listener port. Gateways: no port (istiod matches the
            # listener's target port there); the filter is inert on every other route.
            "ports": ports,
            "filter_name": FILTER_NAME, "lua_type": LUA_TYPE, "source_name": SOURCE_NAME,
            # each filter carries only the modules its rules need (compiler/luabundle.py)
            "lua_source": lua_source(sorted(f["formats"]), f["failover"], f["keys"]),
            "local_reply": not_found_reply() if f["shared"] else None,
            "proxy_version": FAILOVER_PROXY_VERSION,
            # token limits: Envoy's rate-limit filter after the Lua, and the HCM's 429 in OpenAI format
            "rate_limit": _rate_limit_view(program),
        })
    return out


def _upstream_view(f: dict) -> dict:
    """The router's upstream HTTP filters (Envoy runs them on every try of every route of the
    listener; the Lua acts only on routes carrying its per-route context, the failover routes)."""
    return {"name": ROUTER, "typed_config": {"@type": ROUTER_TYPE, "upstream_http_filters": [
        {"name": UPSTREAM_FILTER, "typed_config": {
            "@type": LUA_TYPE, "stat_prefix": "llmc_upstream",
            "source_codes": {SOURCE_NAME: {"inline_string": lua_source(sorted(f["failover_formats"]), True,
                                                                       f["keys"])}}}},
        {"name": "envoy.filters.http.upstream_codec", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"}}]}}


def _rate_limit_view(program: Program) -> dict | None:
    if program.rate_limit is None:
        return None
    return {"filter": rate_limit_filter(program.rate_limit),
            "hcm": {"name": HCM, "typed_config": {"@type": HCM_TYPE, "local_reply_config": {
                "mappers": rate_limit_reply(program.rate_limit)}}}}


HCM = "envoy.filters.network.http_connection_manager"
HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
NOT_FOUND_BODY = json.dumps({"error": {
    "message": "llmc: no route matches this request (no LLMRoute rule matches its host, path and headers)",
    "type": "invalid_request_error", "param": None, "code": "route_not_found"}}, separators=(",", ":"))


def not_found_reply() -> dict:
    """HCM ``local_reply_config`` for gateways serving a ``*`` LLMRoute: a JSON POST that matches no
    route at all (response flag ``NR``) gets an OpenAI-format 404 instead of Envoy's empty one. No
    route means no per-route config, so the Lua filter cannot answer it; a catch-all route in the
    VirtualService would shadow the routes of other teams' VirtualServices Istio merges after it.
    The mapper applies to the whole listener of the selected gateway pods, so it is narrowed to
    what OpenAI clients send (POST with a JSON body); other requests keep Envoy's reply."""
    return {"name": HCM, "typed_config": {"@type": HCM_TYPE, "local_reply_config": {"mappers": [{
        "filter": {"and_filter": {"filters": [
            {"response_flag_filter": {"flags": ["NR"]}},
            {"header_filter": {"header": {"name": ":method", "string_match": {"exact": "POST"}}}},
            {"header_filter": {"header": {"name": "content-type",
                                          "string_match": {"prefix": "application/json"}}}}]}},
        "body_format_override": {"text_format_source": {"inline_string": NOT_FOUND_BODY},
                                 "content_type": "application/json"}}]}}}
