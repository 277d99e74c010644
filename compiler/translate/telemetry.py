"""Opt-in observability objects (``llmc render --telemetry``); the names and expressions they use
are in :mod:`compiler.telemetry` (shared with ``llmc meshconfig``).

Per placement group (namespace, selector, proxies): a ``Telemetry`` that turns on llmc's access-log
provider and adds the provider and model to Istio's request metrics, and an EnvoyFilter that adds
llmc's metrics to Istio's stats filter (the Telemetry API cannot define metrics): GenAI histograms
(a MERGE into ``istio.stats`` and a second stats filter for output tokens), or with
``--legacy-telemetry-names`` the legacy token counters.
"""

from __future__ import annotations

from .. import names
from ..ir import Program, Provider
from ..telemetry import PROVIDER_NAME, Metric, StatsPatch, cost_metric, request_tags, stats_patches
from .common import envoy_placements, metadata


def _patch_view(p: StatsPatch, context: str) -> dict:
    return {"operation": p.operation, "name": p.name, "context": context,
            "definitions": [{"name": m.definition, "type": m.type, "value": m.value} for m in p.metrics],
            "metrics": [{"name": m.definition, "dimensions": dict(sorted(m.dimensions.items()))} for m in p.metrics]
            + [{"name": d, "drop": True} for d in p.drop]}


def _cost(providers: dict[str, Provider], cost_unit: str) -> Metric | None:
    """The cost counter of proxies that reach ``providers``, or None when none has prices. Every
    group of a namespace and context gets the same one (the union of its groups' providers), so two
    EnvoyFilters that reach one proxy define it alike (istio.stats keeps the first definition of a
    name). Providers are told apart by name, as the filter records them (``llmc.provider``): of two
    LLMProviders of one name in different namespaces that one namespace's rules reach, the first
    (in the virtual hosts' order) prices both — as a failover rule's money budget does."""
    prices = [(name, p.prices) for name, p in sorted(providers.items())]
    return cost_metric(prices, cost_unit) if prices else None


def telemetry_views(program: Program) -> tuple[list[dict], list[dict]]:
    """(Telemetry view-models, metrics EnvoyFilter view-models), one per (namespace, selector, context)."""
    legacy = program.telemetry_names == "legacy"
    groups: dict[tuple, set[str]] = {}
    reached: dict[tuple[str, str], dict[str, Provider]] = {}  # (namespace, context) → priced providers by name
    for vh in program.vhosts:
        for pl in envoy_placements(vh):
            groups.setdefault((pl.namespace, pl.selector, pl.context), set()).update(vh.all_sources)
            providers = reached.setdefault((pl.namespace, pl.context), {})
            for b in (b for r in vh.rules for b in r.backends if b.provider.prices):
                providers.setdefault(b.provider.name, b.provider)
    telemetries, filters = [], []
    for (ns, selector, context), sources in sorted(groups.items()):
        cost = _cost(reached[(ns, context)], program.cost_unit)
        telemetries.append({"metadata": metadata(names.selector_name(f"{names.PREFIX}-telemetry", selector), ns,
                                                 sorted(sources)),
                            "selector": dict(selector), "provider": PROVIDER_NAME,
                            "metrics": ["REQUEST_COUNT", "REQUEST_DURATION"],
                            "tags": [{"name": k, "value": v} for k, v in request_tags(legacy).items()]})
        filters.append({"metadata": metadata(names.selector_name(f"{names.PREFIX}-token-metrics", selector), ns,
                                             sorted(sources)),
                        "selector": [{"name": k, "value": v} for k, v in selector],
                        "patches": [_patch_view(p, context) for p in stats_patches(legacy, cost)]})
    return telemetries, filters


def translate_telemetries(program: Program) -> list[dict]:
    return telemetry_views(program)[0] if program.telemetry else []


def translate_token_metrics(program: Program) -> list[dict]:
    return telemetry_views(program)[1] if program.telemetry else []
