"""Token limits (docs/budgets.md; design: shared/notes/token-ratelimit.md §5.2) in Envoy's and
envoyproxy/ratelimit's terms.

* :func:`rate_limit_filter`: Envoy's global rate-limit filter ``llmc.ratelimit``, inserted after
  ``llmc.lua`` (so it sees the final route a weighted rule's filter picked, and llmc's metadata). On
  a route without its per-route config it produces no descriptor and makes no call.
* :func:`route_rate_limits`: on every final route of a limited rule (the rule's route, or each
  pinned route of a weighted/failover rule) a ``RateLimitPerRoute``: per limit a **check** at request
  time (``hits_addend: 0``: charge nothing) and a **charge** when the stream is done
  (``apply_on_stream_done``, ``hits_addend.format`` = a ``%CEL(...)%`` over the usage metadata the
  Lua records). Trap 1 of the notes: ``hits_addend`` is honoured only here, in
  ``typed_per_filter_config``; on ``VirtualHost``/``RouteAction.rate_limits`` Envoy drops it and
  every call counts 1 — so llmc never writes route or virtual-host ``rate_limits``.
* :func:`local_reply`: an HCM mapper giving the 429 (flag ``RL``) an OpenAI-format body and
  ``retry-after``, scoped to llmc's requests (``llmc.rule`` metadata); with fail-closed, the same for
  the service's failure (flag ``RLSE``).
* :func:`translate_ratelimit_config`: the service's configuration (one domain, ``llmc``, so a
  provider's limit is one bucket for every namespace reaching it) as a ConfigMap in the service's
  namespace, deterministic.
"""

from __future__ import annotations

import itertools
import json
import re

import yaml

from .. import names
from ..cost import (
    CACHED,
    HAS_USAGE,
    PER,
    USAGE,
    Priced,
    answer_model,
    discounts,
    price_switch,
    provider_switch,
    size_estimate,
    usage_charge,
)
from ..ir import Backend, Program, RateLimitService, Rule, TokenLimit, VirtualHost
from ..protocols import PROTOCOLS
from .common import metadata, rule_route_names

RATE_LIMIT_FILTER = "llmc.ratelimit"
RATE_LIMIT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit"
PER_ROUTE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute"
#: the service's domain: one for every namespace (a provider's bucket is shared across namespaces)
DOMAIN = "llmc"
CONFIG_NAME = f"{names.PREFIX}-ratelimit-config"
CONFIG_KEY = f"{DOMAIN}.yaml"
LIMIT_KEY = "llmc_limit"  # the descriptor entry naming the limit
#: on the ConfigMap when it holds money budgets: the unit their counters count (--cost-unit)
COST_UNIT_ANNOTATION = "llmc.io/cost-unit"
#: llmc's stage of Envoy's rate-limit filter: the filter applies only rate limits of its stage, so
#: it never sends other teams' route or virtual-host ``rate_limits`` (stage 0 by default) to llmc's
#: service, nor fails their requests when that service is down
STAGE = 7
WORKLOAD_KEY = "source_cluster"  # Envoy's source_cluster action: the node cluster, <app>.<namespace> in Istio
MODEL_KEY = "model"
ABSENT = "-"  # the value of a key part a request lacks (a shared bucket)
_USAGE = USAGE
RATE_LIMITED_BODY = json.dumps({"error": {
    "message": "llmc: token limit exceeded; retry after the window resets (retry-after)",
    "type": "tokens", "param": None, "code": "rate_limit_exceeded"}}, separators=(",", ":"))
UNAVAILABLE_BODY = json.dumps({"error": {
    "message": "llmc: the rate-limit service is unavailable and token limits fail closed",
    "type": "server_error", "param": None, "code": "rate_limit_service_unavailable"}}, separators=(",", ":"))


def header_key(name: str) -> str:
    return f"header.{name}"


def cluster_name(svc: RateLimitService) -> str:
    """The cluster istiod builds for the service (its port named grpc-* or appProtocol grpc: HTTP/2)."""
    return f"outbound|{svc.port}||{svc.fqdn}"


def rate_limit_filter(svc: RateLimitService) -> dict:
    config: dict = {
        "@type": RATE_LIMIT_TYPE, "domain": DOMAIN, "stage": STAGE, "timeout": svc.timeout,
        "failure_mode_deny": svc.fail_closed,
        "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
        "rate_limit_service": {"transport_api_version": "V3", "grpc_service": {
            "envoy_grpc": {"cluster_name": cluster_name(svc), "authority": svc.fqdn}}},
    }
    if svc.fail_closed:
        config["status_on_error"] = {"code": "ServiceUnavailable"}
    return {"name": RATE_LIMIT_FILTER, "typed_config": config}


def _number(w: float) -> str:
    return repr(float(w))


def charge_format(limit: TokenLimit) -> str:
    """The charge: the weighted usage the Lua recorded; without usage ``request.size/4`` for a 2xx
    (an aborted stream, a provider that sent none); 0 for errors (the notes measured each case)."""
    p, c = f"{_USAGE}.request_prompt_tokens", f"{_USAGE}.request_completion_tokens"
    return (f"%CEL(response.code >= 400 ? 0u : (has({p}) && has({c}) ? "
            f"uint({_number(limit.prompt_weight)} * {p} + {_number(limit.completion_weight)} * {c}) : "
            f"uint(request.size) / 4u))%")


def _prices_for(rule: Rule, backend: Backend, field: str) -> str:
    """The price (cost units per 1M tokens) a request of ``rule`` on ``backend``'s route pays
    (compiler/cost.py): at the provider that answered (a failover rule: ``llmc.provider``) for the
    model that answered (``llmc.response_model``; without it, the model the provider is configured
    with)."""
    def priced(b: Backend) -> Priced:
        return b.provider.name, b.provider.prices, answer_model(json.dumps(b.config.model or ""))

    if rule.retries is None:
        _, prices, model = priced(backend)
        return price_switch(prices, field, model)
    return provider_switch([priced(b) for b in rule.backends if b.provider.prices], field)


def money_format(rule: Rule, backend: Backend) -> str:
    """The charge of a money budget, in cost units, rounded up: the answer's prompt and completion
    tokens at the answering provider's prices for the answering model; without usage, ``request.size
    / 4`` tokens at its prompt price (a 2xx); 0 for errors."""
    pp, cp = _prices_for(rule, backend, "prompt"), _prices_for(rule, backend, "completion")
    answering = [b for b in rule.backends if b.provider.prices] if rule.retries is not None else [backend]
    dp = _prices_for(rule, backend, "cache_discount") if any(discounts(b.provider.prices) for b in answering) else None
    charge = usage_charge(pp, cp, cache_discount=dp)
    return f"%CEL(response.code >= 400 ? 0u : ({HAS_USAGE} ? {charge} : {size_estimate(pp)}))%"


_COMPARED = re.compile(r' == ("(?:[^"\\\\]|\\\\.)*")')


def _split_top(expr: str) -> tuple[str, str, str] | None:
    """``(cond ? then : else)`` at depth 0 of ``expr`` (without its outer parentheses), or None."""
    depth, quoted, q, c = 0, False, -1, -1
    for i, ch in enumerate(expr):
        if ch == '"' and (i == 0 or expr[i - 1] != "\\"):
            quoted = not quoted
        elif not quoted:
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0 and expr.startswith(" ? ", i) and q < 0:
                q = i
            elif depth == 0 and expr.startswith(" : ", i) and q >= 0 and c < 0:
                c = i
    return (expr[:q], expr[q + 3:c], expr[c + 3:]) if q >= 0 and c >= 0 else None


def _read_switch(expr: str, provider: str = "") -> list[tuple[str, str, int]]:
    """The prices a :func:`~compiler.cost.price_switch` or provider switch holds: (provider, model, units), in the
    order they are tested ("" provider: any; model "*": no listed model matched)."""
    expr = expr.strip()
    if expr.endswith("u") and expr[:-1].isdigit():
        return [(provider, "*", int(expr[:-1]))]
    parts = _split_top(expr[1:-1]) if expr.startswith("(") and expr.endswith(")") else None
    if parts is None:
        raise ValueError(f"not a price switch: {expr[:80]}")
    cond, then, other = parts
    name = json.loads(_COMPARED.search(cond).group(1))  # type: ignore[union-attr]
    if cond.startswith(f"{_USAGE}.provider"):
        return _read_switch(then, name) + _read_switch(other, provider or "other")
    return [(provider, name, int(then[:-1]))] + _read_switch(other, provider)


def describe_money(fmt: str) -> list[dict]:
    """A money charge's prices, read back from :func:`money_format`'s expression (``llmc explain`` and
    ``llmc diff`` work from the emitted objects): per (provider, model), cost units per 1M prompt and
    completion tokens, and ``cached_prompt`` where cache reads cost less."""
    inner = fmt[len("%CEL("):-len(")%")]
    usage = inner[inner.index("? (uint(") + 2:]
    p_mark, c_mark = ") * ", f" + uint({_USAGE}.request_completion_tokens) * "
    pp = usage[usage.index(p_mark) + len(p_mark):usage.index(c_mark)]
    cp = usage[usage.index(c_mark) + len(c_mark):usage.index(f" + {PER - 1}u) / {PER}u")]
    cp, _, dp = cp.partition(f" - {CACHED} * ")
    completions = {(prov, model): units for prov, model, units in _read_switch(cp)}
    discount = {(prov, model): units for prov, model, units in _read_switch(dp)} if dp else {}
    return [{"provider": prov, "model": model, "prompt": units, "completion": completions.get((prov, model)),
             **({"cached_prompt": units - discount[(prov, model)]} if discount.get((prov, model)) else {})}
            for prov, model, units in _read_switch(pp)]


def _part_variants(part: tuple[str, str], vh: VirtualHost, backend: Backend) -> list[dict]:
    """The Envoy actions for one key part: one per case a request can be in (a header present or
    absent); exactly one of them yields an entry for a given request. Every value must be the same at
    the check and at the charge (after the router removed llmc's internal headers)."""
    kind, name = part
    if kind == "workload":
        return [{"source_cluster": {}}]
    if kind == "model":
        if backend.config.model is not None:
            return [{"generic_key": {"descriptor_key": MODEL_KEY, "descriptor_value": backend.config.model}}]
        if "model" not in vh.body_fields:
            return [{"generic_key": {"descriptor_key": MODEL_KEY, "descriptor_value": ABSENT}}]
        # the client's model, recorded by the filter (``limit_model``): the internal model header it
        # routed by is removed before the charge is made
        return [{"metadata": {"descriptor_key": MODEL_KEY, "source": "DYNAMIC", "default_value": ABSENT,
                              "metadata_key": {"key": "llmc", "path": [{"key": "request_model"}]}}}]
    key = header_key(name)
    return [{"request_headers": {"header_name": name, "descriptor_key": key}},
            {"header_value_match": {"descriptor_key": key, "descriptor_value": ABSENT, "expect_match": False,
                                    "headers": [{"name": name, "present_match": True}]}}]


def limit_entries(limit: TokenLimit, vh: VirtualHost, rule: Rule, backend: Backend) -> list[dict]:
    """The check and charge entries of one limit on a route to ``backend``."""
    head = {"generic_key": {"descriptor_key": LIMIT_KEY, "descriptor_value": limit.id}}
    charge = money_format(rule, backend) if limit.money else charge_format(limit)
    out: list[dict] = []
    for combo in itertools.product(*(_part_variants(p, vh, backend) for p in limit.key)):
        actions = [head, *combo]
        out.append({"actions": actions, "hits_addend": {"number": 0}})
        out.append({"actions": actions, "apply_on_stream_done": True, "hits_addend": {"format": charge}})
    return out


def route_limits(rule: Rule, backend: Backend) -> tuple[TokenLimit, ...]:
    """The limits a request of ``rule`` sent to ``backend`` counts against: the rule's, then the provider's."""
    return rule.limits + backend.provider.limits


def final_routes(vh: VirtualHost, rule: Rule) -> list[tuple[str, Backend]]:
    """(route name, backend) of each route a request of ``rule`` ends on: its pinned routes when the
    filter picks a backend (the entry route is then a direct response), else its own route."""
    entry, pinned = rule_route_names(vh, rule)
    if pinned:
        return [(pinned[b.provider.name], b) for b in rule.backends if b.provider.name in pinned]
    return [(entry, rule.backends[0])]


def route_rate_limits(vh: VirtualHost, svc: RateLimitService | None) -> dict[str, dict]:
    """{route name: the ``typed_per_filter_config`` entry} for every final route of a limited rule."""
    if svc is None:
        return {}
    out = {}
    for rule in vh.rules:
        for route, backend in final_routes(vh, rule):
            limits = route_limits(rule, backend)
            if limits:
                entries = [e for limit in limits for e in limit_entries(limit, vh, rule, backend)]
                out[route] = {"@type": PER_ROUTE_TYPE, "domain": DOMAIN, "rate_limits": entries}
    return out


def asks_usage(rule: Rule, backend: Backend) -> bool:
    """The filter asks for a stream's usage (``stream_options.include_usage``) on a client's behalf and
    drops the usage event before the client sees it: on limited rules whose provider speaks OpenAI's
    format (a translated provider's stream always has usage), not on failover rules (tries are shaped
    by the upstream filter)."""
    return (bool(route_limits(rule, backend)) and rule.retries is None
            and not PROTOCOLS[backend.provider.protocol].translated)


def mark_usage(rule_context: dict, rule: Rule, svc: RateLimitService | None) -> None:
    """Sets, on the Lua context's backends of ``rule``, ``limit_usage`` where :func:`asks_usage`, and
    ``limit_model`` where a limit is keyed by a model the client chooses (the filter records it)."""
    if svc is None or rule.retries is not None:
        return
    for ctx, backend in zip(rule_context["backends"], rule.backends, strict=True):
        if asks_usage(rule, backend):
            ctx["limit_usage"] = True
        if backend.config.model is None and any(("model", "") in lim.key for lim in route_limits(rule, backend)):
            ctx["limit_model"] = True


def with_rate_limits(patches: list[dict], vh: VirtualHost, svc: RateLimitService | None) -> list[dict]:
    """``route_patches`` with each final route of a limited rule carrying its RateLimitPerRoute, and
    (where the filter asks usage for the client) the internal response header that sends its answer
    through the filter's note check (``names.TRANSLATE_HEADER``: the note says what to do)."""
    per_route = route_rate_limits(vh, svc)
    if not per_route:
        return patches
    marked = {route for rule in vh.rules for route, b in final_routes(vh, rule) if asks_usage(rule, b)}
    out = []
    for patch in patches:
        config = per_route.get(patch["name"])
        if config is not None:
            value = dict(patch["value"])
            value["typed_per_filter_config"] = {**value.get("typed_per_filter_config", {}), RATE_LIMIT_FILTER: config}
            if patch["name"] in marked and "response_headers_to_add" not in value:
                value["response_headers_to_add"] = [{"header": {"key": names.TRANSLATE_HEADER, "value": "openai"},
                                                     "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]
            patch = {**patch, "value": value}
        out.append(patch)
    return out


def local_reply(svc: RateLimitService) -> list[dict]:
    """HCM ``local_reply_config`` mappers: OpenAI-format bodies for llmc's rate-limited requests."""
    llmc = {"metadata_filter": {"matcher": {"filter": "llmc", "path": [{"key": "rule"}],
                                            "value": {"present_match": True}}}}
    mappers = [{
        "filter": {"and_filter": {"filters": [{"response_flag_filter": {"flags": ["RL"]}}, llmc]}},
        "headers_to_add": [{"header": {"key": "retry-after", "value": "%RESP(X-RATELIMIT-RESET)%"},
                            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
        "body_format_override": {"text_format_source": {"inline_string": RATE_LIMITED_BODY},
                                 "content_type": "application/json"}}]
    if svc.fail_closed:
        mappers.append({
            "filter": {"and_filter": {"filters": [{"response_flag_filter": {"flags": ["RLSE"]}}, llmc]}},
            "body_format_override": {"text_format_source": {"inline_string": UNAVAILABLE_BODY},
                                     "content_type": "application/json"}})
    return mappers


def all_limits(program: Program) -> list[TokenLimit]:
    """Every limit once, by id (a provider's limit is reached from many routes)."""
    seen: dict[str, TokenLimit] = {}
    for p in program.providers:
        for limit in p.limits:
            seen[limit.id] = limit
    for vh in program.vhosts:
        for rule in vh.rules:
            for limit in rule.limits:
                seen[limit.id] = limit
    return [seen[k] for k in sorted(seen)]


def _config_descriptor(limit: TokenLimit) -> dict:
    """The nested descriptor tree for one limit: ``llmc_limit=<id>`` then one level per key part
    (any value: a key without a value matches every value and counts each apart), the limit at the
    leaf (envoyproxy/ratelimit applies a limit only at the depth of the request's descriptor)."""
    leaf = {"rate_limit": {"unit": limit.unit, "requests_per_unit": limit.tokens}, "shadow_mode": limit.shadow}
    if limit.money:  # the service's stats per key value (team, workload, model): spend on the dashboard
        leaf["detailed_metric"] = True
    keys = [WORKLOAD_KEY if k == "workload" else MODEL_KEY if k == "model" else header_key(n) for k, n in limit.key]
    node: dict | None = None
    for key in reversed(keys):
        node = {"key": key, **leaf} if node is None else {"key": key, "descriptors": [node]}
    if keys:
        return {"key": LIMIT_KEY, "value": limit.id, "descriptors": [node]}
    return {"key": LIMIT_KEY, "value": limit.id, **leaf}


def ratelimit_config(program: Program) -> str:
    """envoyproxy/ratelimit's configuration file for every limit of the program (YAML, deterministic)."""
    doc = {"domain": DOMAIN, "descriptors": [_config_descriptor(limit) for limit in all_limits(program)]}
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, width=1000)


def translate_ratelimit_config(program: Program) -> list[dict]:
    svc = program.rate_limit
    if svc is None:
        return []
    sources = sorted({limit.source for limit in all_limits(program)}) or ["llmc --rate-limit-service"]
    meta = metadata(CONFIG_NAME, svc.namespace, sources)
    if any(limit.money for limit in all_limits(program)):  # what the money budgets' counters count
        meta["annotations"] = {**meta.get("annotations", {}), COST_UNIT_ANNOTATION: svc.cost_unit}
    return [{"metadata": meta, "key": CONFIG_KEY, "config": ratelimit_config(program)}]
