"""The price of an answer as a CEL expression: the one copy of the price arithmetic, shared by
money budgets' charges (``translate/ratelimit.py``: ``hits_addend``) and the cost counter of
``render --telemetry`` (``compiler/telemetry.py``: ``llm_cost_total``); docs/budgets.md and
docs/observability.md.

Prices (``ir.Price``) are whole cost units (``--cost-unit``) per 1M tokens, so an answer's cost in
cost units is ``ceil((prompt tokens × P + completion tokens × C - cache-read tokens × (P - Pc)) / 1M)``,
with P, C and Pc (``cachedPrompt``, else P) the prices of the provider and model that answered,
read from the usage the Lua filter records (dynamic metadata ``llmc``: ``provider``,
``response_model``, ``request_prompt_tokens``, ``request_completion_tokens``,
``cache_read_tokens``). The cache term is emitted only where a price has a ``cachedPrompt``.
Everything is a CEL ``uint`` (the rate-limit service's counters and istio.stats' values are integers).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from .ir import Price

#: the Lua filter's dynamic metadata, as Envoy's CEL reads it
USAGE = "metadata.filter_metadata.llmc"
PROMPT = f"{USAGE}.request_prompt_tokens"
COMPLETION = f"{USAGE}.request_completion_tokens"
#: the answer reported both counts (the charge's and the counter's condition)
HAS_USAGE = f"has({PROMPT}) && has({COMPLETION})"
#: a price is per 1M tokens: the charge in cost units is ceil(Σ tokens × units per 1M / 1M)
PER = 1_000_000
CACHE_READ = f"{USAGE}.cache_read_tokens"
#: the answer's prompt tokens read from the provider's cache (the conventions count them among the
#: input tokens, and so does the filter for every protocol): at most its prompt tokens
CACHED = f"(has({CACHE_READ}) && uint({CACHE_READ}) <= uint({PROMPT}) ? uint({CACHE_READ}) : 0u)"
#: the price switches' fields: a price's prompt and completion, and its cache discount (what a
#: cache-read prompt token costs less than another: prompt - cachedPrompt; 0 without cachedPrompt,
#: or with a cachedPrompt above the prompt price — a cached token is never dearer)
FIELDS = ("prompt", "completion", "cache_discount")


def _value(price: Price, field: str) -> int:
    if field == "cache_discount":
        return 0 if price.cached_prompt is None else max(price.prompt - price.cached_prompt, 0)
    return int(getattr(price, field))


def discounts(prices: Sequence[Price]) -> bool:
    """Whether any of ``prices`` charges cache reads less (the charge then has a discount term)."""
    return any(_value(p, "cache_discount") for p in prices)


def answer_model(fallback: str) -> str:
    """The model that answered (``response_model``, as the provider reported it), else ``fallback``
    (a CEL string)."""
    return f"(has({USAGE}.response_model) ? {USAGE}.response_model : {fallback})"


def price_switch(prices: tuple[Price, ...], field: str, model: str) -> str:
    """A CEL uint: ``field`` (prompt or completion) of the price of the model ``model`` (a CEL string)
    names. A price's model matches the same name, or a dated snapshot of it (``gpt-4o`` matches
    ``gpt-4o-2024-08-06``): the longest matching name wins; no match: the ``*`` price, or — never a
    free answer — the provider's highest price."""
    star = [p for p in prices if p.model == "*"]
    # an unlisted model without a "*" price pays the highest price, without a cache discount
    fallback = _value(star[0], field) if star else 0 if field == "cache_discount" else \
        max(_value(p, field) for p in prices)
    expr = f"{fallback}u"
    for price in sorted((p for p in prices if p.model != "*"), key=lambda p: (len(p.model), p.model)):
        name = json.dumps(price.model)
        expr = f"({model} == {name} || {model}.startsWith({json.dumps(price.model + '-')}) ? " \
               f"{_value(price, field)}u : {expr})"
    return expr


#: a priced provider as the switches take it: (LLMProvider name, its prices, the model expression)
Priced = tuple[str, tuple[Price, ...], str]


def provider_switch(priced: Sequence[Priced], field: str) -> str:
    """A CEL uint: ``field`` of the price at the provider that answered (``llmc.provider``, which the
    filter records from the try that answered), for its model; a provider not listed pays the
    highest price of those listed (never free; the cost counter's guard, :func:`priced_guard`, keeps
    unlisted providers out)."""
    highest = 0 if field == "cache_discount" else max(_value(p, field) for _, prices, _ in priced for p in prices)
    expr = f"{highest}u"
    for name, prices, model in reversed(priced):
        expr = f"({USAGE}.provider == {json.dumps(name)} ? {price_switch(prices, field, model)} : {expr})"
    return expr


#: the completion tokens of an answer that may report none (an embeddings answer: prompt tokens only)
COMPLETION_OR_0 = f"(has({COMPLETION}) ? uint({COMPLETION}) : 0u)"


def usage_charge(prompt_price: str, completion_price: str, completion: str = f"uint({COMPLETION})",
                 cache_discount: str | None = None) -> str:
    """A CEL uint: the answer's reported usage at these prices (CEL uints), in cost units, rounded up
    (``completion``: its completion tokens, a CEL uint). With ``cache_discount`` (a switch of
    prompt - cachedPrompt) the prompt tokens read from the cache cost ``cachedPrompt``: the discount
    is subtracted last, and never below 0 (:data:`CACHED` ≤ prompt tokens, discount ≤ prompt price)."""
    discount = f" - {CACHED} * {cache_discount}" if cache_discount is not None else ""
    return (f"(uint({PROMPT}) * {prompt_price} + {completion} * {completion_price}{discount} + {PER - 1}u)"
            f" / {PER}u")


def size_estimate(prompt_price: str) -> str:
    """A CEL uint: ``request.size / 4`` tokens at the prompt price (an answer without usage)."""
    return f"(uint(request.size) / 4u * {prompt_price} + {PER - 1}u) / {PER}u"


def priced_guard(priced: Sequence[Priced]) -> str:
    """A CEL bool: the answer succeeded, reported its prompt tokens (an embeddings answer reports no
    completion tokens), and came from a listed (priced) provider."""
    names = " || ".join(f"{USAGE}.provider == {json.dumps(name)}" for name, _, _ in priced)
    return f"response.code < 400 && has({PROMPT}) && has({USAGE}.provider) && ({names})"


def answer_cost(priced: Sequence[Priced]) -> str:
    """A CEL uint: what an answer from one of ``priced`` cost, in cost units (the cost counter's
    value: :func:`usage_charge` at :func:`provider_switch`'s prices, exactly what a money budget
    charges for an answer with both counts); an answer with prompt tokens only (embeddings) costs
    those; 0 for anything else — an error, an answer without usage, an unpriced provider. (A money
    budget charges an answer without both counts ``request.size / 4`` tokens instead: an estimate
    against free answers, which the counter, measuring what was reported, does not add.)"""
    discount = provider_switch(priced, "cache_discount") if any(discounts(p) for _, p, _ in priced) else None
    charge = usage_charge(provider_switch(priced, "prompt"), provider_switch(priced, "completion"), COMPLETION_OR_0,
                          discount)
    return f"{priced_guard(priced)} ? {charge} : 0u"
