"""Which Secrets a pass's sources need, checked for existence where the proxies need them.

The controller never reads a Secret's data and never lists or watches Secrets: it asks for one
name (``get``, the body discarded unread) once per pass, only in the source's own namespace or an
allowed gateway namespace, and reports on Secrets of the source's own namespace only.
"""

from __future__ import annotations

import logging

from .kube import Kube
from .reconcile import Outcome, Scope

log = logging.getLogger("llmc.controller")


def check_secrets(outcome: Outcome, home: set[str], kube: Kube,
                  scope: Scope) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Per source key of ``home`` (the key's own sources): the Secrets missing where its proxies need
    them, and the namespaces where they are needed but not checked for it. A source learns about
    Secrets of its own namespace only: for another namespace (a gateway's) it gets ``NotChecked``
    whether the Secret exists, is missing or may not be looked at — else a tenant could probe Secret
    names there. Missing ones there are logged for the operator. Each Secret is checked once per
    pass; contents are never read."""
    if outcome.program is None:
        return {}, {}
    exists: dict[tuple[str, str], bool | None] = {}
    missing: dict[str, list[str]] = {}
    unchecked: dict[str, list[str]] = {}

    def note(table: dict[str, list[str]], source: str, item: str) -> None:
        if item not in table.setdefault(source, []):
            table[source].append(item)

    for vh in outcome.program.vhosts:
        for rule in vh.rules:
            for b in rule.backends:
                users = (*vh.sources, b.provider.source)
                if not b.config.secret_names or not home.intersection(users):
                    continue  # no Secret, or another key's source: its own key reports on it
                for secret_name, pl in ((n, pl) for n in b.config.secret_names for pl in vh.placements):
                    own = [s for s in users if s.split(" ", 1)[-1].split("/", 1)[0] == pl.namespace]
                    for s in users:
                        if s not in own:
                            note(unchecked, s, pl.namespace)
                    key = (pl.namespace, secret_name)
                    if not scope.allows({vh.namespace, b.provider.namespace}, pl.namespace):
                        continue
                    if key not in exists:
                        exists[key] = kube.secret_exists(*key)
                        if exists[key] is False and not own:
                            log.warning("secret missing", extra={"secret": f"{key[0]}/{key[1]}"})
                    for s in own:
                        if exists[key] is None:  # no RBAC to look there
                            note(unchecked, s, pl.namespace)
                        elif not exists[key]:
                            note(missing, s, f"{key[0]}/{key[1]}")
    return missing, unchecked

