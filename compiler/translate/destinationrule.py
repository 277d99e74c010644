"""DestinationRules: TLS origination per provider, and the sidecars' mTLS leg to an egress gateway.

Provider: an explicit ``sni`` turns off istiod's auto SAN validation, so ``subjectAltNames`` is
always set too; TLS then does not depend on the Host header the request carries (facts notes §3).
Egress-gateway mode: per namespace, a DestinationRule for the egress gateway's Service with one
subset per virtual host, ``ISTIO_MUTUAL`` and ``sni`` = that host, which selects the Gateway
server's filter chain (Istio's egress-gateway pattern).
"""

from __future__ import annotations

from .. import names
from ..ir import Program, Rule
from .common import egress_subset, export_to, metadata, provider_gateway_namespaces, waypoint_namespaces


def key_slots(program: Program) -> dict[tuple[str, str], int]:
    """(namespace, provider name) → the most key slots a failover rule gives it (> 1 only): its
    DestinationRule carries a subset for each slot after the first (``names.key_subset``)."""
    out: dict[tuple[str, str], int] = {}
    for vh in program.vhosts:
        for rule in vh.rules:
            if rule.retries is None:
                continue
            for b in rule.backends:
                n = Rule.key_slots(b)
                if n > 1:
                    key = (b.provider.namespace, b.provider.name)
                    out[key] = max(out.get(key, 1), n)
    return out


def translate_destinationrules(program: Program) -> list[dict]:
    gateways = provider_gateway_namespaces(program)
    slots = key_slots(program)
    out = []
    for p in program.providers:
        n = slots.get((p.namespace, p.name), 1)
        if (not p.tls or p.in_mesh) and n == 1:
            continue
        tls = None
        if p.tls and not p.in_mesh:
            tls = {"mode": "SIMPLE", "sni": p.sni, "subjectAltNames": list(p.subject_alt_names)}
            if p.ca_certificates:
                tls["caCertificates"] = p.ca_certificates
        out.append({
            "metadata": metadata(names.object_name("provider", p.name), p.namespace, [p.source]),
            "host": p.host,
            "export_to": export_to(p.namespace, gateways.get((p.namespace, p.name), set())
                                   | waypoint_namespaces(program, p.namespace), p.export_to),
            "port_settings": [{"port": p.service_port, "tls": tls}] if tls else [],
            # one subset per further key slot, with the provider's own TLS: no labels, so each is
            # the provider's endpoints again under another cluster name (docs/failover.md)
            "subsets": [{"name": names.key_subset(k), "port": p.service_port, "tls": tls}
                        for k in range(2, n + 1)],
        })
    egress = program.egress
    if egress is not None:
        for ns in program.namespaces():
            vhosts = [v for v in program.vhosts if v.namespace == ns and v.in_mesh]
            if not vhosts:
                continue
            out.append({
                "metadata": metadata(f"{names.PREFIX}-egress", ns, [s for v in vhosts for s in v.sources]),
                "host": egress.service_host,
                "export_to": ["."],
                "port_settings": [],
                "subsets": [{"name": egress_subset(v), "port": egress.port,
                             "tls": {"mode": "ISTIO_MUTUAL", "sni": v.fqdn}}
                            for v in sorted(vhosts, key=egress_subset)],
            })
    return out
