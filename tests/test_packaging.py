"""What a user installs: the wheel built from the clone (our PyPI name, every package, the licence),
the project files an open-source project is expected to have, the Dockerfile's pins, and shell
completion.

The wheel is built offline with the venv's own setuptools (`pip wheel --no-build-isolation`; the
test extras require a setuptools that can build this pyproject), from a copy of the clone so the
build leaves nothing behind in it.
"""

from __future__ import annotations

import email
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO

DIST_NAME = "llmc-istio"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("clone") / "llmc"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".cache", ".*_cache", ".hypothesis"))
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(src)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    (whl,) = out.glob("*.whl")
    return whl


def test_wheel_carries_our_distribution_name_and_licence(wheel: Path):
    with zipfile.ZipFile(wheel) as z:
        (meta_name,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        meta = email.message_from_bytes(z.read(meta_name))
        entry_points = z.read(meta_name.replace("METADATA", "entry_points.txt")).decode()
        names = z.namelist()
    assert meta["Name"] == DIST_NAME == PYPROJECT["project"]["name"]
    assert meta["License-Expression"] == "Apache-2.0"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert re.search(r"^llmc = compiler\.cli:main$", entry_points, re.M), "the command stays `llmc`"


def test_wheel_holds_every_compiler_package_and_the_data(wheel: Path):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    packages = sorted(p.parent.relative_to(REPO).as_posix() for p in (REPO / "compiler").rglob("__init__.py"))
    assert "compiler/controller" in packages
    for package in packages:
        assert f"{package}/__init__.py" in names, f"{package} is missing from the wheel (pyproject packages)"
    for module in (REPO / "compiler").rglob("*.py"):
        assert module.relative_to(REPO).as_posix() in names
    assert "llmc_templates/lua/llmc/main.lua" in names and "llmc_schemas/llmproviders.yaml" in names
    assert {n for n in names if n.startswith("llmc_templates/") and n.endswith(".j2")} == {
        f"llmc_templates/{p.name}" for p in (REPO / "templates").glob("*.j2")}


def test_wheel_installs_and_renders_the_samples(wheel: Path, tmp_path: Path):
    """A non-editable install (from the built wheel, dependencies from this venv) renders samples/
    from outside the clone and imports the controller."""
    target = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                           str(wheel)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = ("import compiler, compiler.controller.runtime, sys; assert compiler.__file__.startswith(sys.argv[1]); "
            "from compiler.cli import main; sys.argv = ['llmc', 'render', '-f', sys.argv[2]]; main()")
    run = subprocess.run([sys.executable, "-c", code, str(target), str(REPO / "samples")], capture_output=True,
                         text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "kind: EnvoyFilter" in run.stdout


def test_the_manual_installs_our_name_never_the_other_projects():
    readme = "\n".join(p.read_text() for p in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))])
    installs = re.findall(r"pip install ([^\s`]+)", readme)
    assert installs, "the manual has install recipes"
    for spec in installs:
        if spec.startswith(("-", ".", "'", '"', "git+")):
            continue
        assert canonicalize_name(Requirement(spec).name) == DIST_NAME, f"the manual installs {spec!r}"
    assert re.search(r"pip install llmc(?![-\w])", readme) is None


@pytest.mark.parametrize("name", ["LICENSE", "CHANGELOG.md", "CONTRIBUTING.md", "SECURITY.md"])
def test_project_files_exist(name: str):
    text = (REPO / name).read_text()
    assert len(text) > 200, name
    if name == "LICENSE":
        assert "Apache License" in text and "Version 2.0, January 2004" in text
    if name == "CHANGELOG.md":
        assert "## Unreleased" in text


def dockerfile_stages() -> list[str]:
    return re.findall(r"^FROM\s+(\S+)", (REPO / "deploy" / "Dockerfile").read_text(), re.M)


def test_dockerfile_pins_base_image_by_version_and_digest():
    images = dockerfile_stages()
    assert len(images) == 2
    for image in images:
        assert re.fullmatch(r"python:3\.12\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", image), image


def requirement_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "deploy" / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and re.fullmatch(r"[\w.]+", version), f"not an exact pin: {line!r}"
            pins[canonicalize_name(name)] = version
    return pins


def test_dockerfile_installs_pinned_requirements_only():
    text = (REPO / "deploy" / "Dockerfile").read_text()
    installs = re.findall(r"pip install ([^&\n]+)", text)
    assert installs, "the image installs something"
    for args in installs:
        assert "--no-deps" in args, f"every install must be --no-deps (pins only): {args}"
    assert any("-r /tmp/requirements.txt" in a for a in installs)
    assert "COPY deploy/requirements.txt /tmp/requirements.txt" in text and "pip check" in text
    pins = requirement_pins()
    extras = PYPROJECT["project"]["optional-dependencies"]
    # the image runs the controller and `llmc explain`: the core and both extras are pinned
    for spec in PYPROJECT["project"]["dependencies"] + extras["controller"] + extras["explain"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not pinned in deploy/requirements.txt"
        assert req.specifier.contains(pins[name]), f"{name}=={pins[name]} is outside pyproject's {req.specifier}"


def test_dependencies_have_upper_bounds_where_minors_may_break():
    """Every core dependency is capped: below its next major, and 0.x ones below a minor."""
    for spec in PYPROJECT["project"]["dependencies"]:
        req = Requirement(spec)
        uppers = [s for s in req.specifier if s.operator == "<"]
        assert uppers, f"{spec} has no upper bound"
        lower = next(s.version for s in req.specifier if s.operator == ">=")
        if lower.startswith("0."):
            assert uppers[0].version.startswith("0."), f"{spec}: a 0.x dependency is capped below a minor"


def test_shell_completion_is_on():
    llmc = Path(sys.executable).parent / "llmc"
    env = {**os.environ, "_LLMC_COMPLETE": "complete_bash", "COMP_WORDS": "llmc ren", "COMP_CWORD": "1"}
    out = subprocess.run([str(llmc)], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.split() == ["render"]
    # the shell named, not detected: typer's detection looks for a shell among the process's
    # ancestors, and a test run from a service or nohup has none ("Shell  not supported.")
    named = {**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    script = subprocess.run([str(llmc), "--show-completion", "bash"], capture_output=True, text=True, env=named)
    assert script.returncode == 0 and "_LLMC_COMPLETE=complete_bash" in script.stdout


def test_ci_checks_the_plain_install_without_the_controller_extra_then_with_it():
    ci = (REPO / ".ci" / "run").read_text()
    plain = ci.index("pip install --quiet . ")
    assert ci.index("llmc render -f samples/", plain) < ci.index("pip install --quiet '.[controller]'", plain) \
        < ci.index('-c "import compiler.controller.runtime"', plain), "render without the extra, import with it"
    assert "apt-get install -y" in ci and "graphviz" in ci, ".ci/run installs Graphviz for the picture's test"
    assert "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/pytest" in ci.replace(" --quiet", ""), \
        "CI runs the README's test command (quietly)"
    assert "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/pytest" in (REPO / "README.md").read_text()
