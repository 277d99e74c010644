"""The controller's RBAC, derived from the table of generated kinds (``compiler/constants.py``).

The controller lists and watches every generated kind (its informers start for all of them, so a
leftover object of a flag turned off is still seen) and writes — server-side apply is a PATCH that
needs ``create`` to create, pruning a DELETE — only the kinds its flags can generate: a kind with a
``flag`` (Gateway: ``--egress-gateway``, Telemetry: ``--telemetry``) is written only when that flag
is used. ``deploy/rbac.yaml`` holds :func:`cluster_role_rules` for ``deploy/``'s flags (none of
them) and ``deploy/components/<flag>/`` adds :func:`flag_rules`; ``tests/test_deploy.py`` checks
both against this module, so the manifests cannot drift from the table.
"""

from __future__ import annotations

from ..constants import GENERATED_KINDS, GROUP, PLURALS

READ = ["list", "watch"]
WRITE = ["create", "patch", "delete"]


def _rules(kinds, verbs: list[str]) -> list[dict]:
    """One rule per API group, resources in table order."""
    groups: dict[str, list[str]] = {}
    for k in kinds:
        groups.setdefault(k.group, []).append(k.plural)
    return [{"apiGroups": [g], "resources": plurals, "verbs": list(verbs)} for g, plurals in groups.items()]


def cluster_role_rules(flags: frozenset[str] = frozenset()) -> list[dict]:
    """The ClusterRole ``llmc-controller`` for a controller run with ``flags`` (CLI spellings): the
    sources, their status, and per generated kind read (always) plus write (when it can be made)."""
    sources = [PLURALS[k] for k in PLURALS]
    rules = [{"apiGroups": [GROUP], "resources": sources, "verbs": list(READ)},
             {"apiGroups": [GROUP], "resources": [f"{p}/status" for p in sources], "verbs": ["patch"]}]
    always = [k for k in GENERATED_KINDS if k.flag is None or k.flag in flags]
    rules += _rules(always, READ + WRITE)
    rules += _rules([k for k in GENERATED_KINDS if k not in always], READ)
    return rules


def flag_rules(flag: str) -> list[dict]:
    """What ``flag`` adds to :func:`cluster_role_rules` (its component's extra ClusterRole)."""
    return _rules([k for k in GENERATED_KINDS if k.flag == flag], WRITE)
