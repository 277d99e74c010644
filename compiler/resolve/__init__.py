"""Stage 4, resolve: cross-object checks, then the IR.

Input is schema-valid typed objects with their source documents (for positions). Every check that
needs more than one field or object lives in this package: duplicate objects and hosts, backendRefs
to unknown providers, header matches and regexes, weights, rule names, routeSpecificConfigs keys,
placeholder keys, host names (:mod:`compiler.hosts`). An LLMRoute sees the LLMProviders visible
to its namespace, with Istio's ``exportTo`` rules (:mod:`compiler.visibility`); every generated
object stays in its source's namespace, and the rules run where the calling proxies are.

One module per object the checks are about: :mod:`.providers` (an LLMProvider: its protocol, keys
and endpoint), :mod:`.matches` (a rule's header and model conditions), :mod:`.routes` (an LLMRoute:
gateways, rules, backends, failover), :mod:`.placement` (where a virtual host's rules run); this
module checks the program as a whole (duplicates, route names, unused overrides) and builds it.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass

from .. import names, visibility
from ..api import LLMProvider, LLMRoute
from ..constants import ROOT_NAMESPACE
from ..diagnostics import Diagnostics
from ..ir import Backend, Program, Provider, Rule, TokenLimit, VirtualHost, Waypoint
from ..load import Document
from ..options import Options
from . import ambient
from .limits import forbidden_headers, rate_limit_service, resolve_limits, resolve_prices
from .placement import check_gateway_selectors, check_selector_overlap, egress_gateway, place
from .providers import resolve_provider
from .routes import resolve_route, rule_name

__all__ = ["Options", "Sourced", "resolve"]


@dataclass
class Sourced:
    doc: Document
    obj: LLMProvider | LLMRoute


def resolve(items: list[Sourced], opts: Options, diags: Diagnostics) -> Program | None:
    # Duplicate objects: the first by (file, line) wins the report position of the others.
    by_id: dict[tuple[str, str, str], list[Sourced]] = defaultdict(list)
    for it in items:
        by_id[(it.doc.kind, it.doc.namespace, it.doc.name)].append(it)
    unique: list[Sourced] = []
    for key in sorted(by_id):
        group = sorted(by_id[key], key=lambda s: (s.doc.file, s.doc.index))
        unique.append(group[0])
        for dup in group[1:]:
            first = group[0].doc
            diags.error("LLMC003", f"{key[0]} {key[1]}/{key[2]} is defined more than once",
                        **dup.doc.where(("metadata", "name")),
                        hint=f"first defined in {first.file}:{first.position()[0]}")
    if opts.ambient:
        ambient.check_sources(unique, diags)
    providers_by_ns: dict[str, dict[str, Provider]] = defaultdict(dict)
    provider_docs: dict[tuple[str, str], Document] = {}
    for it in (u for u in unique if u.doc.kind == "LLMProvider"):
        p = resolve_provider(it, opts, diags)
        other = providers_by_ns[p.namespace].get(p.host)
        if other is not None:
            diags.error("LLMC201", f"host {p.host!r} is already served by {other.source}",
                        **it.doc.where(("spec", "host")), hint="different providers cannot have the same host")
            continue
        providers_by_ns[p.namespace][p.host] = p
        provider_docs[(p.namespace, p.name)] = it.doc
    forbidden = forbidden_headers(p for provs in providers_by_ns.values() for p in provs.values())
    _provider_limits(providers_by_ns, provider_docs, unique, opts, forbidden, diags)
    catalog = visibility.Catalog(p for provs in providers_by_ns.values() for p in provs.values())
    vhosts: list[VirtualHost] = []
    route_hosts: dict[tuple, str] = {}
    unresolved_rules: set[str] = set()  # rule names of routes that failed: their keys are not "unused"
    for it in (u for u in unique if u.doc.kind == "LLMRoute"):
        vh = resolve_route(it, catalog, opts, diags)
        if vh is None:
            assert isinstance(it.obj, LLMRoute)
            unresolved_rules.update(rule_name(r.name, i) for i, r in enumerate(it.obj.spec.rules))
            continue
        host_key = (vh.namespace, vh.fqdn, vh.port, vh.gateways)
        if host_key in route_hosts:
            diags.error("LLMC210", f"host {vh.fqdn!r} port {vh.port} is already routed by {route_hosts[host_key]}",
                        **it.doc.where(("spec", "host")), hint="merge the rules into one LLMRoute")
            continue
        route_hosts[host_key] = vh.sources[0]
        vh = _rule_limits(it, vh, opts, forbidden, diags)
        if vh is not None:
            vhosts.append(vh)
    routed = {(ns, fqdn, port) for ns, fqdn, port, _ in route_hosts}
    # Providers without an LLMRoute on their own host get an implicit single-rule route, so that
    # `curl http://<provider host>` works with an LLMProvider alone (the seed's first scenario).
    # Not in the Istio root namespace without an egress gateway: the EnvoyFilters of sidecar
    # placement there would apply to every sidecar of the mesh, whose virtual host for the provider
    # (from the ServiceEntry exported everywhere) has no llmc route, so the filter would answer 500.
    for ns, provs in sorted(providers_by_ns.items()):
        for host, p in sorted(provs.items()):
            if (ns, host, p.service_port) in routed or (ns == ROOT_NAMESPACE and not opts.egress_gateway):
                continue
            vhosts.append(VirtualHost(
                namespace=ns, object_name=names.object_name("provider", p.name), label=p.name,
                host=host, fqdn=host, port=p.service_port,
                rules=(Rule(name="default", matches=(), backends=(Backend(p, 1, p.default),)),),
                selector=p.selector, sources=(p.source,)))
    vhosts = _namespace_limits(unique, vhosts, opts, forbidden, diags)
    _check_route_specific_keys(providers_by_ns, vhosts, provider_docs, unresolved_rules, diags)
    _check_route_names(vhosts, diags)
    if diags.has_errors:
        return None
    providers = tuple(sorted((p for provs in providers_by_ns.values() for p in provs.values()),
                             key=lambda p: (p.namespace, p.name)))
    egress = egress_gateway(opts)
    placed = [dataclasses.replace(vh, placements=place(vh, egress, opts)) for vh in vhosts]
    check_selector_overlap(placed, provider_docs, diags)
    route_docs = {u.doc.label: u.doc for u in unique if u.doc.kind == "LLMRoute"}
    check_gateway_selectors(placed, route_docs, opts, diags)
    if opts.ambient:
        ambient.check_program(placed, route_docs, provider_docs, diags)
    if diags.has_errors:
        return None
    return Program(secrets_dir=opts.secrets_dir.rstrip("/") or "/", providers=providers,
                   egress=egress, telemetry=opts.telemetry, rate_limit=rate_limit_service(opts),
                   telemetry_names="legacy" if opts.legacy_telemetry_names else "gen_ai",
                   waypoint=Waypoint(*opts.waypoint) if opts.ambient else None, cost_unit=opts.cost_unit,
                   vhosts=tuple(sorted(placed, key=lambda v: (v.namespace, v.object_name))))

def _provider_limits(providers_by_ns, provider_docs, unique: list[Sourced], opts: Options,
                     forbidden: frozenset[str], diags: Diagnostics) -> None:
    """Each LLMProvider's tokenLimits onto its IR provider (before routes see the providers)."""
    specs = {(u.doc.namespace, u.doc.name): u.obj for u in unique if u.doc.kind == "LLMProvider"}
    for ns, provs in providers_by_ns.items():
        for host, p in list(provs.items()):
            obj = specs[(ns, p.name)]
            assert isinstance(obj, LLMProvider)
            if obj.spec.prices:
                p = provs[host] = dataclasses.replace(p, prices=resolve_prices(obj.spec.prices, opts))
            if not obj.spec.tokenLimits:
                continue
            doc = provider_docs[(ns, p.name)]
            limits = resolve_limits(obj.spec.tokenLimits, f"provider/{ns}/{p.name}", p.source,
                                    doc, ("spec", "tokenLimits"), opts, forbidden, diags)
            if limits is not None:
                for j, limit in enumerate(limits):
                    if limit.money and not p.prices:
                        unpriced(diags, p.name, doc.where(("spec", "tokenLimits", j, "budget")))
                provs[host] = dataclasses.replace(p, limits=limits)


def _rule_limits(item: Sourced, vh: VirtualHost, opts: Options, forbidden: frozenset[str],
                 diags: Diagnostics) -> VirtualHost | None:
    """Each rule's tokenLimits onto its IR rule (``resolve_route`` keeps every rule, in order)."""
    assert isinstance(item.obj, LLMRoute)
    rules = list(vh.rules)
    ok = True
    for i, spec_rule in enumerate(item.obj.spec.rules):
        if not spec_rule.tokenLimits:
            continue
        rule = rules[i]
        limits = resolve_limits(spec_rule.tokenLimits, f"route/{vh.namespace}/{vh.label}/{rule.name}", vh.sources[0],
                                item.doc, ("spec", "rules", i, "tokenLimits"), opts, forbidden, diags,
                                on_gateway=bool(vh.bound_gateways), in_mesh=vh.in_mesh)
        if limits is None:
            ok = False
            continue
        for j, limit in enumerate(limits):
            for b in rule.backends:
                if limit.money and not b.provider.prices:
                    unpriced(diags, b.provider.name, item.doc.where(("spec", "rules", i, "tokenLimits", j, "budget")))
            if ("model", "") in limit.key and "model" not in vh.body_fields \
                    and any(b.config.model is None for b in rule.backends):
                diags.warning("LLMC266", "the proxy does not know the model of this rule's requests (a provider "
                              "sets no model, and no match of the route reads it): they share one bucket",
                              **item.doc.where(("spec", "rules", i, "tokenLimits", j, "key")),
                              hint="set configs.defaultConfig.openAIConfig.model on the providers, or add a "
                              "model match to the route")
        rules[i] = dataclasses.replace(rule, limits=limits)
    return dataclasses.replace(vh, rules=tuple(rules)) if ok else None


def _namespace_limits(unique: list[Sourced], vhosts: list[VirtualHost], opts: Options, forbidden: frozenset[str],
                      diags: Diagnostics) -> list[VirtualHost]:
    """``LLMRoute.spec.namespaceLimits`` onto every rule of every virtual host of the namespace (ids
    ``namespace/<ns>/<name>``: one bucket per key for the whole namespace). A name is declared once
    per namespace (LLMC265 names the first declaration)."""
    by_ns: dict[str, list[TokenLimit]] = {}
    declared: dict[tuple[str, str], str] = {}
    for it in sorted((u for u in unique if u.doc.kind == "LLMRoute"), key=lambda u: u.doc.label):
        assert isinstance(it.obj, LLMRoute)
        if not it.obj.spec.namespaceLimits:
            continue
        ns = it.doc.namespace
        limits = resolve_limits(it.obj.spec.namespaceLimits, f"namespace/{ns}", it.doc.label, it.doc,
                                ("spec", "namespaceLimits"), opts, forbidden, diags)
        for j, limit in enumerate(limits or ()):
            first = declared.setdefault((ns, limit.name), it.doc.label)
            if first != it.doc.label:
                diags.error("LLMC265", f"namespace limit {limit.name!r} is already declared by {first}",
                            **it.doc.where(("spec", "namespaceLimits", j, "name")),
                            hint="declare a namespace's limit on one LLMRoute")
                continue
            by_ns.setdefault(ns, []).append(limit)
    if not by_ns:
        return vhosts
    out = []
    for vh in vhosts:
        extra = tuple(by_ns.get(vh.namespace, ()))
        if extra:
            for rule in vh.rules:
                for b in rule.backends:
                    for limit in extra:
                        if limit.money and not b.provider.prices:
                            unpriced(diags, b.provider.name, {"object": limit.source})
            vh = dataclasses.replace(vh, rules=tuple(dataclasses.replace(r, limits=r.limits + extra) for r in vh.rules))
        out.append(vh)
    return out


def unpriced(diags: Diagnostics, provider: str, where: dict) -> None:
    diags.error("LLMC269", f"a money budget charges requests at the answering provider's prices, and "
                f"LLMProvider {provider} has none", **where,
                hint="add spec.prices to the LLMProvider, e.g. [{model: \"*\", prompt: 0.15, completion: 0.6}] "
                "(currency per 1M tokens)")


def _check_route_names(vhosts, diags: Diagnostics) -> None:
    """Envoy route names must be unique per virtual host: the filter maps names to rules and pins.

    names.route_name makes them unique by construction (its separator appears in no name it joins);
    this check keeps that true if naming ever changes.
    """
    for vh in vhosts:
        seen: dict[str, str] = {}
        for rule in vh.rules:
            pinned = tuple(b.provider.name for b in rule.pinned)
            entry, pins = names.rule_routes(vh.namespace, vh.label, rule.name, pinned)
            for name in (entry, *pins.values()):
                if name in seen:
                    diags.error("LLMC218", f"generated Envoy route name {name!r} is used by rule {seen[name]!r} "
                                f"and rule {rule.name!r}", object=vh.sources[0],
                                hint="rename one of the rules")
                seen.setdefault(name, rule.name)


def _check_route_specific_keys(providers_by_ns, vhosts, provider_docs, unresolved_rules: set[str],
                               diags: Diagnostics) -> None:
    used: set[tuple[str, str, str]] = set()  # (ns, provider, rule)
    for vh in vhosts:
        for rule in vh.rules:
            for b in rule.backends:
                used.add((b.provider.namespace, b.provider.name, rule.name))
    for ns, provs in sorted(providers_by_ns.items()):
        for p in provs.values():
            for rule, _ in p.overrides:
                if (p.namespace, p.name, rule) not in used and rule not in unresolved_rules:
                    diags.warning("LLMC203", f"no LLMRoute rule named {rule!r} routes to this provider; "
                                  "the override is unused", **provider_docs[(ns, p.name)].where(
                                      ("spec", "configs", "routeSpecificConfigs", rule)),
                                  hint="fine if the LLMRoute is applied later")
