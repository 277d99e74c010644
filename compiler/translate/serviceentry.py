"""ServiceEntry per external provider: registers the host with an HTTP port 80.

Port 80 (protocol HTTP) maps to the provider's real port with ``targetPort`` (443 by default), so
the app keeps calling ``http://<host>`` and the sidecar sees plain HTTP it can rewrite; the
DestinationRule then originates TLS (Istio's egress TLS origination pattern). Exported to the
namespace and to every gateway that sends the provider traffic.
"""

from __future__ import annotations

from .. import names
from ..ir import Program
from .common import export_to, metadata, provider_gateway_namespaces


def translate_serviceentries(program: Program) -> list[dict]:
    gateways = provider_gateway_namespaces(program)
    out = []
    for p in program.providers:
        if p.in_mesh:
            continue
        out.append({
            "metadata": metadata(names.object_name("provider", p.name), p.namespace, [p.source]),
            "host": p.host,
            "export_to": export_to(p.namespace, gateways.get((p.namespace, p.name), set()), p.export_to),
            "port": p.service_port,
            "target_port": p.port,
        })
    return out
