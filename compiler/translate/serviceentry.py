"""ServiceEntry per external provider: registers the host with an HTTP port 80.

Port 80 (protocol HTTP) maps to the provider's real port with ``targetPort`` (443 by default), so
the app keeps calling ``http://<host>`` and the sidecar sees plain HTTP it can rewrite; the
DestinationRule then originates TLS (Istio's egress TLS origination pattern). Exported to the
namespace and to every gateway that sends the provider traffic.
"""

from __future__ import annotations

from .. import names
from ..ir import Program
from .common import export_to, metadata, provider_gateway_namespaces, waypoint_namespaces
from .trafficextension import waypoint_labels


def translate_serviceentries(program: Program) -> list[dict]:
    gateways = provider_gateway_namespaces(program)
    out = []
    for p in program.providers:
        if p.in_mesh:
            continue
        meta = metadata(names.object_name("provider", p.name), p.namespace, [p.source])
        meta["labels"].update(waypoint_labels(program, p.namespace))
        out.append({
            "metadata": meta,
            "host": p.host,
            "export_to": export_to(p.namespace, gateways.get((p.namespace, p.name), set())
                                   | waypoint_namespaces(program, p.namespace), p.export_to),
            "port": p.service_port,
            "target_port": p.port,
        })
    return out
