"""An LLMRoute's checks and its IR ``VirtualHost``: the gateways it binds to, its host, rule names,
matches (:mod:`.matches`), backends and their weights, and failover (``retries``, ``priority``)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from .. import names, visibility
from ..api import LLMRoute
from ..diagnostics import Diagnostics
from ..hosts import host_problem
from ..ir import Backend, Match, Retries, Rule, VirtualHost
from ..load import Document
from ..options import FAILOVER_ISTIO_VERSION, Options
from .matches import body_matches, check_body_rule, header_matches

if TYPE_CHECKING:
    from . import Sourced


GATEWAY_REF = re.compile(r"(?:([a-z0-9]([-a-z0-9]*[a-z0-9])?)/)?([a-z0-9]([-a-z0-9.]*[a-z0-9])?)")


def _gateways(refs: list[str], doc: Document, path: tuple, diags: Diagnostics) -> tuple[str, ...] | None:
    """Normalise gateway references as Istio does: "mesh", "ns/name", or "name" (this namespace)."""
    out = set()
    for i, ref in enumerate(refs):
        if ref == "mesh":
            out.add(ref)
            continue
        m = GATEWAY_REF.fullmatch(ref)
        if not m:
            diags.error("LLMC221", f"invalid gateway reference {ref!r}: use mesh, <name> or <namespace>/<name>",
                        **doc.where(path + (i,)))
            return None
        out.add(ref if "/" in ref else f"{doc.namespace}/{ref}")
    return tuple(sorted(out))


def rule_name(rule_name: str | None, index: int) -> str:
    return rule_name if rule_name is not None else f"rule-{index}"


def resolve_route(item: Sourced, catalog: visibility.Catalog, opts: Options,
                  diags: Diagnostics) -> VirtualHost | None:
    doc, obj = item.doc, item.obj
    assert isinstance(obj, LLMRoute)
    spec = obj.spec
    ok = True
    route_gateways = _gateways(spec.gateways or ["mesh"], doc, ("spec", "gateways"), diags)
    if route_gateways is None:
        return None
    host = spec.host.lower()
    if not _check_route_host(spec.host, route_gateways, doc, diags):
        return None
    rules: list[Rule] = []
    seen_rules: dict[str, int] = {}
    default_seen: int | None = None
    for i, rule in enumerate(spec.rules):
        rpath = ("spec", "rules", i)
        name = rule_name(rule.name, i)
        if not names.RULE_NAME.fullmatch(name) or len(name) > 63:
            diags.error("LLMC208", f"rule name {name!r} cannot be used in generated route names",
                        **doc.where(rpath + ("name",)),
                        hint="use letters, digits, '-', '_' or '.' (at most 63), starting and "
                        "ending with a letter or digit")
            ok = False
        if name in seen_rules:
            diags.error("LLMC209", f"rule name {name!r} is already used by rules[{seen_rules[name]}]",
                        **doc.where(rpath + ("name",)))
            ok = False
        seen_rules.setdefault(name, i)
        if default_seen is not None:
            diags.warning("LLMC212", f"rule is never used: rules[{default_seen}] has no matches and "
                          "catches every request first", **doc.where(rpath))
        matches = []
        for j, m in enumerate(rule.matches or []):
            mpath = rpath + ("matches", j)
            match_gateways = _gateways(m.gateways or [], doc, mpath + ("gateways",), diags)
            if match_gateways is None:
                ok = False
                continue
            stray = [g for g in match_gateways if g not in route_gateways]
            if stray:
                diags.error("LLMC222", f"match gateways {', '.join(stray)} are not in the route's gateways "
                            f"({', '.join(route_gateways)})", **doc.where(mpath + ("gateways",)))
                ok = False
            if m.sourceLabels and opts.egress_gateway and "mesh" in route_gateways:
                diags.error("LLMC216", "sourceLabels cannot be used in egress-gateway mode: the rules run "
                            "on the egress gateway, which cannot see the calling workload's labels",
                            **doc.where(mpath + ("sourceLabels",)))
                ok = False
            body = body_matches(m, doc, mpath, diags)
            if body is None:
                ok = False
                continue
            matches.append(Match(
                headers=header_matches(m.headers or {}, doc, mpath, diags),
                source_labels=tuple(sorted((m.sourceLabels or {}).items())),
                gateways=match_gateways, body=body))
        if not rule.matches:
            default_seen = i if default_seen is None else default_seen
        backends = _backends(rule, name, catalog, doc, rpath, diags)
        if backends is None:
            ok = False
            continue
        retries = _retries(rule, backends, opts, doc, rpath, diags)
        if retries is False or retries is True:
            ok = False
            continue
        rules.append(Rule(name=name, matches=tuple(matches), backends=backends, retries=retries))
        check_body_rule(rules, i, doc, diags)
    if not ok:
        return None
    target = catalog.find(host, doc.namespace).provider if host != "*" else None
    if host == "*":
        route_fqdn = "*"
    else:
        route_fqdn = host if target is not None else names.fqdn(host, doc.namespace, opts.cluster_domain)
    if target is not None and rules and rules[-1].matches:
        # Direct calls to a provider host always reach that provider: requests no rule matches
        # fall back to the provider's default settings, exactly as without an LLMRoute.
        rules.append(Rule(name="default" if "default" not in seen_rules else "llmc-default",
                          matches=(), backends=(Backend(target, 1, target.default),)))
    selectors = {b.provider.selector for r in rules for b in r.backends}
    if len(selectors) > 1:
        diags.error("LLMC213", "backends of one LLMRoute must share one workloadSelector",
                    **doc.where(("spec", "rules")))
        return None
    if any(g != "mesh" for g in route_gateways) and selectors == {()}:
        diags.error("LLMC217", "an LLMRoute bound to a gateway needs providers whose workloadSelector "
                    "selects the gateway's pods", **doc.where(("spec", "gateways")),
                    hint="e.g. spec.workloadSelector.labels: {istio: ingressgateway} on the LLMProviders")
        return None
    _warn_remote_keys(rules, route_gateways, opts, doc, diags)
    return VirtualHost(
        namespace=doc.namespace, object_name=names.object_name("route", doc.name), label=doc.name,
        host=route_fqdn, fqdn=route_fqdn, port=spec.port or 80, rules=tuple(rules),
        selector=next(iter(selectors)) if selectors else (), sources=(f"LLMRoute {doc.namespace}/{doc.name}",),
        gateways=route_gateways)


def _check_route_host(raw: str, route_gateways: tuple[str, ...], doc: Document, diags: Diagnostics) -> bool:
    """Host names as Istio accepts them; "*" only on a route bound only to gateways, where it means
    every host the Gateway serves (a sidecar has no "every host": it needs the called Service)."""
    problem = host_problem(raw, wildcard=True, path_hint="")
    if problem is not None:
        diags.error("LLMC226", problem.message, **doc.where(("spec", "host")), hint=problem.hint)
        return False
    if raw == "*" and "mesh" in route_gateways:
        diags.error("LLMC226", "host \"*\" needs a route bound only to gateways: sidecars (mesh) route by the "
                    "host the application calls", **doc.where(("spec", "host")),
                    hint="name the Service or provider host the applications call, or set spec.gateways to "
                    "the ingress Gateway(s) without mesh")
        return False
    return True


def _warn_remote_keys(rules: list[Rule], route_gateways: tuple[str, ...], opts: Options, doc: Document,
                      diags: Diagnostics) -> None:
    """Sidecar shaping of a provider from another namespace needs its key where the callers are."""
    if "mesh" not in route_gateways or opts.egress_gateway:
        return
    remote = sorted({b.provider.source for r in rules for b in r.backends
                     if b.provider.namespace != doc.namespace
                     and b.config.has_credential})
    if remote:
        diags.warning("LLMC231", f"the sidecars of namespace {doc.namespace!r} shape requests for "
                      f"{', '.join(remote)}: the API key must be in {doc.namespace!r} too (a Secret mounted "
                      "into every calling pod, or a literal key in an EnvoyFilter there)",
                      **doc.where(("spec", "rules")),
                      hint="egress-gateway mode (--egress-gateway) shapes on one gateway and keeps the keys "
                      "in its namespace only")


def _backends(rule, rule_name: str, catalog: visibility.Catalog, doc: Document, rpath: tuple,
              diags: Diagnostics) -> tuple[Backend, ...] | None:
    refs = rule.backendRefs
    ok = True
    # Weights compare within one priority only (a failover rule's backups are tried in priority
    # order, whatever the first choices weigh): Istio's "an unset weight next to set ones counts 0"
    # applies inside a priority, and a lone backend of its priority needs no weight.
    groups: dict[int, list[int | None]] = {}
    for ref in refs:
        groups.setdefault(ref.priority or 0, []).append(ref.weight)
    mixed_in = {prio for prio, ws in groups.items()
                if any(w is None for w in ws) and any(w is not None for w in ws)}
    for prio, ws in sorted(groups.items()):
        if (all(w is not None for w in ws) or prio in mixed_in) and sum(w or 0 for w in ws) == 0:
            where = rpath + ("backendRefs",)
            diags.error("LLMC206", "weights add up to 0: no provider would receive traffic" +
                        (f" at priority {prio}" if len(groups) > 1 else ""), **doc.where(where),
                        hint="give at least one backendRef a weight above 0")
            ok = False
        elif all(w is not None for w in ws):
            _note_relative_weights([w or 0 for w in ws], doc, rpath, diags, prio if len(groups) > 1 else None)
    seen: set[str] = set()
    named: dict[str, str] = {}  # provider name → source
    out = []
    for k, ref in enumerate(refs):
        bpath = rpath + ("backendRefs", k)
        if ref.backendRef is not None:
            diags.error("LLMC227", "backendRef (an InferencePool) cannot be reached from a VirtualService: "
                        "stock Istio routes to InferencePools only from Gateway API HTTPRoutes",
                        **doc.where(bpath + ("backendRef",)),
                        hint="register the model server's Service as an LLMProvider (host: "
                        "<service>.<namespace>.svc.cluster.local, tls.mode: DISABLE) and use providerHost, or "
                        "route to the InferencePool with an HTTPRoute of the Gateway API inference extension")
            ok = False
            continue
        if ref.providerHost is None:
            diags.error("LLMC103", "missing required field 'providerHost'", **doc.where(bpath + ("providerHost",)))
            ok = False
            continue
        mixed = (ref.priority or 0) in mixed_in
        if mixed and ref.weight is None:
            diags.warning("LLMC229", "weight is not set while other backendRefs of the rule (of the same "
                          "priority) set one: as in Istio, it counts as 0 and this provider gets no traffic", **doc.where(bpath),
                          hint="set a weight on every backendRef of the rule, or on none (equal weights)")
        if ref.hostRewrite is not None:
            problem = host_problem(ref.hostRewrite, path_hint="", field="hostRewrite")
            if problem is not None:
                diags.error("LLMC226", problem.message, **doc.where(bpath + ("hostRewrite",)), hint=problem.hint)
                ok = False
        host = ref.providerHost.lower()
        found = catalog.find(host, doc.namespace)
        provider = found.provider
        if provider is None:
            _unknown_provider(host, found, catalog, doc, bpath + ("providerHost",), diags)
            ok = False
            continue
        if host in seen:
            diags.error("LLMC206", f"provider host {host!r} is listed twice in this rule",
                        **doc.where(bpath + ("providerHost",)))
            ok = False
        elif provider.name in named:
            # pinned route names end in the provider's name: two providers of one name (from two
            # namespaces) would share one pinned route and one could get the other's request
            diags.error("LLMC218", f"{provider.source} and {named[provider.name]} have the same name, which "
                        "would give the rule's two pinned routes one name", **doc.where(bpath + ("providerHost",)),
                        hint="rename one of the LLMProviders")
            ok = False
        seen.add(host)
        named.setdefault(provider.name, provider.source)
        weight = 1 if ref.weight is None and not mixed else (ref.weight or 0)
        config = provider.config_for_rule(rule_name)
        if ref.hostRewrite is not None and ref.hostRewrite.lower() != host and \
                config.has_credential:
            diags.warning("LLMC240", f"hostRewrite sends the key of provider {provider.name} to {host} with Host "
                          f"{ref.hostRewrite.lower()!r}: behind a shared front (a CDN, a gateway) the Host header "
                          "picks the service, so the key may reach one the provider's owner does not run",
                          **doc.where(bpath + ("hostRewrite",)),
                          hint="rewrite only to a name the provider serves itself, or register that host as an "
                          "LLMProvider of its own")
        if weight > 0:
            out.append(Backend(provider, weight, config,
                               host_rewrite=ref.hostRewrite.lower() if ref.hostRewrite else None,
                               priority=ref.priority or 0))
    return tuple(out) if ok else None


def _note_relative_weights(weights: list[int], doc: Document, rpath: tuple, diags: Diagnostics,
                           priority: int | None = None) -> None:
    """Weights are shares of their sum (as in Istio, which scales them to 100): 70/20 sends 78%/22%.
    Said once per priority, as a note, when they do not add up to 100, so nobody reads 70 as 70%."""
    total = sum(weights)
    if total in (0, 100) or len(weights) < 2:
        return
    shares = "/".join(f"{w * 100 / total:.0f}" for w in weights)
    at = f" at priority {priority}" if priority is not None else ""
    diags.note("LLMC242", f"weights{at} add up to {total}, not 100: each is a share of the total, so traffic is "
               f"split {shares} (%)", **doc.where(rpath + ("backendRefs",)),
               hint="make the weights add up to 100 to read them as percentages")


def _unknown_provider(host: str, found: visibility.Lookup, catalog: visibility.Catalog, doc: Document,
                      path: tuple, diags: Diagnostics) -> None:
    if found.ambiguous:
        where = ", ".join(p.source for p in found.ambiguous)
        diags.error("LLMC230", f"host {host!r} is exported to namespace {doc.namespace!r} by several "
                    f"LLMProviders ({where}); llmc cannot tell which one Istio would pick",
                    **doc.where(path), hint="narrow their exportTo so that one is visible here, or define the "
                    "provider in this namespace (it then wins)")
        return
    known = ", ".join(catalog.visible_hosts(doc.namespace)) or "none"
    hint = f"provider hosts visible here: {known}"
    if found.hidden:
        elsewhere = "; ".join(f"{p.source} has it but is exported to {list(p.export_to)} only"
                              for p in found.hidden)
        hint = (f"{elsewhere}: add {doc.namespace!r} (or \"*\") to its spec.exportTo, or define it in the "
                f"Istio root namespace; {hint}")
    diags.error("LLMC202", f"no LLMProvider visible in namespace {doc.namespace!r} has host {host!r}",
                **doc.where(path), hint=hint)


def _check_key_retry(rule, backends: tuple[Backend, ...], opts: Options, doc: Document, rpath: tuple,
                     diags: Diagnostics) -> bool:
    """retryKeysOn (docs/api-keys.md): Istio >= 1.31 (its upstream filter); on failover rules too
    (the next key before the next provider, docs/failover.md)."""
    ok = True
    for b in backends:
        if not b.config.key_retry:
            continue
        ref = next(i for i, r in enumerate(rule.backendRefs) if (r.providerHost or "").lower() == b.provider.host)
        if not opts.supports_failover:
            diags.error("LLMC253", f"provider {b.provider.name} retries with its next key (retryKeysOn), which "
                        f"needs Istio {FAILOVER_ISTIO_VERSION} or newer; the target is Istio {opts.istio_version}",
                        **doc.where(rpath + ("backendRefs", ref)),
                        hint=f"render with --istio-version {FAILOVER_ISTIO_VERSION} once the mesh runs it, or "
                        "remove retryKeysOn from the provider")
            ok = False
    return ok


#: llmc's retry conditions (``rules[].retries.retryOn``) when a rule names none
DEFAULT_RETRY_ON = ("connect-failure", "reset", "5xx", "429")


def _retries(rule, backends: tuple[Backend, ...], opts: Options, doc: Document, rpath: tuple,
             diags: Diagnostics) -> Retries | None | bool:
    """The rule's failover settings: None (no failover), Retries, or False after an error."""
    if not _check_key_retry(rule, backends, opts, doc, rpath, diags):
        return False
    prioritized = [k for k, b in enumerate(rule.backendRefs) if b.priority is not None]
    if (rule.retries is not None or prioritized) and not opts.supports_failover:
        where = rpath + (("retries",) if rule.retries is not None else ("backendRefs", prioritized[0], "priority"))
        diags.error("LLMC234", f"failover (retries, priority) needs Istio {FAILOVER_ISTIO_VERSION} or newer "
                    f"(Envoy 1.39's refresh_cluster_on_retry); the target is Istio {opts.istio_version}",
                    **doc.where(where),
                    hint=f"render with --istio-version {FAILOVER_ISTIO_VERSION} once the mesh runs it, or "
                    "remove retries and priority")
        return False
    if rule.retries is None:
        if prioritized:
            diags.error("LLMC235", "priority needs retries: without them no request ever moves to a higher "
                        "priority", **doc.where(rpath + ("backendRefs", prioritized[0], "priority")),
                        hint="add retries: {} to the rule (every backend is then tried once) or remove priority")
            return False
        return None
    if len({b.provider.base_path is None for b in backends}) > 1:
        with_base = next(k for k, b in enumerate(backends) if b.provider.base_path is not None)
        diags.error("LLMC235", "the providers of a failover rule must all set basePath or none: a retry sends the "
                    "same request to the next provider, and a provider without basePath serves chat completions "
                    "only", **doc.where(rpath + ("backendRefs",)),
                    hint=f"set spec.basePath on every provider of the rule, or on none "
                    f"({backends[with_base].provider.source} sets it)")
        return False
    for b in backends:
        if not b.config.has_credential:
            ref = next(i for i, r in enumerate(rule.backendRefs) if (r.providerHost or "").lower() == b.provider.host)
            diags.warning("LLMC239", f"provider {b.provider.name} has no API key: on a failover rule the "
                          "client's own credentials (Authorization, x-api-key, ...) never pass, so it is sent no "
                          "key", **doc.where(rpath + ("backendRefs", ref)),
                          hint="give the provider a key (apiKeySecretRef), or move it to a rule without retries, "
                          "where a keyless provider receives the client's own Authorization")
    attempts = rule.retries.attempts or len(backends)
    if attempts > len(backends):
        diags.error("LLMC235", f"attempts {attempts} is more than the rule's {len(backends)} backends: a retry "
                    "always moves to a provider not tried yet", **doc.where(rpath + ("retries", "attempts")),
                    hint=f"use at most {len(backends)}")
        return False
    return Retries(attempts=attempts, per_try_timeout=rule.retries.perTryTimeout,
                   retry_on=tuple(sorted(set(rule.retries.retryOn or DEFAULT_RETRY_ON))))
