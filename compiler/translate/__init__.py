"""Stage 5, translate: IR → view-models, one module per Istio kind.

Each ``translate_*`` returns a list of finished view-models (names computed, lists sorted, defaults
applied) that a template under ``templates/`` lays out. No decisions are left to templates.
"""

from __future__ import annotations

from ..ir import Program
from .destinationrule import translate_destinationrules
from .envoyfilter import translate_envoyfilters
from .gateway import translate_gateways
from .ratelimit import translate_ratelimit_config
from .serviceentry import translate_serviceentries
from .telemetry import translate_telemetries, translate_token_metrics
from .virtualservice import translate_virtualservices

#: (kind, template, translator): every generated kind of ``constants.GENERATED_KINDS`` and the
#: templates that lay it out. The pipeline sorts the output by the registry's order.
TRANSLATORS = (
    ("ServiceEntry", "serviceentry.json.j2", translate_serviceentries),
    ("DestinationRule", "destinationrule.json.j2", translate_destinationrules),
    ("Gateway", "gateway.json.j2", translate_gateways),
    ("VirtualService", "virtualservice.json.j2", translate_virtualservices),
    ("EnvoyFilter", "envoyfilter.json.j2", translate_envoyfilters),
    ("EnvoyFilter", "tokenmetrics.json.j2", translate_token_metrics),
    ("Telemetry", "telemetry.json.j2", translate_telemetries),
    ("ConfigMap", "configmap.json.j2", translate_ratelimit_config),
)

__all__ = ["TRANSLATORS", "Program"]
