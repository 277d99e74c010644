"""Where a virtual host's rules run (sidecars, the egress gateway, bound Gateways), and the check
that no pod gets the LLM filter twice."""

from __future__ import annotations

from collections import defaultdict

from .. import names
from ..constants import ROOT_NAMESPACE
from ..diagnostics import Diagnostics
from ..ir import EgressGateway, Placement, VirtualHost
from ..options import Options


def place(vh: VirtualHost, egress: EgressGateway | None, opts: Options | None = None) -> tuple[Placement, ...]:
    """Where the virtual host's rules run: the sidecars of its namespace (or, in egress-gateway mode,
    the egress gateway instead), and every Gateway the LLMRoute binds to (whose pods are selected by
    the providers' workloadSelector, in the namespace the gateway's pods run in: the Gateway's own,
    unless ``--gateway-workload-namespace`` says otherwise)."""
    workloads = dict(opts.gateway_workload_namespaces) if opts is not None else {}
    out = []
    if vh.in_mesh and egress is None:
        out.append(Placement(vh.namespace, vh.selector, vh.port))
    if vh.in_mesh and egress is not None:
        out.append(Placement(egress.namespace, egress.labels, egress.port, gateway=egress.ref))
    for ref in vh.bound_gateways:
        out.append(Placement(workloads.get(ref, ref.split("/", 1)[0]), vh.selector, vh.port, gateway=ref))
    return tuple(out)


def _contains(big: tuple[tuple[str, str], ...], small: tuple[tuple[str, str], ...]) -> bool:
    """Every pod ``big`` selects is also selected by ``small`` (``small``'s labels are a subset)."""
    return set(small) <= set(big)


def check_selector_overlap(vhosts: list[VirtualHost], provider_docs, diags: Diagnostics) -> None:
    """One Lua filter per (namespace, sidecar/gateway, selector) is inserted; when one selector's
    labels contain another's, the pods both select get the filter twice and shape every request
    twice. Selectors that overlap only through the pods' actual labels are invisible to llmc
    (docs/gateways.md, "Several gateways in one namespace")."""
    providers: dict[tuple, set[tuple[str, str]]] = defaultdict(set)  # placement key → (ns, provider)
    for vh in vhosts:
        for pl in vh.placements:
            providers[(pl.namespace, pl.on_gateway, pl.selector)].update(
                (b.provider.namespace, b.provider.name) for r in vh.rules for b in r.backends
                if b.provider.selector == pl.selector)
    keys = sorted(providers)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            # EnvoyFilters of the root namespace apply to the matching pods of every namespace (Istio)
            same_pods = a[0] == b[0] or ROOT_NAMESPACE in (a[0], b[0])
            if a[1] != b[1] or not same_pods or not (_contains(a[2], b[2]) or _contains(b[2], a[2])):
                continue
            if not providers[b]:
                continue
            show = ", ".join("{" + (", ".join(f"{k}: {v}" for k, v in sel) or "every pod") + "}"
                             for sel in (a[2], b[2]))
            others = ", ".join(f"LLMProvider {ns}/{name}" for ns, name in sorted(providers[a])) or "another"
            ns, name = min(providers[b])
            other_ns = b[0] if a[0] == ROOT_NAMESPACE else a[0]
            where = (f"namespace {a[0]!r}" if a[0] == b[0]
                     else f"the root namespace {ROOT_NAMESPACE!r} (its EnvoyFilters apply everywhere) and {other_ns!r}")
            diags.error("LLMC213", f"in {where} the workloadSelectors {show} select common pods, "
                        "which would run the LLM filter twice", **provider_docs[(ns, name)].where(
                            ("spec", "workloadSelector")),
                        hint=f"{others} uses the other selector; give providers of different workloads "
                        "selectors that do not contain each other, or the same selector")


def check_gateway_selectors(vhosts: list[VirtualHost], route_docs, opts: Options, diags: Diagnostics) -> None:
    """``--gateway-selectors``: a route's rules may run on the pods of a Gateway it binds to only when
    the operator allows them — the placement's namespace has an allowed ``label=value`` that the
    providers' workloadSelector contains (then it selects allowed pods only). Otherwise a tenant
    could have EnvoyFilters written into a gateway namespace (the Istio root namespace: every
    namespace) for any pods it names. The egress gateway is the operator's own flag: not checked."""
    if opts.gateway_selectors is None:
        return
    for vh in vhosts:
        doc = route_docs.get(vh.sources[0])
        for pl in vh.placements:
            if pl.gateway is None or pl.gateway not in vh.bound_gateways or doc is None:
                continue
            allowed = {(k, v) for ns, k, v in opts.gateway_selectors if ns == pl.namespace}
            if allowed & set(pl.selector):
                continue
            shown = "{" + ", ".join(f"{k}: {v}" for k, v in pl.selector) + "}"
            why = (f"no gateway pods in namespace {pl.namespace!r} are allowed" if not allowed else
                   f"the providers' workloadSelector {shown} contains none of the allowed labels there "
                   f"({', '.join(f'{k}={v}' for k, v in sorted(allowed))})")
            diags.error("LLMC243", f"gateway {pl.gateway}: its rules would run on pods {shown} in namespace "
                        f"{pl.namespace!r}, but {why}", **doc.where(("spec", "gateways", _ref_index(doc, pl.gateway))),
                        hint="the operator lists the gateway pods routes may use (--gateway-selectors "
                        "NAMESPACE/LABEL=VALUE); bind to one of those and select its pods in the providers' "
                        "spec.workloadSelector")


def _ref_index(doc, ref: str) -> int:
    """The index in ``spec.gateways`` of the entry that names ``ref`` ("name" means this namespace)."""
    refs = ((doc.data.get("spec") or {}).get("gateways") or [])
    for i, raw in enumerate(refs):
        if raw == ref or f"{doc.namespace}/{raw}" == ref:
            return i
    return 0


def egress_gateway(opts: Options) -> EgressGateway | None:
    if not opts.egress_gateway:
        return None
    ns, _, service = opts.egress_gateway.partition("/")
    return EgressGateway(namespace=ns, service=service, service_host=f"{service}.{ns}.svc.{opts.cluster_domain}",
                         labels=tuple(sorted(opts.egress_labels)), gateway_name=f"{names.PREFIX}-{service}")
