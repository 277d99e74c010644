"""Which LLMProviders an LLMRoute may use: Istio's ``exportTo`` model, applied to LLMProviders.

A provider is visible to the namespaces its ``exportTo`` names (``"."``: its own, ``"*"``: every
namespace), as a ServiceEntry is; by default to its own namespace only, except in the Istio root
namespace, whose config Istio applies to every namespace (so a provider there is exported to
``"*"``). A route resolves ``providerHost`` among the providers visible to its namespace; as istiod
does for a host defined in several namespaces, the route's own namespace wins. Between other
namespaces llmc cannot apply istiod's tie-break (the oldest object), so that is an error (LLMC230).
Exporting never writes an object into another namespace: the generated ServiceEntry and
DestinationRule carry the same ``exportTo`` and stay in the provider's namespace.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from .constants import ROOT_NAMESPACE
from .ir import Provider

_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


@dataclass(frozen=True)
class ExportTo:
    value: tuple[str, ...]  # sorted; "*" alone, or "." and/or namespace names
    problems: list[tuple[int | None, str]] = field(default_factory=list)  # (index or None, message)


def default_export_to(namespace: str) -> tuple[str, ...]:
    return ("*",) if namespace == ROOT_NAMESPACE else (".",)


def check_export_to(values: list[str] | None, namespace: str) -> ExportTo:
    """Istio's validation of ``exportTo`` (``validateExportTo``): ``.``, ``*`` or DNS-1123 labels, no
    duplicates, ``*`` alone. Istio's ``~`` (visible nowhere) is rejected: a provider no route can
    reach generates nothing useful. An empty or absent list is the default."""
    if not values:
        return ExportTo(default_export_to(namespace))
    problems: list[tuple[int | None, str]] = []
    seen: set[str] = set()
    for i, v in enumerate(values):
        if v == "~":
            problems.append((i, "\"~\" (exported nowhere) is not supported: no LLMRoute could use the provider"))
        elif v not in (".", "*") and not _NAMESPACE.fullmatch(v):
            problems.append((i, f"{v!r} is not \".\", \"*\" or a namespace name"))
        elif v in seen:
            problems.append((i, f"{v!r} is listed twice"))
        seen.add(v)
    if "*" in seen and len(values) > 1:
        problems.append((None, "\"*\" exports to every namespace and cannot be combined with other values"))
    normalised = {"." if v == namespace else v for v in values}
    return ExportTo(tuple(sorted(normalised)), problems)


def visible(p: Provider, namespace: str) -> bool:
    """Istio's rule: a provider is visible in ``namespace`` when its exportTo says so."""
    return "*" in p.export_to or namespace in p.export_to or (p.namespace == namespace and "." in p.export_to)


@dataclass
class Lookup:
    provider: Provider | None
    ambiguous: tuple[Provider, ...] = ()  # visible from several other namespaces
    hidden: tuple[Provider, ...] = ()  # have the host but are not exported to the namespace


class Catalog:
    """Every provider by host, answering "which provider does host H mean in namespace N?"."""

    def __init__(self, providers: Iterable[Provider]):
        self._by_host: dict[str, list[Provider]] = {}
        for p in providers:
            self._by_host.setdefault(p.host, []).append(p)
        for group in self._by_host.values():
            group.sort(key=lambda p: (p.namespace, p.name))

    def find(self, host: str, namespace: str) -> Lookup:
        group = self._by_host.get(host, [])
        own = [p for p in group if p.namespace == namespace and visible(p, namespace)]
        if own:
            return Lookup(own[0])
        seen = tuple(p for p in group if visible(p, namespace))
        hidden = tuple(p for p in group if not visible(p, namespace))
        if len(seen) > 1:
            return Lookup(None, ambiguous=seen, hidden=hidden)
        return Lookup(seen[0] if seen else None, hidden=hidden)

    def visible_hosts(self, namespace: str) -> list[str]:
        return sorted(h for h, group in self._by_host.items() if any(visible(p, namespace) for p in group))
