"""Run llmc's ambient output in a real Envoy, laid out the way istiod (1.30/1.31) lays out a waypoint.

No istiod runs here, so :func:`build_waypoint_bootstrap` turns the *emitted* ServiceEntry,
DestinationRule, VirtualService and TrafficExtension objects into a static Envoy bootstrap that
mirrors what istiod pushes to the waypoint ``waypoint_namespace/waypoint_name``. HBONE is not
terminated: the layout starts at the per-service HTTP filter chain istiod builds behind it.
The istiod sources it follows (istio/istio tag 1.30.3; 1.31.0-rc.0 is the same there):

* ``pilot/pkg/networking/core/listener_waypoint.go`` ``buildWaypointInternal`` (L440–560): one HTTP
  filter chain per service port bound to the waypoint, named ``inbound-vip|<port>|http|<host>``. A
  service is bound when it carries ``istio.io/use-waypoint: <name>`` (and, from another namespace,
  ``istio.io/use-waypoint-namespace``): here the ServiceEntries so labelled, plus the Kubernetes
  Services the test says are labelled (``services``). Each chain is its own listener here, on a free
  127.0.0.1 port (``ports`` maps a host to it), since the tests cannot play ztunnel's original
  destination.
* ``buildWaypointHTTPFilters`` / ``buildWaypointInboundHTTPFilters`` (L872–956) with
  ``listener_builder.go`` ``buildHTTPConnectionManager`` (L400–466): the HTTP filters are
  ``grpc_stats``, ``fault``, ``cors``, then the TrafficExtensions of phases STATS and UNSPECIFIED
  (``PopAppendHTTPTrafficExtension``, ``extension/extensionfilter.go`` L60–121), then the router.
  No authn/authz policies are configured, so the ``pre`` filters are empty; Istio's own waypoint
  upstream-metadata and stats filters are not in upstream Envoy and are left out.
* ``extension/lua.go`` ``BuildHTTPLuaFilter`` (L26–37): a TrafficExtension that targets the waypoint
  (``targetRefs`` Gateway ``<name>`` in its namespace) becomes an HTTP filter named
  ``extensions.istio.io/trafficextension/<ns>.<name>`` (``model/extensions.go`` L352) with only
  ``default_source_code.inline_string`` = ``lua.inlineCode``.
* ``buildWaypointInboundHTTPRouteConfig`` / ``getVirtualServiceForWaypoint`` / ``waypointInboundRoute``
  (L1119–1226): the chain's route configuration ``inbound-vip|<port>|http|<host>`` has one virtual host
  ``inbound|http|<port>`` with domains ``*``, whose routes are the ``http`` routes of every
  VirtualService in the service's or the waypoint's namespace with a host that matches the service;
  a match with ``sourceLabels`` is dropped; a route without matches ends the list. Route names are
  ``http[].name`` (``route/route.go`` L488–494). Without such a VirtualService istiod uses the inbound
  default route (not needed here: llmc writes a VirtualService for every host).
* ``getWaypointDestinationCluster`` (L1259–1295): a destination bound to this waypoint goes to
  ``inbound-vip|<port>|http|<host>``, any other to ``outbound|<port>||<host>``; the cluster's TLS is the
  DestinationRule's (SIMPLE → ``UpstreamTlsContext`` with ``sni`` and SAN matchers, as in the sidecar
  harness), its endpoint the test's upstream (DNS replaced by a static address).
* Visibility (``exportTo``) and route translation (matches, weights, direct responses, header
  removal, timeouts, retries) are the sidecar harness's (:mod:`tests.support.envoy_harness`), which
  follows ``route/route.go`` the same way for both.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from .envoy_harness import (
    LOGICAL_PORT,
    MAX_DIRECT_RESPONSE_BYTES,
    Envoy,
    Layout,
    _cluster,
    _routes_from_vs,
    _visible,
)

WAYPOINT_LABEL = "istio.io/use-waypoint"
WAYPOINT_NAMESPACE_LABEL = "istio.io/use-waypoint-namespace"
LUA_TYPE = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"


def _bound(obj: dict, namespace: str, name: str) -> bool:
    labels = obj["metadata"].get("labels") or {}
    ns = labels.get(WAYPOINT_NAMESPACE_LABEL, obj["metadata"].get("namespace", "default"))
    return labels.get(WAYPOINT_LABEL) == name and ns == namespace


def _host_matches(vs_host: str, host: str) -> bool:
    if vs_host.startswith("*"):
        return host.endswith(vs_host[1:])
    return vs_host == host


def _fqdn(host: str, namespace: str, cluster_domain: str) -> str:
    return host if "." in host else f"{host}.{namespace}.svc.{cluster_domain}"


def _lua_filters(objects: list[dict], namespace: str, name: str) -> list[dict]:
    exts = [o for o in objects if o["kind"] == "TrafficExtension" and o["metadata"]["namespace"] == namespace
            and any(r.get("kind") == "Gateway" and r["name"] == name for r in o["spec"].get("targetRefs", []))
            and o["spec"].get("phase", "UNSPECIFIED") in ("STATS", "UNSPECIFIED") and "lua" in o["spec"]]
    # STATS before UNSPECIFIED; within a phase by priority (higher first), then name (push_context.go sortByPriority)
    phase = {"STATS": 0, "UNSPECIFIED": 1}
    exts.sort(key=lambda o: (phase[o["spec"].get("phase", "UNSPECIFIED")], -(o["spec"].get("priority") or 0),
                             o["metadata"]["name"]))
    return [{"name": f"extensions.istio.io/trafficextension/{o['metadata']['namespace']}.{o['metadata']['name']}",
             "typed_config": {"@type": LUA_TYPE,
                              "default_source_code": {"inline_string": o["spec"]["lua"]["inlineCode"]}}}
            for o in exts]


def _filters(lua: list[dict]) -> list[dict]:
    def f(name: str, type_: str) -> dict:
        return {"name": name, "typed_config": {"@type": f"type.googleapis.com/{type_}"}}
    return [f("envoy.filters.http.grpc_stats", "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig"),
            f("envoy.filters.http.fault", "envoy.extensions.filters.http.fault.v3.HTTPFault"),
            f("envoy.filters.http.cors", "envoy.extensions.filters.http.cors.v3.Cors"),
            *lua,
            f("envoy.filters.http.router", "envoy.extensions.filters.http.router.v3.Router")]


def build_waypoint_bootstrap(objects: list[dict], upstreams: dict[str, int], ca_file: str | None,
                             waypoint_namespace: str = "default", waypoint_name: str = "waypoint",
                             services: dict[str, str] | None = None,
                             cluster_domain: str = "cluster.local", access_logs: list[dict] | None = None) -> Layout:
    """``services``: in-mesh hosts (FQDN) bound to the waypoint → their namespace (labelled Services)."""
    visible = [o for o in objects if o["kind"] in ("ServiceEntry", "DestinationRule", "VirtualService")
               and _visible(o, waypoint_namespace)]
    bound: dict[str, str] = dict(services or {})  # host → namespace of its service
    for se in (o for o in visible if o["kind"] == "ServiceEntry"):
        if _bound(se, waypoint_namespace, waypoint_name):
            for host in se["spec"]["hosts"]:
                bound[host] = se["metadata"]["namespace"]
    drs = {o["spec"]["host"]: o for o in visible if o["kind"] == "DestinationRule"}
    lua = _lua_filters(objects, waypoint_namespace, waypoint_name)
    listeners, clusters, known = [], [], set()

    def cluster_for(host: str, port: int) -> str:
        name = f"inbound-vip|{port}|http|{host}" if host in bound else f"outbound|{port}||{host}"
        if name not in known and host in upstreams:
            c = _cluster(host, port, upstreams[host], drs.get(host), ca_file)
            c["name"] = c["load_assignment"]["cluster_name"] = name
            clusters.append(c)
            known.add(name)
        return name

    for host, svc_ns in sorted(bound.items()):
        routes = []
        for vs in sorted((o for o in visible if o["kind"] == "VirtualService"),
                         key=lambda o: o["metadata"]["name"]):
            vs_ns = vs["metadata"]["namespace"]
            if vs_ns not in (waypoint_namespace, svc_ns):
                continue
            if not any(_host_matches(_fqdn(h, vs_ns, cluster_domain), host) for h in vs["spec"]["hosts"]):
                continue
            if any(g != "mesh" for g in vs["spec"].get("gateways", ["mesh"])):
                continue
            for r in _routes_from_vs(vs, {}, LOGICAL_PORT):
                action = r.get("route")
                if action is not None:
                    if "cluster" in action:
                        action["cluster"] = _rename(action["cluster"], cluster_for)
                    for cw in action.get("weighted_clusters", {}).get("clusters", []):
                        cw["name"] = _rename(cw["name"], cluster_for)
                routes.append(r)
                if r["match"] == {"prefix": "/"}:  # a catch-all ends the list (waypointInboundRoute)
                    break
        chain = f"inbound-vip|{LOGICAL_PORT}|http|{host}"
        hcm = {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
                     ".HttpConnectionManager",
            "stat_prefix": chain,
            "route_config": {"name": chain, "validate_clusters": False,
                             "max_direct_response_body_size_bytes": MAX_DIRECT_RESPONSE_BYTES,
                             "virtual_hosts": [{"name": f"inbound|http|{LOGICAL_PORT}", "domains": ["*"],
                                                "routes": routes}]},
            "http_filters": _filters(lua)}}
        if access_logs:
            hcm["typed_config"]["access_log"] = access_logs
        listeners.append({"name": chain, "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                          "filter_chains": [{"name": chain, "filters": [hcm]}]})
    return Layout({
        "node": {"id": f"waypoint~127.0.0.1~{waypoint_name}.{waypoint_namespace}~{waypoint_namespace}.svc."
                       f"{cluster_domain}", "cluster": f"{waypoint_name}.{waypoint_namespace}"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    })


def _rename(outbound: str, cluster_for) -> str:
    _, port, _, host = outbound.split("|")
    return cluster_for(host, int(port))


class Waypoint(Envoy):
    """A running waypoint layout; ``ports[host]`` is the local port of that service's chain."""

    def __init__(self, bootstrap: dict, **kw: Any):
        super().__init__(bootstrap, **kw)
        with urllib.request.urlopen(f"http://{self.admin}/listeners?format=json", timeout=5) as r:
            data = json.load(r)
        self.ports = {ls["name"].rsplit("|", 1)[1]: int(ls["local_address"]["socket_address"]["port_value"])
                      for ls in data["listener_statuses"]}
