"""The limits and budgets a request counts against, read from the objects llmc emitted (``llmc
explain`` and ``llmc diff`` work offline from them): the route's ``RateLimitPerRoute`` (Envoy's
``llmc.ratelimit`` filter) gives each limit's descriptor actions and its charge expression, the
rate-limit service's ConfigMap its budget and window.

For one request, :func:`request_limits` evaluates the actions as Envoy would — a header's value or
the shared bucket ``-``, the caller's service cluster, the model the filter recorded — and describes
the charge formula: weighted tokens for a token limit, the price table of the answering provider and
model for a money budget. The charge itself depends on the usage the provider will report: unknown
offline, and said so.
"""

from __future__ import annotations

import re

import yaml

from ..constants import CONFIG_MAP
from ..translate.ratelimit import ABSENT, COST_UNIT_ANNOTATION, LIMIT_KEY, RATE_LIMIT_FILTER, describe_money

_WEIGHT = re.compile(r"([0-9.]+) \* metadata\.filter_metadata\.llmc\.request_(prompt|completion|total)_tokens")
UNKNOWN = "unknown offline: it is computed from the usage the provider reports, when the stream is done"


def budgets(objects: list[dict]) -> dict[str, dict]:
    """limit id → {amount, per, shadow, money} from the rate-limit service's configuration llmc emits
    (``money``: a budget in cost units, which llmc marks with ``detailed_metric``)."""
    out: dict[str, dict] = {}

    def walk(descriptors: list, limit_id: str | None) -> None:
        for d in descriptors or []:
            here = d.get("value") if d.get("key") == LIMIT_KEY else limit_id
            rl = d.get("rate_limit")
            if here and rl:
                out[here] = {"amount": rl.get("requests_per_unit"), "per": rl.get("unit"),
                             "shadow": bool(d.get("shadow_mode")), "money": bool(d.get("detailed_metric"))}
            walk(d.get("descriptors") or [], here)

    for o in objects:
        if o.get("kind") != CONFIG_MAP:
            continue
        for text in (o.get("data") or {}).values():
            try:
                config = yaml.safe_load(text)
            except yaml.YAMLError:
                continue
            if isinstance(config, dict) and config.get("domain") == "llmc":
                walk(config.get("descriptors") or [], None)
    return out


def budget_text(b: dict | None, unit: str = "cost units") -> str:
    if b is None:
        return "?"
    what = f"{unit}" if b["money"] else "tokens"
    return f"{b['amount']} {what} per {b['per']}" + (", shadow" if b["shadow"] else "")


def charge_text(fmt: str, unit: str = "cost") -> str:
    """The charge formula of a limit, read back from its hits_addend expression."""
    if "1000000u" in fmt:
        def who(p: dict) -> str:
            provider = {"": "", "other": "other providers"}.get(p["provider"], p["provider"])
            model = "other models" if p["model"] == "*" else p["model"]
            return f"{provider}/{model}" if provider and provider != "other providers" else provider or model

        described = describe_money(fmt)
        cached = any("cached_prompt" in p for p in described)
        prices = "; ".join(f"{who(p)} [{p['prompt']}, {p['completion']}"
                           + (f", {p.get('cached_prompt', p['prompt'])}" if cached else "") + "]" for p in described)
        if not cached:
            return (f"ceil((prompt tokens × P + completion tokens × C) / 1000000) {unit} units, at the price "
                    f"[P, C per 1M tokens] of the provider and model that answered: {prices}; without usage "
                    "request bytes / 4 × P; 0 for errors")
        return (f"ceil((prompt tokens × P + completion tokens × C - cache-read tokens × (P - Pc)) / 1000000) {unit} "
                f"units, at the price [P, C, Pc per 1M tokens] of the provider and model that answered: {prices}; "
                "without usage request bytes / 4 × P; 0 for errors")
    parts = [f"{float(w):g}×{kind}" for w, kind in _WEIGHT.findall(fmt)]
    return " + ".join(parts) + " tokens (else request bytes / 4)" if parts else fmt


def charges(per_route: dict | None) -> list[tuple[list[dict], str]]:
    """(actions, charge expression) of each charge entry of a route's RateLimitPerRoute."""
    return [(e.get("actions", []), ((e.get("hits_addend") or {}).get("format")) or "")
            for e in (per_route or {}).get("rate_limits", []) if e.get("apply_on_stream_done")]


def _entry(action: dict, headers: dict[str, str], metadata: dict, caller: str) -> tuple[str, str] | None:
    """The descriptor entry one action yields for this request (None: it yields none, and Envoy skips
    the whole descriptor — another variant of the same limit applies)."""
    kind, spec = next(iter(action.items()))
    if kind == "generic_key":
        return spec.get("descriptor_key", "generic_key"), spec["descriptor_value"]
    if kind == "request_headers":
        value = headers.get(spec["header_name"].lower())
        return (spec["descriptor_key"], value) if value is not None else None
    if kind == "header_value_match":
        present = all(h["name"].lower() in headers for h in spec.get("headers", []))
        return (spec["descriptor_key"], spec["descriptor_value"]) if present == spec.get("expect_match", True) else None
    if kind == "source_cluster":
        return "source_cluster", caller
    if kind == "metadata":
        path = [p["key"] for p in spec["metadata_key"]["path"]]
        value = metadata.get(f"{spec['metadata_key']['key']}:{path[-1]}")
        return spec["descriptor_key"], str(value) if value is not None else spec.get("default_value", ABSENT)
    return kind, "?"


def cost_unit(objects: list[dict]) -> str:
    """The unit money budgets count in (``--cost-unit``), from the ConfigMap's annotation."""
    for o in objects:
        if o.get("kind") == CONFIG_MAP and COST_UNIT_ANNOTATION in ((o.get("metadata") or {}).get("annotations") or {}):
            return o["metadata"]["annotations"][COST_UNIT_ANNOTATION]
    return "cost"


def request_limits(objects: list[dict], route_patch: dict, headers: dict[str, str], metadata: dict,
                   caller: str) -> list[dict]:
    """The limits a request on the route of ``route_patch`` counts against: id, budget, its
    descriptor for this request, the charge formula (the charge is unknown offline)."""
    per_route = (route_patch.get("typed_per_filter_config") or {}).get(RATE_LIMIT_FILTER)
    table, unit = budgets(objects), cost_unit(objects)
    out = []
    for actions, fmt in charges(per_route):
        entries = [_entry(a, headers, metadata, caller) for a in actions]
        if any(e is None for e in entries):
            continue
        limit_id = next((v for k, v in entries if k == LIMIT_KEY), "?")  # type: ignore[misc]
        b = table.get(limit_id)
        out.append({"limit": limit_id, "budget": budget_text(b, f"{unit} units"),
                    "kind": "money" if b and b["money"] else "tokens",
                    "descriptor": ", ".join(f"{k}={v}" for k, v in entries),  # type: ignore[misc]
                    "charge": charge_text(fmt, unit), "charged": UNKNOWN})
    return out

