"""Opt-in observability objects (``llmc render --telemetry``); the names and expressions they use
are in :mod:`compiler.telemetry` (shared with ``llmc meshconfig``).

Per placement group (namespace, selector, proxies): a ``Telemetry`` that turns on llmc's access-log
provider and adds ``llm_model``/``llm_provider`` to Istio's request metrics, and an EnvoyFilter that
MERGEs token counter ``definitions`` into Istio's stats filter (the Telemetry API cannot define metrics).
"""

from __future__ import annotations

from .. import names
from ..ir import Program
from ..telemetry import PROVIDER_NAME, REQUEST_TAGS, TOKEN_DIMENSIONS, TOKEN_METRICS
from .common import envoy_placements, metadata


def telemetry_views(program: Program) -> tuple[list[dict], list[dict]]:
    """(Telemetry view-models, metrics EnvoyFilter view-models), one per (namespace, selector, context)."""
    groups: dict[tuple, set[str]] = {}
    for vh in program.vhosts:
        for pl in envoy_placements(vh):
            groups.setdefault((pl.namespace, pl.selector, pl.context), set()).update(vh.all_sources)
    telemetries, filters = [], []
    for (ns, selector, context), sources in sorted(groups.items()):
        telemetries.append({"metadata": metadata(names.selector_name(f"{names.PREFIX}-telemetry", selector), ns,
                                                 sorted(sources)),
                            "selector": dict(selector), "provider": PROVIDER_NAME,
                            "metrics": ["REQUEST_COUNT", "REQUEST_DURATION"],
                            "tags": [{"name": k, "value": v} for k, v in REQUEST_TAGS.items()]})
        filters.append({"metadata": metadata(names.selector_name(f"{names.PREFIX}-token-metrics", selector), ns,
                                             sorted(sources)),
                        "selector": [{"name": k, "value": v} for k, v in selector], "context": context,
                        "definitions": [{"name": k, "value": v} for k, v in TOKEN_METRICS.items()],
                        "dimensions": TOKEN_DIMENSIONS})
    return telemetries, filters


def translate_telemetries(program: Program) -> list[dict]:
    return telemetry_views(program)[0] if program.telemetry else []


def translate_token_metrics(program: Program) -> list[dict]:
    return telemetry_views(program)[1] if program.telemetry else []
