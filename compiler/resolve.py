"""Stage 4, resolve: cross-object checks, then the IR.

Input is schema-valid typed objects with their source documents (for positions). Every check that
needs more than one field or object lives here: duplicate objects and hosts, backendRefs to unknown
providers, header matches and regexes, weights, rule names, routeSpecificConfigs keys,
placeholder keys. Resolution is namespace-local: an LLMRoute sees the LLMProviders of its own
namespace (generated ServiceEntries are exported to that namespace only).
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from dataclasses import dataclass

from . import names
from .api import AnthropicConfig, AzureOpenAIConfig, LLMProvider, LLMRoute, OpenAIConfig, ProviderConfig, StringMatch
from .diagnostics import Diagnostics
from .ir import (
    Backend,
    EgressGateway,
    HeaderMatch,
    Match,
    Placement,
    Program,
    Provider,
    RequestConfig,
    Rule,
    SecretRef,
    VirtualHost,
)
from .load import Document
from .options import Options
from .protocols import CONFIG_FIELDS

DEFAULT_MAX_REQUEST_BYTES = 8 * 1024 * 1024
PLACEHOLDER = re.compile(r"^\s*(\$\{.*\}|\$[A-Z_][A-Z0-9_]*|<.*>|changeme|xxx+|todo)\s*$", re.I)
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9a-zA-Z-]+$")
NON_RE2 = re.compile(r"\(\?[=!<]|\\[1-9]|\(\?P=")


@dataclass
class Sourced:
    doc: Document
    obj: LLMProvider | LLMRoute


#: Headers an authHeader may not name: the filter sets them itself, or they frame the request.
RESERVED_AUTH_HEADERS = {"host", "content-type", "content-length", "transfer-encoding", "accept-encoding",
                         "connection", "te", "upgrade", "anthropic-version"}

AnyConfig = OpenAIConfig | AzureOpenAIConfig | AnthropicConfig


def _check_key(cfg: AnyConfig, doc: Document, path: tuple, diags: Diagnostics) -> None:
    if cfg.apiKey is not None and cfg.apiKeySecretRef is not None:
        diags.error("LLMC211", "set apiKey or apiKeySecretRef, not both", **doc.where(path + ("apiKey",)),
                    hint="apiKeySecretRef keeps the key out of generated objects")
    if cfg.apiKey is not None:
        if PLACEHOLDER.match(cfg.apiKey) or "${" in cfg.apiKey:
            diags.warning("LLMC207", "apiKey looks like a placeholder, not a key; the provider will "
                          "reject requests", **doc.where(path + ("apiKey",)),
                          hint="put the real key in a Secret and use apiKeySecretRef")
        else:
            diags.register_secret(cfg.apiKey)
            diags.warning("LLMC215", "literal apiKey is copied into the generated EnvoyFilter, where "
                          "anyone who can read EnvoyFilters or a proxy config dump can see it",
                          **doc.where(path + ("apiKey",)), hint="use apiKeySecretRef")


def _auth_header(cfg: OpenAIConfig, doc: Document, path: tuple, diags: Diagnostics) -> str | None:
    if cfg.authHeader is None:
        return None
    name = cfg.authHeader.lower()
    if (not HEADER_NAME.fullmatch(name) or name in RESERVED_AUTH_HEADERS
            or name.startswith(names.RESERVED_HEADER_PREFIX)):
        diags.error("LLMC238", f"authHeader {cfg.authHeader!r} cannot carry the API key: it is not a header "
                    "name, or the filter or the HTTP framing owns it", **doc.where(path + ("authHeader",)),
                    hint="e.g. x-api-key or authorization")
        return None
    return name


def _request_config(pc: ProviderConfig | None, doc: Document, path: tuple, diags: Diagnostics,
                    ) -> tuple[str | None, RequestConfig | None]:
    """The protocol a ProviderConfig names (None: it names none) and its settings."""
    if pc is None:
        return None, None
    set_fields = [f for f in CONFIG_FIELDS if getattr(pc, f) is not None]
    if len(set_fields) > 1:
        diags.error("LLMC236", f"one provider speaks one protocol: {' and '.join(set_fields)} are both set",
                    **doc.where(path + (set_fields[1],)), hint=f"keep only {set_fields[0]}")
    if not set_fields:
        return None, None
    field = set_fields[0]
    cfg = getattr(pc, field)
    cpath = path + (field,)
    _check_key(cfg, doc, cpath, diags)
    secret = cfg.apiKeySecretRef
    common = {"api_key": cfg.apiKey, "api_key_secret": SecretRef(secret.name, secret.key) if secret else None}
    if isinstance(cfg, AzureOpenAIConfig):
        return CONFIG_FIELDS[field], RequestConfig(deployment=cfg.deployment, api_version=cfg.apiVersion, **common)
    if isinstance(cfg, AnthropicConfig):
        return CONFIG_FIELDS[field], RequestConfig(model=cfg.model, max_tokens=cfg.maxTokens, version=cfg.version,
                                                   **common)
    if cfg.stream is True:
        diags.warning("LLMC219", "stream: true makes every request that does not say `stream` a streaming "
                      "one; the openai SDK omits `stream` on non-streaming calls, so those callers get "
                      "server-sent events they do not parse", **doc.where(cpath + ("stream",)),
                      hint="leave `stream` unset and let clients choose (a client's explicit `stream` "
                      "always wins)")
    return CONFIG_FIELDS[field], RequestConfig(
        model=cfg.model, stream=cfg.stream, include_usage=cfg.streamIncludeUsage is not False,
        include_usage_set=cfg.streamIncludeUsage is not None,
        auth_header=_auth_header(cfg, doc, cpath, diags), auth_prefix=cfg.authPrefix, **common)


def _provider_protocol(found: list[tuple[str, tuple]], doc: Document, diags: Diagnostics) -> str:
    """One protocol per provider: the first config's; a config naming another is an error."""
    if not found:
        return "openai"
    protocol = found[0][0]
    for other, path in found[1:]:
        if other != protocol:
            diags.error("LLMC236", f"one provider speaks one protocol: this config is {other!r}, an earlier "
                        f"one {protocol!r}", **doc.where(path),
                        hint="use one LLMProvider per provider API")
    return protocol


def _check_endpoint(protocol: str, spec_path: str | None, configs: list[RequestConfig], doc: Document,
                    diags: Diagnostics) -> None:
    if protocol == "openai" and spec_path is None:
        diags.error("LLMC237", "spec.path is required for an OpenAI-compatible provider", **doc.where(("spec",)),
                    hint="e.g. path: /v1/chat/completions; only azureOpenAIConfig and anthropicConfig "
                    "have a default endpoint")
    if protocol == "azure-openai" and spec_path is None and any(c.deployment is None for c in configs):
        diags.error("LLMC237", "azureOpenAIConfig needs a deployment in defaultConfig (a "
                    "routeSpecificConfigs entry may replace it) unless spec.path is set", **doc.where(("spec", "configs")),
                    hint="deployment: <the Azure deployment name>")


def resolve_provider(item: Sourced, opts: Options, diags: Diagnostics) -> Provider:
    doc, obj = item.doc, item.obj
    assert isinstance(obj, LLMProvider)
    spec = obj.spec
    in_mesh = spec.host.lower().endswith(f".svc.{opts.cluster_domain}")
    base = ("spec", "configs")
    configs = spec.configs
    default = None
    overrides: list[tuple[str, RequestConfig]] = []
    found: list[tuple[str, tuple]] = []  # (protocol, path) of every config, in source order
    if configs is not None:
        if configs.defaultConfig is not None:
            proto, default = _request_config(configs.defaultConfig, doc, base + ("defaultConfig",), diags)
            if proto is not None:
                found.append((proto, base + ("defaultConfig",)))
        for rule, pc in sorted((configs.routeSpecificConfigs or {}).items()):
            proto, rc = _request_config(pc, doc, base + ("routeSpecificConfigs", rule), diags)
            if proto is not None:
                found.append((proto, base + ("routeSpecificConfigs", rule)))
            overrides.append((rule, rc or RequestConfig()))
    protocol = _provider_protocol(found, doc, diags)
    _check_endpoint(protocol, spec.path, [(default or RequestConfig()).overlay(rc) for _, rc in
                                          [("", None), *overrides]], doc, diags)
    tls_mode = spec.tls.mode if spec.tls else ("DISABLE" if in_mesh else "SIMPLE")
    if in_mesh and tls_mode == "SIMPLE":
        diags.error("LLMC220", "TLS origination to an in-mesh Service is not supported: the mesh "
                    "already secures the connection with mTLS", **doc.where(("spec", "tls", "mode")),
                    hint="remove spec.tls or set mode: DISABLE")
    tls = tls_mode == "SIMPLE"
    port = spec.port or (443 if tls else 80)
    sni = (spec.tls.sni if spec.tls and spec.tls.sni else spec.host)
    sans = tuple(spec.tls.subjectAltNames) if spec.tls and spec.tls.subjectAltNames else (sni,)
    labels = (spec.workloadSelector.labels or {}) if spec.workloadSelector else {}
    return Provider(
        namespace=doc.namespace, name=doc.name, host=spec.host.lower(), path=spec.path,
        port=port, service_port=port if in_mesh else 80, in_mesh=in_mesh, tls=tls, sni=sni,
        subject_alt_names=sans, ca_certificates=spec.tls.caCertificates if spec.tls else None,
        timeout=spec.timeout, max_request_bytes=spec.maxRequestBytes or DEFAULT_MAX_REQUEST_BYTES,
        selector=tuple(sorted(labels.items())), default=default or RequestConfig(),
        overrides=tuple(overrides), source=f"LLMProvider {doc.namespace}/{doc.name}", protocol=protocol)


def _header_matches(headers: dict[str, StringMatch], doc: Document, path: tuple,
                    diags: Diagnostics) -> tuple[HeaderMatch, ...]:
    out = []
    for name, sm in sorted(headers.items()):
        hpath = path + ("headers", name)
        if not HEADER_NAME.fullmatch(name):
            diags.error("LLMC204", f"invalid header name {name!r}", **doc.where(hpath))
            continue
        if name.lower().startswith(names.RESERVED_HEADER_PREFIX):
            diags.error("LLMC214", f"header {name!r} is reserved for llmc's internal routing",
                        **doc.where(hpath), hint=f"choose a name not starting with "
                        f"{names.RESERVED_HEADER_PREFIX!r}")
            continue
        set_fields = [(k, v) for k, v in (("exact", sm.exact), ("prefix", sm.prefix),
                                          ("regex", sm.regex)) if v is not None]
        if len(set_fields) != 1:
            diags.error("LLMC204", "a header match needs exactly one of exact, prefix, regex "
                        f"(found {len(set_fields)})", **doc.where(hpath))
            continue
        kind, value = set_fields[0]
        if kind == "regex":
            bad = NON_RE2.search(value)
            try:
                re.compile(value)
            except re.error as exc:
                diags.error("LLMC205", f"invalid regular expression: {exc}", **doc.where(hpath + ("regex",)))
                continue
            if bad:
                diags.error("LLMC205", f"regular expression uses {bad.group(0)!r}, which RE2 (Envoy) "
                            "does not support", **doc.where(hpath + ("regex",)))
                continue
        out.append(HeaderMatch(name=name.lower(), kind=kind, value=value))
    return tuple(out)


GATEWAY_REF = re.compile(r"(?:([a-z0-9]([-a-z0-9]*[a-z0-9])?)/)?([a-z0-9]([-a-z0-9.]*[a-z0-9])?)")


def _gateways(refs: list[str], doc: Document, path: tuple, diags: Diagnostics) -> tuple[str, ...] | None:
    """Normalise gateway references as Istio does: "mesh", "ns/name", or "name" (this namespace)."""
    out = set()
    for i, ref in enumerate(refs):
        if ref == "mesh":
            out.add(ref)
            continue
        m = GATEWAY_REF.fullmatch(ref)
        if not m:
            diags.error("LLMC221", f"invalid gateway reference {ref!r}: use mesh, <name> or <namespace>/<name>",
                        **doc.where(path + (i,)))
            return None
        out.add(ref if "/" in ref else f"{doc.namespace}/{ref}")
    return tuple(sorted(out))


def _rule_name(rule_name: str | None, index: int) -> str:
    return rule_name if rule_name is not None else f"rule-{index}"


def resolve_route(item: Sourced, providers: dict[str, Provider], opts: Options,
                  diags: Diagnostics) -> VirtualHost | None:
    doc, obj = item.doc, item.obj
    assert isinstance(obj, LLMRoute)
    spec = obj.spec
    ok = True
    route_gateways = _gateways(spec.gateways or ["mesh"], doc, ("spec", "gateways"), diags)
    if route_gateways is None:
        return None
    rules: list[Rule] = []
    seen_rules: dict[str, int] = {}
    default_seen: int | None = None
    for i, rule in enumerate(spec.rules):
        rpath = ("spec", "rules", i)
        name = _rule_name(rule.name, i)
        if not names.RULE_NAME.fullmatch(name) or len(name) > 63:
            diags.error("LLMC208", f"rule name {name!r} cannot be used in generated route names",
                        **doc.where(rpath + ("name",)),
                        hint="use letters, digits, '-', '_' or '.' (at most 63), starting and "
                        "ending with a letter or digit")
            ok = False
        if name in seen_rules:
            diags.error("LLMC209", f"rule name {name!r} is already used by rules[{seen_rules[name]}]",
                        **doc.where(rpath + ("name",)))
            ok = False
        seen_rules.setdefault(name, i)
        if default_seen is not None:
            diags.warning("LLMC212", f"rule is never used: rules[{default_seen}] has no matches and "
                          "catches every request first", **doc.where(rpath))
        matches = []
        for j, m in enumerate(rule.matches or []):
            mpath = rpath + ("matches", j)
            match_gateways = _gateways(m.gateways or [], doc, mpath + ("gateways",), diags)
            if match_gateways is None:
                ok = False
                continue
            stray = [g for g in match_gateways if g not in route_gateways]
            if stray:
                diags.error("LLMC222", f"match gateways {', '.join(stray)} are not in the route's gateways "
                            f"({', '.join(route_gateways)})", **doc.where(mpath + ("gateways",)))
                ok = False
            if m.sourceLabels and opts.egress_gateway and "mesh" in route_gateways:
                diags.error("LLMC216", "sourceLabels cannot be used in egress-gateway mode: the rules run "
                            "on the egress gateway, which cannot see the calling workload's labels",
                            **doc.where(mpath + ("sourceLabels",)))
                ok = False
            matches.append(Match(
                headers=_header_matches(m.headers or {}, doc, mpath, diags),
                source_labels=tuple(sorted((m.sourceLabels or {}).items())),
                gateways=match_gateways))
        if not rule.matches:
            default_seen = i if default_seen is None else default_seen
        backends = _backends(rule, name, providers, doc, rpath, diags)
        if backends is None:
            ok = False
            continue
        rules.append(Rule(name=name, matches=tuple(matches), backends=backends))
    if not ok:
        return None
    host = spec.host.lower()
    provider_host = host in providers
    route_fqdn = host if provider_host else names.fqdn(host, doc.namespace, opts.cluster_domain)
    if provider_host and rules and rules[-1].matches:
        # Direct calls to a provider host always reach that provider: requests no rule matches
        # fall back to the provider's default settings, exactly as without an LLMRoute.
        p = providers[host]
        rules.append(Rule(name="default" if "default" not in seen_rules else "llmc-default",
                          matches=(), backends=(Backend(p, 1, p.default),)))
    selectors = {b.provider.selector for r in rules for b in r.backends}
    if len(selectors) > 1:
        diags.error("LLMC213", "backends of one LLMRoute must share one workloadSelector",
                    **doc.where(("spec", "rules")))
        return None
    if any(g != "mesh" for g in route_gateways) and selectors == {()}:
        diags.error("LLMC217", "an LLMRoute bound to a gateway needs providers whose workloadSelector "
                    "selects the gateway's pods", **doc.where(("spec", "gateways")),
                    hint="e.g. spec.workloadSelector.labels: {istio: ingressgateway} on the LLMProviders")
        return None
    return VirtualHost(
        namespace=doc.namespace, object_name=names.object_name("route", doc.name), label=doc.name,
        host=route_fqdn, fqdn=route_fqdn, port=spec.port or 80, rules=tuple(rules),
        selector=next(iter(selectors)) if selectors else (), sources=(f"LLMRoute {doc.namespace}/{doc.name}",),
        gateways=route_gateways)


def _backends(rule, rule_name: str, providers: dict[str, Provider], doc: Document, rpath: tuple,
              diags: Diagnostics) -> tuple[Backend, ...] | None:
    refs = rule.backendRefs
    weights = [b.weight for b in refs]
    ok = True
    if len(refs) > 1 and any(w is None for w in weights) and any(w is not None for w in weights):
        diags.error("LLMC206", "set weight on every backendRef of the rule or on none",
                    **doc.where(rpath + ("backendRefs",)))
        ok = False
    elif all(w is not None for w in weights) and sum(w or 0 for w in weights) == 0:
        diags.error("LLMC206", "weights add up to 0: no provider would receive traffic",
                    **doc.where(rpath + ("backendRefs",)), hint="give at least one backendRef a weight above 0")
        ok = False
    seen: set[str] = set()
    out = []
    for k, ref in enumerate(refs):
        bpath = rpath + ("backendRefs", k, "providerHost")
        host = ref.providerHost.lower()
        provider = providers.get(host)
        if provider is None:
            known = ", ".join(sorted(providers)) or "none"
            diags.error("LLMC202", f"no LLMProvider in namespace {doc.namespace!r} has host {host!r}",
                        **doc.where(bpath), hint=f"known provider hosts: {known}")
            ok = False
            continue
        if host in seen:
            diags.error("LLMC206", f"provider host {host!r} is listed twice in this rule",
                        **doc.where(bpath))
            ok = False
        seen.add(host)
        weight = 1 if ref.weight is None else ref.weight
        if weight > 0:
            out.append(Backend(provider, weight, provider.config_for_rule(rule_name)))
    return tuple(out) if ok else None


def resolve(items: list[Sourced], opts: Options, diags: Diagnostics) -> Program | None:
    # Duplicate objects: the first by (file, line) wins the report position of the others.
    by_id: dict[tuple[str, str, str], list[Sourced]] = defaultdict(list)
    for it in items:
        by_id[(it.doc.kind, it.doc.namespace, it.doc.name)].append(it)
    unique: list[Sourced] = []
    for key in sorted(by_id):
        group = sorted(by_id[key], key=lambda s: (s.doc.file, s.doc.index))
        unique.append(group[0])
        for dup in group[1:]:
            first = group[0].doc
            diags.error("LLMC003", f"{key[0]} {key[1]}/{key[2]} is defined more than once",
                        **dup.doc.where(("metadata", "name")),
                        hint=f"first defined in {first.file}:{first.positions.get((), (0, 0))[0]}")
    providers_by_ns: dict[str, dict[str, Provider]] = defaultdict(dict)
    provider_docs: dict[tuple[str, str], Document] = {}
    for it in (u for u in unique if u.doc.kind == "LLMProvider"):
        p = resolve_provider(it, opts, diags)
        other = providers_by_ns[p.namespace].get(p.host)
        if other is not None:
            diags.error("LLMC201", f"host {p.host!r} is already served by {other.source}",
                        **it.doc.where(("spec", "host")), hint="different providers cannot have the same host")
            continue
        providers_by_ns[p.namespace][p.host] = p
        provider_docs[(p.namespace, p.name)] = it.doc
    for ns, provs in sorted(providers_by_ns.items()):
        selectors = {p.selector for p in provs.values()}
        if len(selectors) > 1:
            for p in sorted(provs.values(), key=lambda p: p.name)[1:]:
                diags.error("LLMC213", f"all LLMProviders of namespace {ns!r} must use the same "
                            "workloadSelector", **provider_docs[(ns, p.name)].where(("spec", "workloadSelector")),
                            hint="put providers for different workloads in different namespaces")
    vhosts: list[VirtualHost] = []
    route_hosts: dict[tuple[str, str, int], str] = {}
    for it in (u for u in unique if u.doc.kind == "LLMRoute"):
        vh = resolve_route(it, providers_by_ns.get(it.doc.namespace, {}), opts, diags)
        if vh is None:
            continue
        host_key = (vh.namespace, vh.fqdn, vh.port)
        if host_key in route_hosts:
            diags.error("LLMC210", f"host {vh.fqdn!r} port {vh.port} is already routed by {route_hosts[host_key]}",
                        **it.doc.where(("spec", "host")), hint="merge the rules into one LLMRoute")
            continue
        route_hosts[host_key] = vh.sources[0]
        vhosts.append(vh)
    # Providers without an LLMRoute on their own host get an implicit single-rule route, so that
    # `curl http://<provider host>` works with an LLMProvider alone (the seed's first scenario).
    for ns, provs in sorted(providers_by_ns.items()):
        for host, p in sorted(provs.items()):
            if (ns, host, p.service_port) in route_hosts:
                continue
            vhosts.append(VirtualHost(
                namespace=ns, object_name=names.object_name("provider", p.name), label=p.name,
                host=host, fqdn=host, port=p.service_port,
                rules=(Rule(name="default", matches=(), backends=(Backend(p, 1, p.default),)),),
                selector=p.selector, sources=(p.source,)))
    _check_route_specific_keys(providers_by_ns, vhosts, provider_docs, diags)
    _check_route_names(vhosts, diags)
    if diags.has_errors:
        return None
    providers = tuple(sorted((p for provs in providers_by_ns.values() for p in provs.values()),
                             key=lambda p: (p.namespace, p.name)))
    egress = egress_gateway(opts)
    placed = (dataclasses.replace(vh, placements=place(vh, egress)) for vh in vhosts)
    return Program(secrets_dir=opts.secrets_dir.rstrip("/") or "/", providers=providers,
                   egress=egress, telemetry=opts.telemetry,
                   vhosts=tuple(sorted(placed, key=lambda v: (v.namespace, v.object_name))))


def place(vh: VirtualHost, egress: EgressGateway | None) -> tuple[Placement, ...]:
    """Where the virtual host's rules run: the sidecars of its namespace (or, in egress-gateway mode,
    the egress gateway instead), and every Gateway the LLMRoute binds to (whose pods are selected by
    the providers' workloadSelector, in the Gateway's namespace)."""
    out = []
    if vh.in_mesh and egress is None:
        out.append(Placement(vh.namespace, vh.selector, vh.port))
    if vh.in_mesh and egress is not None:
        out.append(Placement(egress.namespace, egress.labels, egress.port, gateway=egress.ref))
    for ref in vh.bound_gateways:
        out.append(Placement(ref.split("/", 1)[0], vh.selector, vh.port, gateway=ref))
    return tuple(out)


def egress_gateway(opts: Options) -> EgressGateway | None:
    if not opts.egress_gateway:
        return None
    ns, _, service = opts.egress_gateway.partition("/")
    return EgressGateway(namespace=ns, service=service, service_host=f"{service}.{ns}.svc.{opts.cluster_domain}",
                         labels=tuple(sorted(opts.egress_labels)), gateway_name=f"{names.PREFIX}-{service}")


def _check_route_names(vhosts, diags: Diagnostics) -> None:
    """Envoy route names must be unique per virtual host: the filter maps names to rules and pins.

    names.route_name makes them unique by construction (its separator appears in no name it joins);
    this check keeps that true if naming ever changes.
    """
    for vh in vhosts:
        seen: dict[str, str] = {}
        for rule in vh.rules:
            pinned = tuple(b.provider.name for b in rule.backends) if rule.weighted else ()
            entry, pins = names.rule_routes(vh.namespace, vh.label, rule.name, pinned)
            for name in (entry, *pins.values()):
                if name in seen:
                    diags.error("LLMC218", f"generated Envoy route name {name!r} is used by rule {seen[name]!r} "
                                f"and rule {rule.name!r}", object=vh.sources[0],
                                hint="rename one of the rules")
                seen.setdefault(name, rule.name)


def _check_route_specific_keys(providers_by_ns, vhosts, provider_docs, diags: Diagnostics) -> None:
    used: set[tuple[str, str, str]] = set()  # (ns, provider, rule)
    for vh in vhosts:
        for rule in vh.rules:
            for b in rule.backends:
                used.add((vh.namespace, b.provider.name, rule.name))
    for ns, provs in sorted(providers_by_ns.items()):
        for p in provs.values():
            for rule, _ in p.overrides:
                if (ns, p.name, rule) not in used:
                    diags.warning("LLMC203", f"no LLMRoute rule named {rule!r} routes to this provider; "
                                  "the override is unused", **provider_docs[(ns, p.name)].where(
                                      ("spec", "configs", "routeSpecificConfigs", rule)),
                                  hint="fine if the LLMRoute is applied later")
