"""One table per concept (issue 26): each test here fails when a front end or a consumer drifts from
its table — options (compiler/options.py), generated kinds (compiler/constants.py), the settings a
``routeSpecificConfigs`` entry overlays (compiler/ir.py)."""

from __future__ import annotations

import dataclasses

from compiler.ir import RequestConfig, SecretRef


def _other_value(f: dataclasses.Field):
    """A value for field ``f`` that differs from its default."""
    if f.name == "api_key_secret":
        return SecretRef("s", "k")
    if f.type in ("bool", "bool | None"):
        return not f.default if isinstance(f.default, bool) else True
    if f.type == "int | None":
        return 7
    return f"other-{f.name}"


def test_overlay_carries_every_request_config_field():
    """A field added to RequestConfig is overlaid by a rule's routeSpecificConfigs entry without a
    hand-kept list (the old ``_PLAIN``); only the credential pair and include_usage have own rules."""
    base = RequestConfig(api_key="base-key")
    for f in dataclasses.fields(RequestConfig):
        if f.name == "include_usage_set":
            continue
        value = _other_value(f)
        extra = {"include_usage_set": True} if f.name == "include_usage" else {}
        merged = base.overlay(RequestConfig(**{f.name: value}, **extra))
        assert getattr(merged, f.name) == value, f"routeSpecificConfigs does not overlay {f.name}"
    # unset fields keep the base's values; a credential replaces both of ours
    assert base.overlay(RequestConfig()).api_key == "base-key"
    both = RequestConfig(api_key="k", api_key_secret=None).overlay(RequestConfig(api_key_secret=SecretRef("s", "k")))
    assert both.api_key is None and both.api_key_secret == SecretRef("s", "k")


# ------------------------------------------------------------------------------------------------
# Generated kinds: compiler/constants.py's GENERATED_KINDS is the only place a kind is spelled


def _compiler_sources() -> dict[str, str]:
    from tests.conftest import REPO

    return {str(p.relative_to(REPO)): p.read_text() for p in sorted((REPO / "compiler").rglob("*.py"))}


def test_kinds_groups_and_plurals_are_spelled_only_in_the_table():
    """A kind, plural, group or the filter's name written outside compiler/constants.py is a second
    table that will one day disagree (the controller once kept its own, and never pruned a new kind)."""
    from compiler.constants import GENERATED_KINDS as ISTIO_KINDS
    from compiler.constants import GROUP, SERVICE_CONFIG_KINDS, SOURCE_KINDS

    GENERATED_KINDS = ISTIO_KINDS + SERVICE_CONFIG_KINDS
    # ("gateways" is also a field of VirtualServices and LLMRoutes)
    words = {f'"{k.kind}"' for k in GENERATED_KINDS} | {f'"{k.plural}"' for k in GENERATED_KINDS} - {'"gateways"'}
    words |= {f'"{k.group}"' for k in GENERATED_KINDS if k.group} | {f'"{k.version}"' for k in GENERATED_KINDS
                                                                   if k.version != "v1"}
    words |= {f'"{GROUP}"'} | {f'"{k.plural}"' for k in SOURCE_KINDS}
    found = [(path, w) for path, text in _compiler_sources().items() if path != "compiler/constants.py"
             for w in sorted(words) if w in text]
    assert found == [], "spelled outside compiler/constants.py"
    defined = [path for path, text in _compiler_sources().items() if "\nFILTER_NAME = " in text]
    assert defined == ["compiler/constants.py"]


def test_every_template_is_an_output_of_the_table():
    from compiler.constants import GENERATED_KINDS as ISTIO_KINDS
    from compiler.constants import SERVICE_CONFIG_KINDS
    from compiler.translate import TRANSLATORS

    GENERATED_KINDS = ISTIO_KINDS + SERVICE_CONFIG_KINDS
    from tests.conftest import REPO

    named = [t for k in GENERATED_KINDS for t, _ in k.outputs]
    assert sorted(named) == sorted(p.name for p in (REPO / "templates").glob("*.json.j2"))
    assert [(kind, template) for kind, template, _ in TRANSLATORS] == [
        (k.kind, t) for k in GENERATED_KINDS for t, _ in k.outputs]


def test_a_kind_added_to_the_table_reaches_every_consumer(monkeypatch):
    """The test-only kind ``Sidecar`` is one table row, one translator and one template: the pipeline
    emits it in table order, the controller applies, watches and prunes it, RBAC grants it."""
    import sys
    import types

    import jinja2

    from compiler import Options, compile_paths, constants, render, translate
    from compiler.constants import GeneratedKind
    from compiler.controller import kube, rbac, runtime
    from tests.conftest import REPO

    module = types.ModuleType("compiler.translate.sidecar_test")
    module.translate_sidecars = lambda program: [{"name": "llmc-sidecar", "namespace": ns}  # type: ignore[attr-defined]
                                                 for ns in program.namespaces()]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    sidecar = GeneratedKind("Sidecar", "networking.istio.io", "v1", "sidecars",
                            (("sidecar.json.j2", "sidecar_test:translate_sidecars"),))
    kinds = (*constants.GENERATED_KINDS, sidecar)
    monkeypatch.setattr(constants, "GENERATED_KINDS", kinds)
    monkeypatch.setitem(constants.GENERATED, "Sidecar", sidecar)
    monkeypatch.setitem(constants.KIND_ORDER, "Sidecar", len(kinds) - 1)
    monkeypatch.setattr(translate, "TRANSLATORS", translate.translators(kinds))
    env = render.environment()
    test_env = env.overlay(loader=jinja2.ChoiceLoader([env.loader, jinja2.DictLoader({"sidecar.json.j2": (
        '{"apiVersion": "networking.istio.io/v1", "kind": "Sidecar", "metadata": {"name": {{ o.name | q }}, '
        '"namespace": {{ o.namespace | q }}}, "spec": {}}')})]))
    monkeypatch.setattr(render, "environment", lambda: test_env)

    result = compile_paths([str(REPO / "samples" / "seed")], Options())
    assert result.ok and result.objects[-1]["kind"] == "Sidecar"
    assert kube.resource("Sidecar") == ("networking.istio.io", "v1", "sidecars")
    assert runtime.constants is constants, "the controller's informers start per table entry, read at start"
    granted = {(res, v) for r in rbac.cluster_role_rules() for res in r["resources"] for v in r["verbs"]}
    assert {("sidecars", v) for v in ("list", "watch", "create", "patch", "delete")} <= granted


# ------------------------------------------------------------------------------------------------
# Options: compiler/options.py's SETTINGS is the only place a setting is declared

COMPILING = ("render", "validate", "mounts", "explain", "diff")


class _Captured(Exception):
    pass


def _capture(monkeypatch) -> list[dict]:
    """parse_options records what a front end passes it, then stops the front end."""
    from compiler import options

    seen: list[dict] = []
    real = options.parse_options

    def parse(**values):
        seen.append(real(**values)[0])
        raise _Captured

    monkeypatch.setattr(options, "parse_options", parse)
    return seen


def _cli_args(command: str, s) -> list[str]:
    from compiler.options import SETTINGS

    base = {"render": ["-f", "x"], "validate": ["-f", "x"], "mounts": ["-f", "x"],
            "explain": ["-f", "x", "--host", "h"], "diff": ["--base", "a", "--head", "b", "--generate"],
            "controller": []}[command]
    needed = [n for n in SETTINGS if n.name == s.needs]  # a setting meaningless alone comes with what it needs
    return [command, *base, *(a for x in (*needed, s) for a in ([f"--{x.name}"] if x.switch else [f"--{x.name}", x.example]))]


def test_every_setting_is_taken_alike_by_every_front_end(monkeypatch, tmp_path):
    """Each setting of the table: every compiling command and `llmc controller` (unless the setting
    says otherwise) take ``--name``, ``llmc krm`` and the kustomize plugin take ``key``, and all of
    them make the same Options of its example value."""
    from typer.testing import CliRunner

    from compiler import Options, gitops, kustomize
    from compiler.cli import app
    from compiler.options import SETTINGS

    seen = _capture(monkeypatch)
    runner = CliRunner()
    for s in SETTINGS:
        assert s.example, f"{s.name}: give the setting an example"
        wanted = None
        for command in (*COMPILING, *(["controller"] if s.controller else [])):
            res = runner.invoke(app, _cli_args(command, s))
            assert isinstance(res.exception, _Captured), (command, s.name, res.output)
            wanted = wanted or seen[-1]
            assert seen[-1] == wanted, (command, s.name)
        assert getattr(wanted, s.field) != getattr(Options(), s.field), f"{s.name}: the example is the default"
        if not s.controller:
            assert f"--{s.name}" not in runner.invoke(app, ["controller", "--help"]).stdout
        keys = {n.key: n.example for n in SETTINGS if n.name == s.needs} | {s.key: s.example}
        try:
            gitops.transform([], keys)
        except _Captured:
            assert seen[-1] == wanted, ("llmc krm", s.key)
        config = tmp_path / "llmc.yaml"
        config.write_text("apiVersion: llmc.io/v1\nkind: LLMCompiler\nmetadata: {name: llmc}\n"
                          + "".join(f"{k}: '{v}'\n" for k, v in keys.items()))
        try:
            kustomize.run(str(config), "")
        except _Captured:
            assert seen[-1] == wanted, ("kustomize plugin", s.key)
        assert len(seen) == len(COMPILING) + s.controller + 2 + seen.index(wanted), f"{s.name}: a front end skipped it"


def test_help_lists_every_setting_and_function_key():
    from typer.testing import CliRunner

    from compiler.cli import app
    from compiler.options import FUNCTION_OPTIONS, SETTINGS

    def helptext(*args: str) -> str:
        res = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "250", "TERMINAL_WIDTH": "250"})
        return " ".join(res.stdout.replace("│", " ").split())

    for command in (*COMPILING, "controller"):
        text = helptext(command)
        for s in SETTINGS:
            assert (f"--{s.name}" in text) == (s.controller or command != "controller"), (command, s.name)
    for args in (("krm",), ("kustomize-plugin",)):
        text = helptext(*args)
        assert all(key in text for key in FUNCTION_OPTIONS), args


def test_settings_defaults_are_written_once():
    """A setting's default and function-config key appear in compiler/options.py only (the default
    secrets folder was once written 8 times across five commands, the function config and the
    options); the kinds table's flags name settings."""
    from compiler import Options
    from compiler.constants import GENERATED_KINDS
    from compiler.options import SETTINGS, parse_options

    assert parse_options() == (Options(), [])
    assert {k.flag for k in GENERATED_KINDS if k.flag} <= {s.name for s in SETTINGS}
    words = {f'"{s.text_default}"' for s in SETTINGS if s.text_default not in (None, "default")}
    words |= {f'"{s.key}"' for s in SETTINGS if s.key != s.name}
    found = [(path, w) for path, text in _compiler_sources().items() if path != "compiler/options.py"
             for w in sorted(words) if w in text]
    assert found == []


# ------------------------------------------------------------------------------------------------
# Body matches: a new body field is one table entry plus its field on matches[]

#: The test-only body field ``user`` (OpenAI's end-user id): every source edit it takes, by file.
#: CONTRIBUTING ("A new body match") lists these files; the test fails if it needs more.
USER_FIELD = {
    "compiler/api.py": ('string `model`, or with one longer than 256 bytes or holding control characters, matches no "\n'
                        '        "model condition.")\n',
                        '    user: StringMatch | None = Field(None, description="test-only: the body\'s `user`.")\n'),
    "compiler/names.py": ('    BodyField("model", "x-llmc-model", 256, "gpt-4o"),\n',
                          '    BodyField("user", "x-llmc-user", 64, "alice"),\n'),
}

USER_SOURCES = """\
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {name: a}
spec:
  host: a.example.com
  path: /v1/chat/completions
  configs: {defaultConfig: {openAIConfig: {apiKey: sk-aaaaaaaaaaaaaaaaaaaaaaaa}}}
---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMProvider
metadata: {name: b}
spec:
  host: b.example.com
  path: /v1/chat/completions
  configs: {defaultConfig: {openAIConfig: {apiKey: sk-bbbbbbbbbbbbbbbbbbbbbbbb}}}
---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMRoute
metadata: {name: team}
spec:
  host: llm.team.svc.cluster.local
  rules:
  - name: alice-gpt
    matches: [{user: {exact: alice}, model: {prefix: gpt-}}]
    backendRefs: [{providerHost: a.example.com}]
  - name: bobs
    matches: [{user: {prefix: bob}}]
    backendRefs: [{providerHost: a.example.com, weight: 1}, {providerHost: b.example.com, weight: 1}]
  - name: rest
    backendRefs: [{providerHost: b.example.com}]
"""

USER_CHECK = r'''
import json, sys
tree = sys.argv[1]
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path.insert(0, tree)
import compiler
assert compiler.__file__.startswith(tree), compiler.__file__
from compiler import Options, compile_paths
from compiler.explain import Request, explain

result = compile_paths([sys.argv[2]], Options())
assert result.ok, result.diagnostics.format_text()
vs = next(o for o in result.objects if o["kind"] == "VirtualService" and o["metadata"]["name"] == "llmc-route-team")
conditions = [h for r in vs["spec"]["http"] for m in r.get("match", []) for h in m.get("headers", {}).items()]
assert ("x-llmc-user", {"exact": "alice"}) in conditions, conditions
assert all("x-llmc-user" in r["headers"]["request"]["remove"] for r in vs["spec"]["http"] if "route" in r)
out = {}
for user, model in (("alice", "gpt-4o"), ("alice", "qwen"), ("bob-2", "gpt-4o"), ("carol", "gpt-4o")):
    body = json.dumps({"model": model, "user": user, "messages": [{"role": "user", "content": "hi"}]}).encode()
    x = explain(result.objects, Request(host="llm.team.svc.cluster.local", body=body, namespace="default"), seed=1)
    out[f"{user}/{model}"] = x["rule"]
bad = compile_paths([sys.argv[3]], Options())
out["invalid"] = [(d.code, d.path, d.message) for d in bad.diagnostics.items if d.code == "LLMC223"]
print(json.dumps(out))
'''


def test_a_body_field_is_one_table_entry_and_its_api_field(tmp_path):
    """The test-only body match on ``user`` takes the edits of USER_FIELD (2 source files): then
    resolve, the IR, the VirtualService, the filter context and the filter itself (run under
    LuaJIT by ``llmc explain``) route on it, alone and together with ``model``."""
    import json
    import shutil
    import subprocess
    import sys

    from tests.conftest import REPO

    assert len(USER_FIELD) <= 4
    tree = tmp_path / "tree"
    shutil.copytree(REPO / "compiler", tree / "compiler", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "templates", tree / "llmc_templates", ignore=shutil.ignore_patterns("__pycache__"))
    for rel, (anchor, addition) in USER_FIELD.items():
        text = (tree / rel).read_text()
        assert text.count(anchor) == 1, f"{rel}: the anchor of the test-only edit moved"
        (tree / rel).write_text(text.replace(anchor, anchor + addition))
    (tmp_path / "route.yaml").write_text(USER_SOURCES)
    (tmp_path / "bad.yaml").write_text(USER_SOURCES.replace("{user: {prefix: bob}}", "{user: {}}"))
    run = subprocess.run([sys.executable, "-c", USER_CHECK, str(tree), str(tmp_path / "route.yaml"),
                          str(tmp_path / "bad.yaml")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["alice/gpt-4o"] == "default/team/alice-gpt"
    assert out["alice/qwen"] == out["carol/gpt-4o"] == "default/team/rest"
    assert out["bob-2/gpt-4o"] == "default/team/bobs"
    assert [(code, path) for code, path, _ in out["invalid"]] == [("LLMC223", "spec.rules[1].matches[0].user")]
    assert "a user match needs exactly one" in out["invalid"][0][2]


def test_contributing_names_the_files_of_the_test_only_additions():
    from tests.conftest import REPO

    text = (REPO / "CONTRIBUTING.md").read_text()
    section = text[text.index("**A new body match**"):text.index("**A new provider protocol**")]
    assert f"{len(USER_FIELD)} files" in section
    assert all(f"`{rel}`" in section for rel in USER_FIELD)
