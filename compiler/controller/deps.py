"""The dependency index: which work keys a source's change queues, and which sources a key compiles.

**Work keys are placements' namespaces.** The pass of key ``N`` writes (applies, prunes, keeps)
exactly the generated objects that live in namespace ``N`` — the namespace a placement puts them
into — so every object has one key and no two keys ever write one object. Key ``N`` compiles:

* *own*: every source of ``N`` (their sidecar objects, ServiceEntries, DestinationRules live there);
* *placed*: routes of other namespaces whose rules run on gateway pods in ``N`` (``spec.gateways``,
  mapped by ``--gateway-workload-namespace``) — the gateway-wide ``llmc-gateway-filter-*`` lists them
  all — and, in egress-gateway mode, every source when ``N`` is the egress gateway's namespace (and
  likewise for the ambient target with ``--waypoint NS/NAME``: its TrafficExtension lives in ``NS``);
* *exporters*: gateway-bound routes of other namespaces that use a provider of ``N`` (its
  ServiceEntry and DestinationRule are exported to their gateways' namespaces);
* *peers*: routes of the same namespace and host as a placed route or exporter (so LLMC210 is
  decided as in that namespace's own key), and the routes of its namespace that declare
  ``namespaceLimits`` (a namespace's budgets apply to every route of it, wherever placed);
* *contributors*: sources of other namespaces that objects of ``N`` were found to have — in the
  ``llmc.io/sources`` of live objects, or in another key's compile output. This is the general rule
  for any generated object with sources in several namespaces (the gateway-wide EnvoyFilter, the
  egress Gateway, a rate-limit service's ConfigMap of token limits): such an object lives in one
  namespace, so one key writes it, compiled from all its sources (:meth:`DependencyIndex.learn`);
* *imports*: every provider, of any namespace, whose host a route above names (resolution, exportTo
  visibility and LLMC230 ambiguity are then decided as ``llmc render`` decides them).

A source's change queues the keys whose compile set holds it, before and after the change: its
namespace, its placements, and for a provider every key that imports it. So one gateway-bound
route, one provider in the Istio root namespace or one ``exportTo`` adds one key or a few to the
changes that touch it, instead of making every change compile everything.

The index reads only what decides keys (namespace, host, referenced hosts, gateways) from each
source, and is updated from the informers' events (:meth:`DependencyIndex.update`), never rebuilt.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from ..options import Options
from .reconcile import source_key


def namespace_of(source: str) -> str:
    """The namespace of a source key ``"Kind ns/name"``."""
    return source.split(" ", 1)[-1].split("/", 1)[0]


@dataclass(frozen=True)
class Info:
    """What decides a source's keys."""

    key: str
    kind: str
    namespace: str
    host: str  # provider host, or the route's spec.host
    refs: frozenset[str] = frozenset()  # route: every providerHost it names
    placements: frozenset[str] = frozenset()  # namespaces its rules run in besides its own
    gateway_bound: bool = False  # route: binds some Gateway (its providers are exported there)
    namespace_limits: bool = False  # route: declares spec.namespaceLimits (they apply to every route of its namespace)


def _strings(value) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def describe(obj: dict, opts: Options) -> Info:
    """The :class:`Info` of a source; defensive, as sources need not be valid."""
    meta = obj.get("metadata") or {}
    ns = str(meta.get("namespace", ""))
    raw = obj.get("spec")
    spec: dict = raw if isinstance(raw, dict) else {}
    host = spec["host"] if isinstance(spec.get("host"), str) else ""
    # every source's rules also land in this namespace: the egress gateway's, or one shared waypoint's
    egress = opts.egress_gateway.partition("/")[0] if opts.egress_gateway else (
        opts.waypoint[0] if opts.ambient else None)
    key = source_key(obj)
    if obj.get("kind") != "LLMRoute":  # a provider without a route on its host gets an implicit one
        return Info(key, str(obj.get("kind", "")), ns, host,
                    placements=frozenset({egress} - {ns}) if egress else frozenset())
    refs: set[str] = set()
    rules = spec.get("rules")
    for rule in rules if isinstance(rules, list) else []:
        for ref in (rule.get("backendRefs") if isinstance(rule, dict) else None) or []:
            if isinstance(ref, dict) and isinstance(ref.get("providerHost"), str):
                refs.add(ref["providerHost"])
    gateways = _strings(spec.get("gateways")) or ["mesh"]
    workloads = dict(opts.gateway_workload_namespaces)
    places: set[str] = set()
    for g in gateways:
        if g == "mesh":
            if egress:
                places.add(egress)
            continue
        ref = g if "/" in g else f"{ns}/{g}"
        places.add(workloads.get(ref, ref.split("/", 1)[0]))
    return Info(key, "LLMRoute", ns, host, frozenset(refs), frozenset(places - {ns}),
                any(g != "mesh" for g in gateways), bool(spec.get("namespaceLimits")))


class DependencyIndex:
    def __init__(self, opts: Options):
        self.opts = opts
        self.lock = threading.Lock()
        self.objects: dict[str, dict] = {}
        self.info: dict[str, Info] = {}
        self.by_namespace: dict[str, set[str]] = {}
        self.providers_by_host: dict[str, set[str]] = {}
        self.routes_by_ref: dict[str, set[str]] = {}  # providerHost → routes naming it
        self.routes_by_host: dict[tuple[str, str], set[str]] = {}  # (namespace, spec.host) → routes
        self.placed: dict[str, set[str]] = {}  # namespace → sources of other namespaces placed there
        self.learned: dict[str, set[str]] = {}  # namespace → sources of others its objects were found to have
        self.learned_by_source: dict[str, set[str]] = {}  # the reverse

    # maintenance ---------------------------------------------------------------------------------

    def update(self, old: dict | None, new: dict | None) -> set[str]:
        """Record an event; the keys to queue (empty when nothing that decides keys or output changed
        is unknown to the caller: it decides whether the change matters)."""
        obj = new or old
        assert obj is not None
        key = source_key(obj)
        with self.lock:
            before = self.info.get(key)
            keys = self._keys(before) if before is not None else set()
            if before is not None:
                self._remove(before)
            if new is None:
                self.objects.pop(key, None)
            else:
                self.objects[key] = new
                info = describe(new, self.opts)
                self._add(info)
                keys |= self._keys(info)
        return keys

    @staticmethod
    def _index(table: dict, key, item: str, add: bool) -> None:
        if add:
            table.setdefault(key, set()).add(item)
        else:
            items = table.get(key)
            if items is not None:
                items.discard(item)
                if not items:
                    del table[key]

    def _file(self, info: Info, add: bool) -> None:
        self._index(self.by_namespace, info.namespace, info.key, add)
        for ns in info.placements:
            self._index(self.placed, ns, info.key, add)
        if info.kind == "LLMRoute":
            for h in info.refs:
                self._index(self.routes_by_ref, h, info.key, add)
            self._index(self.routes_by_host, (info.namespace, info.host), info.key, add)
        else:
            self._index(self.providers_by_host, info.host, info.key, add)

    def _add(self, info: Info) -> None:
        self.info[info.key] = info
        self._file(info, True)

    def _remove(self, info: Info) -> None:
        self.info.pop(info.key, None)
        self._file(info, False)

    # queries (under the lock) ----------------------------------------------------------------------

    def _route_keys(self, info: Info) -> set[str]:
        """Keys whose compile set holds route ``info``: its namespace, its placements, namespaces it
        was found to contribute to, the namespaces of the providers it names when it binds a Gateway
        (it is their exporter), and the placements of routes of its namespace and host (its peers)."""
        keys = {info.namespace, *info.placements, *self.learned_by_source.get(info.key, ())}
        if info.gateway_bound:
            keys |= {self.info[p].namespace for h in info.refs for p in self.providers_by_host.get(h, ())}
        for peer in self.routes_by_host.get((info.namespace, info.host), ()):
            keys |= self.info[peer].placements
        if info.namespace_limits:  # its limits are on every route of the namespace, wherever placed
            keys |= {ns for r in self.by_namespace.get(info.namespace, ()) for ns in self.info[r].placements}
        return keys

    def _keys(self, info: Info) -> set[str]:
        if info.kind == "LLMRoute":
            return self._route_keys(info)
        keys = {info.namespace, *info.placements, *self.learned_by_source.get(info.key, ())}
        for r in self.routes_by_ref.get(info.host, ()):  # every key that imports it
            keys |= self._route_keys(self.info[r])
        return keys

    def keys(self) -> set[str]:
        with self.lock:
            return set(self.by_namespace) | set(self.placed) | {ns for ns, found in self.learned.items() if found}

    def compile_set(self, namespace: str) -> tuple[list[dict], set[str]]:
        """(sources key ``namespace`` compiles, sorted by key; the keys of its own sources)."""
        with self.lock:
            own = set(self.by_namespace.get(namespace, ()))
            foreign = set(self.placed.get(namespace, ())) | {s for s in self.learned.get(namespace, ()) if s in self.info}
            for p in own:
                info = self.info[p]
                if info.kind != "LLMRoute":
                    foreign |= {r for r in self.routes_by_ref.get(info.host, ())
                                if self.info[r].gateway_bound and self.info[r].namespace != namespace}
            for r in [r for r in foreign if self.info[r].kind == "LLMRoute"]:
                info = self.info[r]
                foreign |= self.routes_by_host.get((info.namespace, info.host), set())
                # the namespace's budgets (spec.namespaceLimits) apply to the placed route too
                foreign |= {d for d in self.by_namespace.get(info.namespace, ()) if self.info[d].namespace_limits}
            chosen = own | foreign
            for r in [r for r in chosen if self.info[r].kind == "LLMRoute"]:
                for h in self.info[r].refs:
                    chosen |= self.providers_by_host.get(h, set())
            return [self.objects[k] for k in sorted(chosen)], own

    def learn(self, namespace: str, sources: set[str]) -> bool:
        """Objects of ``namespace`` have ``sources`` (of other namespaces too); True when that is news
        (the caller queues ``namespace``, whose pass then compiles them)."""
        sources = {s for s in sources if namespace_of(s) != namespace}
        with self.lock:
            known = self.learned.setdefault(namespace, set())
            new = sources - known
            known |= new
            for s in new:
                self.learned_by_source.setdefault(s, set()).add(namespace)
            return bool(new)

    def forget(self, namespace: str, sources: set[str]) -> None:
        """A pass of ``namespace`` compiled ``sources`` and none of them has an object there now."""
        with self.lock:
            known = self.learned.get(namespace, set())
            for s in sources & known:
                known.discard(s)
                self.learned_by_source.get(s, set()).discard(namespace)

    def users_outside(self, provider: str, chosen: set[str]) -> bool:
        """Whether routes outside ``chosen`` name the host of ``provider`` (then a pass that did not
        compile them cannot tell whether its routeSpecificConfigs are used: LLMC203 is not reported)."""
        with self.lock:
            info = self.info.get(provider)
            return info is not None and bool(self.routes_by_ref.get(info.host, set()) - chosen)
