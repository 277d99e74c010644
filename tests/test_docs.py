"""Docs that cannot rot: README.md and docs/ are checked like code.

* every ```yaml block holding an LLMProvider or LLMRoute compiles, with exactly the errors and
  warnings its ``# expect: CODE`` comments name (a block starting ``# llmc-docs: with the block
  above`` compiles together with the yaml block before it on the page);
* every ``llmc …`` line of a ```sh block runs (offline: the ``llmc`` stage of a pipeline into
  kubectl, kpt or curl runs alone) and exits 0 without a traceback; a ```console block's output is
  what the command prints today;
* every relative link points to a file that exists, and every ``#anchor`` to a heading of the page
  it names; every ``docs/<page>.md#anchor`` that llmc's messages and CRD descriptions name exists;
* README.md stays a front page (≤ 200 lines, every docs/ page linked from its table), and each
  docs/ page has its table of contents, up to date (``python -m tests.support.manual`` rewrites them);
* the architecture picture is drawn by ``docs/architecture.py`` from ``docs/architecture.dot`` (with
  Graphviz's ``dot``: skipped without it on a developer machine, a failure under ``CI=true``), and
  the checked-in PNG was drawn from the current source.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from compiler.pipeline import compile_text
from compiler.resolve import Options
from tests.conftest import REPO, require_tool
from tests.support import manual

PAGES = manual.pages()
DOC_PAGES = ["cli", "providers-and-routes", "data-plane", "failover", "protocols", "gateways", "api-keys",
             "observability", "cluster", "gitops", "explain", "diff", "diagnostics", "performance", "design",
             "migrating-from-asm", "budgets", "ambient"]
LLMC = Path(sys.executable).parent / "llmc"


# -------------------------------------------------------------------------------------------- YAML

SOURCE_KIND = re.compile(r"^\s*kind: (LLMProvider|LLMRoute)\b", re.M)
WITH_ABOVE = "# llmc-docs: with the block above"


def _objects(text: str) -> dict[tuple, str]:
    """The documents of a YAML stream by (kind, namespace, name), in order."""
    import yaml

    out: dict[tuple, str] = {}
    for n, doc in enumerate(re.split(r"^---\s*$", text, flags=re.M)):
        data = yaml.safe_load(doc)
        meta = (data or {}).get("metadata") or {} if isinstance(data, dict) else {}
        key = (data.get("kind"), meta.get("namespace"), meta.get("name")) if isinstance(data, dict) else (n,)
        out[key] = doc.strip("\n") + "\n"
    return out


def yaml_examples() -> list[tuple[manual.Block, str]]:
    """(block, text to compile) for every yaml block with a source object. A block marked as going
    with the block above is a change of it: its objects replace those of the same kind and name."""
    out = []
    for page in PAGES:
        previous = ""
        for block in manual.blocks(page):
            if block.lang not in ("yaml", "yml"):
                continue
            text = block.text
            if text.startswith(WITH_ABOVE):
                assert previous, f"{block.where}: no yaml block above"
                text = "---\n".join({**_objects(previous), **_objects(text)}.values())
            if SOURCE_KIND.search(block.text):
                out.append((block, text))
            previous = text
    return out


YAML_EXAMPLES = yaml_examples()


def test_the_manual_has_source_examples():
    assert len(YAML_EXAMPLES) >= 5


@pytest.mark.parametrize(("block", "text"), YAML_EXAMPLES, ids=[b.where for b, _ in YAML_EXAMPLES])
def test_yaml_examples_compile_with_the_diagnostics_they_declare(block: manual.Block, text: str):
    result = compile_text(text, Options(), block.where)
    found = sorted({d.code for d in result.diagnostics.items if d.severity.value != "note"})
    expected = sorted(set(re.findall(r"#\s*expect:\s*(LLMC\d{3})", block.text)))
    assert found == expected, (f"{block.where}: diagnostics {found}, the block declares {expected}\n"
                               + result.diagnostics.format_text())
    if not expected:
        assert result.objects, f"{block.where} compiles to nothing"


def test_the_readmes_worked_example_is_the_sample():
    """README shows samples/secret-ref in a compact form; both compile to the same objects."""
    from compiler.pipeline import compile_paths

    (block, text), *_ = [(b, t) for b, t in YAML_EXAMPLES if b.page.name == "README.md"]
    shown = compile_text(text, Options(), block.where)
    sample = compile_paths([str(REPO / "samples" / "secret-ref")], Options())
    assert shown.ok and sample.ok and shown.objects == sample.objects


# ------------------------------------------------------------------------------------------ shell

PIPED_TOOLS = ("kubectl", "kpt", "curl", "docker")
#: Inputs that stand for the reader's own repository (a GitOps folder, a git remote): a command
#: reading one of them is an example of a pipeline, not something to run here.
READERS_PATHS = ("deploy/llm", "origin/")
SYNOPSIS = re.compile(r"<[A-Z][A-Z_ |:]*>|\[-")  # `llmc diff --base <PATH> [-o …]`: a usage line


def _logical_lines(text: str) -> list[str]:
    return re.sub(r"\\\n\s*", " ", text).splitlines()


def llmc_lines() -> list[tuple[manual.Block, str]]:
    """(block, command) for each ``llmc …`` line of the sh blocks, cut before a pipe into a tool that
    needs a cluster or another program; ``.venv/bin/llmc`` counts as ``llmc`` (the Quickstart)."""
    out = []
    for page in PAGES:
        for block in manual.blocks(page):
            if block.lang not in ("sh", "bash", "shell"):
                continue
            for line in _logical_lines(block.text):
                command = re.sub(r"\s+#.*$", "", line.strip())
                command = re.sub(r"^\.venv/bin/llmc ", "llmc ", command)
                if not command.startswith("llmc ") or SYNOPSIS.search(command):
                    continue
                if any(path in command for path in READERS_PATHS):
                    continue
                stages = command.split(" | ")
                if len(stages) > 1 and any(s.split()[0] in PIPED_TOOLS for s in stages[1:]):
                    command = stages[0]
                out.append((block, command))
    return out


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """Where the manual's commands run: the repository's samples and test data (read only), and
    ``asm-llm.yaml``, the export the migration guide makes (here the seed's, as kubectl prints it)."""
    work = tmp_path_factory.mktemp("manual")
    for name in ("samples", "tests"):
        (work / name).symlink_to(REPO / name)
    shutil.copy(REPO / "tests" / "testdata" / "kubectl" / "get-llmproviders-llmroutes.yaml", work / "asm-llm.yaml")
    return work


def _run(command: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{LLMC.parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "XDG_CONFIG_HOME": str(cwd / ".config"), "KUSTOMIZE_PLUGIN_HOME": str(cwd / ".kustomize")}
    return subprocess.run(["sh", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_the_manual_has_llmc_commands():
    assert len(LLMC_LINES) >= 15


LLMC_LINES = llmc_lines()


@pytest.mark.parametrize(("block", "command"), LLMC_LINES, ids=[f"{b.where}:{c[:50]}" for b, c in LLMC_LINES])
def test_llmc_commands_of_the_manual_run(block: manual.Block, command: str, workdir: Path):
    if command.startswith("llmc render") or command.startswith("llmc explain") or command.startswith("llmc mounts"):
        assert "-f " in command, command
    proc = _run(command, workdir)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, f"{block.where}: {command}\n{proc.stderr}"


def console_examples() -> list[tuple[manual.Block, str, str]]:
    out = []
    for page in PAGES:
        for block in manual.blocks(page):
            if block.lang == "console":
                first, _, rest = block.text.partition("\n")
                assert first.startswith("$ llmc "), block.where
                out.append((block, first[2:], rest))
    return out


@pytest.mark.parametrize(("block", "command", "output"), console_examples(), ids=[b.where for b, _, _ in console_examples()])
def test_console_examples_show_what_llmc_prints(block, command, output, workdir: Path):
    proc = _run(command, workdir)
    assert proc.returncode in (0, 1) and "Traceback" not in proc.stderr, proc.stderr  # llmc diff: 1 = changes
    assert proc.stdout == output, f"{block.where} shows an older output"


# ------------------------------------------------------------------------------------------ links


def _targets() -> list[tuple[Path, str]]:
    return [(page, target) for page in PAGES for target in manual.links(page)
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target)]


TARGETS = _targets()


@pytest.mark.parametrize(("page", "target"), TARGETS, ids=[f"{p.name}:{t}" for p, t in TARGETS])
def test_relative_links_and_anchors_resolve(page: Path, target: str):
    path, _, anchor = target.partition("#")
    file = (page.parent / path).resolve() if path else page
    assert file.exists(), f"{page.relative_to(REPO)} links to {target}: no such file"
    if anchor:
        assert file.suffix == ".md", f"{page.relative_to(REPO)}: an anchor into {file.name}"
        assert anchor in manual.anchors(file.read_text()), f"{page.relative_to(REPO)} links to {target}: no such heading"


def test_links_of_llmcs_messages_point_into_the_manual():
    """Hints, CRD descriptions and comments that send the reader to docs/… name pages and anchors
    that exist (and nothing sends them to the old single README's sections)."""
    sources = [*(REPO / "compiler").rglob("*.py"), *(REPO / "schemas").glob("*.yaml"), *(REPO / "deploy").rglob("*.yaml")]
    named = 0
    for source in sources:
        text = source.read_text()
        assert not re.search(r"README, ['\"]", text), f"{source.relative_to(REPO)} names a README section"
        for page, anchor in re.findall(r"docs/([a-z-]+\.md)(?:#([a-z0-9-]+))?", text):
            named += 1
            target = REPO / "docs" / page
            assert target.exists(), f"{source.relative_to(REPO)} names docs/{page}"
            if anchor:
                assert anchor in manual.anchors(target.read_text()), f"{source.relative_to(REPO)}: docs/{page}#{anchor}"
    assert named >= 5


# -------------------------------------------------------------------------------------- structure


def test_the_readme_is_a_front_page():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    for page in DOC_PAGES:
        assert f"(docs/{page}.md)" in text, f"README's manual table lacks docs/{page}.md"
    assert sorted(p.stem for p in manual.DOCS.glob("*.md")) == sorted(DOC_PAGES)
    assert "(docs/architecture.png)" in text


@pytest.mark.parametrize("page", DOC_PAGES)
def test_every_page_has_an_up_to_date_table_of_contents(page: str):
    text = (manual.DOCS / f"{page}.md").read_text()
    assert text.startswith("# "), "a page starts with its title"
    assert manual.TOC_START in text and manual.TOC_END in text, "no table of contents"
    assert manual.toc(text).count("\n") >= 1, "a page has at least two sections"
    assert manual.with_toc(text) == text, "stale table of contents: run `python -m tests.support.manual`"


def test_the_toc_tools_can_fail():
    text = "# T\n\n<!-- toc -->\n<!-- /toc -->\n\n## One\n\n```sh\n## not a heading\n```\n\n### Two `x`\n"
    fixed = manual.with_toc(text)
    assert fixed != text and "- [One](#one)\n  - [Two `x`](#two-x)" in fixed and "not a heading" not in manual.toc(text)
    assert manual.anchors("## A\n## A\n") == {"a", "a-1", "top"}


# ------------------------------------------------------------------------------------ the picture

sys.path.insert(0, str(REPO / "docs"))
import architecture  # noqa: E402  (docs/architecture.py)


def test_the_checked_in_picture_was_drawn_from_the_current_source():
    png = architecture.PICTURE.read_bytes()
    assert architecture.chunks(png)[0][0] == b"IHDR"
    assert architecture.stamped_hash(png) == architecture.source_hash(architecture.SOURCE.read_bytes()), (
        "docs/architecture.dot changed: run `python docs/architecture.py` and commit docs/architecture.png")


def test_the_script_draws_the_picture(tmp_path: Path):
    require_tool("dot")
    out = tmp_path / "a.png"
    proc = subprocess.run([sys.executable, str(REPO / "docs" / "architecture.py"), str(out)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    png = out.read_bytes()
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width > 600 and height > 200
    assert architecture.stamped_hash(png) == architecture.source_hash(architecture.SOURCE.read_bytes())
    changed = tmp_path / "changed.dot"
    changed.write_text(architecture.SOURCE.read_text().replace("emit", "emit!"))
    assert architecture.source_hash(changed.read_bytes()) != architecture.stamped_hash(png)
    with pytest.raises(ValueError):
        architecture.chunks(b"GIF89a")
