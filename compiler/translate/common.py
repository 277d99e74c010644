"""What several translators must agree on: object metadata and the Envoy route names of a rule."""

from __future__ import annotations

from .. import names
from ..ir import Rule, VirtualHost

MANAGED_BY = {"app.kubernetes.io/managed-by": "llmc"}
SOURCES_ANNOTATION = "llmc.io/sources"


def metadata(name: str, namespace: str, sources: tuple[str, ...] | list[str]) -> dict:
    return {
        "name": name,
        "namespace": namespace,
        "labels": dict(MANAGED_BY),
        "annotations": {SOURCES_ANNOTATION: ", ".join(sorted(set(sources)))},
    }


def rule_route_names(vh: VirtualHost, rule: Rule) -> tuple[str, dict[str, str]]:
    """(entry route name, {provider name: pinned route name}) of a rule; pinned only if weighted.

    The VirtualService names its routes with these and the Lua context maps them back to the rule,
    so both translators must use this one function.
    """
    entry = names.route_name(vh.label, rule.name)
    if not rule.weighted:
        return entry, {}
    return entry, {b.provider.name: names.route_name(vh.label, rule.name, b.provider.name)
                   for b in rule.backends}
