"""An LLMProvider's own checks and its IR ``Provider``: one protocol per provider, the API key
(literal, placeholder, or Secret), the header that carries it, the endpoint, TLS, and exportTo."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from .. import protocols, visibility
from ..api import LLMProvider, ProviderConfig
from ..constants import ENVOY_FILTER, TRAFFIC_EXTENSION
from ..diagnostics import Diagnostics
from ..hosts import host_problem
from ..ir import Provider, RequestConfig, SecretRef, WeightedSecretRef
from ..load import Document
from ..options import Options
from ..protocols import CONFIG_FIELDS, DEFAULT_PROTOCOL, PROTOCOLS, Site

if TYPE_CHECKING:
    from . import Sourced

DEFAULT_MAX_REQUEST_BYTES = 8 * 1024 * 1024
PLACEHOLDER = re.compile(r"^\s*(\$\{.*\}|\$[A-Z_][A-Z0-9_]*|<.*>|changeme|xxx+|todo)\s*$", re.I)
#: A literal key a header can carry as written: visible ASCII, blanks only inside. A line break or a
#: control character makes Envoy refuse the header; a non-ASCII character or a blank at either end
#: reaches the provider as another key (review 9: refused where written, LLMC280).
SENDABLE_KEY = re.compile(r"[!-~]([ !-~]*[!-~])?")


KEY_FORMS = ("apiKey", "apiKeySecretRef", "apiKeys", "apiKeySecretRefs")


def _check_key(cfg: Any, doc: Document, path: tuple, diags: Diagnostics, carrier: str = ENVOY_FILTER) -> None:
    """Every protocol config has the four key forms: checked here, for all drivers."""
    forms = [f for f in KEY_FORMS if getattr(cfg, f) is not None]
    if len(forms) > 1:
        diags.error("LLMC211", f"set one of {', '.join(KEY_FORMS)}: {' and '.join(forms)} are both set",
                    **doc.where(path + (forms[0],)),
                    hint="apiKeySecretRef(s) keep the key out of generated objects")
    if cfg.apiKey is not None:
        _check_literal(cfg.apiKey, doc, path + ("apiKey",), diags, carrier)
    literals = cfg.apiKeys or []
    for i, key in enumerate(literals):
        _check_literal(key, doc, path + ("apiKeys", i), diags, carrier)
        if key in literals[:i]:
            diags.error("LLMC250", f"apiKeys[{i}] repeats apiKeys[{literals.index(key)}]: a key is listed "
                        "once", **doc.where(path + ("apiKeys", i)), hint="give the key a larger share with "
                        "apiKeySecretRefs[].weight instead")
    refs = [(r.name, r.key) for r in cfg.apiKeySecretRefs or ()]
    for i, ref in enumerate(refs):
        if ref in refs[:i]:
            diags.error("LLMC250", f"apiKeySecretRefs[{i}] repeats apiKeySecretRefs[{refs.index(ref)}] "
                        f"({ref[0]}/{ref[1]}): a key is listed once", **doc.where(path + ("apiKeySecretRefs", i)),
                        hint="give the key a larger share with weight instead")
    for field in ("keySelection", "retryKeysOn"):
        if getattr(cfg, field) is not None and (cfg.apiKey is not None or cfg.apiKeySecretRef is not None):
            diags.warning("LLMC251", f"{field} applies to apiKeys or apiKeySecretRefs; this config has one key",
                          **doc.where(path + (field,)), hint=f"remove {field}, or list several keys")


def _check_literal(key: str, doc: Document, path: tuple, diags: Diagnostics, carrier: str) -> None:
    field, secret_form = ("apiKeys", "apiKeySecretRefs") if isinstance(path[-1], int) else ("apiKey", "apiKeySecretRef")
    if not SENDABLE_KEY.fullmatch(key):
        diags.register_secret(key)  # masked wherever it could still be printed
        diags.error("LLMC280", f"{field} cannot be sent in an HTTP header as written: it holds a line break, "
                    "a control or non-ASCII character, or blanks before or after it", **doc.where(path),
                    hint="copy the key again without its line break or blanks; a key read from a Secret "
                    f"({secret_form}) loses a trailing line break")
    elif PLACEHOLDER.match(key) or "${" in key:
        diags.warning("LLMC207", f"{field} looks like a placeholder, not a key; the provider will "
                      "reject requests", **doc.where(path),
                      hint=f"put the real key in a Secret and use {secret_form}")
    else:
        diags.register_secret(key)
        diags.warning("LLMC215", f"literal {field} is copied into the generated {carrier}, where "
                      f"anyone who can read {carrier}s or a proxy config dump can see it",
                      **doc.where(path), hint=f"use {secret_form}")


#: Query parameter names that carry a credential (compared lower-case, percent-decoded, "-" as "_").
QUERY_CREDENTIALS = frozenset({"key", "api_key", "apikey", "access_token", "token", "code", "sig", "signature",
                               "auth", "password", "secret", "client_secret"})


def _check_query_credential(value: str | None, doc: Document, path: tuple, diags: Diagnostics) -> None:
    """LLMC281: a credential in the query of spec.path or spec.basePath sits in plain text in the
    generated filter and in every URL `llmc explain` and `llmc diff` print, where the key fields are
    masked. A warning, not an error: some endpoints take their key only in the query (decided in
    review 9). The value is masked in diagnostics; the message names the parameter, never the value."""
    query = (value or "").partition("?")[2]
    for pair in query.split("&"):
        name, _, secret = pair.partition("=")
        plain = unquote(name).lower().replace("-", "_")
        if plain not in QUERY_CREDENTIALS or not secret:
            continue
        diags.register_secret(secret)
        diags.register_secret(unquote(secret))
        diags.warning("LLMC281", f"{path[-1]} carries a credential in its query ({unquote(name)}=...): it is "
                      "stored in plain text in the generated filter and printed in every URL of `llmc explain` "
                      "and `llmc diff`", **doc.where(path),
                      hint="if the provider takes the key in a header, use apiKeySecretRef (and authHeader)")


def _credential(cfg: Any) -> dict:
    """The RequestConfig fields of a config's credential, in whichever of the four forms it is."""
    secret = cfg.apiKeySecretRef
    return {"api_key": cfg.apiKey, "api_key_secret": SecretRef(secret.name, secret.key) if secret else None,
            "api_keys": tuple(cfg.apiKeys or ()),
            "api_key_secrets": tuple(WeightedSecretRef(r.name, r.key, r.weight) for r in cfg.apiKeySecretRefs or ()),
            "key_selection": cfg.keySelection,
            "retry_keys_on": tuple(cfg.retryKeysOn) if cfg.retryKeysOn is not None else None}


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
    site = Site(doc, path + (field,), diags)
    _check_key(cfg, doc, path + (field,), diags, carrier)
    protocol = CONFIG_FIELDS[field]
    return protocol, RequestConfig(**_credential(cfg), **protocols.get(protocol).request_fields(cfg, site))


def _provider_protocol(found: list[tuple[str, tuple]], doc: Document, diags: Diagnostics) -> str:
    """One protocol per provider: the first config's; a config naming another is an error."""
    if not found:
        return DEFAULT_PROTOCOL
    protocol = found[0][0]
    for other, path in found[1:]:
        if other != protocol:
            diags.error("LLMC236", f"one provider speaks one protocol: this config is {other!r}, an earlier "
                        f"one {protocol!r}", **doc.where(path),
                        hint="use one LLMProvider per provider API")
    return protocol


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
    protocols.get(protocol).check_endpoint(
        spec.path, [(default or RequestConfig()).overlay(rc) for _, rc in [("", None), *overrides]],
        Site(doc, ("spec",), diags))
    for field in ("path", "basePath"):
        _check_query_credential(getattr(spec, field), doc, ("spec", field), diags)
    if spec.basePath is not None and PROTOCOLS[protocol].translated:
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
