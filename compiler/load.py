"""Stage 1, load: read YAML files, directories and stdin into documents that remember positions.

Documents are loaded with libyaml (PyYAML's C loader, YAML 1.1 like kubectl; duplicate keys are
errors, as with ``kubectl apply``) into plain ``dict``/``list`` values. Each document also keeps
the start marks of that same parse's nodes, boiled down to a tree of ``(line, col, children)``
(a third of the node tree's memory), so a diagnostic's position (1-based line and column of the
key, or of the list item, at a field path such as ``spec.rules[0].backendRefs[1].providerHost``)
is a walk down the path. Nothing is parsed twice: thousands of diagnostics cost no more than the
walks. (Until 2026-11 the first
diagnostic re-parsed the file with ruamel's pure-Python round-trip loader, which made inputs with
literal API keys, one warning each, compile 2–3× slower.)

Only ``LLMProvider`` and ``LLMRoute`` documents are returned; other kinds are reported as notes
(they are ignored, which lets users point llmc at a directory that also holds Deployments).

Directories are read recursively (``*.yaml``, ``*.yml``, ``*.json``), skipping hidden files and
folders (``.git``, ``.venv``, ``.github``: never manifests, and a virtualenv alone holds thousands
of YAML files). With ``passthrough`` (``llmc render --passthrough``, a whole Argo CD/Flux app
folder) other Kubernetes objects are kept as :class:`Passthrough` — their source text, byte for
byte — and a file that holds no Kubernetes object at all (``Taskfile.yml``, a dashboard JSON) is
skipped, all such files named in one note. A YAML syntax error is still an error there: the file
might be an LLMProvider, and dropping it silently would delete its generated objects downstream.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .constants import API_VERSION, GROUP, KINDS, SERVED_VERSIONS
from .diagnostics import Diagnostics

YAML_SUFFIXES = (".yaml", ".yml", ".json")

Path_ = tuple[str | int, ...]


#: (line, col, children): 0-based start of a key or list item; children are a dict by key for a
#: mapping, a list for a sequence, None for a scalar.
Marks = tuple[int, int, "dict[str, Marks] | list[Marks] | None"]


def _marks(node: yaml.Node, mapping=yaml.MappingNode, sequence=yaml.SequenceNode, scalar=yaml.ScalarNode):
    """The children of ``node`` with their start marks (keys for mappings, items for sequences)."""
    cls = node.__class__
    if cls is mapping:
        return {k.value: (k.start_mark.line, k.start_mark.column,
                          None if v.__class__ is scalar else _marks(v))
                for k, v in node.value if k.__class__ is scalar}
    if cls is sequence:
        return [(v.start_mark.line, v.start_mark.column, None if v.__class__ is scalar else _marks(v))
                for v in node.value]
    return None


def marks_position(marks: Marks | None, path: Path_) -> tuple[int, int]:
    """1-based (line, col) of the deepest part of ``path`` found in ``marks``: the key of a mapping
    entry, the start of a list item, or the document itself for the empty path; (0, 0) without
    marks."""
    if marks is None:
        return (0, 0)
    line, col, children = marks
    for part in path:
        if isinstance(children, dict) and isinstance(part, str) and part in children:
            line, col, children = children[part]
        elif isinstance(children, list) and isinstance(part, int) and 0 <= part < len(children):
            line, col, children = children[part]
        else:
            break
    return (line + 1, col + 1)


@dataclass
class Document:
    """One LLMProvider or LLMRoute document as the user wrote it."""

    file: str
    data: dict[str, Any]
    marks: Marks | None = None  # where libyaml found each key and list item, for positions
    index: int = 0  # position of the document in its file (for stable ordering)

    def position(self, path: Path_ = ()) -> tuple[int, int]:
        """1-based (line, col) of ``path``, or of its nearest ancestor found in the source."""
        return marks_position(self.marks, tuple(path))

    @property
    def kind(self) -> str:
        return str(self.data.get("kind", "")) if isinstance(self.data, dict) else ""

    @property
    def name(self) -> str:
        meta = self.data.get("metadata") if isinstance(self.data, dict) else None
        return str(meta.get("name", "")) if isinstance(meta, dict) else ""

    @property
    def namespace(self) -> str:
        meta = self.data.get("metadata") if isinstance(self.data, dict) else None
        return str(meta.get("namespace", "") or "") if isinstance(meta, dict) else ""

    @property
    def label(self) -> str:
        name = self.name or "<unnamed>"
        return f"{self.kind} {self.namespace}/{name}" if self.namespace else f"{self.kind} {name}"

    def where(self, path: Path_ = ()) -> dict[str, Any]:
        """Keyword arguments for a diagnostic at ``path`` (nearest known ancestor position)."""
        line, col = self.position(path)
        return {"file": self.file, "line": line, "col": col, "object": self.label,
                "path": format_path(path)}


@dataclass
class Passthrough:
    """Another Kubernetes object of the input, passed through as written (``--passthrough``)."""

    file: str
    text: str  # the document's source text (JSON re-encoded when only the JSON parser could read it)
    data: dict[str, Any]


def format_path(path: Iterable[str | int]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def register_secrets(node: Any, diags: Diagnostics) -> None:
    """Literal ``apiKey`` and ``apiKeys`` values are masked in every diagnostic from the start (the
    pipeline calls it for every document, however it was read: a file, or the API server's object)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "apiKey" and isinstance(value, str) and len(value) >= 4:
                diags.register_secret(value)
            elif key == "apiKeys" and isinstance(value, list):
                for v in value:
                    if isinstance(v, str) and len(v) >= 4:
                        diags.register_secret(v)
            else:
                register_secrets(value, diags)
    elif isinstance(node, list):
        for value in node:
            register_secrets(value, diags)


def expand_inputs(inputs: list[str], diags: Diagnostics) -> list[tuple[str, str]]:
    """Resolve FILE|DIR|- arguments to ``(display name, text)`` pairs, directories recursively."""
    sources: list[tuple[str, str]] = []
    for item in inputs:
        if item == "-":
            sources.append(("<stdin>", sys.stdin.read()))
            continue
        path = Path(item)
        if path.is_dir():
            files = walk(path)
        elif path.is_file():
            files = [path]
        else:
            diags.error("LLMC004", f"no such file or directory: {item}", file=item)
            continue
        for f in files:
            try:
                sources.append((str(f), f.read_text(encoding="utf-8")))
            except (OSError, UnicodeDecodeError) as exc:
                diags.error("LLMC004", f"cannot read file: {exc}", file=str(f))
    return sources


def walk(root: Path) -> list[Path]:
    """Manifest files under ``root``, sorted; hidden files and folders are not entered."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(folder, f) for f in files if not f.startswith(".") and Path(f).suffix in YAML_SUFFIXES]
    return sorted(found)


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """libyaml's safe loader, refusing duplicate mapping keys; keeps each document's marks."""

    marks: list[Marks]

    def construct_document(self, node: yaml.Node) -> Any:
        self.marks.append((node.start_mark.line, node.start_mark.column, _marks(node)))
        return super().construct_document(node)


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = key_node.value if isinstance(key_node, yaml.ScalarNode) else id(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
# An unquoted date (`apiVersion: 2024-10-21`) stays the text it is, as the API server reads it
# (sigs.k8s.io/yaml turns YAML timestamps into JSON strings), not a date object no field accepts.
_Loader.add_constructor("tag:yaml.org,2002:timestamp", lambda loader, node: loader.construct_scalar(node))


def parse_text(name: str, text: str, diags: Diagnostics) -> tuple[list[Any], list[Marks | None]] | None:
    """All documents of a file as plain data, with their marks; ``None`` (and an LLMC001 error) when
    it is not YAML. A ``.json`` file libyaml cannot read (YAML 1.1 is not quite a JSON superset) is
    read as JSON (without marks: its diagnostics name the file only)."""
    loader = _Loader(text)
    loader.marks = []
    try:
        raw_docs = []
        while loader.check_data():
            raw_docs.append(loader.get_data())
        return raw_docs, list(loader.marks)
    except yaml.YAMLError as exc:
        if name.endswith(".json"):
            try:
                return [json.loads(text)], [None]
            except ValueError:
                pass
        if isinstance(exc, yaml.MarkedYAMLError):
            mark = exc.problem_mark or exc.context_mark
            line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
            problem = exc.problem or exc.context or "invalid YAML"
            hint = ""
            lines = text.splitlines()
            if "tab" in problem or "\t" in (lines[line - 1] if 0 < line <= len(lines) else ""):
                hint = "YAML does not allow tabs for indentation: indent with spaces"
            diags.error("LLMC001", f"YAML syntax error: {problem}", file=name, line=line, col=col, hint=hint)
        else:
            diags.error("LLMC001", f"YAML error: {exc}".splitlines()[0], file=name)
        return None
    finally:
        loader.dispose()


def is_object(data: Any) -> bool:
    return isinstance(data, dict) and "kind" in data and "apiVersion" in data


def load_text(name: str, text: str, diags: Diagnostics, keep: list[Passthrough] | None = None) -> list[Document]:
    """The LLMProvider/LLMRoute documents of one file. With ``keep``, other Kubernetes objects are
    appended to it (passthrough) instead of being noted as ignored."""
    parsed = parse_text(name, text, diags)
    return [] if parsed is None else _documents(name, text, parsed, diags, keep)


#: Fields the API server sets on every object; ``kubectl get -o yaml`` prints them. They are dropped on
#: load so that an exported object compiles to the same output as the manifest it came from.
SERVER_METADATA = ("resourceVersion", "uid", "generation", "creationTimestamp", "managedFields", "selfLink",
                   "deletionTimestamp", "deletionGracePeriodSeconds")
#: kubectl's copy of the last applied manifest (client-side apply), a JSON string that may hold a key
SERVER_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)

LIST_KINDS = ("List",)  # kubectl's `get … -o yaml` of several objects; `<Kind>List` kinds too


def _is_list(data: Any) -> bool:
    """A ``v1`` ``List`` (what ``kubectl get a,b -o yaml`` prints) or a typed ``…List``
    (``LLMProviderList``) holding ``items``."""
    kind = str(data.get("kind", ""))
    return (kind in LIST_KINDS or kind.endswith("List")) and isinstance(data.get("items"), list)


def strip_server_fields(data: dict[str, Any]) -> None:
    """Remove what the API server adds (``status``, ``metadata.uid``, ``resourceVersion``,
    ``managedFields``, …, and kubectl's last-applied annotation): it is not part of the manifest,
    and it changes on every read, which would make the output differ from run to run."""
    data.pop("status", None)
    meta = data.get("metadata")
    if not isinstance(meta, dict):
        return
    for key in SERVER_METADATA:
        meta.pop(key, None)
    annotations = meta.get("annotations")
    if isinstance(annotations, dict):
        for key in SERVER_ANNOTATIONS:
            annotations.pop(key, None)
        if not annotations:
            del meta["annotations"]


def _flatten(raw_docs: list[Any], marks: list[Marks | None]):
    """``(document index, item index or None, data, marks)`` for every object of a file: the items of
    a ``List`` document come one by one, each with its own marks (so that a diagnostic points into
    the right item)."""
    for index, (data, doc_marks) in enumerate(zip(raw_docs, marks, strict=True)):
        if is_object(data) and _is_list(data):
            children = doc_marks[2] if doc_marks is not None else None
            item_marks = children.get("items") if isinstance(children, dict) else None
            listed = item_marks[2] if item_marks is not None and isinstance(item_marks[2], list) else None
            for i, item in enumerate(data["items"]):
                yield index, i, item, (listed[i] if listed is not None and i < len(listed) else None)
        else:
            yield index, None, data, doc_marks


def _documents(name: str, text: str, parsed: tuple[list[Any], list[Marks | None]], diags: Diagnostics,
               keep: list[Passthrough] | None) -> list[Document]:
    raw_docs, marks = parsed
    spans: list[str] | None = None
    docs: list[Document] = []
    for order, (index, item, data, doc_marks) in enumerate(_flatten(raw_docs, marks)):
        if data is None:
            continue
        doc = Document(file=name, data=data, marks=doc_marks, index=order)
        if not is_object(data):
            where = "document" if item is None else f"item {item} of the List"
            diags.error("LLMC002", f"{where} is not a Kubernetes object (needs apiVersion and kind)",
                        **{**doc.where(()), "object": "", "path": ""})
            continue
        register_secrets(data, diags)
        api_version = str(data.get("apiVersion", ""))
        if doc.kind not in KINDS:
            if keep is not None:
                if item is None:
                    spans = _spans(text, len(raw_docs)) if spans is None else spans
                    keep.append(Passthrough(name, spans[index], data))
                else:  # an item of a List: its own document, re-encoded (JSON is valid YAML)
                    keep.append(Passthrough(name, json.dumps(data, indent=2, ensure_ascii=False) + "\n", data))
                continue
            diags.note("LLMC008", f"ignoring {doc.kind} {doc.name or '<unnamed>'} ({api_version}): "
                       "llmc compiles only LLMProvider and LLMRoute", **doc.where(("kind",)),
                       hint=_kind_hint(doc.kind))
            continue
        group, _, version = api_version.partition("/")
        if group != GROUP or version not in SERVED_VERSIONS:
            diags.error("LLMC005", f"unsupported apiVersion {api_version!r} for {doc.kind}",
                        **doc.where(("apiVersion",)),
                        hint=f"use {API_VERSION}")
            continue
        strip_server_fields(data)
        docs.append(doc)
    return docs


def _kind_hint(kind: str) -> str:
    """Did-you-mean for a kind that is almost one of llmc's (``LLMProviders``, ``llmroute``)."""
    import difflib

    by_lower = {k.lower(): k for k in KINDS}
    close = difflib.get_close_matches(kind.lower(), list(by_lower), n=1, cutoff=0.8)
    return f"did you mean kind: {by_lower[close[0]]}?" if close else ""


def _spans(text: str, count: int) -> list[str]:
    """The source text of each document (from its root node to the next document), for passthrough.
    A file only the JSON parser could read has one document: it is re-encoded as JSON (valid YAML)."""
    try:
        nodes = list(yaml.compose_all(text, Loader=_Loader))
    except yaml.YAMLError:
        return [json.dumps(json.loads(text), indent=2, ensure_ascii=False) + "\n"]
    out = [text[n.start_mark.index:n.end_mark.index].rstrip() + "\n" if n is not None else "" for n in nodes]
    assert len(out) == count, "compose_all and load_all disagree on the documents"
    return out


def load_inputs(inputs: list[str], default_namespace: str, diags: Diagnostics,
                keep: list[Passthrough] | None = None) -> list[Document]:
    """Documents of every input. With ``keep`` (passthrough), other Kubernetes objects go there and
    files without any Kubernetes object are skipped, named in one note."""
    docs: list[Document] = []
    skipped: list[str] = []
    for name, text in expand_inputs(inputs, diags):
        parsed = parse_text(name, text, diags)
        if parsed is None:
            continue
        if keep is not None and not any(is_object(d) for d in parsed[0]):
            skipped.append(name)
            continue
        docs.extend(_documents(name, text, parsed, diags, keep))
    if skipped:
        shown = ", ".join(skipped[:10]) + (f", … ({len(skipped) - 10} more)" if len(skipped) > 10 else "")
        diags.note("LLMC009", f"skipped {len(skipped)} file(s) that hold no Kubernetes object: {shown}",
                   file=", ".join(inputs))
    return apply_default_namespace(docs, default_namespace)


def apply_default_namespace(docs: list[Document], namespace: str) -> list[Document]:
    """Objects without ``metadata.namespace`` belong to ``namespace`` (kubectl's ``-n``)."""
    for doc in docs:
        meta = doc.data.get("metadata")
        if isinstance(meta, dict) and not meta.get("namespace"):
            meta["namespace"] = namespace
    return docs
