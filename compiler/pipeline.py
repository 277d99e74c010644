"""The one place that orders the stages; `llmc render`, `llmc validate` and the controller call it.

load → schema → api objects → resolve (IR) → translate (view-models) → render (templates) → sort.
Each stage reports into one :class:`Diagnostics`; the pipeline stops between stages once an error
exists, so translators only ever see valid input, and output is all or nothing.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from .constants import GENERATED, KIND_ORDER, SOURCES_ANNOTATION, TRAFFIC_EXTENSION, is_generated
from .diagnostics import Diagnostics
from .ir import Program
from .load import Document, Passthrough, apply_default_namespace, load_inputs, load_text, register_secrets
from .resolve import Options, Sourced, resolve
from .schema import check_document


@dataclass
class Result:
    diagnostics: Diagnostics
    program: Program | None = None
    objects: list[dict] = field(default_factory=list)
    #: other Kubernetes objects of the input, in input order (``compile_paths(passthrough=True)``)
    passthrough: list[Passthrough] = field(default_factory=list)
    #: how many LLMProvider/LLMRoute documents the input held
    sources: int = 0

    @property
    def ok(self) -> bool:
        return not self.diagnostics.has_errors


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cyclic GC: compiling allocates millions of acyclic objects, and the GC's
    repeated full scans made large meshes superlinear (docs/performance.md)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def compile_documents(docs: list[Document], opts: Options, diags: Diagnostics) -> Result:
    with gc_paused():
        return _compile_documents(docs, opts, diags)


def _compile_documents(docs: list[Document], opts: Options, diags: Diagnostics) -> Result:
    from .options import ISTIO_LIMITS

    if opts.istio_version in ISTIO_LIMITS:
        diags.warning("LLMC011", ISTIO_LIMITS[opts.istio_version], file="--istio-version",
                      hint="upgrade the mesh to Istio 1.29 or newer for request bodies over 1 MiB "
                      "(docs/data-plane.md#supported-istio-and-envoy-versions)")
    for d in docs:  # before any stage reports: a schema message may print a list of keys
        register_secrets(d.data, diags)
    items = []
    for d in docs:
        obj = check_document(d, diags)
        if obj is not None:
            items.append(Sourced(d, obj))
    if diags.has_errors:
        return Result(diags)
    program = resolve(items, opts, diags)
    if program is None or diags.has_errors:
        return Result(diags)
    try:
        objects = translate_program(program)
    except Exception as exc:  # a bug: report it like any problem, write nothing
        diags.error("LLMC901", f"internal error while generating output: {type(exc).__name__}: {exc}",
                    hint="this is a bug in llmc; please report it with the input that triggers it")
        return Result(diags, program)
    check_sizes(objects, diags, docs)
    check_inline_code(objects, diags, docs)
    if diags.has_errors:
        return Result(diags, program)
    return Result(diags, program, objects)


#: ``kubectl apply`` (client side) keeps the whole object in an annotation, and annotations may
#: hold 256 KiB in all; etcd refuses requests over 1.5 MiB (its default ``--max-request-bytes``).
APPLY_ANNOTATION_LIMIT = 256 * 1024
ETCD_OBJECT_LIMIT = 1536 * 1024


def _source_position(sources: str, docs: list[Document]) -> dict[str, object]:
    """Where to report a problem of a generated object: at the first LLMRoute it is generated from
    (its rules make it large), else at its first source; the file names the input, not ``<input>``."""
    by_label = {d.label: d for d in docs}
    labels = [s.strip() for s in sources.split(",")]
    found = [by_label[x] for x in labels if x in by_label]
    routes = [d for d in found if d.kind == "LLMRoute"]
    if routes:
        return {k: v for k, v in routes[0].where(("spec", "rules")).items() if k != "object"}
    if found:
        return {k: v for k, v in found[0].where(()).items() if k not in ("object", "path")}
    return {}


def check_sizes(objects: list[dict], diags: Diagnostics, docs: list[Document] = ()) -> None:  # type: ignore[assignment]
    """Objects Kubernetes would refuse (or `kubectl apply` could not track), named with their sources
    and located at the LLMRoute they come from."""
    for obj in objects:
        size = len(json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode())
        if size <= APPLY_ANNOTATION_LIMIT:
            continue
        meta = obj["metadata"]
        sources = meta["annotations"][SOURCES_ANNOTATION]
        where = {"object": f"{obj['kind']} {meta['namespace']}/{meta['name']}", **_source_position(sources, docs)}
        if size > ETCD_OBJECT_LIMIT:
            diags.error("LLMC233", f"the object is {size // 1024} KiB; etcd stores at most 1536 KiB per object",
                        **where, hint=f"it is generated from {sources}: split the LLMRoute's rules over several "
                        "LLMRoutes (hosts), or move providers to other LLMRoutes")
        else:
            diags.warning("LLMC232", f"the object is {size // 1024} KiB (generated from {sources}); client-side "
                          "`kubectl apply` cannot keep more than 256 KiB in its last-applied annotation",
                          **where, hint="apply it server-side: `llmc render … | kubectl apply --server-side "
                          "--field-manager=llmc -f -` (Argo CD: ServerSideApply=true; the llmc controller always "
                          "does); see docs/failover.md#applying-large-objects")


def check_inline_code(objects: list[dict], diags: Diagnostics, docs: list[Document] = ()) -> None:  # type: ignore[assignment]
    """Ambient target: a TrafficExtension's ``lua.inlineCode`` holds at most 65,536 characters (Istio
    1.30's CRD); the Lua bundle takes most of it, the route table of the waypoint's sources the rest."""
    from .translate.trafficextension import INLINE_CODE_LIMIT, WRAP_TAIL

    for obj in objects:
        if obj["kind"] != TRAFFIC_EXTENSION:
            continue
        code = obj["spec"]["lua"]["inlineCode"]
        size, lua = len(code), code.split(WRAP_TAIL, 1)[0]
        if size <= INLINE_CODE_LIMIT:
            continue
        meta = obj["metadata"]
        sources = meta["annotations"][SOURCES_ANNOTATION]
        waypoint = f"{meta['namespace']}/{obj['spec']['targetRefs'][0]['name']}"
        diags.error("LLMC279", f"the TrafficExtension for waypoint {waypoint} would hold {size} characters of Lua "
                    f"(the bundle {len(lua)}, the route table of {sources} the rest); Istio accepts at most "
                    f"{INLINE_CODE_LIMIT}", object=f"TrafficExtension {meta['namespace']}/{meta['name']}",
                    **_source_position(sources, docs),
                    hint="serve fewer routes from this waypoint: give other namespaces their own waypoint "
                    "(--waypoint NAME), or split the providers over several waypoints (docs/ambient.md#size)")


def translate_program(program: Program) -> list[dict]:
    from .render import render_object
    from .translate import TRANSLATORS

    objects = []
    for kind, template, translator in TRANSLATORS:
        for view in translator(program):
            obj = render_object(template, view)
            assert obj["kind"] == kind and obj["apiVersion"] == GENERATED[kind].api_version, (template, obj["kind"])
            objects.append(obj)
    return sorted(objects, key=lambda o: (KIND_ORDER[o["kind"]], o["metadata"]["namespace"],
                                          o["metadata"]["name"]))


def compile_paths(inputs: list[str], opts: Options, passthrough: bool = False) -> Result:
    """Compile files, directories or ``-``. With ``passthrough`` the result also carries the input's
    other Kubernetes objects, minus objects llmc generated earlier when there are sources to
    generate them afresh (so an app folder holding rendered output yields each object once)."""
    diags = Diagnostics()
    keep: list[Passthrough] | None = [] if passthrough else None
    with gc_paused():
        docs = load_inputs(inputs, opts.namespace, diags, keep)
    result = compile_documents(docs, opts, diags)
    result.sources = len(docs)
    if keep:
        result.passthrough = [p for p in keep if not (docs and is_generated(p.data))]
    return result


def compile_text(text: str, opts: Options, name: str = "<input>") -> Result:
    diags = Diagnostics()
    docs = apply_default_namespace(load_text(name, text, diags), opts.namespace)
    return compile_documents(docs, opts, diags)
