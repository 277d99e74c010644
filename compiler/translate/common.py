"""What several translators must agree on: object metadata and the Envoy route names of a rule."""

from __future__ import annotations

from dataclasses import dataclass

from .. import names
from ..constants import MANAGED_BY, SOURCES_ANNOTATION
from ..ir import Program, Rule, VirtualHost


def metadata(name: str, namespace: str, sources: tuple[str, ...] | list[str]) -> dict:
    return {
        "name": name,
        "namespace": namespace,
        "labels": dict(MANAGED_BY),
        "annotations": {SOURCES_ANNOTATION: ", ".join(sorted(set(sources)))},
    }


def rule_route_names(vh: VirtualHost, rule: Rule) -> tuple[str, dict[str, str]]:
    """(entry route name, {provider name: pinned route name}) of a rule; pinned only if weighted
    (for a failover rule: its first choices).

    The VirtualService names its routes with these and the Lua context maps them back to the rule,
    so both translators must use this one function.
    """
    pinned = tuple(b.provider.name for b in rule.pinned)
    return names.rule_routes(vh.namespace, vh.label, rule.name, pinned)


@dataclass(frozen=True)
class EnvoyPlacement:
    """An IR placement in Istio's terms: the EnvoyFilter match context, and the names istiod gives
    the route configuration's port and the virtual host there."""

    context: str  # SIDECAR_OUTBOUND or GATEWAY
    namespace: str  # where the EnvoyFilters for it live (a gateway's own namespace)
    selector: tuple[tuple[str, str], ...]
    port: int
    vhost: str  # Envoy virtual host name: <fqdn>:<port>


def envoy_placements(vh: VirtualHost) -> list[EnvoyPlacement]:
    return [EnvoyPlacement("GATEWAY" if p.on_gateway else "SIDECAR_OUTBOUND", p.namespace, p.selector, p.port,
                           names.vhost_name(vh.fqdn, p.port)) for p in vh.placements]


def gateway_namespaces(vh: VirtualHost) -> list[str]:
    """Namespaces of gateways that run this virtual host's rules (they must see its objects)."""
    return sorted({p.namespace for p in vh.placements if p.on_gateway})


def export_to(namespace: str, others: list[str] | set[str], base: tuple[str, ...] = (".",)) -> list[str]:
    """Istio exportTo: ``base`` (a provider's own exportTo) plus ``others``; "*" stays alone."""
    if "*" in base:
        return ["*"]
    head = ["."] if "." in base else []
    return head + sorted((set(base) | set(others)) - {namespace, "."})


def waypoint_namespaces(program: Program, namespace: str) -> set[str]:
    """Ambient target: the waypoint's namespace when it is not ``namespace`` (its proxy must see the objects)."""
    if program.waypoint is None:
        return set()
    return {program.waypoint.of(namespace)[0]} - {namespace}


def egress_subset(vh: VirtualHost) -> str:
    """DestinationRule subset of the egress gateway Service for one virtual host (its SNI)."""
    return names.cap(f"{names.PREFIX}-{names.to_label(vh.fqdn)}-{vh.port}")


def provider_gateway_namespaces(program: Program) -> dict[tuple[str, str], set[str]]:
    """(provider namespace, name) → namespaces of gateways that send it traffic."""
    out: dict[tuple[str, str], set[str]] = {}
    for vh in program.vhosts:
        gws = gateway_namespaces(vh)
        for rule in vh.rules:
            for b in rule.backends:
                out.setdefault((b.provider.namespace, b.provider.name), set()).update(gws)
    return out
