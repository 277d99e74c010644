"""EnvoyFilters: the Lua filter once per namespace, and per-route Lua context per virtual host.

* ``llmc-filter`` (one per namespace, or ``llmc-gateway-filter-*`` per gateway namespace and
  selector) inserts the Lua filter ``llmc.lua`` before the router of the outbound HTTP listener of
  every port llmc routes on (gateways: every HTTP listener of the selected pods). It carries the Lua source once and has no
  default script, so it does nothing on routes without llmc's per-route config (no buffering, no
  header changes for any other traffic). ``clear_route_cache: false``: the script clears the route
  cache itself, exactly once, after it set the routing header (facts notes §1.5).
* ``llmc-route-*`` / ``llmc-provider-*`` (one per virtual host) MERGE a ``LuaPerRoute`` with the
  virtual host's context into the virtual host istiod builds for the VirtualService
  (``<fqdn>:<port>``), and raise its request buffer limit to the largest ``maxRequestBytes`` of
  its providers. One context per virtual host keeps each rule's data once, however many routes
  the rule becomes.

The per-route context is built by :func:`lua_context`, the one serializer between the IR and the
Lua program; the Lua reads it with ``filterContext()`` (a protobuf Struct, so it is data, never code).
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from importlib import resources

from .. import names
from ..ir import Backend, Program, SecretRef, VirtualHost
from ..protocols import ANTHROPIC_MAX_TOKENS, ANTHROPIC_VERSION, PROTOCOLS, endpoint
from .common import EnvoyPlacement, envoy_placements, metadata, rule_route_names

FILTER_NAME = "llmc.lua"
SOURCE_NAME = "llmc"
LUA_TYPE = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
LUA_PER_ROUTE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute"


@cache
def lua_source() -> str:
    return resources.files("llmc_templates.lua").joinpath("llmc.lua").read_text(encoding="utf-8")


def secret_path(secrets_dir: str, ref: SecretRef) -> str:
    """Where the proxy reads a Secret key: the Secret is mounted at ``<secrets_dir>/<name>``."""
    return f"{secrets_dir}/{ref.name}/{ref.key}"


#: Room the shaped body may take beyond ``maxRequestBytes`` (README, "Request size limits"): the
#: filter adds ``model``/``stream``/``stream_options`` (later steps translate bodies too), and Envoy
#: answers a body over its buffer limit with a plain-text 413 the client cannot parse.
MIN_HEADROOM = 64 * 1024


def buffer_limit(max_request_bytes: int) -> int:
    """Envoy's per-route request buffer limit for a virtual host whose largest limit is given."""
    return max_request_bytes + max(MIN_HEADROOM, max_request_bytes // 4)


def _backend_context(b: Backend, secrets_dir: str, pin: str | None) -> dict:
    p, c = b.provider, b.config
    path = endpoint(p.protocol, p.path, c.deployment, c.api_version)
    ctx: dict = {"provider": p.name, "protocol": p.protocol, "host": p.host, "path": path, "weight": b.weight,
                 "max_body": p.max_request_bytes}
    ctx.update(_protocol_settings(p.protocol, c))
    if c.model is not None:
        ctx["model"] = c.model
    if c.stream is not None:
        ctx["stream"] = c.stream
    if c.stream is True and c.include_usage:
        ctx["include_usage"] = True
    if c.api_key_secret is not None:
        ctx["api_key_file"] = secret_path(secrets_dir, c.api_key_secret)
    elif c.api_key is not None:
        ctx["api_key"] = c.api_key
    if pin is not None:
        ctx["pin"] = pin
    return ctx


def _protocol_settings(protocol: str, c) -> dict:
    """Per-backend values that refine the protocol's record: another auth header or prefix
    (openAIConfig.authHeader/authPrefix), Anthropic's max_tokens default and version header."""
    out: dict = {}
    if c.auth_header is not None or c.auth_prefix is not None:
        proto = PROTOCOLS[protocol]
        header = c.auth_header or proto.auth_header
        default_prefix = proto.auth_prefix if header == proto.auth_header else ""
        out["auth_header"] = header
        out["auth_prefix"] = c.auth_prefix if c.auth_prefix is not None else default_prefix
    if protocol == "anthropic":
        out["max_tokens"] = c.max_tokens or ANTHROPIC_MAX_TOKENS
        out["headers"] = {"anthropic-version": c.version or ANTHROPIC_VERSION}
    return out


def lua_context(vh: VirtualHost, secrets_dir: str) -> dict:
    """The Lua filter's data for one virtual host: every rule once, and which route is which rule.

    Envoy hands the filter the virtual host's context on every route of it; the filter looks up
    its rule by the matched route's name (``routes``: the rules' own routes). Each backend of a
    weighted rule names its pinned route (``pin``), which is also the value of the internal
    routing header ``pin_header`` that selects it. ``protocols`` holds, once per virtual host, the
    record (auth header and prefix, fixed headers, usage format) of each provider API its backends
    speak; each backend names its ``protocol``. ``buffer_limit`` is the largest body the filter
    may hand to Envoy. ``id`` is a digest of everything else: the Lua caches its prepared form by
    id, parsing each context once per worker, never serving a stale one.
    """
    routes: dict[str, str] = {}
    rules: dict[str, dict] = {}
    for rule in vh.rules:
        entry, pinned = rule_route_names(vh, rule)
        routes[entry] = rule.name
        rules[rule.name] = {"backends": [_backend_context(b, secrets_dir, pinned.get(b.provider.name))
                                         for b in rule.backends]}
    used = sorted({b.provider.protocol for r in vh.rules for b in r.backends})
    body = {
        "route": f"{vh.namespace}/{vh.label}",
        "pin_header": names.ROUTING_HEADER,
        "protocols": {name: PROTOCOLS[name].context() for name in used},
        "buffer_limit": buffer_limit(max_request_bytes(vh)),
        "routes": routes,
        "rules": rules,
    }
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    return {"id": digest[:16], **body}


def route_patches(vh: VirtualHost, filter_name: str) -> list[dict]:
    """Every route of the virtual host the filter may shape on, with its HTTP_ROUTE patch value.
    Each route carries its own name as route metadata (``llmc.lua``: ``route``), which the filter
    reads after it made Envoy select a route again (``streamInfo():routeName()`` keeps naming the
    first route). A route whose requests all go to a translated provider (a pinned route, or the
    entry route of a one-backend rule) also adds the internal response header
    ``names.TRANSLATE_HEADER`` naming the body format, so the response path needs no metadata read."""
    out = []
    for rule in vh.rules:
        entry, pinned = rule_route_names(vh, rule)
        sends = [(pinned[b.provider.name], b) for b in rule.backends] if pinned else [(entry, rule.backends[0])]
        formats = {name: PROTOCOLS[b.provider.protocol].format for name, b in sends}
        for name in [*pinned.values(), entry]:
            value: dict = {"metadata": {"filter_metadata": {filter_name: {"route": name}}}}
            if formats.get(name, "openai") != "openai":
                value["response_headers_to_add"] = [{
                    "header": {"key": names.TRANSLATE_HEADER, "value": formats[name]},
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]
            out.append({"name": name, "value": value})
    return out


def max_request_bytes(vh: VirtualHost) -> int:
    return max(b.provider.max_request_bytes for r in vh.rules for b in r.backends)


def _filter_name(context: str, selector: tuple[tuple[str, str], ...]) -> str:
    base = f"{names.PREFIX}-filter" if context == "SIDECAR_OUTBOUND" else f"{names.PREFIX}-gateway-filter"
    return names.selector_name(base, selector)


def _vhost_filter_name(vh: VirtualHost, placement: EnvoyPlacement) -> str:
    if placement.context == "SIDECAR_OUTBOUND":
        return vh.object_name
    # In a gateway's namespace, next to the EnvoyFilters of other namespaces' routes.
    tag = names.short_hash(f"{vh.namespace}/{vh.object_name}@{placement.namespace}", 6)
    return names.cap(f"{vh.object_name}-{names.to_label(vh.namespace)}-{tag}")


def translate_envoyfilters(program: Program) -> list[dict]:
    out = []
    filters: dict[tuple, dict] = {}
    for vh in program.vhosts:
        seen = set()
        for pl in envoy_placements(vh):
            key = (pl.namespace, pl.context, pl.selector, pl.port, pl.vhost)
            if key in seen:  # two Gateways of one namespace share the patch
                continue
            seen.add(key)
            f = filters.setdefault((pl.namespace, pl.context, pl.selector), {"ports": set(), "sources": set()})
            f["ports"].add(pl.port if pl.context == "SIDECAR_OUTBOUND" else None)
            f["sources"].update(vh.all_sources)
            out.append({
                "metadata": metadata(_vhost_filter_name(vh, pl), pl.namespace, vh.all_sources),
                "selector": [{"name": k, "value": v} for k, v in pl.selector],
                "kind": "vhost", "context": pl.context,
                "vhost": pl.vhost, "port": pl.port,
                "buffer_limit": buffer_limit(max_request_bytes(vh)),
                "context_data": lua_context(vh, program.secrets_dir),
                "routes": route_patches(vh, FILTER_NAME),
                "filter_name": FILTER_NAME, "per_route_type": LUA_PER_ROUTE_TYPE,
                "source_name": SOURCE_NAME,
            })
    for (ns, context, selector), f in sorted(filters.items()):
        out.append({
            "metadata": metadata(_filter_name(context, selector), ns, sorted(f["sources"])),
            "selector": [{"name": k, "value": v} for k, v in selector],
            "kind": "filter", "context": context,
            # Sidecars: one patch per outbound listener port. Gateways: no port (istiod matches the
            # listener's target port there); the filter is inert on every other route.
            "ports": sorted(f["ports"], key=lambda p: -1 if p is None else p),
            "filter_name": FILTER_NAME, "lua_type": LUA_TYPE, "source_name": SOURCE_NAME,
            "lua_source": lua_source(),
        })
    return out
