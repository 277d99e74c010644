"""The intermediate representation: what to build, with every cross-object question answered.

Frozen dataclasses with no Istio, Envoy or Kubernetes types, and no reference back to the API
models. Everything a translator needs is resolved here: rule names, merged per-rule request
settings, normalised weights, sorted label maps. Translators only lay this out as Istio objects.
``llmc render --emit ir`` prints it (see :func:`to_data`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SecretRef:
    name: str
    key: str


@dataclass(frozen=True)
class WeightedSecretRef:
    name: str
    key: str
    weight: int = 1


@dataclass(frozen=True)
class RequestConfig:
    """Settings applied to one request: body fields and the credential."""

    model: str | None = None
    stream: bool | None = None
    #: the credential: a literal key (a secret) or a Secret; one set in an overlay replaces both
    api_key: str | None = dataclasses.field(default=None, repr=False, metadata={"overlay": "credential"})
    api_key_secret: SecretRef | None = dataclasses.field(default=None, metadata={"overlay": "credential"})
    #: several keys (docs/api-keys.md): literals (secrets) or Secrets with weights; part of the credential
    api_keys: tuple[str, ...] = dataclasses.field(default=(), repr=False, metadata={"overlay": "credential"})
    api_key_secrets: tuple[WeightedSecretRef, ...] = dataclasses.field(default=(), metadata={"overlay": "credential"})
    key_selection: str | None = None  # keySelection: "RoundRobin" (None: the default) or "Weighted"
    retry_keys_on: tuple[int, ...] | None = None  # retryKeysOn: statuses answered with the next key
    #: add stream_options.include_usage when streaming is turned on; overlaid when set explicitly
    include_usage: bool = dataclasses.field(default=True, metadata={"overlay": "include_usage_set"})
    include_usage_set: bool = dataclasses.field(default=False, compare=False, metadata={"overlay": "flag"})
    auth_header: str | None = None  # openAIConfig.authHeader (lower-case); None: the protocol's
    auth_prefix: str | None = None  # openAIConfig.authPrefix; None: the protocol's (or "" for another header)
    deployment: str | None = None  # azureOpenAIConfig.deployment
    api_version: str | None = None  # azureOpenAIConfig.apiVersion
    max_tokens: int | None = None  # the output token cap: anthropicConfig.maxTokens
    version: str | None = None  # anthropicConfig.version (the anthropic-version header)

    def overlay(self, other: RequestConfig | None) -> RequestConfig:
        """Fields set in ``other`` replace ours; a credential in ``other`` (any of the four forms)
        replaces all of ours: a route-specific key list replaces the default's, never merges with it."""
        if other is None:
            return self
        cred = other if other.has_credential else self
        plain = {f: getattr(other, f) if getattr(other, f) is not None else getattr(self, f) for f in _PLAIN}
        return RequestConfig(
            api_key=cred.api_key, api_key_secret=cred.api_key_secret, api_keys=cred.api_keys,
            api_key_secrets=cred.api_key_secrets,
            include_usage=other.include_usage if other.include_usage_set else self.include_usage,
            **plain,
        )


    @property
    def key_count(self) -> int:
        """How many keys the platform holds for this config (0: none; the client's own may pass)."""
        if self.api_key is not None or self.api_key_secret is not None:
            return 1
        return len(self.api_keys) or len(self.api_key_secrets)

    @property
    def key_retry(self) -> tuple[int, ...]:
        """The statuses answered with the next key (retryKeysOn), when there is a next key."""
        return tuple(sorted(set(self.retry_keys_on or ()))) if self.key_count > 1 else ()

    @property
    def has_credential(self) -> bool:
        """Whether a key is configured, in any of the four forms."""
        return (self.api_key is not None or self.api_key_secret is not None or bool(self.api_keys)
                or bool(self.api_key_secrets))

    @property
    def secret_names(self) -> tuple[str, ...]:
        """The Secrets the proxy must have mounted for this config's keys."""
        refs = ((self.api_key_secret,) if self.api_key_secret else ()) + self.api_key_secrets
        return tuple(sorted({r.name for r in refs}))


#: The fields ``overlay`` takes from ``other`` when set (not None): every field of RequestConfig
#: without an ``overlay`` rule in its metadata (the credential pair, include_usage and its flag).
_PLAIN = tuple(f.name for f in dataclasses.fields(RequestConfig) if "overlay" not in f.metadata)


@dataclass(frozen=True)
class TokenLimit:
    """A token budget (llmc extension, docs/budgets.md): a bucket per key, a fixed window, a cost.

    ``id`` names the limit in the rate-limit service's configuration and in every descriptor: it is
    ``route/<ns>/<route>/<rule>/<name>`` for a rule's limit and ``provider/<ns>/<provider>/<name>``
    for a provider's, so a provider's limit is one bucket for every namespace whose routes reach it.
    ``key`` parts are ``("header", name)``, ``("workload", "")`` or ``("model", "")``, in the user's order.
    A money budget (``money``) counts cost units (``--cost-unit``) instead of tokens: ``tokens`` is
    then the budget in those units, and a request is charged its price at the answering provider
    and model (``Provider.prices``); the weights are unused.
    """

    id: str
    name: str
    tokens: int  # the budget per window in the service's counter units: tokens, or cost units (money)
    unit: str  # second | minute | hour | day | week | month | year (envoyproxy/ratelimit's units)
    key: tuple[tuple[str, str], ...]
    prompt_weight: float
    completion_weight: float
    shadow: bool
    source: str
    money: bool = False


@dataclass(frozen=True)
class Price:
    """A model's price at a provider, in cost units (``--cost-unit``) per 1M tokens, rounded up to a
    whole unit; ``model`` is a name or ``"*"``."""

    model: str
    prompt: int
    completion: int
    cached_prompt: int | None = None


@dataclass(frozen=True)
class RateLimitService:
    """The rate-limit service (envoyproxy/ratelimit's gRPC API) that enforces token limits."""

    namespace: str
    service: str
    port: int
    fqdn: str
    timeout: str
    fail_closed: bool
    cost_unit: str  # what a money budget's counter counts (a key of options.COST_UNITS)


@dataclass(frozen=True)
class Provider:
    namespace: str
    name: str
    host: str
    path: str | None  # spec.path; None: the protocol's default endpoint (see protocols.endpoint)
    port: int  # the provider's real port (443 for TLS by default)
    service_port: int  # the port clients call: 80 (ServiceEntry port), or the Service port in-mesh
    in_mesh: bool  # a Kubernetes Service of this cluster: no ServiceEntry/DestinationRule emitted
    tls: bool
    sni: str
    subject_alt_names: tuple[str, ...]
    ca_certificates: str | None
    timeout: str | None
    max_request_bytes: int
    selector: tuple[tuple[str, str], ...]
    default: RequestConfig
    overrides: tuple[tuple[str, RequestConfig], ...]  # (rule name, override), sorted
    source: str  # "LLMProvider ns/name"
    protocol: str = "openai"  # a key of compiler.protocols.PROTOCOLS
    base_path: str | None = None  # prefix of the provider's other OpenAI endpoints (llmc extension)
    #: namespaces whose routes may use it (Istio's exportTo): "*" alone, or "." and namespace names
    export_to: tuple[str, ...] = (".",)
    #: token limits of every request sent to this provider (llmc extension)
    limits: tuple[TokenLimit, ...] = ()
    #: prices per model, sorted (money budgets charge them; llmc extension)
    prices: tuple[Price, ...] = ()

    def config_for_rule(self, rule: str) -> RequestConfig:
        return self.default.overlay(dict(self.overrides).get(rule))


@dataclass(frozen=True)
class HeaderMatch:
    name: str  # lower-case
    kind: str  # exact | prefix | regex | present (Istio's `{}`: the header is there, any value)
    value: str


@dataclass(frozen=True)
class BodyMatch:
    """A condition on a top-level string field of the request body (llmc extension), e.g. ``model``:
    the fields are ``names.BODY_FIELDS``."""

    field: str
    kind: str  # exact | prefix | regex
    value: str

    def accepts(self, value: str, regex_match) -> bool:
        if self.kind == "exact":
            return value == self.value
        if self.kind == "prefix":
            return value.startswith(self.value)
        return regex_match(self.value, value)


@dataclass(frozen=True)
class Match:
    headers: tuple[HeaderMatch, ...] = ()
    source_labels: tuple[tuple[str, str], ...] = ()
    gateways: tuple[str, ...] = ()  # normalised: "mesh" or "ns/name"
    body: tuple[BodyMatch, ...] = ()  # at most one per field, sorted by field

    @property
    def model(self) -> BodyMatch | None:
        """The condition on the body's ``model``, if any."""
        return next((b for b in self.body if b.field == "model"), None)

    @property
    def only_body(self) -> bool:
        """No condition but on the body: such a match shadows later matches of the same values."""
        return bool(self.body) and not (self.headers or self.source_labels or self.gateways)


@dataclass(frozen=True)
class Backend:
    provider: Provider
    weight: int
    config: RequestConfig  # provider default overlaid with the rule's routeSpecificConfigs entry
    host_rewrite: str | None = None  # Host header sent upstream (default: the provider host)
    priority: int = 0  # failover: lower first; only retries move to a higher one

    @property
    def host_header(self) -> str:
        return self.host_rewrite or self.provider.host

    @property
    def keyed(self) -> bool:
        """The platform holds a key for this backend (else the client's own credential may pass)."""
        return self.config.has_credential


@dataclass(frozen=True)
class Retries:
    """Failover across a rule's backends (Envoy retries that move to another provider)."""

    attempts: int  # total tries including the first, 1..len(backends)
    per_try_timeout: str | None
    retry_on: tuple[str, ...]  # llmc's condition names, sorted


@dataclass(frozen=True)
class Rule:
    name: str
    matches: tuple[Match, ...]  # empty: matches everything
    backends: tuple[Backend, ...]  # weight > 0 only, in the user's order
    retries: Retries | None = None  # failover rule (Istio >= 1.31)
    limits: tuple[TokenLimit, ...] = ()  # the rule's own token limits (providers' are on Provider)

    @property
    def weighted(self) -> bool:
        """Routed through pinned routes: the filter picks the (first) backend."""
        return len(self.backends) > 1 or self.retries is not None

    @property
    def first_choices(self) -> tuple[Backend, ...]:
        """The backends a first try may go to (picked by weight): those of the lowest priority."""
        low = min(b.priority for b in self.backends)
        return tuple(b for b in self.backends if b.priority == low)

    @property
    def pinned(self) -> tuple[Backend, ...]:
        """The backends that get a pinned route: every first choice of a rule the filter picks for."""
        return self.first_choices if self.weighted else ()

    @property
    def auth_headers(self) -> tuple[str, ...]:
        """The header each backend's key travels in (its authHeader, else its protocol's), sorted."""
        from .protocols import auth_header  # the drivers build IR objects: imported when used
        return tuple(sorted({auth_header(b.provider.protocol, b.config.auth_header) for b in self.backends}))

    def failover_order(self, first: Backend) -> tuple[Backend, ...]:
        """The order tries take when ``first`` was picked: ``first``, then the others by priority,
        then by weight (highest first), then in the user's order."""
        rest = sorted((b for b in self.backends if b is not first), key=lambda b: (b.priority, -b.weight))
        return (first, *rest)

    @staticmethod
    def key_slots(b: Backend) -> int:
        """How many consecutive tries backend ``b`` owns on a failover rule: one per key when it
        retries with its next key (retryKeysOn, docs/failover.md "The next key before the next
        provider"), else one."""
        return b.config.key_count if b.config.key_retry else 1

    def try_slots(self, first: Backend) -> tuple[tuple[Backend, int], ...]:
        """(backend, slot 1..) of every try of the pinned route of ``first``, in the order Envoy takes
        them: each backend of ``failover_order`` with one slot per key it may retry with."""
        return tuple((b, k) for b in self.failover_order(first) for k in range(1, self.key_slots(b) + 1))

    def allowed_tries(self, first: Backend) -> int:
        """How many tries the pinned route of ``first`` may make: the slots of its first
        ``retries.attempts`` backends (``attempts`` counts providers; key retries come on top)."""
        assert self.retries is not None
        return sum(self.key_slots(b) for b in self.failover_order(first)[: self.retries.attempts])


@dataclass(frozen=True)
class Placement:
    """Where a virtual host's rules run and its requests get shaped: the sidecars of a namespace
    (``gateway`` is None), or the pods of an Istio Gateway (``gateway`` = "ns/name"). ``namespace``
    is where those proxies (and so the objects that configure them, and the Secrets they read) are;
    ``selector`` selects the proxies' pods there (empty: every pod); ``port`` is the port the proxies
    know the host by (the Service port for sidecars, the Gateway server port for gateways)."""

    namespace: str
    selector: tuple[tuple[str, str], ...]
    port: int
    gateway: str | None = None

    @property
    def on_gateway(self) -> bool:
        return self.gateway is not None


@dataclass(frozen=True)
class VirtualHost:
    """One host clients call: an LLMRoute's host, or a provider host without an LLMRoute."""

    namespace: str
    object_name: str  # base of generated object names
    label: str  # short name used in route names (LLMRoute or LLMProvider name)
    host: str  # as written into VirtualService.hosts
    fqdn: str  # the name istiod uses for the Envoy virtual host
    port: int
    rules: tuple[Rule, ...]
    selector: tuple[tuple[str, str], ...]
    sources: tuple[str, ...]
    gateways: tuple[str, ...] = ("mesh",)  # "mesh" and/or "ns/name" of Istio Gateways, sorted
    #: where the rules run (computed by resolve, read by every translator, `llmc mounts`, the controller)
    placements: tuple[Placement, ...] = ()

    @property
    def in_mesh(self) -> bool:
        return "mesh" in self.gateways

    @property
    def body_fields(self) -> tuple[str, ...]:
        """The body fields some rule matches on, sorted: the filter reads the body before Envoy picks the rule."""
        return tuple(sorted({b.field for r in self.rules for m in r.matches for b in m.body}))

    @property
    def shared(self) -> bool:
        """Host "*" on gateways: Istio merges every VirtualService with "*" on a Gateway (other
        teams' too) into one virtual host, so llmc's data goes on llmc's own routes only."""
        return self.host == "*"

    @property
    def bound_gateways(self) -> tuple[str, ...]:
        return tuple(g for g in self.gateways if g != "mesh")

    @property
    def all_sources(self) -> tuple[str, ...]:
        """The route's own sources and every provider it sends traffic to."""
        return self.sources + tuple(b.provider.source for r in self.rules for b in r.backends)


@dataclass(frozen=True)
class EgressGateway:
    """Egress-gateway mode: sidecars send LLM traffic over mTLS to this gateway, which shapes it."""

    namespace: str
    service: str  # the gateway's Service (and, by Istio's convention, Deployment) name
    service_host: str  # its FQDN
    labels: tuple[tuple[str, str], ...]  # selects the gateway pods
    gateway_name: str  # the Istio Gateway object llmc emits for it
    port: int = 443  # the Gateway server port (HTTPS, ISTIO_MUTUAL)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.gateway_name}"


@dataclass(frozen=True)
class Waypoint:
    """Ambient target: the waypoint (a Gateway of class ``istio-waypoint``) that serves the LLM hosts of
    the sources in ``namespace`` — or, with ``namespace`` None, each source's own namespace's."""

    namespace: str | None
    name: str

    def of(self, namespace: str) -> tuple[str, str]:
        """(namespace, name) of the waypoint that serves the sources of ``namespace``."""
        return (self.namespace or namespace, self.name)


@dataclass(frozen=True)
class Program:
    secrets_dir: str  # directory in the proxy where Secrets are mounted, one folder per Secret
    providers: tuple[Provider, ...]
    vhosts: tuple[VirtualHost, ...]
    egress: EgressGateway | None = None
    telemetry: bool = False  # emit Telemetry resources and token-metric EnvoyFilters
    #: the names of llmc's metrics: "gen_ai" (OpenTelemetry's GenAI conventions) or "legacy"
    telemetry_names: str = "gen_ai"
    rate_limit: RateLimitService | None = None  # token limits' service (None: no limits anywhere)
    #: the ambient target: rules run on waypoints (a TrafficExtension each) instead of sidecars
    waypoint: Waypoint | None = None
    #: what prices and the cost counter count in (``--cost-unit``, a key of options.COST_UNITS; resolve sets it)
    cost_unit: str = ""

    def namespaces(self) -> list[str]:
        return sorted({p.namespace for p in self.providers} | {v.namespace for v in self.vhosts})


def to_data(value: Any) -> Any:
    """Plain data for ``--emit ir``; literal API keys are masked."""
    if dataclasses.is_dataclass(value):
        out = {}
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            if f.name == "api_key" and v is not None:
                v = "***"
            if f.name == "api_keys":
                v = tuple("***" for _ in v)
            out[f.name] = to_data(v)
        return out
    if isinstance(value, tuple | list):
        return [to_data(v) for v in value]
    return value
