"""GitOps pipeline support: one file per object (``--out-dir``), drift checks (``--check``), and
the KRM function (``llmc krm``) for kustomize and kpt.

* ``--out-dir DIR`` writes ``DIR/<namespace>/<kind>-<name>.yaml`` (lower-case kind), one object per
  file, so Git diffs stay small. It records what it wrote in ``DIR/.llmc-files`` and, on the next
  run, removes files it wrote before and no longer produces — only those, and only when they
  still carry llmc's ``managed-by`` label; any other file in DIR is never touched.
* ``--check PATH`` renders afresh and compares with what is committed at PATH (a directory written
  by ``--out-dir``, or a file written from ``render`` stdout); differences are a unified diff.
* ``llmc krm`` reads a ``config.kubernetes.io/v1`` ``ResourceList`` on stdin and writes one on stdout:
  LLMProvider/LLMRoute items are compiled (and, unless ``functionConfig.data.keepSources`` is
  ``"true"``, removed), the generated objects are appended, every other item passes through as it
  was (objects llmc generated in an earlier run are replaced when there are sources), and
  diagnostics become ``results`` with severity, message, ``resourceRef`` and ``field.path``.
  :func:`transform` is the function itself; the kustomize plugin (``compiler/kustomize.py``) runs it
  on kustomize's resource stream. Unknown options are errors (``LLMC007``): under ``kpt fn eval``
  in place, a mistyped ``keepSources`` would otherwise delete the user's sources.
"""

from __future__ import annotations

import difflib
import io
from pathlib import Path
from typing import Any

from .constants import API_VERSION, GROUP, KINDS, is_generated
from .emit import dump_yaml, iter_yaml
from .options import FUNCTION_OPTIONS

MANIFEST = ".llmc-files"


def object_path(obj: dict) -> str:
    meta = obj["metadata"]
    return f"{meta.get('namespace', '_cluster')}/{obj['kind'].lower()}-{meta['name']}.yaml"


def out_dir_files(objects: list[dict]) -> dict[str, str]:
    return {object_path(o): text for o, text in zip(objects, iter_yaml(objects), strict=True)}


def write_out_dir(directory: Path, files: dict[str, str]) -> tuple[list[str], list[str]]:
    """Write ``files``; remove stale files of an earlier run. Returns (changed, removed)."""
    manifest = directory / MANIFEST
    previous = set(manifest.read_text().split()) if manifest.exists() else set()
    changed, removed = [], []
    for rel, text in sorted(files.items()):
        path = directory / rel
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            changed.append(rel)
    for rel in sorted(previous - set(files)):
        path = directory / rel
        if path.is_file() and _only_generated(path):
            path.unlink()
            removed.append(rel)
            if path.parent != directory and not any(path.parent.iterdir()):
                path.parent.rmdir()
    directory.mkdir(parents=True, exist_ok=True)
    manifest.write_text("".join(f"{rel}\n" for rel in sorted(files)), encoding="utf-8")
    return changed, removed


def _only_generated(path: Path) -> bool:
    """True when every document of the file is an object llmc generated (never a hand-written file,
    even one that mentions llmc's label)."""
    import yaml

    try:
        docs = [d for d in yaml.load_all(path.read_text(encoding="utf-8"), Loader=yaml.CSafeLoader) if d is not None]
    except (yaml.YAMLError, UnicodeDecodeError):
        return False
    return bool(docs) and all(is_generated(d) for d in docs)


def check(path: Path, objects: list[dict]) -> str:
    """A unified diff between what is committed at ``path`` and a fresh render ("" when equal)."""
    if path.is_dir():
        files = out_dir_files(objects)
        manifest = path / MANIFEST
        committed = set(manifest.read_text().split()) if manifest.exists() else set()
        diffs = []
        for rel in sorted(committed | set(files)):
            old = (path / rel).read_text(encoding="utf-8") if (path / rel).is_file() else ""
            new = files.get(rel, "")
            if old != new:
                diffs.append("".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True),
                                                          f"a/{rel}", f"b/{rel}")))
        return "".join(diffs)
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    new = dump_yaml(objects)
    if old == new:
        return ""
    return "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), f"a/{path}", f"b/{path}"))


# ------------------------------------------------------------------------------------------------
# KRM function


def _ruamel():
    from ruamel.yaml import YAML

    y = YAML(typ="rt")
    y.width = 4096
    y.indent(mapping=2, sequence=2, offset=0)
    y.preserve_quotes = True
    return y


def _for_ruamel(value):
    """Plain data → ruamel scalars that round-trip: literal blocks for the Lua source, and
    double quotes (with escapes) for strings ruamel would otherwise write raw but read back
    differently (NEL, line/paragraph separators, control characters)."""
    from ruamel.yaml.scalarstring import DoubleQuotedScalarString, LiteralScalarString

    from .emit import _NEEDS_ESCAPE, _literal_ok

    if isinstance(value, dict):
        return {k: _for_ruamel(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_for_ruamel(v) for v in value]
    if isinstance(value, str):
        if "\n" in value and _literal_ok(value):
            return LiteralScalarString(value)
        if "\n" in value or not _NEEDS_ESCAPE.isdisjoint(value):
            return DoubleQuotedScalarString(value)
    return value




def _text_or_list(value: object) -> str | list[str] | None:
    if value is None:
        return None
    return [str(v) for v in value] if isinstance(value, list) else str(value)


def krm(text: str) -> tuple[str, int]:
    """Run the KRM function on a ResourceList; returns (output ResourceList YAML, exit code)."""
    from .diagnostics import Severity

    y = _ruamel()
    rl = y.load(io.StringIO(text)) if text.strip() else None
    if not isinstance(rl, dict) or rl.get("kind") != "ResourceList":
        out = {"apiVersion": "config.kubernetes.io/v1", "kind": "ResourceList", "items": [],
               "results": [{"message": "llmc krm: stdin is not a config.kubernetes.io/v1 ResourceList",
                            "severity": "error"}]}
        return dump_yaml([out])[4:], 1
    config = (rl.get("functionConfig") or {}).get("data") or {}
    out_items, result = transform(rl.get("items") or [], config, y)
    results = []
    for d in result.diagnostics.sorted():
        entry: dict[str, Any] = {"message": f"{d.code}: {d.message}" + (f" (hint: {d.hint})" if d.hint else ""),
                 "severity": {Severity.ERROR: "error", Severity.WARNING: "warning"}.get(d.severity, "info")}
        if d.object:
            kind, _, ref = d.object.partition(" ")
            ns, _, nm = ref.rpartition("/")
            entry["resourceRef"] = {"apiVersion": API_VERSION, "kind": kind, "name": nm,
                                    **({"namespace": ns} if ns else {})}
        if d.path:
            entry["field"] = {"path": d.path}
        if d.file:
            entry["file"] = {"path": d.file}
        results.append(entry)
    rl["items"] = out_items
    if results:
        rl["results"] = results
    elif "results" in rl:
        del rl["results"]
    buf = io.StringIO()
    y.dump(rl, buf)
    return buf.getvalue(), 0 if result.ok else 1


def transform(items: list, config: dict, y=None, config_file: str = "functionConfig", locate=None):
    """The function itself, shared by ``llmc krm`` and the kustomize plugin: LLMProvider/LLMRoute
    items are compiled; the generated objects follow the other items, which pass through as they
    were — except objects llmc generated in an earlier run (its ``managed-by`` label and sources
    annotation) when there are sources to generate them afresh, so that running in place again
    (``kpt fn eval`` with ``keepSources``) replaces them instead of duplicating them. Sources are
    dropped unless ``keepSources`` is ``"true"``. ``locate(item)`` may give an item's source file and
    positions ``(file, marks)`` (kustomize names no file); diagnostics then point there. Returns (items,
    pipeline Result)."""
    from .diagnostics import Diagnostics
    from .load import apply_default_namespace, load_text
    from .pipeline import Result, compile_documents

    y = y or _ruamel()
    diags = Diagnostics()
    opts, keep = _function_options(config, diags, config_file)
    if opts is None:
        return list(items), Result(diags)
    sources: list[tuple[int, Any]] = []
    passthrough: list[tuple[int, Any]] = []
    for index, item in enumerate(items):
        is_llm = (isinstance(item, dict) and item.get("kind") in KINDS
                  and str(item.get("apiVersion", "")).startswith(f"{GROUP}/"))
        (sources if is_llm else passthrough).append((index, item))
    docs = []
    for index, item in sources:
        buf = io.StringIO()
        y.dump(item, buf)
        annotations = (item.get("metadata") or {}).get("annotations") or {}
        name = (annotations.get("config.kubernetes.io/path") or annotations.get("internal.config.kubernetes.io/path")
                or f"items[{index}]")
        loaded = load_text(str(name), buf.getvalue(), diags)
        origin = locate(item) if locate is not None else None
        if origin is not None:
            for doc in loaded:
                doc.file, doc.marks = origin
        docs.extend(loaded)
    result = compile_documents(apply_default_namespace(docs, opts.namespace), opts, diags)
    result.sources = len(sources)
    out_items = [item for _, item in passthrough if not (sources and is_generated(item))]
    out_items += [item for _, item in sources] if keep else []
    if result.ok:
        out_items += [_for_ruamel(o) for o in result.objects]
    return out_items, result


def _function_options(config: dict, diags, config_file: str):
    """(Options, keepSources) from a function config; (None, False) after an error for unknown keys
    (a mistyped ``keepSources`` would otherwise delete sources in place)."""
    import difflib

    from .options import CONFIG_KEYS, DEFAULT_ISTIO_VERSION, parse_options

    for key in config:
        if key not in FUNCTION_OPTIONS:
            close = difflib.get_close_matches(str(key), FUNCTION_OPTIONS, n=1)
            diags.error("LLMC007", f"unknown llmc option {key!r}", file=config_file, path=str(key),
                        hint=(f"did you mean {close[0]!r}? " if close else "") + "known: " + ", ".join(FUNCTION_OPTIONS))
    if diags.has_errors:
        return None, False
    opts, problems = parse_options(
        namespace=str(config.get("namespace", "default")),
        cluster_domain=str(config.get("clusterDomain", "cluster.local")),
        secrets_dir=str(config.get("secretsDir", "/etc/llmc/secrets")),
        egress_gateway=str(config["egressGateway"]) if config.get("egressGateway") else None,
        egress_gateway_labels=str(config.get("egressGatewayLabels", "istio=egressgateway")),
        telemetry=str(config.get("telemetry", "false")),
        # "GW=NS,GW=NS" as in kpt's `-- key=value`, or a YAML list of "GW=NS" in a plugin config
        gateway_workload_namespace=_text_or_list(config.get("gatewayWorkloadNamespace")),
        istio_version=str(config.get("istioVersion", DEFAULT_ISTIO_VERSION)),
        # "NS/LABEL=VALUE,..." or a YAML list of them
        gateway_selectors=_text_or_list(config.get("gatewaySelectors")),
        rate_limit_service=str(config["rateLimitService"]) if config.get("rateLimitService") else None,
        rate_limit_timeout=str(config["rateLimitTimeout"]) if config.get("rateLimitTimeout") else None,
        rate_limit_fail_closed=str(config.get("rateLimitFailClosed", "false")))
    for option, problem in problems:
        diags.error("LLMC010", f"invalid value for llmc option {CONFIG_KEYS[option]!r}: {problem}", file=config_file,
                    path=CONFIG_KEYS[option])
    if opts is None:
        return None, False
    return opts, str(config.get("keepSources", "false")).lower() == "true"
