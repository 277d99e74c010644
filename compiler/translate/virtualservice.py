"""VirtualService per virtual host: header rules, pinned provider routes, Host rewrite.

Shape (docs/design.md): a rule with one provider is one route to that provider. A weighted rule
becomes one *pinned* route per provider, followed by the rule's *entry* route (the rule's
conditions). A pinned route matches only the internal header ``x-llmc-provider: <its own route
name>`` (plus the rule's static conditions: port, gateways, source labels), never the headers the
rule matches on: the filter rewrites some of those (``authorization``, ``content-type``, ``:path``),
so a pinned route that repeated them could stop matching when Envoy re-selects the route. The Lua
filter on the entry route picks a provider by weight, sets the header, makes Envoy select the route
at once and checks it got that pinned route before it shapes anything. The entry route itself
answers 500 in case the filter did not run, so an unshaped request never leaves the proxy. Every
route removes the internal headers before the request goes upstream.

In egress-gateway mode the rules are bound to the egress Gateway instead of the sidecars (``mesh``),
and a second VirtualService sends the sidecars' traffic for the host to the egress gateway's
Service (mTLS, SNI = the host, Host set to the FQDN the gateway's virtual host is named by).
"""

from __future__ import annotations

import json

from .. import names, protocols
from ..ir import Backend, Match, Program, Rule, VirtualHost
from ..protocols import PROTOCOLS, auth_header, credential_headers
from .common import egress_subset, export_to, metadata, rule_route_names, waypoint_namespaces

NOT_SHAPED_BODY = json.dumps({"error": {
    "message": "llmc: the request was not shaped by the LLM filter (is the llmc EnvoyFilter applied "
               "to this workload?)",
    "type": "server_error", "param": None, "code": "llmc_filter_missing"}}, separators=(",", ":"))


def _match(m: Match, port: int, pin: str | None, gateway_map: dict[str, str], by_body: bool = False) -> dict | None:
    """A VirtualService match, or None when the match is for gateways this VirtualService does not serve.

    A body condition (``model``) becomes one on the internal header the filter sets from the body. With
    ``pin`` (a pinned route): on a host that routes by the body, the rule's conditions plus "the routing
    header lists ``pin``" (the filter picks a provider for every weighted rule, then makes Envoy select
    rule and provider at once, before it changes any other header); elsewhere the internal header
    instead of the rule's header conditions (docs/data-plane.md, "Weighted rules: pinning").
    """
    gateways: list[str] = []
    if m.gateways:
        gateways = sorted({gateway_map[g] for g in m.gateways if g in gateway_map})
        if not gateways:
            return None
    headers = [{"name": h.name, "match": {} if h.kind == "present" else {h.kind: h.value}} for h in m.headers]
    headers += [{"name": names.BODY_FIELDS[b.field].header, "match": {b.kind: b.value}} for b in m.body]
    if pin is not None and by_body:
        headers.append({"name": names.ROUTING_HEADER, "match": {"regex": names.pin_list_regex(pin)}})
    elif pin is not None:
        headers = [{"name": names.ROUTING_HEADER, "match": {"exact": pin}}]
    return {
        "uri": None, "method": None,
        "headers": sorted(headers, key=lambda h: h["name"]),
        "source_labels": [{"name": k, "value": v} for k, v in m.source_labels],
        "gateways": gateways,
        "port": port,
    }


def vhost_credential_headers(vh: VirtualHost) -> list[str]:
    """Every header a credential may travel in on this virtual host: each protocol's, and every
    ``authHeader`` its providers use."""
    return credential_headers(h for r in vh.rules for h in r.auth_headers)


def forward_removes(vh: VirtualHost, b: Backend) -> list[str]:
    """What the route of backend ``b`` removes from the request after the filter shaped it (Envoy's
    router applies it last): every internal header, and for a provider the platform holds a key for,
    every credential header but the one the filter set, so that no credential the client sent (its own
    key, or one for another provider) reaches it; and the client headers its driver keeps from a keyed
    provider (``Driver.keyed_removes``: Anthropic's ``anthropic-beta``, a beta feature opted into with
    the platform's key and bill). A keyless
    provider receives the client's own credentials (docs/failover.md, "Where features cross")."""
    remove = list(names.INTERNAL_HEADERS)
    if b.keyed:
        own = auth_header(b.provider.protocol, b.config.auth_header)
        remove += [h for h in vhost_credential_headers(vh) if h != own]
        remove += protocols.get(b.provider.protocol).keyed_removes
    return remove


def _forward(vh: VirtualHost, b: Backend) -> dict:
    p = b.provider
    return {"host": p.host, "port": p.service_port, "subset": None, "host_header": b.host_header, "timeout": p.timeout,
            "remove": forward_removes(vh, b)}


#: llmc's retry conditions → Istio ``retryOn`` items (a number is a retriable status code). Envoy has
#: no separate per-try-timeout condition: its ``reset`` covers per-try timeouts as well.
RETRY_ON = {"connect-failure": "connect-failure", "reset": "reset", "5xx": "5xx", "429": "429", "timeout": "reset"}


def _failover(vh: VirtualHost, rule: Rule, first) -> dict:
    """A failover rule's pinned route for its first choice ``first``: every backend as a weighted
    destination in failover order (the EnvoyFilter makes Envoy try them in this order; the weights
    only apply if that patch is missing, where the filter refuses the request anyway), and Istio's
    retry policy with attempts = retries (tries - 1)."""
    slots = rule.try_slots(first)  # a provider retrying with its next key owns one try per key
    weights = [1] * len(slots)
    weights[0] = 100 - (len(slots) - 1)  # Istio drops weight 0; the weights add up to 100
    timeouts = [b.provider.timeout for b, _ in slots if b.provider.timeout]
    retries = rule.retries
    assert retries is not None  # only failover rules get here
    return {
        "destinations": [{"host": b.provider.host, "port": b.provider.service_port, "weight": w,
                          "subset": names.key_subset(k), "host_header": b.host_header}
                         for (b, k), w in zip(slots, weights, strict=True)],
        "retries": {"attempts": rule.allowed_tries(first) - 1,
                    **({"perTryTimeout": retries.per_try_timeout} if retries.per_try_timeout else {}),
                    "retryOn": failover_retry_on(rule)},
        "timeout": max(timeouts, key=_seconds) if timeouts else None,
        # every credential header: each try sets its own (the upstream filter of its provider); and
        # the client headers a keyed backend's driver keeps from it (anthropic-beta): the tries share
        # the header map, so any keyed try of the rule removes them for all (a keyless one gets no key)
        "remove": [*names.INTERNAL_HEADERS, *vhost_credential_headers(vh),
                   *sorted({h for b in rule.backends if b.keyed for h in protocols.get(b.provider.protocol).keyed_removes})],
    }


def failover_retry_on(rule: Rule) -> str:
    """Istio's ``retryOn`` of a failover rule: the rule's conditions and, for the backends that retry
    with their next key, their ``retryKeysOn`` statuses (Envoy retries the union; the upstream filter
    marks an answer the rule's table does not retry as final, docs/failover.md)."""
    assert rule.retries is not None
    items = {RETRY_ON[c] for c in rule.retries.retry_on}
    items |= {str(s) for b in rule.backends if Rule.key_slots(b) > 1 for s in b.config.key_retry}
    return ",".join(sorted(items))


def _seconds(duration: str) -> float:
    import re

    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"([0-9.]+)(ms|s|m|h)", duration))


def _rule_routes(vh: VirtualHost, rule: Rule, port: int, gateway_map: dict[str, str]) -> list[dict]:
    def matches(pin: str | None) -> list[dict]:
        found = (_match(m, port, pin, gateway_map, bool(vh.body_fields)) for m in (rule.matches or (Match(),)))
        unique = []  # pinned: matches that differed only in headers are one match
        for m in found:
            if m is not None and m not in unique:
                unique.append(m)
        return unique

    if not matches(None):
        return []
    entry_name, pinned = rule_route_names(vh, rule)
    if not rule.weighted:
        return [{"name": entry_name, "matches": matches(None),
                 "forward": _forward(vh, rule.backends[0]), "direct_response": None}]
    routes = []
    for b in rule.pinned:
        route = {"name": pinned[b.provider.name], "matches": matches(pinned[b.provider.name]),
                 "forward": _forward(vh, b), "direct_response": None}
        if rule.retries is not None:
            route["forward"], route["failover"] = None, _failover(vh, rule, b)
        routes.append(route)
    routes.append({"name": entry_name, "matches": matches(None),
                   "forward": None, "direct_response": {"status": 500, "body": NOT_SHAPED_BODY}})
    return routes


def models_list(vh: VirtualHost) -> str:
    """The body of ``GET /v1/models`` on the host (OpenAI's list format): the ``exact`` model ids of
    its rules and the configured models of the rules' backends (other conditions ignored), each
    owned by the first backend of the first rule that names it; sorted by id."""
    owners: dict[str, str] = {}
    for rule in vh.rules:
        ids = [m.model.value for m in rule.matches if m.model is not None and m.model.kind == "exact"]
        ids += [b.config.model for b in rule.backends if b.config.model is not None]
        for model in ids:
            owners.setdefault(model, rule.backends[0].provider.name)
    data = [{"id": m, "object": "model", "created": 0, "owned_by": owners[m]} for m in sorted(owners)]
    return json.dumps({"object": "list", "data": data}, separators=(",", ":"), ensure_ascii=False)


#: istiod's route configurations allow direct-response bodies up to 1 MiB
#: (``max_direct_response_body_size_bytes``); the harness sets the same.
MAX_DIRECT_RESPONSE_BYTES = 1 << 20


def _special_routes(vh: VirtualHost, port: int) -> tuple[list[dict], list[dict]]:
    """(routes before the rules, routes after them): ``GET /v1/models`` answered by Envoy (the filter is
    disabled on that route), and on hosts that route by the body the route Envoy selects when no rule
    matches once the body's fields are known (the filter answers 404 there)."""
    def match(uri: str | None = None, method: str | None = None) -> dict:
        return {"uri": uri, "method": method, "headers": [], "source_labels": [], "gateways": [], "port": port}

    models = {"name": names.special_route(vh.namespace, vh.label, "models"),
              "matches": [match("/v1/models", "GET")], "forward": None,
              "direct_response": {"status": 200, "body": models_list(vh)}}
    after = []
    if vh.body_fields:
        after.append({"name": names.special_route(vh.namespace, vh.label, "nomatch"), "matches": [match()],
                      "forward": None, "direct_response": {"status": 500, "body": NOT_SHAPED_BODY}})
    return [models], after


def _rules_vs(vh: VirtualHost, name: str, gateways: list[str], port: int,
              gateway_map: dict[str, str]) -> dict:
    shown = [] if gateways == ["mesh"] else gateways
    before, after = _special_routes(vh, port)
    return {
        "metadata": metadata(name, vh.namespace, vh.all_sources),
        "host": vh.host,
        "gateways": shown,
        # gateway proxies see the VirtualServices exported to their own namespace (where the pods
        # run: placements), besides the Gateway resource's namespace
        "export_to": export_to(vh.namespace, {g.split("/", 1)[0] for g in gateways if g != "mesh"}
                               | {p.namespace for p in vh.placements if p.gateway in gateways}),
        "routes": before + [r for rule in vh.rules for r in _rule_routes(vh, rule, port, gateway_map)] + after,
        "internal_headers": list(names.INTERNAL_HEADERS),
    }


def _for_waypoint(view: dict, vh: VirtualHost, program: Program) -> None:
    """Ambient target: what the sidecar target's EnvoyFilter adds to routes, where a VirtualService can
    say it. A route whose requests all go to a translated provider sets the internal response header
    ``names.TRANSLATE_HEADER`` (the filter's response path reads it; on sidecars an HTTP_ROUTE patch
    adds it), and the waypoint's namespace must see the VirtualService."""
    formats: dict[str, str] = {}
    for rule in vh.rules:
        entry, pinned = rule_route_names(vh, rule)
        sends = [(pinned[b.provider.name], b) for b in rule.backends if b.provider.name in pinned] if pinned \
            else [(entry, rule.backends[0])]
        formats.update({name: PROTOCOLS[b.provider.protocol].format for name, b in sends
                        if PROTOCOLS[b.provider.protocol].translated})
    for route in view["routes"]:
        fmt = formats.get(route["name"])
        if route["forward"] is not None and fmt is not None:
            route["forward"]["response_set"] = {names.TRANSLATE_HEADER: fmt}
    extra = waypoint_namespaces(program, vh.namespace)
    if extra:  # the waypoint's proxy must see the VirtualService
        view["export_to"] = export_to(vh.namespace, {n for n in view["export_to"] if n != "."} | extra)


def translate_virtualservices(program: Program) -> list[dict]:
    out = []
    egress = program.egress
    for vh in program.vhosts:
        served = [g for g in vh.gateways if g != "mesh" or egress is None]
        if served:
            view = _rules_vs(vh, vh.object_name, served, vh.port, {g: g for g in served})
            if program.waypoint is not None:
                _for_waypoint(view, vh, program)
            out.append(view)
        if egress is not None and vh.in_mesh:
            # Egress-gateway mode: the rules run on the egress gateway; sidecars only forward there.
            name = vh.object_name if not served else names.cap(f"{vh.object_name}-egress")
            out.append(_rules_vs(vh, name, [egress.ref], egress.port, {"mesh": egress.ref}))
            out.append({
                "metadata": metadata(names.cap(f"{vh.object_name}-mesh"), vh.namespace, vh.all_sources),
                "host": vh.host, "gateways": [], "export_to": ["."],
                "routes": [{"name": names.route_name(vh.namespace, vh.label),
                            "matches": [{"uri": None, "method": None, "headers": [], "source_labels": [],
                                         "gateways": [], "port": vh.port}],
                            "forward": {"host": egress.service_host, "port": egress.port,
                                        "subset": egress_subset(vh), "host_header": vh.fqdn, "timeout": None},
                            "direct_response": None}],
                "internal_headers": list(names.INTERNAL_HEADERS),
            })
    return out
