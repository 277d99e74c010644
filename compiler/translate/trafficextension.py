"""TrafficExtension (ambient target): llmc's Lua filter on a waypoint, one object per waypoint.

istiod turns a ``TrafficExtension`` with ``lua.inlineCode`` into an HTTP Lua filter named
``extensions.istio.io/trafficextension/<ns>.<name>`` whose *default source code* is that text and
nothing else (istio 1.30 ``pilot/pkg/networking/core/extension/lua.go`` L26–37): no per-route
``filter_context``, no ``source_codes``, no upstream filter, ``clear_route_cache`` at Envoy's default.
On a waypoint it goes after the HCM's fault and CORS filters and before the router
(``listener_waypoint.go`` L902–903, ``listener_builder.go`` L438; phase ``UNSPECIFIED``).

So the inline code is the filter's bundle (``compiler/luabundle.py``: the modules its providers need),
wrapped, then ``ambient.lua`` called with the per-virtual-host contexts the sidecar target puts in
``LuaPerRoute`` — here one generated Lua data table (:mod:`compiler.luadata`; each protocol's record,
the same in every context, once) — which indexes them by the route names each names and hands the
bundle the context of the route Envoy selected. Route names are stable on a waypoint: istiod names an Envoy
route ``http[].name`` of the VirtualService (``route/route.go`` L488–494; llmc's matches have no
names), the same names the sidecar target uses.

The objects of a source live in the source's namespace; the TrafficExtension lives in the waypoint's
(``targetRefs`` cannot cross namespaces) and carries the routes of every source the waypoint serves.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from importlib import resources

from .. import luabundle, names
from ..ir import Program, VirtualHost
from ..luadata import lua_value
from ..protocols import PROTOCOLS
from .common import metadata
from .envoyfilter import lua_context

#: ``lua.inlineCode`` maxLength in Istio 1.30's CRD (characters; llmc's inline code is ASCII)
INLINE_CODE_LIMIT = 65536
#: Envoy's default listener buffer, which istiod leaves on waypoints and no TrafficExtension can raise:
#: the filter's own OpenAI-format 413 answers bodies beyond it (resolve/ambient.py warns, LLMC276)
WAYPOINT_BUFFER_LIMIT = 1024 * 1024
WAYPOINT_LABEL = "istio.io/use-waypoint"
WAYPOINT_NAMESPACE_LABEL = "istio.io/use-waypoint-namespace"


def bundle(formats: frozenset[str] = frozenset()) -> str:
    """The Lua bundle of a waypoint's filter (``compiler/luabundle.py``): the modules every filter
    needs and the translators of the ``formats`` its providers speak; never failover (refused, LLMC272)."""
    return luabundle.bundle(luabundle.modules_for(formats, failover=False))


@cache
def ambient_source() -> str:
    """``templates/lua/ambient.lua``, stripped as the bundle's modules are."""
    return luabundle.strip(resources.files("llmc_templates.lua").joinpath("ambient.lua").read_text(encoding="utf-8"))


#: how the inline code is put together: the bundle runs in a function of its own (it ends with a
#: ``return``), then ``ambient.lua`` runs with the route table as its argument
WRAP_HEAD, WRAP_TAIL, TABLE_CALL = "local llmc_bundle = (function()\n", "end)()\nreturn (function(...)\n", "end)("


def ambient_context(vh: VirtualHost, secrets_dir: str) -> dict:
    """The virtual host's filter context as the sidecar target builds it, with every body limit (the
    client's body, the shaped body) clamped to what a waypoint can buffer, so that a larger request
    gets the filter's OpenAI-format 413 rather than Envoy's plain-text one; its id recomputed."""
    ctx = lua_context(vh, secrets_dir)
    body = {k: v for k, v in ctx.items() if k != "id"}
    body["max_body"] = min(body["max_body"], WAYPOINT_BUFFER_LIMIT)
    body["buffer_limit"] = min(body["buffer_limit"], WAYPOINT_BUFFER_LIMIT)
    for rule in body["rules"].values():
        for b in rule["backends"]:
            b["max_body"] = min(b["max_body"], WAYPOINT_BUFFER_LIMIT)
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    return {"id": digest[:16], **body}


def route_table(vhosts: list[VirtualHost], secrets_dir: str) -> dict:
    """The data of a waypoint's filter: ``contexts``, each virtual host's filter context as on sidecars
    but without ``protocols``, whose records (the union of the hosts') are given once. ``ambient.lua``
    puts them back and indexes the contexts by the routes each names (:func:`route_index`)."""
    contexts, protocols = [], {}
    for vh in vhosts:
        ctx = ambient_context(vh, secrets_dir)
        protocols.update(ctx.pop("protocols"))
        contexts.append(ctx)
    return {"contexts": contexts, "protocols": dict(sorted(protocols.items()))}


def route_index(contexts: list[dict]) -> dict[str, int]:
    """Envoy route name → the index (1-based, Lua's) of its context, as ``ambient.lua`` builds it: every
    rule's route (the context's ``routes``), every pinned route (a backend's ``pin``) and the no-match
    route of a host that routes by the body. The ``GET /v1/models`` route is not named (there the
    filter does nothing)."""
    out: dict[str, int] = {}
    for i, ctx in enumerate(contexts, start=1):
        names_ = [*ctx["routes"], *(b["pin"] for r in ctx["rules"].values() for b in r["backends"] if "pin" in b)]
        out.update({n: i for n in names_ + ([ctx["nomatch"]] if "nomatch" in ctx else [])})
    return out


def table_source(table: dict) -> str:
    """The table as a Lua constructor, one context per line (readable in goldens and diffs; the line
    breaks cost a character each)."""
    contexts = ",\n".join(lua_value(c) for c in table["contexts"])
    return "{contexts={\n" + contexts + "\n},\nprotocols=" + lua_value(table["protocols"]) + "}"


def formats(vhosts: list[VirtualHost]) -> frozenset[str]:
    """The body formats of every provider the waypoint's hosts send to (which translators it needs)."""
    return frozenset(PROTOCOLS[b.provider.protocol].format for vh in vhosts for r in vh.rules for b in r.backends)


def inline_code(vhosts: list[VirtualHost], secrets_dir: str) -> str:
    return (WRAP_HEAD + bundle(formats(vhosts)) + WRAP_TAIL + ambient_source() + TABLE_CALL
            + table_source(route_table(vhosts, secrets_dir)) + ")\n")


def waypoint_vhosts(program: Program) -> dict[tuple[str, str], list[VirtualHost]]:
    """(waypoint namespace, name) → the virtual hosts it serves, in program order."""
    assert program.waypoint is not None
    out: dict[tuple[str, str], list[VirtualHost]] = {}
    for vh in program.vhosts:
        out.setdefault(program.waypoint.of(vh.namespace), []).append(vh)
    return out


def extension_name(waypoint: str) -> str:
    return names.cap(f"{names.PREFIX}-{waypoint}")


def translate_trafficextensions(program: Program) -> list[dict]:
    if program.waypoint is None:
        return []
    out = []
    for (ns, name), vhosts in sorted(waypoint_vhosts(program).items()):
        out.append({
            "metadata": metadata(extension_name(name), ns, [s for vh in vhosts for s in vh.all_sources]),
            "gateway": name,
            "inline_code": inline_code(vhosts, program.secrets_dir),
        })
    return out


def waypoint_labels(program: Program, namespace: str) -> dict[str, str]:
    """The labels that enrol a ServiceEntry of ``namespace`` in its waypoint (Istio's ambient egress)."""
    if program.waypoint is None:
        return {}
    ns, name = program.waypoint.of(namespace)
    return {WAYPOINT_LABEL: name, **({WAYPOINT_NAMESPACE_LABEL: ns} if ns != namespace else {})}
