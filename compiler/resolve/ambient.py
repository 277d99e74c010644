"""The ambient target's checks: what a waypoint cannot do, each refused (or warned about) with the
reason and the Istio issue to watch (docs/ambient.md, "What does not work there").

A waypoint runs llmc's Lua as a ``TrafficExtension`` (Istio >= 1.30). istiod turns it into a plain
HTTP Lua filter with one default source and nothing else (``pilot/pkg/networking/core/extension/
lua.go``, ``BuildHTTPLuaFilter``), and ``EnvoyFilter`` is not supported on waypoints (istio/istio#43720),
so everything llmc builds with EnvoyFilter patches beside the filter is out of reach there: per-route
context and buffer limits, cluster-level (upstream) filters, Envoy's rate-limit filter and the HCM's
``local_reply_config``. The checks read the source objects, so every problem is located.
"""

from __future__ import annotations

from .. import protocols
from ..api import LLMProvider, LLMRoute
from ..diagnostics import Diagnostics
from ..ir import VirtualHost
from ..protocols import PROTOCOLS, credential_headers
from .providers import DEFAULT_MAX_REQUEST_BYTES

#: EnvoyFilter on waypoints: the Istio issue whose resolution would lift most of these limits
ENVOYFILTER_ISSUE = "istio/istio#43720"
#: waypoints drop VirtualService matches with sourceLabels (pilot/pkg/networking/core/listener_waypoint.go)
SOURCE_LABELS_ISSUE = "istio/istio#51565"
#: Envoy's default listener buffer (``per_connection_buffer_limit_bytes``), which istiod does not change
#: on a waypoint and which a TrafficExtension cannot raise per route (no ``request_body_buffer_limit``)
WAYPOINT_BUFFER_LIMIT = 1024 * 1024
#: headers the filter writes while shaping a request, besides each protocol's auth header
SHAPED_HEADERS = ("accept-encoding", "content-type")


def check_sources(items, diags: Diagnostics) -> None:
    """Failover and token limits on any source: both need EnvoyFilter patches beside the filter."""
    for it in items:
        doc, obj = it.doc, it.obj
        if isinstance(obj, LLMProvider) and obj.spec.tokenLimits:
            _no_limits(doc, ("spec", "tokenLimits"), diags)
        if not isinstance(obj, LLMRoute):
            continue
        if obj.spec.namespaceLimits:  # a namespace's budgets (issue 31) need the same filter
            _no_limits(doc, ("spec", "namespaceLimits"), diags)
        extra = [g for g in (obj.spec.gateways or []) if g != "mesh"]
        if extra:
            diags.error("LLMC271", f"the route binds to gateways ({', '.join(extra)}); the ambient target "
                        "configures waypoints only", **doc.where(("spec", "gateways")),
                        hint="render the gateway's routes with --target sidecar (gateways run EnvoyFilters), "
                        "or drop spec.gateways")
        for i, rule in enumerate(obj.spec.rules):
            path = ("spec", "rules", i)
            if rule.retries is not None or any(b.priority is not None for b in rule.backendRefs):
                field = "retries" if rule.retries is not None else "backendRefs"
                diags.error("LLMC272", "failover cannot run on a waypoint: it needs a Lua filter on each "
                            "provider's cluster and refresh_cluster_on_retry on the route, both EnvoyFilter "
                            f"patches, which waypoints ignore (watch {ENVOYFILTER_ISSUE})",
                            **doc.where(path + (field,)),
                            hint="drop retries/priority for the ambient target, or serve this host from sidecars")
            if rule.tokenLimits:
                _no_limits(doc, path + ("tokenLimits",), diags)
            for j, m in enumerate(rule.matches or []):
                if m.sourceLabels:
                    diags.error("LLMC273", "waypoints drop VirtualService matches with sourceLabels (ambient "
                                f"mode does not know the calling workload's labels there; watch {SOURCE_LABELS_ISSUE})",
                                **doc.where(path + ("matches", j, "sourceLabels")),
                                hint="match on a header the caller sets instead")


def _no_limits(doc, path: tuple, diags: Diagnostics) -> None:
    diags.error("LLMC274", "token limits cannot run on a waypoint: they need Envoy's rate-limit filter and the "
                "HCM's local_reply_config, both EnvoyFilter patches, which waypoints ignore "
                f"(watch {ENVOYFILTER_ISSUE}); a Lua httpCall to the rate-limit service is not built",
                **doc.where(path), hint="drop tokenLimits for the ambient target, or serve this host from sidecars")


def written_headers(vh: VirtualHost) -> set[str]:
    """Every header the filter may write while shaping a request of virtual host ``vh``, for any rule:
    the credential headers (each protocol's, every backend's authHeader; Authorization is removed
    before a provider whose key goes elsewhere), the fixed headers of each backend's protocol and its
    own (anthropic-version), and SHAPED_HEADERS. Any rule counts, not only the one the request matched
    first: a header written for a later rule's provider makes an earlier rule that matches on it the
    one Envoy selects again, which sends the request shaped for that provider to another."""
    out = set(credential_headers(h for r in vh.rules for h in r.auth_headers)) | set(SHAPED_HEADERS)
    for rule in vh.rules:
        for b in rule.backends:
            out |= {h.lower() for h in PROTOCOLS[b.provider.protocol].headers}
            out |= {h.lower() for h in protocols.get(b.provider.protocol).filter_settings(b.config).get("headers", {})}
    return out


def check_program(vhosts: list[VirtualHost], route_docs, provider_docs, diags: Diagnostics) -> None:
    """Rule matches on headers the filter rewrites (on a waypoint Envoy selects the route again on the
    shaped headers), request limits beyond the waypoint's buffer, keys the waypoint must hold, and
    in-mesh hosts the user must enrol in the waypoint."""
    for vh in vhosts:
        doc = route_docs.get(vh.sources[0])
        written = written_headers(vh)
        for i, rule in enumerate(vh.rules):
            for j, m in enumerate(rule.matches):
                for h in m.headers:
                    if h.name in written and doc is not None:
                        diags.error("LLMC275", f"the rule matches on header {h.name!r}, which the filter rewrites; "
                                    "a waypoint's Lua filter clears the route cache when it changes headers "
                                    "(TrafficExtension cannot turn clear_route_cache off), so Envoy would select "
                                    "the route again without this rule", **doc.where(
                                        ("spec", "rules", i, "matches", j, "headers", h.name)),
                                    hint="match on another header for the ambient target")
        if doc is not None and not any(b.provider.host == vh.host for r in vh.rules for b in r.backends):
            diags.note("LLMC278", f"host {vh.host!r} is no provider's (a Kubernetes Service): ztunnel sends its traffic to the "
                       "waypoint only when the Service (or its namespace) is labelled istio.io/use-waypoint",
                       **doc.where(("spec", "host")),
                       hint="kubectl label service <name> istio.io/use-waypoint=<waypoint> (docs/ambient.md)")
    seen = set()
    for vh in vhosts:
        for rule in vh.rules:
            for b in rule.backends:
                p = b.provider
                if (p.namespace, p.name) in seen:
                    continue
                seen.add((p.namespace, p.name))
                pdoc = provider_docs.get((p.namespace, p.name))
                if pdoc is None:
                    continue
                if p.max_request_bytes > WAYPOINT_BUFFER_LIMIT and p.max_request_bytes != DEFAULT_MAX_REQUEST_BYTES:
                    diags.warning("LLMC276", f"maxRequestBytes is {p.max_request_bytes}, but a waypoint buffers "
                                  f"at most {WAYPOINT_BUFFER_LIMIT} bytes of a request (Envoy's listener default; "
                                  "a TrafficExtension cannot raise it per route): larger bodies get Envoy's "
                                  f"plain-text 413 (watch {ENVOYFILTER_ISSUE})",
                                  **pdoc.where(("spec", "maxRequestBytes")),
                                  hint=f"set maxRequestBytes to at most {WAYPOINT_BUFFER_LIMIT}")
                configs = (p.default, *dict(p.overrides).values())
                secret = any(c.secret_names for c in configs if c is not None)
                if any(c.retry_keys_on for c in configs if c is not None):
                    diags.error("LLMC254", "retryKeysOn cannot run on a waypoint: the next key is set by an "
                                "upstream Lua filter and a route retry policy, both EnvoyFilter patches, which "
                                f"waypoints ignore (watch {ENVOYFILTER_ISSUE})", **pdoc.where(("spec", "configs")),
                                hint="drop retryKeysOn for the ambient target (several keys still spread the "
                                "load), or serve this host from sidecars")
                if secret:
                    diags.warning("LLMC277", "apiKeySecretRef on the ambient target: the waypoint's pods read the "
                                  "key file, so they must mount the Secret (the Gateway's "
                                  "spec.infrastructure.parametersRef; docs/ambient.md#api-keys)",
                                  **pdoc.where(("spec", "configs")),
                                  hint="`llmc mounts --target ambient` prints the ConfigMap that mounts it")
