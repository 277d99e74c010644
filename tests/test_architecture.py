"""Layering rules of the compiler (STYLE: visible stages), checked on the source's imports.

* Nothing in the compiler core imports the Kubernetes client (only a controller may).
* The IR imports nothing from the API models or input stages; translators see only the IR.
* `llmc --help` imports no heavy stage (fast start): cli.py imports them inside commands.
"""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.conftest import REPO

CORE = REPO / "compiler"


def imports(path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            found.add(("." * node.level) + (node.module or ""))
    return found


def test_core_never_imports_kubernetes():
    for path in CORE.rglob("*.py"):
        if "controller" in path.parts:
            continue
        assert not any(m.split(".")[0] == "kubernetes" for m in imports(path)), path


def test_ir_and_translators_do_not_see_inputs():
    forbidden = {"api", "load", "schema", "resolve"}
    for path in [CORE / "ir.py", *sorted((CORE / "translate").glob("*.py"))]:
        for mod in imports(path):
            assert mod.lstrip(".").split(".")[0] not in forbidden and mod not in ("..api", "..load"), (path, mod)


def test_help_does_not_import_the_pipeline():
    code = ("import sys, compiler.cli; "
            "print(sorted(m for m in sys.modules if m.startswith(('compiler.', 'jsonschema', 'jinja2', 'pydantic'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    # the help's own light modules (options: re and dataclasses only) and nothing of the pipeline
    assert out.strip() == "['compiler.cli', 'compiler.clihelp', 'compiler.options']", out
