"""Sources → desired objects, what to write, and status conditions. No I/O: the controller and its
tests call it.

* The unit of work is a namespace where objects are written (:mod:`.deps` decides which sources a
  key compiles and which keys a change queues); :func:`plan` limits a pass to that namespace.
* :func:`desired_state` — compiles one key's sources; invalid sources are set aside and the rest
  compiled again, so a broken LLMRoute never takes its namespace's providers down with it.
* :func:`plan` — per object: apply, prune, keep (last known good) or refuse (tenancy).
* :func:`conditions` — Accepted, ResolvedRefs, Programmed per source.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field

from ..constants import SERVICE_CONFIG_KINDS, SOURCES_ANNOTATION
from ..diagnostics import Diagnostic, Diagnostics, Severity
from ..ir import Program
from ..load import Document
from ..pipeline import compile_documents
from ..resolve import Options

HASH_ANNOTATION = "llmc.io/hash"
#: marks objects the controller applied (``llmc render`` output lacks it): only these are pruned
OWNER_LABEL = "llmc.io/owner"
OWNER_VALUE = "controller"
#: diagnostics that refuse a source for tenancy (``--gateway-selectors``): its objects are not kept
#: as last known good (they may be what the operator just forbade) and ``Programmed`` says so
TENANCY_CODES = frozenset({"LLMC243"})

ObjKey = tuple[str, str, str]  # (kind, namespace, name)
SERVICE_CONFIG = frozenset(k.kind for k in SERVICE_CONFIG_KINDS)


def source_key(obj: dict) -> str:
    meta = obj["metadata"]
    return f"{obj['kind']} {meta.get('namespace', '')}/{meta['name']}"


def annotated_sources(obj: dict) -> list[str]:
    text = ((obj.get("metadata") or {}).get("annotations") or {}).get(SOURCES_ANNOTATION, "")
    return [s.strip() for s in text.split(",") if s.strip()]


def obj_key(obj: dict) -> ObjKey:
    meta = obj["metadata"]
    return obj["kind"], meta["namespace"], meta["name"]


@dataclass
class Outcome:
    objects: list[dict] = field(default_factory=list)  # desired, with ownerReferences and hash
    program: Program | None = None
    diagnostics: dict[str, list[Diagnostic]] = field(default_factory=dict)  # per source key
    invalid: set[str] = field(default_factory=set)

    @property
    def refused(self) -> set[str]:
        """Invalid sources refused for tenancy: their live objects are pruned, never kept."""
        return {k for k in self.invalid if any(d.code in TENANCY_CODES for d in self.diagnostics.get(k, []))}


def _document(obj: dict) -> Document:
    data = {k: v for k, v in obj.items() if k != "status"}
    data["metadata"] = {k: v for k, v in obj["metadata"].items()
                        if k in ("name", "namespace", "labels", "annotations")}
    return Document(file=source_key(obj).replace(" ", "/"), data=data)


def desired_state(sources: list[dict], opts: Options) -> Outcome:
    out = Outcome()
    remaining = sorted(sources, key=source_key)
    by_key = {source_key(s): s for s in sources}
    for _ in range(len(sources) + 1):
        diags = Diagnostics()
        result = compile_documents([_document(o) for o in remaining], opts, diags)
        bad = {d.object for d in diags.items if d.severity is Severity.ERROR and d.object}
        if result.ok or not bad:
            for d in diags.items:
                out.diagnostics.setdefault(d.object, []).append(d)
        if result.ok:
            out.program = result.program
            out.objects = [_with_ownership(o, by_key) for o in result.objects]
            return out
        if not bad:  # errors that name no object: nothing can be programmed
            out.invalid |= {source_key(s) for s in remaining}
            return out
        for d in diags.items:  # keep the invalid sources' diagnostics; recompile the others
            if d.object in bad:
                out.diagnostics.setdefault(d.object, []).append(d)
        out.invalid |= bad
        remaining = [s for s in remaining if source_key(s) not in bad]
    return out


def _with_ownership(obj: dict, sources: dict[str, dict]) -> dict:
    """ownerReferences to the sources in the object's namespace (Kubernetes GC removes the object
    once they are all gone; objects in other namespaces are pruned by the controller, as owner
    references cannot cross namespaces), the owner label, and a hash of the result."""
    obj = json.loads(json.dumps(obj))
    meta = obj["metadata"]
    owners = []
    for name in annotated_sources(obj):
        src = sources.get(name)
        if src is not None and src["metadata"].get("namespace") == meta["namespace"] and src["metadata"].get("uid"):
            owners.append({"apiVersion": src["apiVersion"], "kind": src["kind"], "name": src["metadata"]["name"],
                           "uid": src["metadata"]["uid"]})
    if owners:
        meta["ownerReferences"] = owners
    meta.setdefault("labels", {})[OWNER_LABEL] = OWNER_VALUE
    digest = hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]
    meta.setdefault("annotations", {})[HASH_ANNOTATION] = digest
    return obj


def _covers(live, desired) -> bool:
    """True when ``live`` holds everything ``desired`` sets (maps may hold more: other managers'
    fields survive server-side apply; lists and scalars must be equal)."""
    if isinstance(desired, dict):
        return isinstance(live, dict) and all(k in live and _covers(live[k], v) for k, v in desired.items())
    return live == desired


def drifted(desired: dict, live: dict | None) -> bool:
    """Whether ``live`` differs from what the controller would apply (a hand edit, a deletion)."""
    if live is None:
        return True
    dm, lm = desired["metadata"], live.get("metadata") or {}
    if not _covers(lm.get("labels") or {}, dm.get("labels") or {}):
        return True
    if not _covers(lm.get("annotations") or {}, dm.get("annotations") or {}):
        return True
    owners = [(o["kind"], o["name"], o["uid"]) for o in dm.get("ownerReferences") or []]
    if owners != [(o.get("kind"), o.get("name"), o.get("uid")) for o in lm.get("ownerReferences") or []]:
        return True
    return any(not _covers(live.get(k), v) for k, v in desired.items() if k not in ("metadata", "apiVersion", "kind"))


@dataclass
class Scope:
    """Where the controller may write: a source's own namespace, and gateway namespaces an operator
    allowed (``--gateway-namespaces``; the Istio root namespace only when listed there)."""

    gateway_namespaces: frozenset[str] = frozenset()
    root_namespace: str = "istio-system"
    #: namespaces of the services llmc configures (``--rate-limit-service``): their configuration
    #: (``SERVICE_CONFIG_KINDS``: the token limits' ConfigMap) is written there, and nothing else
    service_namespaces: frozenset[str] = frozenset()

    def allows(self, source_namespaces: set[str], namespace: str, kind: str = "") -> bool:
        if kind in SERVICE_CONFIG and namespace in self.service_namespaces:
            return True  # the operator named the namespace with --rate-limit-service
        return namespace in source_namespaces or namespace in self.gateway_namespaces

    def refusal(self, namespace: str) -> str:
        root = " (the Istio root namespace: its EnvoyFilters apply mesh-wide)" \
            if namespace == self.root_namespace else ""
        return (f"writing into namespace {namespace!r}{root} is not allowed: the operator lists the gateway "
                "namespaces the controller may write into (--gateway-namespaces)")


@dataclass
class Plan:
    apply: list[dict] = field(default_factory=list)
    prune: list[ObjKey] = field(default_factory=list)
    kept: list[ObjKey] = field(default_factory=list)  # last known good: a source is invalid
    refused: dict[str, list[str]] = field(default_factory=dict)  # source key → messages (tenancy)
    #: source key → (kept objects it contributes to, the invalid sources that froze them), sorted
    frozen: dict[str, tuple[list[str], list[str]]] = field(default_factory=dict)

    def _freeze(self, obj: dict, invalid: set[str]) -> None:
        sources = annotated_sources(obj)
        what = f"{obj['kind']} {obj['metadata']['namespace']}/{obj['metadata']['name']}"
        causes = set(sources) & invalid
        for s in sources:
            objs, by = self.frozen.get(s, ([], []))
            self.frozen[s] = (sorted({*objs, what}), sorted({*by, *causes}))


def _allowed(obj: dict, namespace: str, scope: Scope) -> bool:
    return scope.allows({s.split(" ", 1)[-1].split("/", 1)[0] for s in annotated_sources(obj)}, namespace,
                        obj.get("kind", ""))


def plan(outcome: Outcome, live: dict[ObjKey, dict], scope: Scope, namespace: str | None = None,
         mine: Callable[[dict], bool] | None = None) -> Plan:
    """What one key's pass writes. ``live`` holds the controller's objects of that key. Refusals are
    found among all the objects compiled; only those in ``namespace`` (None: all) that are ``mine``
    (a scoped instance writes, prunes and keeps no object without a source of its namespaces) are
    written."""
    out = Plan()
    refused = outcome.refused
    pinned = {k for k, o in live.items() if set(annotated_sources(o)) & outcome.invalid
              and not set(annotated_sources(o)) & refused and _allowed(o, k[1], scope)}
    desired: dict[ObjKey, dict] = {}
    for obj in outcome.objects:
        key = obj_key(obj)
        sources = annotated_sources(obj)
        namespaces = {s.split(" ", 1)[-1].split("/", 1)[0] for s in sources}
        if not scope.allows(namespaces, key[1], key[0]):
            # blame the routes, whose `gateways` chose the namespace; providers only if alone
            for s in [s for s in sources if s.startswith("LLMRoute ")] or sources:
                if s.split(" ", 1)[-1].split("/", 1)[0] != key[1]:
                    msgs = out.refused.setdefault(s, [])
                    if scope.refusal(key[1]) not in msgs:
                        msgs.append(scope.refusal(key[1]))
            continue
        if (namespace is None or key[1] == namespace) and (mine is None or mine(obj)):
            desired[key] = obj
        elif (namespace is None or key[1] == namespace) and key in live and mine is not None and mine(live[key]):
            # a shared object this instance's sources just left, still produced from another
            # instance's: written once more as computed from all its sources (handed over), never
            # pruned while the other instance still needs it
            desired[key] = obj
    for key, obj in sorted(desired.items()):
        if key in pinned:
            out.kept.append(key)
            out._freeze(live[key], outcome.invalid)
        elif drifted(obj, live.get(key)):
            out.apply.append(obj)
    for key in sorted(set(live) - set(desired)):
        if mine is not None and not mine(live[key]):
            continue  # another instance's object: never pruned here
        if key in pinned:
            out.kept.append(key)
            out._freeze(live[key], outcome.invalid)
        else:
            out.prune.append(key)
    return out


def _frozen_text(frozen: tuple[list[str], list[str]], namespace: str) -> str:
    """Which objects are kept as last applied and which invalid sources froze them; sources of other
    namespaces are counted, not named (a tenant's status names no other tenant's objects)."""
    objs, causes = frozen
    own = [c for c in causes if c.split(" ", 1)[-1].split("/", 1)[0] == namespace]
    others = len(causes) - len(own)
    named = own + ([f"{others} source(s) of other namespaces"] if others else [])
    shown = ", ".join(objs[:10]) + (f" and {len(objs) - 10} more" if len(objs) > 10 else "")
    return (f"kept as last applied (last known good) while {', '.join(named)} "
            f"{'is' if len(causes) == 1 else 'are'} invalid: {shown}")


def conditions(obj: dict, outcome: Outcome, failures: list[str], missing_secrets: list[str],
               unchecked_secrets: list[str], refused: list[str],
               frozen: tuple[list[str], list[str]] | None = None) -> list[dict]:
    """Accepted, ResolvedRefs and Programmed for one source; messages come from diagnostics
    (which never contain key values) and name only the source's own or allowed namespaces.
    ``frozen``: the objects of this source that last known good keeps, and the invalid sources that
    froze them — a valid source whose changes cannot reach them is not ``Programmed`` either."""
    key = source_key(obj)
    diags = outcome.diagnostics.get(key, [])
    errors = [d for d in diags if d.severity is Severity.ERROR]
    warnings = [d for d in diags if d.severity is Severity.WARNING]
    unresolved = [d for d in errors if d.code in ("LLMC202",)]

    def text(items: list[Diagnostic]) -> str:
        return "; ".join(f"{d.code} {d.path + ': ' if d.path else ''}{d.message}" for d in items)[:1024]

    accepted = not errors
    if unresolved:
        resolved = ("False", "ProviderNotFound", text(unresolved))
    elif missing_secrets:
        resolved = ("False", "SecretNotFound", f"Secret(s) not found: {', '.join(missing_secrets)}")
    elif unchecked_secrets:
        resolved = ("Unknown", "NotChecked", "Secret(s) not checked: needed in namespace(s) " +
                    ", ".join(sorted(unchecked_secrets)) + "; status reports on Secrets of the source's own "
                    "namespace only, where the controller may read them")
    else:
        resolved = ("True", "ResolvedRefs", "")
    conds = [
        {"type": "Accepted", "status": "True" if accepted else "False",
         "reason": "Accepted" if accepted else "Invalid",
         "message": text(warnings) if accepted else text(errors)},
        {"type": "ResolvedRefs", "status": resolved[0], "reason": resolved[1], "message": resolved[2]},
    ]
    held = _frozen_text(frozen, obj["metadata"].get("namespace", "")) if frozen else ""
    if any(d.code in TENANCY_CODES for d in errors):
        programmed = ("False", "GatewayNotAllowed", text([d for d in errors if d.code in TENANCY_CODES]) +
                      "; nothing is applied for it on gateways, and objects applied for it earlier are removed")
    elif not accepted or key in outcome.invalid:
        programmed = ("False", "Invalid", (text(errors) or "not compiled") + "; " +
                      (held or "no object applied for it is live, none is kept"))
    elif refused:
        programmed = ("False", "GatewayNamespaceNotAllowed", "; ".join(refused)[:1024])
    elif frozen:
        programmed = ("False", "LastKnownGood", held + "; changes of this source reach them "
                      "once that is fixed")
    elif failures:
        programmed = ("False", "ApplyFailed", ("; ".join(failures) + "; retrying")[:1024])
    else:
        programmed = ("True", "Programmed", "")
    conds.append({"type": "Programmed", "status": programmed[0], "reason": programmed[1],
                  "message": programmed[2][:1024]})
    generation = obj["metadata"].get("generation")
    if generation is not None:
        for c in conds:
            c["observedGeneration"] = generation
    return conds
