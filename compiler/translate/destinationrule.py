"""DestinationRules: TLS origination per provider, and the sidecars' mTLS leg to an egress gateway.

Provider: an explicit ``sni`` turns off istiod's auto SAN validation, so ``subjectAltNames`` is
always set too; TLS then does not depend on the Host header the request carries (facts notes §3).
Egress-gateway mode: per namespace, a DestinationRule for the egress gateway's Service with one
subset per virtual host, ``ISTIO_MUTUAL`` and ``sni`` = that host, which selects the Gateway
server's filter chain (Istio's egress-gateway pattern).
"""

from __future__ import annotations

from .. import names
from ..ir import Program
from .common import egress_subset, export_to, metadata, provider_gateway_namespaces, waypoint_namespaces


def translate_destinationrules(program: Program) -> list[dict]:
    gateways = provider_gateway_namespaces(program)
    out = []
    for p in program.providers:
        if not p.tls or p.in_mesh:
            continue
        tls = {"mode": "SIMPLE", "sni": p.sni, "subjectAltNames": list(p.subject_alt_names)}
        if p.ca_certificates:
            tls["caCertificates"] = p.ca_certificates
        out.append({
            "metadata": metadata(names.object_name("provider", p.name), p.namespace, [p.source]),
            "host": p.host,
            "export_to": export_to(p.namespace, gateways.get((p.namespace, p.name), set())
                                   | waypoint_namespaces(program, p.namespace), p.export_to),
            "port_settings": [{"port": p.service_port, "tls": tls}],
            "subsets": [],
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
