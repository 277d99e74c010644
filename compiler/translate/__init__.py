"""Stage 5, translate: IR → view-models, one module per Istio kind.

Each ``translate_*`` returns a list of finished view-models (names computed, lists sorted, defaults
applied) that a template under ``templates/`` lays out. No decisions are left to templates.
"""

from __future__ import annotations

from ..ir import Program
from .destinationrule import translate_destinationrules
from .envoyfilter import translate_envoyfilters
from .gateway import translate_gateways
from .serviceentry import translate_serviceentries
from .telemetry import translate_telemetries, translate_token_metrics
from .virtualservice import translate_virtualservices

#: (template, translator) in emit order.
TRANSLATORS = (
    ("serviceentry.json.j2", translate_serviceentries),
    ("destinationrule.json.j2", translate_destinationrules),
    ("gateway.json.j2", translate_gateways),
    ("virtualservice.json.j2", translate_virtualservices),
    ("envoyfilter.json.j2", translate_envoyfilters),
    ("tokenmetrics.json.j2", translate_token_metrics),
    ("telemetry.json.j2", translate_telemetries),
)

__all__ = ["TRANSLATORS", "Program"]
