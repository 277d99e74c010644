"""Stage 4, resolve: cross-object checks, then the IR.

Input is schema-valid typed objects with their source documents (for positions). Every check that
needs more than one field or object lives here: duplicate objects and hosts, backendRefs to unknown
providers, header matches and regexes, weights, rule names, routeSpecificConfigs keys,
placeholder keys, host names (:mod:`compiler.hosts`). An LLMRoute sees the LLMProviders visible
to its namespace, with Istio's ``exportTo`` rules (:mod:`compiler.visibility`); every generated
object stays in its source's namespace, and the rules run where the calling proxies are.
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from dataclasses import dataclass

from . import names, visibility
from .api import AnthropicConfig, AzureOpenAIConfig, LLMProvider, LLMRoute, OpenAIConfig, ProviderConfig, StringMatch
from .constants import ROOT_NAMESPACE
from .diagnostics import Diagnostics
from .hosts import host_problem
from .ir import (
    Backend,
    EgressGateway,
    HeaderMatch,
    Match,
    ModelMatch,
    Placement,
    Program,
    Provider,
    RequestConfig,
    Retries,
    Rule,
    SecretRef,
    VirtualHost,
)
from .load import Document
from .options import FAILOVER_ISTIO_VERSION, Options
from .protocols import CONFIG_FIELDS, PROTOCOLS

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
    problem = host_problem(spec.host)
    if problem is not None:
        diags.error("LLMC226", problem.message, **doc.where(("spec", "host")), hint=problem.hint)
    export = visibility.check_export_to(spec.exportTo, doc.namespace)
    for i, message in export.problems:
        diags.error("LLMC228", message, **doc.where(("spec", "exportTo") + ((i,) if i is not None else ())),
                    hint="use \".\", \"*\" or namespace names, as in a ServiceEntry's exportTo")
    return Provider(
        namespace=doc.namespace, name=doc.name, host=spec.host.lower(), path=spec.path,
        base_path=spec.basePath.rstrip("/") if spec.basePath else None,
        port=port, service_port=port if in_mesh else 80, in_mesh=in_mesh, tls=tls, sni=sni,
        subject_alt_names=sans, ca_certificates=spec.tls.caCertificates if spec.tls else None,
        timeout=spec.timeout, max_request_bytes=spec.maxRequestBytes or DEFAULT_MAX_REQUEST_BYTES,
        selector=tuple(sorted(labels.items())), default=default or RequestConfig(),
        overrides=tuple(overrides), source=f"LLMProvider {doc.namespace}/{doc.name}",
        export_to=export.value, protocol=protocol)


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
        if not set_fields:
            # Istio's VirtualService: `name: {}` checks that the header is present (any value)
            out.append(HeaderMatch(name=name.lower(), kind="present", value=""))
            continue
        if len(set_fields) != 1:
            diags.error("LLMC204", "a header match sets one of exact, prefix, regex, or none (\"{}\": the header is present) "
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


def _model_match(sm: StringMatch, doc: Document, path: tuple, diags: Diagnostics) -> ModelMatch | None:
    """A `model` condition: exactly one non-empty kind; regexes must compile with RE2 (as Envoy's)."""
    set_fields = [(k, v) for k, v in (("exact", sm.exact), ("prefix", sm.prefix), ("regex", sm.regex)) if v is not None]
    if len(set_fields) != 1 or not set_fields[0][1]:
        diags.error("LLMC223", "a model match needs exactly one non-empty exact, prefix or regex "
                    f"(found {len(set_fields)})", **doc.where(path),
                    hint="e.g. model: {exact: gpt-4o}; to match any model, leave `model` out")
        return None
    kind, value = set_fields[0]
    if len(value.encode()) > names.MAX_MODEL_BYTES:
        diags.error("LLMC223", f"a model match longer than {names.MAX_MODEL_BYTES} bytes can never hold",
                    **doc.where(path + (kind,)))
        return None
    if kind == "regex":
        problem = re2_problem(value)
        if problem:
            diags.error("LLMC205", f"invalid RE2 regular expression: {problem}", **doc.where(path + ("regex",)))
            return None
    return ModelMatch(kind, value)


def re2_problem(pattern: str) -> str | None:
    """Why RE2 (the regex engine of Envoy) rejects ``pattern``, or None."""
    import re2

    try:
        re2.compile(pattern)
    except re2.error as exc:
        detail = exc.args[0] if exc.args else exc
        return detail.decode() if isinstance(detail, bytes) else str(detail)
    return None


def re2_fullmatch(pattern: str, text: str) -> bool:
    import re2

    return re2.fullmatch(pattern, text) is not None


def _check_model_rule(rules: list[Rule], index: int, doc: Document, diags: Diagnostics) -> None:
    """Warnings for the rule just added (``rules[-1]``, ``spec.rules[index]``): a model alias that an
    earlier rule always catches first, and a weighted rule mixing providers with and without
    `basePath` (an embeddings request would get 404 from some picks and reach the endpoint with others)."""
    rule = rules[-1]
    for j, m in enumerate(rule.matches):
        if m.model is None or m.model.kind == "regex":
            continue
        for earlier in rules[:-1]:
            shadow = next((e for e in earlier.matches if e.only_model and e.model and _covers(e.model, m.model)), None)
            if shadow is not None and shadow.model is not None:
                diags.warning("LLMC224", f"model {m.model.kind} {m.model.value!r} is always caught first by rule "
                              f"{earlier.name!r} ({shadow.model.kind} {shadow.model.value!r})",
                              **doc.where(("spec", "rules", index, "matches", j, "model")),
                              hint="put the more specific rule first")
                break
    if len({b.provider.base_path is not None for b in rule.backends}) > 1:
        diags.warning("LLMC225", "the rule's providers differ in `basePath`: requests to /v1/embeddings or "
                      "/v1/completions get 404 when a provider without it is picked",
                      **doc.where(("spec", "rules", index, "backendRefs")),
                      hint="give every provider of the rule a basePath, or none")


def _covers(earlier: ModelMatch, later: ModelMatch) -> bool:
    """True when every model ``later`` accepts is also accepted by ``earlier``."""
    if earlier.kind == "exact":
        return later.kind == "exact" and later.value == earlier.value
    if earlier.kind == "prefix":
        return later.value.startswith(earlier.value)
    return later.kind == "exact" and re2_fullmatch(earlier.value, later.value)


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


def resolve_route(item: Sourced, catalog: visibility.Catalog, opts: Options,
                  diags: Diagnostics) -> VirtualHost | None:
    doc, obj = item.doc, item.obj
    assert isinstance(obj, LLMRoute)
    spec = obj.spec
    ok = True
    route_gateways = _gateways(spec.gateways or ["mesh"], doc, ("spec", "gateways"), diags)
    if route_gateways is None:
        return None
    host = spec.host.lower()
    if not _check_route_host(spec.host, route_gateways, doc, diags):
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
            model = None
            if m.model is not None:
                model = _model_match(m.model, doc, mpath + ("model",), diags)
                if model is None:
                    ok = False
                    continue
            matches.append(Match(
                headers=_header_matches(m.headers or {}, doc, mpath, diags),
                source_labels=tuple(sorted((m.sourceLabels or {}).items())),
                gateways=match_gateways, model=model))
        if not rule.matches:
            default_seen = i if default_seen is None else default_seen
        backends = _backends(rule, name, catalog, doc, rpath, diags)
        if backends is None:
            ok = False
            continue
        retries = _retries(rule, backends, opts, doc, rpath, diags)
        if retries is False or retries is True:
            ok = False
            continue
        rules.append(Rule(name=name, matches=tuple(matches), backends=backends, retries=retries))
        _check_model_rule(rules, i, doc, diags)
    if not ok:
        return None
    target = catalog.find(host, doc.namespace).provider if host != "*" else None
    if host == "*":
        route_fqdn = "*"
    else:
        route_fqdn = host if target is not None else names.fqdn(host, doc.namespace, opts.cluster_domain)
    if target is not None and rules and rules[-1].matches:
        # Direct calls to a provider host always reach that provider: requests no rule matches
        # fall back to the provider's default settings, exactly as without an LLMRoute.
        rules.append(Rule(name="default" if "default" not in seen_rules else "llmc-default",
                          matches=(), backends=(Backend(target, 1, target.default),)))
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
    _warn_remote_keys(rules, route_gateways, opts, doc, diags)
    return VirtualHost(
        namespace=doc.namespace, object_name=names.object_name("route", doc.name), label=doc.name,
        host=route_fqdn, fqdn=route_fqdn, port=spec.port or 80, rules=tuple(rules),
        selector=next(iter(selectors)) if selectors else (), sources=(f"LLMRoute {doc.namespace}/{doc.name}",),
        gateways=route_gateways)


def _check_route_host(raw: str, route_gateways: tuple[str, ...], doc: Document, diags: Diagnostics) -> bool:
    """Host names as Istio accepts them; "*" only on a route bound only to gateways, where it means
    every host the Gateway serves (a sidecar has no "every host": it needs the called Service)."""
    problem = host_problem(raw, wildcard=True, path_hint="")
    if problem is not None:
        diags.error("LLMC226", problem.message, **doc.where(("spec", "host")), hint=problem.hint)
        return False
    if raw == "*" and "mesh" in route_gateways:
        diags.error("LLMC226", "host \"*\" needs a route bound only to gateways: sidecars (mesh) route by the "
                    "host the application calls", **doc.where(("spec", "host")),
                    hint="name the Service or provider host the applications call, or set spec.gateways to "
                    "the ingress Gateway(s) without mesh")
        return False
    return True


def _warn_remote_keys(rules: list[Rule], route_gateways: tuple[str, ...], opts: Options, doc: Document,
                      diags: Diagnostics) -> None:
    """Sidecar shaping of a provider from another namespace needs its key where the callers are."""
    if "mesh" not in route_gateways or opts.egress_gateway:
        return
    remote = sorted({b.provider.source for r in rules for b in r.backends
                     if b.provider.namespace != doc.namespace
                     and (b.config.api_key_secret is not None or b.config.api_key is not None)})
    if remote:
        diags.warning("LLMC231", f"the sidecars of namespace {doc.namespace!r} shape requests for "
                      f"{', '.join(remote)}: the API key must be in {doc.namespace!r} too (a Secret mounted "
                      "into every calling pod, or a literal key in an EnvoyFilter there)",
                      **doc.where(("spec", "rules")),
                      hint="egress-gateway mode (--egress-gateway) shapes on one gateway and keeps the keys "
                      "in its namespace only")


def _backends(rule, rule_name: str, catalog: visibility.Catalog, doc: Document, rpath: tuple,
              diags: Diagnostics) -> tuple[Backend, ...] | None:
    refs = rule.backendRefs
    weights = [b.weight for b in refs]
    ok = True
    mixed = any(w is None for w in weights) and any(w is not None for w in weights)
    if all(w is not None for w in weights) or mixed:
        if sum(w or 0 for w in weights) == 0:
            diags.error("LLMC206", "weights add up to 0: no provider would receive traffic",
                        **doc.where(rpath + ("backendRefs",)),
                        hint="give at least one backendRef a weight above 0")
            ok = False
    seen: set[str] = set()
    named: dict[str, str] = {}  # provider name → source
    out = []
    for k, ref in enumerate(refs):
        bpath = rpath + ("backendRefs", k)
        if ref.backendRef is not None:
            diags.error("LLMC227", "backendRef (an InferencePool) cannot be reached from a VirtualService: "
                        "stock Istio routes to InferencePools only from Gateway API HTTPRoutes",
                        **doc.where(bpath + ("backendRef",)),
                        hint="register the model server's Service as an LLMProvider (host: "
                        "<service>.<namespace>.svc.cluster.local, tls.mode: DISABLE) and use providerHost, or "
                        "route to the InferencePool with an HTTPRoute of the Gateway API inference extension")
            ok = False
            continue
        if ref.providerHost is None:
            diags.error("LLMC103", "missing required field 'providerHost'", **doc.where(bpath + ("providerHost",)))
            ok = False
            continue
        if mixed and ref.weight is None:
            diags.warning("LLMC229", "weight is not set while other backendRefs of the rule set one: as in "
                          "Istio, it counts as 0 and this provider gets no traffic", **doc.where(bpath),
                          hint="set a weight on every backendRef of the rule, or on none (equal weights)")
        if ref.hostRewrite is not None:
            problem = host_problem(ref.hostRewrite, path_hint="", field="hostRewrite")
            if problem is not None:
                diags.error("LLMC226", problem.message, **doc.where(bpath + ("hostRewrite",)), hint=problem.hint)
                ok = False
        host = ref.providerHost.lower()
        found = catalog.find(host, doc.namespace)
        provider = found.provider
        if provider is None:
            _unknown_provider(host, found, catalog, doc, bpath + ("providerHost",), diags)
            ok = False
            continue
        if host in seen:
            diags.error("LLMC206", f"provider host {host!r} is listed twice in this rule",
                        **doc.where(bpath + ("providerHost",)))
            ok = False
        elif provider.name in named:
            # pinned route names end in the provider's name: two providers of one name (from two
            # namespaces) would share one pinned route and one could get the other's request
            diags.error("LLMC218", f"{provider.source} and {named[provider.name]} have the same name, which "
                        "would give the rule's two pinned routes one name", **doc.where(bpath + ("providerHost",)),
                        hint="rename one of the LLMProviders")
            ok = False
        seen.add(host)
        named.setdefault(provider.name, provider.source)
        weight = 1 if ref.weight is None and not mixed else (ref.weight or 0)
        if weight > 0:
            out.append(Backend(provider, weight, provider.config_for_rule(rule_name),
                               host_rewrite=ref.hostRewrite.lower() if ref.hostRewrite else None,
                               priority=ref.priority or 0))
    return tuple(out) if ok else None


def _unknown_provider(host: str, found: visibility.Lookup, catalog: visibility.Catalog, doc: Document,
                      path: tuple, diags: Diagnostics) -> None:
    if found.ambiguous:
        where = ", ".join(p.source for p in found.ambiguous)
        diags.error("LLMC230", f"host {host!r} is exported to namespace {doc.namespace!r} by several "
                    f"LLMProviders ({where}); llmc cannot tell which one Istio would pick",
                    **doc.where(path), hint="narrow their exportTo so that one is visible here, or define the "
                    "provider in this namespace (it then wins)")
        return
    known = ", ".join(catalog.visible_hosts(doc.namespace)) or "none"
    hint = f"provider hosts visible here: {known}"
    if found.hidden:
        elsewhere = "; ".join(f"{p.source} has it but is exported to {list(p.export_to)} only"
                              for p in found.hidden)
        hint = (f"{elsewhere}: add {doc.namespace!r} (or \"*\") to its spec.exportTo, or define it in the "
                f"Istio root namespace; {hint}")
    diags.error("LLMC202", f"no LLMProvider visible in namespace {doc.namespace!r} has host {host!r}",
                **doc.where(path), hint=hint)


#: llmc's retry conditions (``rules[].retries.retryOn``) when a rule names none
DEFAULT_RETRY_ON = ("connect-failure", "reset", "5xx", "429")


def _retries(rule, backends: tuple[Backend, ...], opts: Options, doc: Document, rpath: tuple,
             diags: Diagnostics) -> Retries | None | bool:
    """The rule's failover settings: None (no failover), Retries, or False after an error."""
    prioritized = [k for k, b in enumerate(rule.backendRefs) if b.priority is not None]
    if (rule.retries is not None or prioritized) and not opts.supports_failover:
        where = rpath + (("retries",) if rule.retries is not None else ("backendRefs", prioritized[0], "priority"))
        diags.error("LLMC234", f"failover (retries, priority) needs Istio {FAILOVER_ISTIO_VERSION} or newer "
                    f"(Envoy 1.39's refresh_cluster_on_retry); the target is Istio {opts.istio_version}",
                    **doc.where(where),
                    hint=f"render with --istio-version {FAILOVER_ISTIO_VERSION} once the mesh runs it, or "
                    "remove retries and priority")
        return False
    if rule.retries is None:
        if prioritized:
            diags.error("LLMC235", "priority needs retries: without them no request ever moves to a higher "
                        "priority", **doc.where(rpath + ("backendRefs", prioritized[0], "priority")),
                        hint="add retries: {} to the rule (every backend is then tried once) or remove priority")
            return False
        return None
    formats = {PROTOCOLS[b.provider.protocol].format for b in backends}
    if formats != {"openai"}:
        diags.error("LLMC235", "failover rules need providers that speak OpenAI's format (openAIConfig or "
                    "azureOpenAIConfig): a translated response cannot be told apart per try",
                    **doc.where(rpath + ("retries",)), hint="move translated providers (anthropicConfig) to a "
                    "rule without retries")
        return False
    attempts = rule.retries.attempts or len(backends)
    if attempts > len(backends):
        diags.error("LLMC235", f"attempts {attempts} is more than the rule's {len(backends)} backends: a retry "
                    "always moves to a provider not tried yet", **doc.where(rpath + ("retries", "attempts")),
                    hint=f"use at most {len(backends)}")
        return False
    return Retries(attempts=attempts, per_try_timeout=rule.retries.perTryTimeout,
                   retry_on=tuple(sorted(set(rule.retries.retryOn or DEFAULT_RETRY_ON))))


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
                        hint=f"first defined in {first.file}:{first.position()[0]}")
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
    catalog = visibility.Catalog(p for provs in providers_by_ns.values() for p in provs.values())
    vhosts: list[VirtualHost] = []
    route_hosts: dict[tuple, str] = {}
    unresolved_rules: set[str] = set()  # rule names of routes that failed: their keys are not "unused"
    for it in (u for u in unique if u.doc.kind == "LLMRoute"):
        vh = resolve_route(it, catalog, opts, diags)
        if vh is None:
            assert isinstance(it.obj, LLMRoute)
            unresolved_rules.update(_rule_name(r.name, i) for i, r in enumerate(it.obj.spec.rules))
            continue
        host_key = (vh.namespace, vh.fqdn, vh.port, vh.gateways)
        if host_key in route_hosts:
            diags.error("LLMC210", f"host {vh.fqdn!r} port {vh.port} is already routed by {route_hosts[host_key]}",
                        **it.doc.where(("spec", "host")), hint="merge the rules into one LLMRoute")
            continue
        route_hosts[host_key] = vh.sources[0]
        vhosts.append(vh)
    routed = {(ns, fqdn, port) for ns, fqdn, port, _ in route_hosts}
    # Providers without an LLMRoute on their own host get an implicit single-rule route, so that
    # `curl http://<provider host>` works with an LLMProvider alone (the seed's first scenario).
    # Not in the Istio root namespace without an egress gateway: the EnvoyFilters of sidecar
    # placement there would apply to every sidecar of the mesh, whose virtual host for the provider
    # (from the ServiceEntry exported everywhere) has no llmc route, so the filter would answer 500.
    for ns, provs in sorted(providers_by_ns.items()):
        for host, p in sorted(provs.items()):
            if (ns, host, p.service_port) in routed or (ns == ROOT_NAMESPACE and not opts.egress_gateway):
                continue
            vhosts.append(VirtualHost(
                namespace=ns, object_name=names.object_name("provider", p.name), label=p.name,
                host=host, fqdn=host, port=p.service_port,
                rules=(Rule(name="default", matches=(), backends=(Backend(p, 1, p.default),)),),
                selector=p.selector, sources=(p.source,)))
    _check_route_specific_keys(providers_by_ns, vhosts, provider_docs, unresolved_rules, diags)
    _check_route_names(vhosts, diags)
    if diags.has_errors:
        return None
    providers = tuple(sorted((p for provs in providers_by_ns.values() for p in provs.values()),
                             key=lambda p: (p.namespace, p.name)))
    egress = egress_gateway(opts)
    placed = [dataclasses.replace(vh, placements=place(vh, egress, opts)) for vh in vhosts]
    _check_selector_overlap(placed, provider_docs, diags)
    if diags.has_errors:
        return None
    return Program(secrets_dir=opts.secrets_dir.rstrip("/") or "/", providers=providers,
                   egress=egress, telemetry=opts.telemetry,
                   vhosts=tuple(sorted(placed, key=lambda v: (v.namespace, v.object_name))))


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


def _check_selector_overlap(vhosts: list[VirtualHost], provider_docs, diags: Diagnostics) -> None:
    """One Lua filter per (namespace, sidecar/gateway, selector) is inserted; when one selector's
    labels contain another's, the pods both select get the filter twice and shape every request
    twice. Selectors that overlap only through the pods' actual labels are invisible to llmc
    (README, "Several workloads in one namespace")."""
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
            pinned = tuple(b.provider.name for b in rule.pinned)
            entry, pins = names.rule_routes(vh.namespace, vh.label, rule.name, pinned)
            for name in (entry, *pins.values()):
                if name in seen:
                    diags.error("LLMC218", f"generated Envoy route name {name!r} is used by rule {seen[name]!r} "
                                f"and rule {rule.name!r}", object=vh.sources[0],
                                hint="rename one of the rules")
                seen.setdefault(name, rule.name)


def _check_route_specific_keys(providers_by_ns, vhosts, provider_docs, unresolved_rules: set[str],
                               diags: Diagnostics) -> None:
    used: set[tuple[str, str, str]] = set()  # (ns, provider, rule)
    for vh in vhosts:
        for rule in vh.rules:
            for b in rule.backends:
                used.add((b.provider.namespace, b.provider.name, rule.name))
    for ns, provs in sorted(providers_by_ns.items()):
        for p in provs.values():
            for rule, _ in p.overrides:
                if (p.namespace, p.name, rule) not in used and rule not in unresolved_rules:
                    diags.warning("LLMC203", f"no LLMRoute rule named {rule!r} routes to this provider; "
                                  "the override is unused", **provider_docs[(ns, p.name)].where(
                                      ("spec", "configs", "routeSpecificConfigs", rule)),
                                  hint="fine if the LLMRoute is applied later")
