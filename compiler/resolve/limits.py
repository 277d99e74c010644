"""Token limits (llmc extension, issue 30): ``tokenLimits`` of LLMRoute rules and LLMProviders,
checked and turned into IR :class:`~compiler.ir.TokenLimit` records.

Checks: a rate-limit service must be configured (LLMC260); a key header must not carry a credential
or be llmc's internal header (LLMC261: its values would become Redis keys); ``sourceWorkload`` cannot
be told apart in egress-gateway mode (LLMC262) and is the gateway itself on gateway-bound routes
(LLMC263); budgets fit the service's uint32 (LLMC264); names are unique per owner (LLMC265); a
``model`` key needs a model the proxy knows (LLMC266, a warning).
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import ROUND_CEILING, Decimal

from .. import names
from ..api import Price as ApiPrice
from ..api import TokenLimit as ApiTokenLimit
from ..diagnostics import Diagnostics
from ..ir import Price, Provider, RateLimitService, TokenLimit
from ..load import Document
from ..options import COST_UNITS, Options
from ..protocols import PROTOCOLS

UINT32_MAX = 2**32 - 1
#: headers that carry credentials in any API llmc knows (plus each provider's authHeader, added per program)
CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization", "x-api-key", "api-key"})
UNITS = {"Second": "second", "Minute": "minute", "Hour": "hour", "Day": "day", "Week": "week",
         "Month": "month", "Year": "year"}


def forbidden_headers(providers: Iterable[Provider]) -> frozenset[str]:
    """Header names a limit may not key on: credentials of every protocol and provider, and llmc's own."""
    out = set(CREDENTIAL_HEADERS) | {p.auth_header for p in PROTOCOLS.values()}
    for p in providers:
        for config in (p.default, *(c for _, c in p.overrides)):
            if config.auth_header:
                out.add(config.auth_header.lower())
    return frozenset(out)


def rate_limit_service(opts: Options) -> RateLimitService | None:
    rl = opts.rate_limit
    if rl is None:
        return None
    return RateLimitService(namespace=rl.namespace, service=rl.service, port=rl.port,
                            fqdn=f"{rl.service}.{rl.namespace}.svc.{opts.cluster_domain}",
                            timeout=rl.timeout, fail_closed=rl.fail_closed, cost_unit=rl.cost_unit)


def to_units(amount: float, opts: Options) -> int:
    """An amount of the prices' currency in cost units (``--cost-unit``), rounded up (a budget or a
    price is never made smaller by the conversion); exact for decimals the unit can hold."""
    scaled = Decimal(repr(float(amount))) * COST_UNITS[opts.cost_unit]
    return int(scaled.to_integral_value(rounding=ROUND_CEILING))


def resolve_prices(prices: list[ApiPrice], opts: Options) -> tuple[Price, ...]:
    """The IR prices of a provider, sorted by model: cost units per 1M tokens."""
    return tuple(sorted((Price(model=p.model, prompt=to_units(p.prompt, opts), completion=to_units(p.completion, opts),
                               cached_prompt=None if p.cachedPrompt is None else to_units(p.cachedPrompt, opts))
                         for p in prices), key=lambda p: p.model))


def resolve_limits(limits: list[ApiTokenLimit], id_prefix: str, source: str, doc: Document, path: tuple,
                   opts: Options, forbidden: frozenset[str], diags: Diagnostics, on_gateway: bool = False,
                   in_mesh: bool = True) -> tuple[TokenLimit, ...] | None:
    """The IR limits of one rule or provider; None after an error."""
    ok = True
    if opts.rate_limit is None:
        diags.error("LLMC260", "token limits need a rate-limit service to enforce them", **doc.where(path),
                    hint="render with --rate-limit-service NAMESPACE/SERVICE:PORT (KRM: rateLimitService), "
                    "e.g. llmc-system/ratelimit:8081; docs/budgets.md")
        ok = False
    seen: dict[str, int] = {}
    out = []
    for i, limit in enumerate(limits):
        lpath = path + (i,)
        if limit.name in seen:
            diags.error("LLMC265", f"token limit name {limit.name!r} is already used by tokenLimits[{seen[limit.name]}]",
                        **doc.where(lpath + ("name",)))
            ok = False
        seen.setdefault(limit.name, i)
        if (limit.tokens is None) == (limit.budget is None):
            diags.error("LLMC267", "a limit sets exactly one of tokens (a token budget) and budget (a money "
                        "budget)", **doc.where(lpath), hint="e.g. tokens: 100000, or budget: {cost: 50}")
            ok = False
            continue
        if limit.budget is not None and limit.cost is not None:
            diags.error("LLMC268", "cost weights apply to token budgets; a money budget is charged at the "
                        "answering provider's prices", **doc.where(lpath + ("cost",)),
                        hint="remove cost, and set prices on the LLMProviders (spec.prices)")
            ok = False
        amount = limit.tokens if limit.tokens is not None else to_units(limit.budget.cost, opts) \
            if limit.budget is not None else 0
        if limit.tokens is not None and limit.tokens > UINT32_MAX:
            diags.error("LLMC264", f"tokens {limit.tokens} is above {UINT32_MAX}, the largest budget the "
                        "rate-limit service counts", **doc.where(lpath + ("tokens",)),
                        hint="use a longer window (per) or a smaller cost unit")
            ok = False
        elif limit.budget is not None and amount > UINT32_MAX:
            diags.error("LLMC264", f"budget cost {limit.budget.cost:g} is {amount} {opts.cost_unit} units, above "
                        f"{UINT32_MAX}, the largest budget the rate-limit service counts",
                        **doc.where(lpath + ("budget", "cost")),
                        hint="count in larger units (--cost-unit milli)" if COST_UNITS[opts.cost_unit] > min(COST_UNITS.values())
                        else "use a shorter window (per)")
            ok = False
        key = []
        for j, part in enumerate(limit.key or []):
            kpath = lpath + ("key", j)
            if part.header is not None:
                header = part.header.lower()
                if header in forbidden or header.startswith(f"x-{names.PREFIX}-"):
                    diags.error("LLMC261", f"header {part.header!r} cannot key a token limit: it carries a "
                                "credential or is internal to llmc, and its values would be stored as "
                                "rate-limit keys", **doc.where(kpath + ("header",)),
                                hint="key on a non-secret identity header (e.g. x-user-id set from a JWT claim "
                                "by RequestAuthentication outputClaimToHeaders)")
                    ok = False
                key.append(("header", header))
            elif part.sourceWorkload:
                if opts.egress_gateway and in_mesh:
                    diags.error("LLMC262", "sourceWorkload cannot key a token limit in egress-gateway mode: the "
                                "limits run on the egress gateway, which sees one caller",
                                **doc.where(kpath + ("sourceWorkload",)))
                    ok = False
                elif on_gateway:
                    diags.warning("LLMC263", "on a gateway the source workload is the gateway itself: every "
                                  "caller through it shares one bucket", **doc.where(kpath + ("sourceWorkload",)))
                key.append(("workload", ""))
            else:
                key.append(("model", ""))
        cost = limit.cost
        if cost is None or cost.total is not None:
            wp = wc = float(cost.total) if cost is not None and cost.total is not None else 1.0
        else:
            wp, wc = float(cost.prompt or 0.0), float(cost.completion or 0.0)
        out.append(TokenLimit(id=f"{id_prefix}/{limit.name}", name=limit.name, tokens=amount,
                              unit=UNITS[limit.per], key=tuple(key), prompt_weight=wp, completion_weight=wc,
                              shadow=limit.mode == "Shadow", source=source, money=limit.budget is not None))
    return tuple(out) if ok else None
