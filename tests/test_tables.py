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
    from compiler.constants import GENERATED_KINDS, GROUP, SOURCE_KINDS

    # ("gateways" is also a field of VirtualServices and LLMRoutes)
    words = {f'"{k.kind}"' for k in GENERATED_KINDS} | {f'"{k.plural}"' for k in GENERATED_KINDS} - {'"gateways"'}
    words |= {f'"{k.group}"' for k in GENERATED_KINDS} | {f'"{k.version}"' for k in GENERATED_KINDS if k.version != "v1"}
    words |= {f'"{GROUP}"'} | {f'"{k.plural}"' for k in SOURCE_KINDS}
    found = [(path, w) for path, text in _compiler_sources().items() if path != "compiler/constants.py"
             for w in sorted(words) if w in text]
    assert found == [], "spelled outside compiler/constants.py"
    defined = [path for path, text in _compiler_sources().items() if "\nFILTER_NAME = " in text]
    assert defined == ["compiler/constants.py"]


def test_every_template_is_an_output_of_the_table():
    from compiler.constants import GENERATED_KINDS
    from compiler.translate import TRANSLATORS
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
    assert runtime.GENERATED is constants.GENERATED, "the controller's informers start per table entry"
    granted = {(res, v) for r in rbac.cluster_role_rules() for res in r["resources"] for v in r["verbs"]}
    assert {("sidecars", v) for v in ("list", "watch", "create", "patch", "delete")} <= granted
