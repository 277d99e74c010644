"""Stage 1, load: read YAML files, directories and stdin into documents that remember positions.

Documents are loaded with libyaml (PyYAML's C loader, YAML 1.1 like kubectl; duplicate keys are
errors, as with ``kubectl apply``) into plain ``dict``/``list`` values. Positions are needed only
for diagnostics, so they are computed lazily: the first time a diagnostic asks for one, the file
is parsed again with ruamel's round-trip loader, which keeps the line and column of every key and
list item, flattened into
``positions[path] = (line, col)`` (1-based) for ``spec.rules[0].backendRefs[1].providerHost``.
(The round-trip loader is pure Python and ~20× slower; large meshes compile without it.)

Only ``LLMProvider`` and ``LLMRoute`` documents are returned; other kinds are reported as notes
(they are ignored, which lets users point llmc at a directory that also holds Deployments).
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from .diagnostics import Diagnostics

API_GROUP = "istio.alibabacloud.com"
API_VERSIONS = ("v1beta1",)
KINDS = ("LLMProvider", "LLMRoute")
YAML_SUFFIXES = (".yaml", ".yml", ".json")

Path_ = tuple[str | int, ...]


class SourceText:
    """A file's text; parsed with the round-trip loader on demand, for positions."""

    def __init__(self, text: str):
        self.text = text
        self._positions: list[dict[Path_, tuple[int, int]]] | None = None

    def positions(self, index: int) -> dict[Path_, tuple[int, int]]:
        if self._positions is None:
            self._positions = []
            for raw in YAML(typ="rt").load_all(io.StringIO(self.text)):
                found: dict[Path_, tuple[int, int]] = {}
                if isinstance(raw, CommentedMap | CommentedSeq):
                    found[()] = (raw.lc.line + 1, raw.lc.col + 1)
                _positions(raw, (), found)
                self._positions.append(found)
        return self._positions[index] if index < len(self._positions) else {}


@dataclass
class Document:
    """One LLMProvider or LLMRoute document as the user wrote it."""

    file: str
    data: dict[str, Any]
    source: SourceText | None = None
    index: int = 0  # position of the document in its file (for positions and stable ordering)

    @property
    def positions(self) -> dict[Path_, tuple[int, int]]:
        return self.source.positions(self.index) if self.source is not None else {}

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
        probe = tuple(path)
        while probe not in self.positions and probe:
            probe = probe[:-1]
        line, col = self.positions.get(probe, (0, 0))
        return {"file": self.file, "line": line, "col": col, "object": self.label,
                "path": format_path(path)}


def format_path(path: Iterable[str | int]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _positions(node: Any, path: Path_, out: dict[Path_, tuple[int, int]]) -> None:
    """Record 1-based positions of every key and list item under ``node``."""
    if isinstance(node, CommentedMap):
        for key, value in node.items():
            sub = path + (str(key),)
            try:
                line, col = node.lc.key(key)
                out[sub] = (line + 1, col + 1)
            except (KeyError, TypeError):
                pass
            _positions(value, sub, out)
    elif isinstance(node, CommentedSeq):
        for i, value in enumerate(node):
            sub = path + (i,)
            try:
                line, col = node.lc.item(i)
                out[sub] = (line + 1, col + 1)
            except (KeyError, TypeError, IndexError):
                pass
            _positions(value, sub, out)


def _register_secrets(node: Any, diags: Diagnostics) -> None:
    """Literal ``apiKey`` values are masked in every diagnostic from the start."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "apiKey" and isinstance(value, str) and len(value) >= 4:
                diags.register_secret(value)
            else:
                _register_secrets(value, diags)
    elif isinstance(node, list):
        for value in node:
            _register_secrets(value, diags)


def expand_inputs(inputs: list[str], diags: Diagnostics) -> list[tuple[str, str]]:
    """Resolve FILE|DIR|- arguments to ``(display name, text)`` pairs, directories recursively."""
    sources: list[tuple[str, str]] = []
    for item in inputs:
        if item == "-":
            sources.append(("<stdin>", sys.stdin.read()))
            continue
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in YAML_SUFFIXES)
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


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """libyaml's safe loader, refusing duplicate mapping keys."""


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


def load_text(name: str, text: str, diags: Diagnostics) -> list[Document]:
    try:
        raw_docs = list(yaml.load_all(text, Loader=_Loader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        problem = exc.problem or exc.context or "invalid YAML"
        diags.error("LLMC001", f"YAML syntax error: {problem}", file=name, line=line, col=col)
        return []
    except yaml.YAMLError as exc:
        diags.error("LLMC001", f"YAML error: {exc}".splitlines()[0], file=name)
        return []
    source = SourceText(text)
    docs: list[Document] = []
    for index, data in enumerate(raw_docs):
        if data is None:
            continue
        doc = Document(file=name, data=data, source=source, index=index)
        if not isinstance(data, dict) or "kind" not in data or "apiVersion" not in data:
            diags.error("LLMC002", "document is not a Kubernetes object (needs apiVersion and kind)",
                        **{**doc.where(()), "object": "", "path": ""})
            continue
        _register_secrets(data, diags)
        api_version = str(data.get("apiVersion", ""))
        if doc.kind not in KINDS:
            diags.note("LLMC002", f"ignoring {doc.kind} {doc.name or '<unnamed>'} ({api_version}): "
                       "llmc compiles only LLMProvider and LLMRoute", **doc.where(("kind",)))
            continue
        group, _, version = api_version.partition("/")
        if group != API_GROUP or version not in API_VERSIONS:
            diags.error("LLMC005", f"unsupported apiVersion {api_version!r} for {doc.kind}",
                        **doc.where(("apiVersion",)),
                        hint=f"use {API_GROUP}/{API_VERSIONS[-1]}")
            continue
        docs.append(doc)
    return docs


def load_inputs(inputs: list[str], default_namespace: str, diags: Diagnostics) -> list[Document]:
    docs: list[Document] = []
    for name, text in expand_inputs(inputs, diags):
        docs.extend(load_text(name, text, diags))
    return apply_default_namespace(docs, default_namespace)


def apply_default_namespace(docs: list[Document], namespace: str) -> list[Document]:
    """Objects without ``metadata.namespace`` belong to ``namespace`` (kubectl's ``-n``)."""
    for doc in docs:
        meta = doc.data.get("metadata")
        if isinstance(meta, dict) and not meta.get("namespace"):
            meta["namespace"] = namespace
    return docs
