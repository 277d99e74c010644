"""What the calling proxy of `llmc explain` has and how it picks a route, following Istio.

The objects istiod would give the proxy: the VirtualService of the called host visible from the
caller's namespace (``exportTo``) and bound to ``mesh`` or to the caller's gateway, and the
EnvoyFilter patches of the caller's namespace whose ``workloadSelector`` matches its labels (merged
as istiod merges them). Then Istio's route selection: ``http[]`` routes in order, every condition of
one ``match`` entry must hold, any entry selects the route (see :func:`route_matches`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from ..constants import ENVOY_FILTER, FILTER_NAME, VIRTUAL_SERVICE
from ..options import Options


@dataclass
class Request:
    host: str
    method: str = "POST"
    path: str = "/v1/chat/completions"
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    namespace: str = "default"
    labels: dict[str, str] = field(default_factory=dict)
    via: str = "mesh"  # "mesh" or a Gateway as "namespace/name"
    port: int = 80
    cluster_domain: str = Options().cluster_domain  # --cluster-domain of the compile


class ExplainError(Exception):
    """The request cannot be explained (no proxy would handle it as llmc traffic)."""


# ------------------------------------------------------------------------------------------------
# The proxy's view
# ------------------------------------------------------------------------------------------------

def _visible(obj: dict, namespace: str) -> bool:
    export = obj["spec"].get("exportTo", ["*"])
    ns = obj["metadata"].get("namespace", "default")
    return "*" in export or ("." in export and ns == namespace) or namespace in export


def _gateway_refs(vs: dict) -> set[str]:
    ns = vs["metadata"].get("namespace", "default")
    return {g if g == "mesh" or "/" in g else f"{ns}/{g}" for g in vs["spec"].get("gateways", ["mesh"])}


def _host_names(host: str, namespace: str, domain: str) -> set[str]:
    """The names a VirtualService host answers to, as istiod lists the virtual host's domains."""
    names = {host}
    if "." not in host:
        names |= {f"{host}.{namespace}", f"{host}.{namespace}.svc", f"{host}.{namespace}.svc.{domain}"}
    suffix = f".svc.{domain}"
    if host.endswith(suffix):
        short = host[: -len(suffix)]
        names |= {short, f"{short}.svc", short.split(".")[0]}
    return names


def find_virtualservice(objects: list[dict], req: Request) -> dict:
    """The VirtualService that defines the host's virtual host for the calling proxy."""
    authority = req.host.split(":")[0].lower()
    proxy_ns = req.namespace if req.via == "mesh" else req.via.split("/", 1)[0]
    for vs in objects:
        if vs["kind"] != VIRTUAL_SERVICE or not _visible(vs, proxy_ns) or req.via not in _gateway_refs(vs):
            continue
        ns = vs["metadata"].get("namespace", "default")
        for host in vs["spec"]["hosts"]:
            if host == "*" or authority in _host_names(host, ns, req.cluster_domain):
                return vs
    elsewhere = sorted({vs["metadata"].get("namespace", "default") for vs in objects if vs["kind"] == VIRTUAL_SERVICE
                        and any(authority in _host_names(h, vs["metadata"].get("namespace", "default"),
                                                         req.cluster_domain) for h in vs["spec"]["hosts"])} - {proxy_ns})
    hint = (f"; it is routed for callers in namespace {', '.join(elsewhere)}: explain one of those with "
            f"--namespace {elsewhere[0]}" if elsewhere and req.via == "mesh" else "")
    raise ExplainError(f"no VirtualService for host {req.host!r} reaches a proxy {describe_proxy(req)}: the request "
                       f"is not llmc traffic there (istiod's default route would pass it as it is){hint}")


def describe_proxy(req: Request) -> str:
    if req.via != "mesh":
        return f"of gateway {req.via}"
    labels = ",".join(f"{k}={v}" for k, v in sorted(req.labels.items()))
    return f"in namespace {req.namespace}" + (f" with labels {labels}" if labels else "")


def applicable_patches(objects: list[dict], req: Request) -> Iterator[dict]:
    """The config patches of the EnvoyFilters that apply to the calling proxy (its namespace, and for
    a sidecar its labels against the workload selector) in its context, in the objects' order."""
    context_kind = "SIDECAR_OUTBOUND" if req.via == "mesh" else "GATEWAY"
    proxy_ns = req.namespace if req.via == "mesh" else req.via.split("/", 1)[0]
    for ef in objects:
        if ef["kind"] != ENVOY_FILTER or ef["metadata"].get("namespace") != proxy_ns:
            continue
        selector = (ef["spec"].get("workloadSelector") or {}).get("labels") or {}
        if req.via == "mesh" and any(req.labels.get(k) != v for k, v in selector.items()):
            continue
        for patch in ef["spec"]["configPatches"]:
            if patch.get("match", {}).get("context") == context_kind:
                yield patch


def find_filter_context(objects: list[dict], req: Request, vhost: str) -> tuple[dict | None, dict[str, dict]]:
    """(the virtual host's filter_context, {route name: route-level patch value}) from the EnvoyFilters
    that apply to the calling proxy."""
    context: dict | None = None
    routes: dict[str, dict] = {}
    for patch in applicable_patches(objects, req):
        rc = patch.get("match", {}).get("routeConfiguration", {})
        if rc.get("vhost", {}).get("name") != vhost:
            continue
        value = patch["patch"]["value"]
        if patch["applyTo"] == "VIRTUAL_HOST":
            per_route = (value.get("typed_per_filter_config") or {}).get(FILTER_NAME) or {}
            context = per_route.get("filter_context", context)
        elif patch["applyTo"] == "HTTP_ROUTE":
            # several patches may MERGE into one route (route metadata, then failover settings)
            _merge(routes.setdefault(rc["vhost"]["route"]["name"], {}), value)
    return context, routes


def find_filter_sources(objects: list[dict], req: Request) -> tuple[str | None, dict[str, str]]:
    """The Lua bundles the calling proxy runs (compiler/luabundle.py): its ``llmc.lua`` filter's, and
    by filter name the router's upstream Lua filter's (failover tries), from the EnvoyFilters that
    apply to it, exactly as emitted."""
    downstream: str | None = None
    upstream: dict[str, str] = {}
    for patch in applicable_patches(objects, req):
        if patch["applyTo"] != "HTTP_FILTER":
            continue
        value = patch["patch"].get("value") or {}
        if value.get("name") == FILTER_NAME:
            downstream = _inline_source(value["typed_config"])
        for flt in (value.get("typed_config") or {}).get("upstream_http_filters") or []:
            if "source_codes" in (flt.get("typed_config") or {}):  # the router's upstream Lua filter
                upstream[flt["name"]] = _inline_source(flt["typed_config"])
    return downstream, upstream


def _inline_source(lua: dict) -> str:
    (code,) = lua["source_codes"].values()
    return code["inline_string"]


def _merge(dst: dict, src: dict) -> None:
    """Protobuf MERGE as istiod applies a patch: messages merged, map entries replaced."""
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict) and k != "typed_per_filter_config":
            _merge(dst[k], v)
        elif isinstance(v, dict) and isinstance(dst.get(k), dict):
            dst[k].update(v)
        else:
            dst[k] = v


# ------------------------------------------------------------------------------------------------
# VirtualService matching, following Istio
# ------------------------------------------------------------------------------------------------

def _string_match(spec: dict, value: str | None) -> tuple[bool, str]:
    """Istio StringMatch against a header value (None: absent). Regexes are RE2 full matches."""
    import re2

    if not spec:  # an empty StringMatch: the header must be present (Istio)
        return value is not None, "" if value is not None else "absent (expected present)"
    (kind, expected), = spec.items()
    if value is None:
        return False, f"absent (expected {kind} {expected!r})"
    if kind == "exact":
        ok = value == expected
    elif kind == "prefix":
        ok = value.startswith(expected)
    else:
        ok = re2.fullmatch(expected, value) is not None
    return ok, "" if ok else f"{value!r} is not {kind} {expected!r}"


def route_matches(http: dict, headers: dict[str, str], req: Request, vs_ns: str) -> tuple[bool, str]:
    """Whether an ``http[]`` route selects the request, and why not (the first failing condition of
    each match entry). Header names compare lower-case; ``uri`` compares the path without the query."""
    reasons = []
    for m in http.get("match") or [{}]:
        why = _match_fails(m, headers, req, vs_ns)
        if why is None:
            return True, ""
        reasons.append(why)
    return False, "; or ".join(reasons)


def _match_fails(m: dict, headers: dict[str, str], req: Request, vs_ns: str) -> str | None:
    if m.get("port", req.port) != req.port:
        return f"port {m['port']}, not {req.port}"
    gateways = {g if g == "mesh" or "/" in g else f"{vs_ns}/{g}" for g in m.get("gateways", [])}
    if gateways and req.via not in gateways:
        return f"only for gateways {sorted(gateways)}"
    for k, v in (m.get("sourceLabels") or {}).items():
        if req.via != "mesh" or req.labels.get(k) != v:
            return f"source label {k}={v!r} does not hold"
    if "uri" in m:
        ok, why = _string_match(m["uri"], headers.get(":path", "/").split("?", 1)[0])
        if not ok:
            return f"path {why}"
    if "method" in m:
        ok, why = _string_match(m["method"], headers.get(":method"))
        if not ok:
            return f"method {why}"
    for name, spec in (m.get("headers") or {}).items():
        ok, why = _string_match(spec, headers.get(name.lower()))
        if not ok:
            return f"header {name}: {why}"
    for name, spec in (m.get("withoutHeaders") or {}).items():
        ok, _ = _string_match(spec, headers.get(name.lower()))
        if ok:
            return f"header {name} must not match"
    return None


def select(vs: dict, headers: dict[str, str], req: Request) -> tuple[dict | None, list[tuple[str, str]]]:
    """(the selected http route or None, [(earlier route name, why it did not match)])."""
    ns = vs["metadata"].get("namespace", "default")
    skipped: list[tuple[str, str]] = []
    for http in vs["spec"].get("http", []):
        ok, why = route_matches(http, headers, req, ns)
        if ok:
            return http, skipped
        skipped.append((http.get("name", ""), why))
    return None, skipped
