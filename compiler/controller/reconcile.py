"""Sources → desired objects and status conditions. No I/O: the controller and its tests call it.

Compiles all sources together (resolution needs the whole namespace). When some are invalid, the
ones named by error diagnostics are set aside and the rest compiled again, until what is left
compiles: a broken LLMRoute never takes its namespace's providers down with it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from ..diagnostics import Diagnostic, Diagnostics, Severity
from ..ir import Program
from ..load import Document
from ..pipeline import compile_documents
from ..resolve import Options

HASH_ANNOTATION = "llmc.io/hash"
SOURCES_ANNOTATION = "llmc.io/sources"
SOURCE_GROUP = "istio.alibabacloud.com"


def source_key(obj: dict) -> str:
    meta = obj["metadata"]
    return f"{obj['kind']} {meta.get('namespace', '')}/{meta['name']}"


@dataclass
class Outcome:
    objects: list[dict] = field(default_factory=list)  # desired, with ownerReferences and hash
    program: Program | None = None
    diagnostics: dict[str, list[Diagnostic]] = field(default_factory=dict)  # per source key
    invalid: set[str] = field(default_factory=set)


def _document(obj: dict) -> Document:
    data = {k: v for k, v in obj.items() if k != "status"}
    data["metadata"] = {k: v for k, v in obj["metadata"].items()
                        if k in ("name", "namespace", "labels", "annotations")}
    return Document(file=source_key(obj).replace(" ", "/"), data=data)


def desired_state(sources: list[dict], opts: Options) -> Outcome:
    out = Outcome()
    remaining = sorted(sources, key=source_key)
    for _ in range(len(sources) + 1):
        diags = Diagnostics()
        result = compile_documents([_document(o) for o in remaining], opts, diags)
        bad = {d.object for d in diags.items if d.severity is Severity.ERROR and d.object}
        if result.ok or not bad:
            for d in diags.items:
                out.diagnostics.setdefault(d.object, []).append(d)
        if result.ok:
            out.program = result.program
            out.objects = [_with_ownership(o, {source_key(s): s for s in sources}) for o in result.objects]
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
    once they are all gone), and a hash of the result so unchanged objects are never re-applied."""
    obj = json.loads(json.dumps(obj))
    meta = obj["metadata"]
    names = [s.strip() for s in meta.get("annotations", {}).get(SOURCES_ANNOTATION, "").split(",") if s.strip()]
    owners = []
    for name in names:
        src = sources.get(name)
        if src is not None and src["metadata"].get("namespace") == meta["namespace"] and src["metadata"].get("uid"):
            owners.append({"apiVersion": src["apiVersion"], "kind": src["kind"], "name": src["metadata"]["name"],
                           "uid": src["metadata"]["uid"]})
    if owners:
        meta["ownerReferences"] = owners
    digest = hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]
    meta.setdefault("annotations", {})[HASH_ANNOTATION] = digest
    return obj


def conditions(obj: dict, outcome: Outcome, applied_ok: bool, missing_secrets: list[str]) -> list[dict]:
    """Accepted, ResolvedRefs and Programmed for one source; messages come from diagnostics
    (which never contain key values)."""
    key = source_key(obj)
    diags = outcome.diagnostics.get(key, [])
    errors = [d for d in diags if d.severity is Severity.ERROR]
    warnings = [d for d in diags if d.severity is Severity.WARNING]
    unresolved = [d for d in errors if d.code in ("LLMC202",)]

    def text(items: list[Diagnostic]) -> str:
        return "; ".join(f"{d.code} {d.path + ': ' if d.path else ''}{d.message}" for d in items)[:1024]

    accepted = not errors
    resolved = not unresolved and not missing_secrets
    conds = [
        {"type": "Accepted", "status": "True" if accepted else "False",
         "reason": "Accepted" if accepted else "Invalid",
         "message": text(warnings) if accepted else text(errors)},
        {"type": "ResolvedRefs", "status": "True" if resolved else "False",
         "reason": "ResolvedRefs" if resolved else ("ProviderNotFound" if unresolved else "SecretNotFound"),
         "message": text(unresolved) if unresolved else
         (f"Secret(s) not found: {', '.join(missing_secrets)}" if missing_secrets else "")},
    ]
    programmed = accepted and applied_ok and key not in outcome.invalid
    if programmed:
        reason, message = "Programmed", ""
    elif not accepted:
        reason, message = "Invalid", text(errors)
    else:
        reason, message = "ApplyFailed", "applying generated objects failed; retrying"
    conds.append({"type": "Programmed", "status": "True" if programmed else "False", "reason": reason,
                  "message": message})
    generation = obj["metadata"].get("generation")
    for c in conds:
        c["observedGeneration"] = generation
    return conds
