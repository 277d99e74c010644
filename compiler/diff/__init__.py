"""`llmc diff`: what a change to LLMProvider/LLMRoute does to requests, before it merges.

Both configurations are compiled as ``llmc render`` compiles them; every request of the corpus
(:mod:`.corpus`) runs through each with the engine of ``llmc explain`` (Istio's route selection and
the emitted Lua bundle under LuaJIT), and what decides its fate is compared:

* the **rule** that takes it, or the **reply** the client gets instead (status and OpenAI error code);
* for each provider the rule may pick (every first choice of a weighted or failover rule, with its
  **share** of the traffic computed from the weights, not sampled): the **endpoint** (URL), the
  **model** sent, the **key** (by Secret name and key, or a fingerprint of a literal ``apiKey``:
  never the key), the header it travels in, the **failover order** of the tries, and the body
  **format** (``openai``, or the translator's name, e.g. ``anthropic``);
* the **token limits** charged on the route the request takes (docs/budgets.md): each limit's
  id, budget (tokens per unit, shadow), key parts and charge formula, read from the rate-limit
  configuration llmc emits (the charge itself is unknown offline).

Money budgets and ambient rendering are not columns yet: those features have not landed. Output:
text, Markdown (for a pull-request comment) or JSON whose ``schema`` is :data:`SCHEMA`
(docs/diff.md). Exit codes: 0 no change, 1 changes, 2 a side does not compile.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

from .. import protocols
from ..constants import ENVOY_FILTER
from ..explain import ExplainError, Request
from ..explain import explain as run_explain
from ..explain.limits import budget_text, budgets, charge_text, cost_unit
from ..translate.ratelimit import RATE_LIMIT_FILTER
from .corpus import Case, CorpusError, generate, read_requests

__all__ = ["SCHEMA", "Case", "CorpusError", "compare", "decide", "format_markdown", "format_text", "generate",
           "read_requests", "run"]

#: The JSON output's schema id; a field is only ever added under the same id.
SCHEMA = "llmc.diff/v1"

#: the fields of one pick, in the order they are reported
PICK_FIELDS = ("share", "endpoint", "model", "key", "tries", "format", "limits")


def _filter_contexts(objects: list[dict]) -> Iterator[dict]:
    """Every llmc filter context in the EnvoyFilters of a configuration (virtual hosts' and tries')."""
    def walk(node: Any) -> Iterator[dict]:
        if isinstance(node, dict):
            ctx = node.get("filter_context")
            if isinstance(ctx, dict) and "route" in ctx:
                yield ctx
            for v in node.values():
                yield from walk(v)
        elif isinstance(node, list):
            for v in node:
                yield from walk(v)

    for o in objects:
        if o.get("kind") == ENVOY_FILTER:
            yield from walk(o.get("spec"))


def _backends(ctx: dict) -> Iterator[tuple[str, dict]]:
    """(rule name, backend) of one filter context."""
    for rule, r in (ctx.get("rules") or {}).items():
        for b in r.get("backends", []):
            yield rule, b
    for b in ctx.get("tries") or []:
        yield ctx.get("rule", ""), b


def _key_identity(b: dict, protocols: dict) -> str:
    header = b.get("auth_header") or (protocols.get(b.get("protocol"), {}) or {}).get("auth_header", "?")
    if b.get("api_key_file"):
        parts = b["api_key_file"].rstrip("/").split("/")
        return f"Secret {parts[-2]}, key {parts[-1]} in {header}"
    if b.get("api_key"):
        digest = hashlib.sha256(b["api_key"].encode()).hexdigest()[:12]
        return f"literal apiKey sha256:{digest} in {header}"
    if b.get("keys"):  # several keys (docs/api-keys.md): each by Secret or fingerprint, with the choice
        each = [_key_identity({"api_key_file": k.get("api_key_file"), "api_key": k.get("api_key"),
                               "auth_header": header}, protocols).rsplit(" in ", 1)[0]
                + f" (weight {k.get('weight', 1)})" for k in b["keys"]]
        return f"{b.get('key_selection') or 'RoundRobin'} over [{'; '.join(each)}] in {header}"
    return NO_KEY


NO_KEY = "none (the client's own credential)"


def _route_limits(objects: list[dict], budgets: dict[str, dict]) -> dict[str, dict[str, str]]:
    """route name -> {limit id: "budget, keyed by …, charge …"} of the token limits charged on it."""
    out: dict[str, dict[str, str]] = {}
    unit = cost_unit(objects)
    for o in objects:
        if o.get("kind") != ENVOY_FILTER:
            continue
        for patch in o["spec"].get("configPatches", []):
            route = (((patch.get("match") or {}).get("routeConfiguration") or {}).get("vhost") or {}).get("route")
            per = ((patch.get("patch") or {}).get("value") or {}).get("typed_per_filter_config", {}).get(RATE_LIMIT_FILTER)
            if not route or not per:
                continue
            for entry in per.get("rate_limits", []):
                if not entry.get("apply_on_stream_done"):
                    continue  # the check at request time; the charge (on stream done) says it all
                actions = entry.get("actions", [])
                limit_id = next((a["generic_key"]["descriptor_value"] for a in actions if "generic_key" in a), "?")
                keys = sorted({v.get("descriptor_key", k) for a in actions for k, v in a.items()
                               if k != "generic_key" and isinstance(v, dict)})
                fmt = ((entry.get("hits_addend") or {}).get("format")) or ""
                out.setdefault(route["name"], {})[limit_id] = (
                    budget_text(budgets.get(limit_id), unit) + (f", keyed by {', '.join(keys)}" if keys else "")
                    + f", charge {charge_text(fmt, unit)}")
    return {k: dict(sorted(v.items())) for k, v in out.items()}


class _Side:
    """One configuration, indexed once for every request: the key of each (route, rule, provider) and
    the provider of each host, from the filter contexts emitted."""

    def __init__(self, objects: list[dict]) -> None:
        self.objects = objects
        self.keys: dict[tuple[str, str, str], str] = {}
        self.providers: dict[str, str] = {}
        for ctx in _filter_contexts(objects):
            for rule, b in _backends(ctx):
                self.keys.setdefault((ctx["route"], rule, b["provider"]), _key_identity(b, ctx.get("protocols") or {}))
                self.providers.setdefault(b["host"], b["provider"])
        self.limits = _route_limits(objects, budgets(objects))


def _model_of(body: str | None) -> str | None:
    try:
        value = json.loads(body or "")
    except ValueError:
        return None
    model = value.get("model") if isinstance(value, dict) else None
    return model if isinstance(model, str) else None


def _pick(side: _Side, x: dict, share: float) -> dict:
    tries = x.get("attempts") or ([x["upstream"]] if "upstream" in x else [])
    first = tries[0] if tries else {}
    rule = x.get("rule") or ""
    route, _, rule_name = rule.rpartition("/")
    hosts = [t.get("cluster", "").rsplit("|", 1)[-1] for t in tries]
    provider = side.providers.get(hosts[0], hosts[0]) if hosts else None
    headers = first.get("headers") or {}
    return {
        "provider": provider,
        "share": share,
        "endpoint": first.get("url"),
        "model": _model_of(first.get("body")),
        "key": side.keys.get((route, rule_name, provider or ""), NO_KEY),
        "tries": [side.providers.get(h, h) for h in hosts] if len(hosts) > 1 else None,
        "format": protocols.format_of(first.get("url") or "", headers),
        "limits": side.limits.get(x.get("final_route") or x.get("route") or "") or None,
    }


def decide(side: _Side | list[dict], req: Request) -> dict:
    """What one configuration does with one request: ``{"rule", "reply" | "picks"}``."""
    if not isinstance(side, _Side):
        side = _Side(side)
    try:
        x = run_explain(side.objects, req)
    except ExplainError as exc:
        return {"rule": None, "reply": f"not llmc traffic: {exc}"}
    rule = x.get("rule")
    result = x.get("result")
    if result is not None and result.get("status") is not None:
        code = None
        try:
            code = (json.loads(result.get("body") or "") or {}).get("error", {}).get("code")
        except (ValueError, AttributeError):
            pass
        return {"rule": rule, "reply": f"{result['status']} from {result['by']}" + (f" ({code})" if code else "")}
    if result is not None:
        return {"rule": rule, "reply": f"{result.get('by')}: {result.get('reason', '')}".strip()}
    candidates = x.get("candidates") or []
    picked = x.get("provider") or (candidates[0]["provider"] if len(candidates) == 1 else None)
    picks = {}
    if len(candidates) <= 1:
        p = _pick(side, x, 1.0)
        picks[p["provider"] or "?"] = p
    else:
        for c in candidates:
            one = x if c["provider"] == picked else run_explain(side.objects, req, provider=c["provider"])
            p = _pick(side, one, c["share"])
            picks[c["provider"]] = p
    return {"rule": rule, "picks": dict(sorted(picks.items()))}


def _summary(p: dict | None) -> str | None:
    """A pick in one line: its share, and the order of its tries (failover)."""
    if p is None:
        return None
    return f"{p['share']:.0%}" + (f", tries {' → '.join(p['tries'])}" if p.get("tries") else "")


def compare(base: dict, head: dict) -> list[dict]:
    """The differences between two decisions, as ``{"what", "base", "head"}`` items."""
    changes: list[dict] = []
    if base.get("rule") != head.get("rule"):
        changes.append({"what": "rule", "base": base.get("rule"), "head": head.get("rule")})
    if base.get("reply") != head.get("reply"):
        changes.append({"what": "reply", "base": base.get("reply"), "head": head.get("reply")})
    bp, hp = base.get("picks") or {}, head.get("picks") or {}
    for provider in sorted(set(bp) | set(hp)):
        b, h = bp.get(provider), hp.get(provider)
        if b is None or h is None:
            changes.append({"what": "picked", "provider": provider, "base": _summary(b), "head": _summary(h)})
            continue
        for f in PICK_FIELDS:
            if f == "limits":
                bl, hl = b[f] or {}, h[f] or {}
                changes += [{"what": f"limit {lid}", "provider": provider, "base": bl.get(lid), "head": hl.get(lid)}
                            for lid in sorted(set(bl) | set(hl)) if bl.get(lid) != hl.get(lid)]
            elif b[f] != h[f]:
                changes.append({"what": f, "provider": provider, "base": b[f], "head": h[f]})
    return changes


def run(base_objects: list[dict], head_objects: list[dict], cases: list[Case]) -> dict:
    """The report (JSON-ready): every request's decisions on both sides and what changed."""
    base, head = _Side(base_objects), _Side(head_objects)
    items = []
    counts = {"requests": len(cases), "changed": 0, "unchanged": 0, "not_reproducible": 0}
    for case in cases:
        b = decide(base, case.request)
        item: dict[str, Any] = {"name": case.name, "request": _describe(case.request)}
        if case.unknown:
            item["unknown"] = list(case.unknown)
        if case.logged_rule is not None and b.get("rule") != case.logged_rule:
            item["status"] = "not reproducible"
            item["why"] = (f"the access log names rule {case.logged_rule}; replayed without the client's "
                           f"{' and '.join(case.unknown)} it reaches {b.get('rule') or b.get('reply')}")
            counts["not_reproducible"] += 1
            items.append(item)
            continue
        h = decide(head, case.request)
        changes = compare(b, h)
        item.update({"status": "changed" if changes else "unchanged", "base": b, "head": h, "changes": changes})
        counts["changed" if changes else "unchanged"] += 1
        items.append(item)
    return {"schema": SCHEMA, "summary": counts, "requests": items}


#: Request headers whose values are credentials: shown masked in the report, which goes into a pull
#: request (the request still runs with them). By name: the auth headers of every protocol and proxy,
#: cookies, and any name that says it holds a key, token, secret, password or session.
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
CREDENTIAL_WORDS = ("key", "token", "secret", "password", "session", "auth")


def _shown_header(name: str, value: str) -> str:
    """A header's value as the report shows it: a credential masked, its scheme kept ("Bearer ***")."""
    if name not in CREDENTIAL_HEADERS and not any(w in name for w in CREDENTIAL_WORDS):
        return value
    scheme, sep, _ = value.strip().partition(" ")
    return f"{scheme} ***" if sep and scheme.isalpha() else "***"


def _describe(req: Request) -> dict:
    out: dict[str, Any] = {"host": req.host, "method": req.method, "path": req.path}
    if req.headers:
        out["headers"] = {k: _shown_header(k.lower(), v) for k, v in sorted(req.headers.items())}
    model = _model_of(req.body.decode("utf-8", "replace") if req.body else None)
    if model is not None:
        out["model"] = model
    if req.via != "mesh":
        out["via"] = req.via
    if req.labels:
        out["labels"] = dict(sorted(req.labels.items()))
    if req.namespace != "default":
        out["namespace"] = req.namespace
    return out


def _show(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.0%}"
    if isinstance(v, list):
        return " → ".join(str(x) for x in v)
    return str(v)


def _request_line(item: dict) -> str:
    r = item["request"]
    extra = [f"{k}: {v}" for k, v in (r.get("headers") or {}).items()]
    if "model" in r:
        extra.append(f"model {r['model']}")
    if "via" in r:
        extra.append(f"via {r['via']}")
    return f"{r['method']} {r['host']}{r['path']}" + (f" ({', '.join(extra)})" if extra else "")


def _change_line(c: dict) -> str:
    who = f"{c['provider']}: " if c.get("provider") else ""
    if c["what"] == "picked":
        return f"{who}now picked ({c['head']})" if c["base"] is None else f"{who}no longer picked (was {c['base']})"
    return f"{who}{c['what']} {_show(c['base'])} → {_show(c['head'])}"


def format_text(report: dict) -> str:
    s = report["summary"]
    lines = []
    for item in report["requests"]:
        if item["status"] == "unchanged":
            continue
        lines.append(f"{item['name']}: {_request_line(item)}")
        if item["status"] == "not reproducible":
            lines.append(f"  not reproducible: {item['why']}")
            continue
        lines += [f"  {_change_line(c)}" for c in item["changes"]]
    lines.append(f"{s['requests']} requests: {s['changed']} changed, {s['unchanged']} unchanged"
                 + (f", {s['not_reproducible']} not reproducible" if s["not_reproducible"] else ""))
    return "\n".join(lines) + "\n"


def _md(v: Any) -> str:
    return _show(v).replace("|", "\\|")


def format_markdown(report: dict) -> str:
    """A pull-request comment: the summary, then one table row per change."""
    s = report["summary"]
    lines = ["### llmc diff", "",
             f"**{s['changed']}** of {s['requests']} requests change"
             + (f"; {s['not_reproducible']} cannot be reproduced from the access log" if s["not_reproducible"] else "")
             + "."]
    rows = [(item, c) for item in report["requests"] if item["status"] == "changed" for c in item["changes"]]
    if rows:
        lines += ["", "| request | provider | what | base | head |", "|---|---|---|---|---|"]
        for item, c in rows:
            lines.append(f"| `{_md(_request_line(item))}` | {_md(c.get('provider'))} | {c['what']} | "
                         f"{_md(c['base'])} | {_md(c['head'])} |")
    return "\n".join(lines) + "\n"
