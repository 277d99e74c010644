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
