"""VirtualService per virtual host: header rules, pinned provider routes, Host rewrite.

Shape (README "Design"): a rule with one provider is one route to that provider. A weighted rule
becomes one *pinned* route per provider, matching the rule's conditions plus the internal header
``x-llmc-provider: <provider>``, followed by the rule's *entry* route. The Lua filter on the entry
route picks a provider by weight, sets the header and clears the route cache, so Envoy re-selects
the pinned route and the request is shaped for, and sent to, the same provider. The entry route
itself answers 500 in case the filter did not run, so an unshaped request never leaves the proxy.
Pinned routes remove the internal header before the request goes upstream.
"""

from __future__ import annotations

import json

from .. import names
from ..ir import Match, Program, Provider, Rule, VirtualHost
from .common import metadata, rule_route_names

NOT_SHAPED_BODY = json.dumps({"error": {
    "message": "llmc: the request was not shaped by the LLM filter (is the llmc EnvoyFilter applied "
               "to this workload?)",
    "type": "server_error", "param": None, "code": "llmc_filter_missing"}}, separators=(",", ":"))


def _match(m: Match, port: int, pin: str | None) -> dict:
    headers = [{"name": h.name, "kind": h.kind, "value": h.value} for h in m.headers]
    if pin is not None:
        headers.append({"name": names.ROUTING_HEADER, "kind": "exact", "value": pin})
    return {
        "headers": sorted(headers, key=lambda h: h["name"]),
        "source_labels": [{"name": k, "value": v} for k, v in m.source_labels],
        "gateways": list(m.gateways),
        "port": port,
    }


def _forward(p: Provider) -> dict:
    return {"host": p.host, "port": p.service_port, "timeout": p.timeout}


def _rule_routes(vh: VirtualHost, rule: Rule) -> list[dict]:
    matches = rule.matches or (Match(),)
    entry_name, pinned = rule_route_names(vh, rule)
    if not rule.weighted:
        return [{"name": entry_name, "matches": [_match(m, vh.port, None) for m in matches],
                 "forward": _forward(rule.backends[0].provider), "direct_response": None}]
    routes = []
    for b in rule.backends:
        routes.append({
            "name": pinned[b.provider.name],
            "matches": [_match(m, vh.port, b.provider.name) for m in matches],
            "forward": _forward(b.provider), "direct_response": None})
    routes.append({"name": entry_name, "matches": [_match(m, vh.port, None) for m in matches],
                   "forward": None, "direct_response": {"status": 500, "body": NOT_SHAPED_BODY}})
    return routes


def translate_virtualservices(program: Program) -> list[dict]:
    out = []
    for vh in program.vhosts:
        routes = [r for rule in vh.rules for r in _rule_routes(vh, rule)]
        out.append({
            "metadata": metadata(vh.object_name, vh.namespace, vh.all_sources),
            "host": vh.host,
            "routes": routes,
            "routing_header": names.ROUTING_HEADER,
        })
    return out
