"""Egress-gateway mode: the Istio Gateway on the egress gateway pods that receives LLM traffic.

One HTTPS server on port 443 with ``ISTIO_MUTUAL`` (sidecars reach it over mesh mTLS, Istio's
egress TLS-origination pattern); its hosts are every virtual host routed through it, written
``<namespace>/<fqdn>`` so only the VirtualServices llmc generated for them bind.
"""

from __future__ import annotations

from ..ir import Program
from .common import metadata


def translate_gateways(program: Program) -> list[dict]:
    egress = program.egress
    if egress is None:
        return []
    vhosts = [v for v in program.vhosts if v.in_mesh]
    if not vhosts:
        return []
    return [{
        "metadata": metadata(egress.gateway_name, egress.namespace, [s for v in vhosts for s in v.all_sources]),
        "selector": dict(egress.labels),
        "port": egress.port,
        "hosts": sorted({f"{v.namespace}/{v.fqdn}" for v in vhosts}),
    }]
