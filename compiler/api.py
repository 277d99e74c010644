"""The input API: ``LLMProvider`` and ``LLMRoute`` (``istio.alibabacloud.com/v1beta1``).

Field names and shapes follow Alibaba Cloud ASM, so the seed's manifests are accepted verbatim.
Extensions that ASM lacks are marked "llmc extension" in their descriptions; all are optional, so
an ASM manifest never needs them. These models are the single source of truth for the CRDs in
``schemas/`` (see :mod:`compiler.crds`) and for the schema check of raw documents
(:mod:`compiler.schema`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
# Bounds on everything a CEL rule iterates, so the API server's cost estimate stays finite.
MAX_RULES, MAX_BACKENDS, MAX_MATCHES, MAX_GATEWAYS, MAX_NAME = 128, 32, 32, 32, 253


def cel(rule: str, message: str) -> dict:
    """A CEL ``x-kubernetes-validations`` entry (core CEL only: no Kubernetes library functions)."""
    return {"x-kubernetes-validations": [{"rule": rule, "message": message}]}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SecretKeyRef(_Strict):
    """A key of a Kubernetes Secret in the namespace of the proxies that use the provider."""

    name: str = Field(min_length=1, max_length=253, description="Secret name.")
    key: str = Field(min_length=1, max_length=253, description="Key inside the Secret.")


MAX_KEYS, MAX_KEY_WEIGHT = 16, 100
#: One credential form per config (CEL; the compiler says the same as LLMC211, located).
_ONE_KEY_FORM = cel(
    "[has(self.apiKey), has(self.apiKeySecretRef), has(self.apiKeys), has(self.apiKeySecretRefs)]"
    ".filter(x, x).size() <= 1", "set one of apiKey, apiKeySecretRef, apiKeys, apiKeySecretRefs")


class WeightedSecretKeyRef(SecretKeyRef):
    """llmc extension: one of several API keys, from a Secret key, with its share of the requests."""

    weight: int = Field(1, ge=1, le=MAX_KEY_WEIGHT, description="Share of the requests this key takes, "
                        "relative to the other keys of the list (default 1).")


_KEYS_DOC = ("llmc extension: several API keys (literal, stored in the generated EnvoyFilter like apiKey); "
             "each request uses one, chosen by keySelection (docs/api-keys.md). Mutually exclusive with "
             "apiKey, apiKeySecretRef and apiKeySecretRefs.")
_SECRETS_DOC = ("llmc extension: several API keys from Secret keys, mounted into the proxy, each with a "
                "weight; each request uses one, chosen by keySelection (docs/api-keys.md). Mutually "
                "exclusive with apiKey, apiKeySecretRef and apiKeys.")
_SELECTION_DOC = ("llmc extension: how a request's key is chosen among apiKeys or apiKeySecretRefs. "
                  "RoundRobin (default): in turn, each key as often as its weight, counted per Envoy "
                  "worker. Weighted: at random, by weight.")


class _KeyForms(_Strict):
    """The several-keys fields every protocol's config has (llmc extension)."""

    apiKeys: list[str] | None = Field(None, min_length=1, max_length=MAX_KEYS, description=_KEYS_DOC,
                                      json_schema_extra={"x-kubernetes-list-type": "atomic"})
    apiKeySecretRefs: list[WeightedSecretKeyRef] | None = Field(
        None, min_length=1, max_length=MAX_KEYS, description=_SECRETS_DOC,
        json_schema_extra={"x-kubernetes-list-type": "atomic"})
    keySelection: Literal["RoundRobin", "Weighted"] | None = Field(None, description=_SELECTION_DOC)
    retryKeysOn: list[Annotated[int, Field(ge=400, le=599)]] | None = Field(
        None, min_length=1, max_length=8, description="llmc extension: answers (HTTP statuses, e.g. [429, 401, "
        "402]) on which a request is sent again with the next key of the same provider that it has not used "
        "yet, up to every key once (Istio >= 1.31). Unset: no key retry, the answer reaches the client. Rules "
        "with retries (failover) do not take it yet.",
        json_schema_extra={"x-kubernetes-list-type": "set"})


class OpenAIConfig(_KeyForms):
    """Request parameters that the proxy sets on every request to the provider."""

    model_config = ConfigDict(json_schema_extra=_ONE_KEY_FORM)

    model: str | None = Field(None, description="Value written to the request body's `model` field.")
    stream: bool | None = Field(None, description="Value written to the request body's `stream` field.")
    apiKey: str | None = Field(
        None,
        description="API key sent as `Authorization: Bearer <key>`. Stored in the generated "
        "EnvoyFilter; prefer apiKeySecretRef.")
    streamIncludeUsage: bool | None = Field(
        None, description="llmc extension: when stream is turned on by this config and the client sent no "
        "stream_options, add stream_options.include_usage: true so the provider reports token usage "
        "(default true).")
    apiKeySecretRef: SecretKeyRef | None = Field(
        None,
        description="llmc extension: read the API key from this Secret key, mounted into the proxy "
        "(see docs/api-keys.md). The key never appears in generated objects. "
        "Mutually exclusive with apiKey, apiKeys and apiKeySecretRefs.")
    authHeader: str | None = Field(
        None, min_length=1, max_length=128,
        description="llmc extension: the request header that carries the API key, for "
        "OpenAI-compatible providers that expect another header than Authorization (e.g. x-api-key). "
        "Default Authorization.")
    authPrefix: str | None = Field(
        None, max_length=64,
        description="llmc extension: text before the key in authHeader. Default 'Bearer ' for "
        "Authorization, empty for any other header.")


_KEY_DOC = ("API key. Stored in the generated EnvoyFilter; prefer apiKeySecretRef.")
_SECRET_DOC = ("Read the API key from this Secret key, mounted into the proxy (see docs/api-keys.md). "
               "Mutually exclusive with apiKey, apiKeys and apiKeySecretRefs.")


class AzureOpenAIConfig(_KeyForms):
    """llmc extension: Azure OpenAI Service (the OpenAI body format, a deployment path, `api-key`)."""

    model_config = ConfigDict(json_schema_extra=_ONE_KEY_FORM)

    deployment: str | None = Field(
        None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Deployment name: requests go to /openai/deployments/<deployment>/chat/completions "
        "(spec.path, when set, replaces that path). The deployment decides the model.")
    apiVersion: str | None = Field(
        None, pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}(-preview)?$",
        description="The api-version query parameter (default 2024-10-21).")
    apiKey: str | None = Field(None, description=_KEY_DOC + " Sent as `api-key: <key>`.")
    apiKeySecretRef: SecretKeyRef | None = Field(None, description=_SECRET_DOC)


class AnthropicConfig(_KeyForms):
    """llmc extension: Anthropic Messages API; OpenAI chat requests and responses are translated."""

    model_config = ConfigDict(json_schema_extra=_ONE_KEY_FORM)

    model: str | None = Field(None, min_length=1, description="Value written to the Messages request's "
                              "`model` (replacing the client's).")
    maxTokens: int | None = Field(None, ge=1, le=1048576, description="`max_tokens` when the client "
                                  "sends neither max_completion_tokens nor max_tokens (default 4096).")
    version: str | None = Field(None, min_length=1, max_length=64,
                                description="The anthropic-version header (default 2023-06-01).")
    apiKey: str | None = Field(None, description=_KEY_DOC + " Sent as `x-api-key: <key>`.")
    apiKeySecretRef: SecretKeyRef | None = Field(None, description=_SECRET_DOC)


class GeminiConfig(_KeyForms):
    """llmc extension: Google's Gemini API (generateContent); OpenAI chat requests and responses are translated."""

    model_config = ConfigDict(json_schema_extra=_ONE_KEY_FORM)

    model: str | None = Field(None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                              description="The model, which Gemini takes in the request path "
                              "(/v1beta/models/<model>:generateContent); replaces the client's `model`.")
    stream: bool | None = Field(None, description="Stream (streamGenerateContent) when the client does not "
                                "say `stream`.")
    maxOutputTokens: int | None = Field(None, ge=1, le=1048576, description="generationConfig.maxOutputTokens "
                                        "when the client sends neither max_completion_tokens nor max_tokens "
                                        "(default: none, the model's own limit).")
    apiKey: str | None = Field(None, description=_KEY_DOC + " Sent as `x-goog-api-key: <key>`.")
    apiKeySecretRef: SecretKeyRef | None = Field(None, description=_SECRET_DOC)


class ProviderConfig(_Strict):
    openAIConfig: OpenAIConfig | None = Field(None, description="OpenAI-compatible request settings.")
    azureOpenAIConfig: AzureOpenAIConfig | None = Field(
        None, description="llmc extension: Azure OpenAI request settings. One protocol per provider: "
        "do not mix with openAIConfig or anthropicConfig.")
    anthropicConfig: AnthropicConfig | None = Field(
        None, description="llmc extension: Anthropic Messages request settings. One protocol per "
        "provider: do not mix with openAIConfig or azureOpenAIConfig.")
    geminiConfig: GeminiConfig | None = Field(
        None, description="llmc extension: Gemini generateContent request settings. One protocol per "
        "provider: do not mix with another protocol's config.")


class ProviderConfigs(_Strict):
    defaultConfig: ProviderConfig | None = Field(None, description="Settings for every request.")
    routeSpecificConfigs: dict[str, ProviderConfig] | None = Field(
        None, max_length=MAX_RULES,
        description="Per-rule overrides keyed by LLMRoute rule name; fields set here replace the "
        "defaultConfig's for requests matched by that rule.")


class WorkloadSelector(_Strict):
    labels: dict[str, str] | None = Field(None, description="Pod labels of the proxies to configure.")


class ProviderTLS(_Strict):
    """llmc extension: how the proxy connects to the provider."""

    mode: Literal["SIMPLE", "DISABLE"] = Field(
        "SIMPLE", description="SIMPLE: originate TLS (default). DISABLE: plain HTTP (e.g. in-cluster vLLM).")
    sni: str | None = Field(None, description="SNI to send; defaults to the provider host.")
    subjectAltNames: list[str] | None = Field(
        None, description="Names accepted in the provider certificate; defaults to [sni].")
    caCertificates: str | None = Field(
        None, description="Path (in the proxy) of a CA bundle; defaults to the system roots.")


TOKEN_LIMIT_UNITS = ("Second", "Minute", "Hour", "Day", "Week", "Month", "Year")
MAX_TOKEN_LIMITS, MAX_KEY_PARTS, MAX_PRICES = 16, 4, 64


class TokenLimitKey(_Strict):
    """llmc extension: one part of a token limit's bucket key; set exactly one field."""

    model_config = ConfigDict(json_schema_extra=cel(
        "[has(self.header), has(self.sourceWorkload), has(self.model)].filter(x, x).size() == 1",
        "a key part sets exactly one of header, sourceWorkload, model"))

    header: str | None = Field(
        None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$",
        description="A bucket per value of this request header (e.g. x-user-id); requests without it share "
        "one bucket. Never a credential header: identity should come from a non-secret header (a JWT claim, "
        "ext_authz).")
    sourceWorkload: Literal[True] | None = Field(
        None, description="A bucket per calling workload (its app label and namespace, Istio's service "
        "cluster). Sidecars only.")
    model: Literal[True] | None = Field(None, description="A bucket per model the request is sent with.")


class TokenCost(_Strict):
    """llmc extension: what a response costs: weights of its prompt and completion tokens, or of its total."""

    model_config = ConfigDict(json_schema_extra=cel(
        "has(self.total) != (has(self.prompt) || has(self.completion))",
        "set total, or prompt and/or completion"))

    prompt: float | None = Field(None, ge=0, le=1000000, description="Weight of a prompt token.")
    completion: float | None = Field(None, ge=0, le=1000000, description="Weight of a completion token.")
    total: float | None = Field(None, ge=0, le=1000000, description="Weight of every token.")


class Budget(_Strict):
    """llmc extension: a money budget, in the cluster's currency (docs/budgets.md)."""

    cost: float = Field(gt=0, le=1e12, description="Budget per window in the currency of the providers' prices "
                        "(e.g. 50 for 50 $); counted in --cost-unit units (default micro: at most 4294.967295 per "
                        "window; milli: 4294967.295).")


class Price(_Strict):
    """llmc extension: a model's price at this provider, in the cluster's currency per 1M tokens."""

    model: str = Field(min_length=1, max_length=256, description="Model name as the provider reports it in its "
                       "answers (a dated snapshot such as gpt-4o-2024-08-06 matches gpt-4o), or \"*\" for every "
                       "other model.")
    prompt: float = Field(ge=0, le=1e9, description="Price of 1M prompt tokens.")
    completion: float = Field(ge=0, le=1e9, description="Price of 1M completion tokens.")
    cachedPrompt: float | None = Field(None, ge=0, le=1e9, description="Price of 1M prompt tokens read from "
                                       "the provider's cache (default: the prompt price; docs/budgets.md).")


class TokenLimit(_Strict):
    """llmc extension: a budget per window — of tokens, or of money at the providers' prices —
    enforced by a rate-limit service (docs/budgets.md)."""

    model_config = ConfigDict(json_schema_extra=cel(
        "has(self.tokens) != has(self.budget)", "set exactly one of tokens, budget"))

    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                      description="Name, unique among the limits of the rule (or provider).")
    tokens: int | None = Field(None, ge=1, description="Token budget per window (at most 4294967295, the "
                               "service's uint32). Exactly one of tokens and budget.")
    budget: Budget | None = Field(None, description="Money budget per window, charged at the answering "
                                  "provider's price for the answering model (LLMProvider spec.prices).")
    per: Literal["Second", "Minute", "Hour", "Day", "Week", "Month", "Year"] = Field(
        description="Window: fixed and aligned to the Unix epoch (a Day resets at 00:00 UTC; Month = 30 days, "
        "Year = 365 days).")
    key: list[TokenLimitKey] | None = Field(
        None, max_length=MAX_KEY_PARTS, description="Parts of the bucket key (default: one bucket for the "
        "rule, or for the provider).")
    cost: TokenCost | None = Field(None, description="Cost of a response (default {total: 1}).")
    mode: Literal["Enforce", "Shadow"] = Field(
        "Enforce", description="Enforce: a request is refused with 429 once the budget is spent. Shadow: "
        "counted, never refused.")


_LIMITS_RULE = {"x-kubernetes-list-type": "atomic", **cel(
    "self.all(l, self.exists_one(o, o.name == l.name))", "token limit names must be unique")}


class LLMProviderSpec(_Strict):
    """LLMProvider registers an LLM provider: its host, path, API key and request settings."""

    host: str = Field(min_length=1, max_length=253,
                      description="Provider host name; unique among the providers of a namespace.")
    path: str | None = Field(None, min_length=1, pattern=r"^/", description="Request path the provider "
                             "serves, e.g. /v1/chat/completions. Required for OpenAI-compatible "
                             "providers; optional for azureOpenAIConfig and anthropicConfig (llmc "
                             "extensions), where it replaces their default endpoint.")
    workloadSelector: WorkloadSelector | None = Field(
        None, description="Proxies that shape requests for this provider (default: every proxy in "
        "the namespace).")
    configs: ProviderConfigs | None = Field(None, description="Request settings.")
    port: int | None = Field(None, ge=1, le=65535, description="llmc extension: provider port "
                             "(default 443 with TLS, 80 without).")
    tls: ProviderTLS | None = Field(None, description="llmc extension: TLS settings.")
    timeout: str | None = Field(None, pattern=DURATION_PATTERN, description="llmc extension: "
                                "request timeout, e.g. 300s (default: Istio's, i.e. none).")
    basePath: str | None = Field(
        None, pattern=r"^/", max_length=1024, description="llmc extension: path prefix of the provider's other "
        "OpenAI-compatible endpoints (e.g. /v1 or /compatible-mode/v1). With it, POSTs to a path ending in "
        "/embeddings or /completions go to <basePath>/embeddings or <basePath>/completions, / and paths ending "
        "in /chat/completions to `path`, and other paths get 404. Without it every POST is a chat completion "
        "at `path` (ASM's behaviour).")
    maxRequestBytes: int | None = Field(None, ge=1024, le=64 * 1024 * 1024, description="llmc "
                                        "extension: largest request body accepted (default 8 MiB); "
                                        "larger bodies get 413.")
    exportTo: list[str] | None = Field(
        None, description="llmc extension (Istio's ServiceEntry exportTo): namespaces whose LLMRoutes may "
        "route to this provider: \".\" (its own), \"*\" (every namespace) or namespace names. Default: "
        "[\".\"], or [\"*\"] for providers in the Istio root namespace (istio-system).")
    tokenLimits: list[TokenLimit] | None = Field(
        None, max_length=MAX_TOKEN_LIMITS, description="llmc extension: token budgets of every request sent to "
        "this provider, from every route and namespace: one bucket each (needs --rate-limit-service).",
        json_schema_extra=_LIMITS_RULE)
    prices: list[Price] | None = Field(
        None, max_length=MAX_PRICES, description="llmc extension: prices per model, in the cluster's currency "
        "per 1M tokens; needed by money budgets (tokenLimits[].budget) on requests this provider answers.",
        json_schema_extra={"x-kubernetes-list-type": "atomic", **cel(
            "self.all(p, self.exists_one(o, o.model == p.model))", "one price per model")})


class StringMatch(_Strict):
    """Istio StringMatch: one of exact, prefix, regex (RE2); an empty one matches a present header."""

    model_config = ConfigDict(json_schema_extra=cel(
        "[has(self.exact), has(self.prefix), has(self.regex)].filter(x, x).size() <= 1",
        "a string match sets at most one of exact, prefix, regex (none: a header must be present)"))

    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None


class RouteMatch(_Strict):
    headers: dict[str, StringMatch] | None = Field(None, max_length=MAX_MATCHES,
                                                   description="Header conditions (all must hold).")
    sourceLabels: dict[str, str] | None = Field(None, description="Labels of the calling workload.")
    gateways: list[str] | None = Field(None, max_length=MAX_GATEWAYS, description="Gateways this match applies to.")
    model: StringMatch | None = Field(
        None, description="llmc extension: condition on the request body's top-level `model` (exact, prefix "
        "or RE2 regex on the decoded string); all conditions of the match must hold. A body without a "
        "string `model`, or with one longer than 256 bytes or holding control characters, matches no "
        "model condition.")


class BackendObjectReference(_Strict):
    """ASM: a Gateway API InferencePool. Accepted by the schema so that llmc can say precisely why it
    cannot route to one (a VirtualService never reaches an InferencePool; docs/migrating-from-asm.md)."""

    group: str | None = None
    kind: str | None = None
    name: str = Field(min_length=1)
    namespace: str | None = None
    port: int | None = Field(None, ge=1, le=65535)


class BackendRef(_Strict):
    providerHost: str | None = Field(
        None, min_length=1, max_length=MAX_NAME, description="Host of an LLMProvider visible to the route's namespace (its own, "
        "or exported to it with exportTo). Required: llmc routes only to LLMProviders.")
    weight: int | None = Field(None, ge=0, le=1000000, description="Relative weight. None set on the rule: "
                               "equal weights; set on some: an unset weight is 0, as in Istio.")
    hostRewrite: str | None = Field(None, min_length=1, max_length=253,
                                    description="Host header sent to the provider (default: its host).")
    backendRef: BackendObjectReference | None = Field(
        None, description="ASM: an InferencePool. Not supported by llmc (stock Istio reaches InferencePools "
        "only from Gateway API HTTPRoutes); reported as LLMC227.")
    priority: int | None = Field(
        None, ge=0, le=100, description="llmc extension (failover, Istio >= 1.31): the first try goes to a "
        "backend of the rule's lowest priority (by weight among them); higher priorities are tried only when "
        "a retry moves on (default 0).")


RETRY_CONDITIONS = ("connect-failure", "reset", "5xx", "429", "timeout")


class Retries(_Strict):
    """llmc extension (failover, Istio >= 1.31): retries across the rule's backends, each try shaped for
    the provider it reaches."""

    attempts: int | None = Field(None, ge=1, le=10, description="Total tries, including the first "
                                 "(default: one per backend of the rule); at most the number of backends.")
    perTryTimeout: str | None = Field(None, pattern=DURATION_PATTERN, description="Time one try may take "
                                      "until the provider's response starts, e.g. 30s (default: none).")
    retryOn: list[Literal["connect-failure", "reset", "5xx", "429", "timeout"]] | None = Field(
        None, min_length=1, description="Failures that move on to the next backend (default: "
        "connect-failure, reset, 5xx, 429).")


class RouteRule(_Strict):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        # Istio's rule (docs/providers-and-routes.md, "Validation rules"): with weights set on some backendRefs, an unset one
        # is 0 (a warning in the compiler); all set weights 0 is an error.
        {"rule": "!self.backendRefs.exists(b, has(b.weight)) || self.backendRefs.exists(b, has(b.weight) && b.weight > 0)",
         "message": "weights add up to 0: no provider would receive traffic"},
        {"rule": "self.backendRefs.all(b, !has(b.providerHost) || "
                 "self.backendRefs.exists_one(o, has(o.providerHost) && o.providerHost == b.providerHost))",
         "message": "a provider host is listed twice in this rule"},
    ]})

    name: str | None = Field(None, max_length=MAX_NAME, description="Rule name; keys routeSpecificConfigs.")
    matches: list[RouteMatch] | None = Field(
        None, max_length=MAX_MATCHES, description="Any one match selects the rule; no matches = default rule.")
    backendRefs: list[BackendRef] = Field(min_length=1, max_length=MAX_BACKENDS,
                                          description="Providers, optionally weighted.")
    retries: Retries | None = Field(None, description="llmc extension (failover, Istio >= 1.31): retry "
                                    "failed requests on the rule's other backends (default: Istio's retry "
                                    "policy, which stays on the same provider).")
    tokenLimits: list[TokenLimit] | None = Field(
        None, max_length=MAX_TOKEN_LIMITS, description="llmc extension: token budgets of the rule's requests, "
        "charged from the usage providers report (needs --rate-limit-service).", json_schema_extra=_LIMITS_RULE)


class LLMRouteSpec(_Strict):
    """LLMRoute sends requests for a host to LLMProviders by header rules and weights."""

    host: str = Field(min_length=1, max_length=253,
                      description="A provider host, an in-mesh Service name (e.g. demo-llm-server), or \"*\" "
                      "on a route bound only to gateways (every host the Gateway serves).")
    gateways: list[str] | None = Field(None, max_length=MAX_GATEWAYS,
                                       description="Gateways the route binds to (default: mesh).")
    rules: list[RouteRule] = Field(
        min_length=1, max_length=MAX_RULES, description="Rules, tried in order.",
        json_schema_extra={"x-kubernetes-list-type": "atomic", **cel(
            # ASM rules may be unnamed: only the names that are set must be unique.
            "self.all(r, !has(r.name) || self.exists_one(o, has(o.name) && o.name == r.name))",
            "rule names must be unique")})
    port: int | None = Field(None, ge=1, le=65535, description="llmc extension: port clients call "
                             "on host (default 80).")
    namespaceLimits: list[TokenLimit] | None = Field(
        None, max_length=MAX_TOKEN_LIMITS, description="llmc extension: budgets of every request of every "
        "LLMRoute of this namespace (every rule, every provider; also the implicit routes of its providers), "
        "one bucket each per key — a team's budget. Declare each name on one LLMRoute of the namespace "
        "(needs --rate-limit-service).", json_schema_extra=_LIMITS_RULE)


class LLMProvider(_Strict):
    apiVersion: str
    kind: Literal["LLMProvider"]
    metadata: dict
    spec: LLMProviderSpec
    status: dict | None = None


class LLMRoute(_Strict):
    apiVersion: str
    kind: Literal["LLMRoute"]
    metadata: dict
    spec: LLMRouteSpec
    status: dict | None = None


SPEC_MODELS: dict[str, type[BaseModel]] = {"LLMProvider": LLMProviderSpec, "LLMRoute": LLMRouteSpec}
OBJECT_MODELS: dict[str, type[LLMProvider] | type[LLMRoute]] = {"LLMProvider": LLMProvider, "LLMRoute": LLMRoute}
