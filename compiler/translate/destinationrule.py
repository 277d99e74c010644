"""DestinationRule per TLS provider: TLS origination with explicit SNI and SAN checks.

An explicit ``sni`` turns off istiod's auto SAN validation, so ``subjectAltNames`` is always set
too; TLS then does not depend on the Host header the request carries (facts notes §3).
"""

from __future__ import annotations

from .. import names
from ..ir import Program
from .common import metadata


def translate_destinationrules(program: Program) -> list[dict]:
    out = []
    for p in program.providers:
        if p.in_mesh:
            continue
        if not p.tls:
            continue
        out.append({
            "metadata": metadata(names.object_name("provider", p.name), p.namespace, [p.source]),
            "host": p.host,
            "port": p.service_port,
            "sni": p.sni,
            "subject_alt_names": list(p.subject_alt_names),
            "ca_certificates": p.ca_certificates,
        })
    return out
