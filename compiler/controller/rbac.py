"""The controller's RBAC, derived from the table of generated kinds (``compiler/constants.py``).

The controller lists and watches every generated kind (its informers start for all of them, so a
leftover object of a flag turned off is still seen) and writes only the kinds its flags can generate
(``GeneratedKind.verbs``): a kind with a ``flag`` (Gateway: ``--egress-gateway``, Telemetry:
``--telemetry``) is written only when that flag is used. ``deploy/rbac.yaml`` holds
:func:`cluster_role_rules` for ``deploy/``'s flags (none of them) and ``deploy/components/<flag>/``
adds :func:`flag_rules`; ``tests/test_deploy.py`` checks both against this module, so the manifests
cannot drift from the table.

Kinds of ``SERVICE_CONFIG_KINDS`` (the token limits' ConfigMap) are no part of the ClusterRole: the
controller reads and writes them only in the namespace of the service they configure, so
``deploy/components/<flag>/`` grants :func:`service_rules` as a Role there.
"""

from __future__ import annotations

from .. import constants
from ..constants import GROUP, PLURALS, READ_VERBS, WRITE_VERBS


def _rules(kinds, verbs: tuple[str, ...]) -> list[dict]:
    """One rule per API group, resources in table order."""
    groups: dict[str, list[str]] = {}
    for k in kinds:
        groups.setdefault(k.group, []).append(k.plural)
    return [{"apiGroups": [g], "resources": plurals, "verbs": list(verbs)} for g, plurals in groups.items()]


def cluster_role_rules(flags: frozenset[str] = frozenset()) -> list[dict]:
    """The ClusterRole ``llmc-controller`` for a controller run with ``flags`` (CLI spellings): the
    sources, their status, and per generated kind read (always) plus write (when it can be made)."""
    sources = [PLURALS[k] for k in PLURALS]
    rules = [{"apiGroups": [GROUP], "resources": sources, "verbs": list(READ_VERBS)},
             {"apiGroups": [GROUP], "resources": [f"{p}/status" for p in sources], "verbs": ["patch"]}]
    for verbs in (READ_VERBS + WRITE_VERBS, READ_VERBS):
        rules += _rules([k for k in constants.GENERATED_KINDS if k.verbs(flags) == verbs], verbs)
    return rules


def flag_rules(flag: str) -> list[dict]:
    """What ``flag`` adds to :func:`cluster_role_rules` (its component's extra ClusterRole)."""
    return _rules([k for k in constants.GENERATED_KINDS if k.flag == flag], WRITE_VERBS)


def service_rules(flag: str) -> list[dict]:
    """The Role ``flag`` needs in its service's namespace (``--rate-limit-service``: ConfigMaps)."""
    return _rules([k for k in constants.SERVICE_CONFIG_KINDS if k.flag == flag], READ_VERBS + WRITE_VERBS)
