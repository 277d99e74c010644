"""An LLMProvider's own checks and its IR ``Provider``: one protocol per provider, the API key
(literal, placeholder, or Secret), the header that carries it, the endpoint, TLS, and exportTo."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from .. import names, visibility
from ..api import AnthropicConfig, AzureOpenAIConfig, LLMProvider, OpenAIConfig, ProviderConfig
from ..constants import ENVOY_FILTER, TRAFFIC_EXTENSION
from ..diagnostics import Diagnostics
from ..hosts import host_problem
from ..ir import Provider, RequestConfig, SecretRef
from ..load import Document
from ..options import Options
from ..protocols import CONFIG_FIELDS, PROTOCOLS
from .matches import HEADER_NAME

if TYPE_CHECKING:
    from . import Sourced

DEFAULT_MAX_REQUEST_BYTES = 8 * 1024 * 1024
PLACEHOLDER = re.compile(r"^\s*(\$\{.*\}|\$[A-Z_][A-Z0-9_]*|<.*>|changeme|xxx+|todo)\s*$", re.I)

#: Headers an authHeader may not name: the filter sets them itself, or they frame the request.
RESERVED_AUTH_HEADERS = {"host", "content-type", "content-length", "transfer-encoding", "accept-encoding",
                         "connection", "te", "upgrade", "anthropic-version"}

AnyConfig = OpenAIConfig | AzureOpenAIConfig | AnthropicConfig


def _check_key(cfg: AnyConfig, doc: Document, path: tuple, diags: Diagnostics, carrier: str = ENVOY_FILTER) -> None:
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
            diags.warning("LLMC215", f"literal apiKey is copied into the generated {carrier}, where "
                          f"anyone who can read {carrier}s or a proxy config dump can see it",
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
                    carrier: str = ENVOY_FILTER) -> tuple[str | None, RequestConfig | None]:
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
    _check_key(cfg, doc, cpath, diags, carrier)
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
    carrier = TRAFFIC_EXTENSION if opts.ambient else ENVOY_FILTER  # the object a literal key is copied into
    if configs is not None:
        if configs.defaultConfig is not None:
            proto, default = _request_config(configs.defaultConfig, doc, base + ("defaultConfig",), diags, carrier)
            if proto is not None:
                found.append((proto, base + ("defaultConfig",)))
        for rule, pc in sorted((configs.routeSpecificConfigs or {}).items()):
            proto, rc = _request_config(pc, doc, base + ("routeSpecificConfigs", rule), diags, carrier)
            if proto is not None:
                found.append((proto, base + ("routeSpecificConfigs", rule)))
            overrides.append((rule, rc or RequestConfig()))
    protocol = _provider_protocol(found, doc, diags)
    _check_endpoint(protocol, spec.path, [(default or RequestConfig()).overlay(rc) for _, rc in
                                          [("", None), *overrides]], doc, diags)
    if spec.basePath is not None and PROTOCOLS[protocol].format != "openai":
        diags.error("LLMC241", f"basePath is for providers that speak OpenAI's API: a {protocol} provider "
                    "serves chat completions only (translated), so embeddings and completions requests would be "
                    "sent, with its key, to endpoints it does not have", **doc.where(("spec", "basePath")),
                    hint="remove spec.basePath; clients of this provider call /v1/chat/completions")
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
