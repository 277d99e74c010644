"""Stage 1, load: read YAML files, directories and stdin into documents that remember positions.

ruamel's round-trip loader keeps the line and column of every key and list item; we flatten that
into ``positions[path] = (line, col)`` (1-based) so later stages can point a diagnostic at
``spec.rules[0].backendRefs[1].providerHost`` in the user's file. Documents are converted to plain
``dict``/``list`` values at once, so no later stage depends on ruamel types.

Only ``LLMProvider`` and ``LLMRoute`` documents are returned; other kinds are reported as notes
(they are ignored, which lets users point llmc at a directory that also holds Deployments).
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from .diagnostics import Diagnostics

API_GROUP = "istio.alibabacloud.com"
API_VERSIONS = ("v1beta1",)
KINDS = ("LLMProvider", "LLMRoute")
YAML_SUFFIXES = (".yaml", ".yml", ".json")

Path_ = tuple[str | int, ...]


@dataclass
class Document:
    """One LLMProvider or LLMRoute document as the user wrote it."""

    file: str
    data: dict[str, Any]
    positions: dict[Path_, tuple[int, int]] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return str(self.data.get("kind", ""))

    @property
    def name(self) -> str:
        meta = self.data.get("metadata")
        return str(meta.get("name", "")) if isinstance(meta, dict) else ""

    @property
    def namespace(self) -> str:
        meta = self.data.get("metadata")
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


def _plain(node: Any, path: Path_, positions: dict[Path_, tuple[int, int]]) -> Any:
    """Convert ruamel nodes to plain Python, recording 1-based positions of keys and items."""
    if isinstance(node, CommentedMap):
        out: dict[str, Any] = {}
        for key, value in node.items():
            sub = path + (str(key),)
            try:
                line, col = node.lc.key(key)
                positions[sub] = (line + 1, col + 1)
            except (KeyError, TypeError):
                pass
            out[str(key)] = _plain(value, sub, positions)
        return out
    if isinstance(node, CommentedSeq):
        items = []
        for i, value in enumerate(node):
            sub = path + (i,)
            try:
                line, col = node.lc.item(i)
                positions[sub] = (line + 1, col + 1)
            except (KeyError, TypeError, IndexError):
                pass
            items.append(_plain(value, sub, positions))
        return items
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    return node


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


def load_text(name: str, text: str, diags: Diagnostics) -> list[Document]:
    yaml = YAML(typ="rt")
    docs: list[Document] = []
    try:
        raw_docs = list(yaml.load_all(io.StringIO(text)))
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        problem = exc.problem or exc.context or "invalid YAML"
        diags.error("LLMC001", f"YAML syntax error: {problem}", file=name, line=line, col=col)
        return []
    except Exception as exc:  # ruamel raises a few unmarked errors (e.g. duplicate keys)
        diags.error("LLMC001", f"YAML error: {exc}".splitlines()[0], file=name)
        return []
    for raw in raw_docs:
        if raw is None:
            continue
        positions: dict[Path_, tuple[int, int]] = {}
        if isinstance(raw, CommentedMap):
            positions[()] = (raw.lc.line + 1, raw.lc.col + 1)
        data = _plain(raw, (), positions)
        if not isinstance(data, dict) or "kind" not in data or "apiVersion" not in data:
            line, col = positions.get((), (0, 0))
            diags.error("LLMC002", "document is not a Kubernetes object (needs apiVersion and kind)",
                        file=name, line=line, col=col)
            continue
        _register_secrets(data, diags)
        doc = Document(file=name, data=data, positions=positions)
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
