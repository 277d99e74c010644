"""llmc as a kustomize exec plugin, the form that runs under ``kubectl kustomize``.

kubectl's built-in kustomize (v5.5 in kubectl 1.32) has no ``--enable-exec``: with
``--enable-alpha-plugins`` it silently drops a KRM *exec function* (``config.kubernetes.io/function:
exec``) and prints the raw LLMProvider/LLMRoute, which ``kubectl apply -k`` would then apply. Its
legacy *exec plugins* do run, and without the flag they fail loudly ("external plugins disabled"),
also under ``kubectl apply -k``. So llmc ships that form:

* ``llmc kustomize-plugin install`` writes the executable
  ``<plugin home>/llmc.io/v1/llmcompiler/LLMCompiler``. The plugin home is kustomize's:
  ``$KUSTOMIZE_PLUGIN_HOME``, else ``$XDG_CONFIG_HOME/kustomize/plugin``, else
  ``~/.config/kustomize/plugin``. The executable runs this Python with ``-m compiler.cli``, so it
  keeps working whatever ``PATH`` kustomize runs with.
* A kustomization lists a transformer config ``apiVersion: llmc.io/v1``, ``kind: LLMCompiler``
  whose other top-level keys are llmc's function options (those of ``llmc krm``).
* kustomize runs the executable with the config file as its argument and the resources as a YAML
  stream on stdin, and reads the transformed stream from stdout (``llmc kustomize-plugin run``).
  Errors go to stderr in llmc's diagnostic format and the exit code is 1, which fails the build.
"""

from __future__ import annotations

import io
import os
import shlex
import sys
from pathlib import Path

API_VERSION = "llmc.io/v1"
KIND = "LLMCompiler"
RELATIVE_PATH = Path("llmc.io", "v1", KIND.lower(), KIND)


def plugin_home() -> Path:
    """kustomize's plugin home, looked up as kustomize v5 does."""
    if os.environ.get("KUSTOMIZE_PLUGIN_HOME"):
        return Path(os.environ["KUSTOMIZE_PLUGIN_HOME"])
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "kustomize" / "plugin"


def executable_text() -> str:
    python = shlex.quote(sys.executable)
    return ("#!/bin/sh\n"
            "# llmc's kustomize exec plugin, written by `llmc kustomize-plugin install`; kustomize runs it with\n"
            "# the LLMCompiler config file as $1 and the resources on stdin (kubectl kustomize --enable-alpha-plugins).\n"
            f"exec {python} -m compiler.cli kustomize-plugin run \"$@\"\n")


def install(home: Path | None = None) -> Path:
    """Write the plugin executable; returns its path (idempotent)."""
    target = (home or plugin_home()) / RELATIVE_PATH
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(executable_text(), encoding="utf-8")
    target.chmod(0o755)
    return target


def sources_in(root: str):
    """``locate(item)`` for :func:`compiler.gitops.transform`: kustomize hands the plugin its resources
    without their file names (only a ``kustomize.config.k8s.io/id``), so diagnostics would point at
    ``items[1]`` of a stream nobody sees. The LLMProvider/LLMRoute files under the kustomization's
    folder are read once; an item found there by kind, name and (when the file sets one) namespace is
    reported at that file's lines. Patched items keep their paths, so the lines still fit."""
    from .diagnostics import Diagnostics
    from .load import load_inputs

    if not Path(root).is_dir():
        return None
    found: dict[tuple[str, str], list] = {}
    for doc in load_inputs([root], "", Diagnostics()):
        found.setdefault((doc.kind, doc.name), []).append(doc)

    def locate(item: dict):
        meta = item.get("metadata") or {}
        matches = [d for d in found.get((str(item.get("kind")), str(meta.get("name"))), [])
                   if d.namespace in ("", meta.get("namespace"))]
        return (matches[0].file, matches[0].marks) if len(matches) == 1 else None

    return locate


def run(config_path: str, stdin: str) -> tuple[str, str, int]:
    """Transform kustomize's resource stream; returns (stdout, stderr, exit code)."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    from .diagnostics import Diagnostics
    from .gitops import _ruamel, transform

    y = _ruamel()
    diags = Diagnostics()
    try:
        config = YAML(typ="safe").load(Path(config_path).read_text(encoding="utf-8"))
    except (OSError, YAMLError) as exc:
        diags.error("LLMC004", f"cannot read the {KIND} config: {exc}", file=config_path)
        return "", diags.format_text() + f"\nllmc: {diags.summary()}\n", 1
    options = {k: v for k, v in (config or {}).items() if k not in ("apiVersion", "kind", "metadata")}
    items = [d for d in y.load_all(io.StringIO(stdin)) if d is not None]
    name = (config.get("metadata") or {}).get("name", "")
    root = os.environ.get("KUSTOMIZE_PLUGIN_CONFIG_ROOT", ".")
    out_items, result = transform(items, options, y, config_file=f"{root}: {KIND} {name}", locate=sources_in(root))
    err = ""
    if result.diagnostics.items:
        err = result.diagnostics.format_text() + f"\nllmc: {result.diagnostics.summary()}\n"
    if not result.ok:
        return "", err, 1
    buf = io.StringIO()
    y.dump_all(out_items, buf)
    return buf.getvalue(), err, 0
