"""Stage 5, translate: IR → view-models, one module per Istio kind.

Each ``translate_*`` returns a list of finished view-models (names computed, lists sorted, defaults
applied) that a template under ``templates/`` lays out. No decisions are left to templates. Which
translator and template make which kind is the table of generated kinds (``constants.GENERATED_KINDS``).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module

from ..constants import GENERATED_KINDS, SERVICE_CONFIG_KINDS, GeneratedKind
from ..ir import Program

Translator = Callable[[Program], list[dict]]


def translators(kinds: tuple[GeneratedKind, ...] = GENERATED_KINDS + SERVICE_CONFIG_KINDS,
                ) -> tuple[tuple[str, str, Translator], ...]:
    """(kind, template, translator) for every output of ``kinds``, in table order."""
    out = []
    for k in kinds:
        for template, ref in k.outputs:
            module, _, function = ref.partition(":")
            out.append((k.kind, template, getattr(import_module(f"{__name__}.{module}"), function)))
    return tuple(out)


#: (kind, template, translator): every generated kind's outputs. The pipeline sorts the output by
#: the table's order.
TRANSLATORS = translators()

__all__ = ["TRANSLATORS", "Program", "translators"]
