"""The crossing matrix of issue 24 as data: where features cross, every promise still holds.

Six dimensions, one table each; a value is one line, so a later feature joins the matrix by adding
a line to the table it extends (DEVELOPERS.md: every feature joins the matrix):

* ``RULES`` — how the route picks providers: one backend, weighted, routed by the body's model,
  failover with priorities, failover on a model-routed host, weighted first choices with a backup;
* ``PROTOCOLS`` — the provider the cell is about: its API, where its key goes (or that it has none),
  and the key form (one key, or several: ``multikey``; several with the next key first: ``keyretry``);
* ``ENDPOINTS`` — what the client calls: chat, embeddings (through ``basePath``), an unknown path;
* ``EXTRAS`` — what a client adds: its own credentials, every internal ``x-llmc-*`` header, a body
  with two ``model`` members, ``Accept-Encoding: gzip``, a stream with usage (``stream_options``), a
  tool call's result in the history (``tools``: an OpenAI tool call id, as after a failover);
* ``FAILURES`` — what the first try meets: nothing, a 503, a reset, a hang past the per-try timeout;
* ``LIMITS`` — token limits (issue 30): none, a token limit or a money budget (issue 31) on the
  cell's rule (the rate-limit filter checks before forwarding and charges the answer's usage — at
  the answering provider's price for a budget — when the stream is done).
* ``TARGETS`` — where the rules run: sidecars (EnvoyFilters), or a waypoint (``--target ambient``, a
  TrafficExtension; docs/ambient.md), which refuses failover (``AMBIENT_REJECTED``).

:func:`cells` selects the cells all-pairs (every pair of values of two dimensions appears in some
cell; greedy and deterministic) and covers ``TRIPLES`` too (each rule with each protocol meets every
endpoint and every failure: where issue 24's defects were). :func:`manifest` renders one input
holding every rule the cells need, so one Envoy serves the whole matrix: a cell reaches its rule
through the header ``x-cell-rule`` (``cross.example.com``) or its body's model
(``models.cross.example.com``). A (rule, protocol) combination the compiler rejects (``REJECTED``)
is a cell of its own that asserts the diagnostic.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ruamel.yaml import YAML

REPO = Path(__file__).resolve().parents[2]
AZURE_VERSION = "2024-10-21"
TIMEOUT = "4s"  # every provider's request timeout: what a hang meets on a rule without failover
PER_TRY_TIMEOUT = "1s"
HEADER_HOST, MODEL_HOST = "cross.example.com", "models.cross.example.com"
APP_KEY, APP_XKEY = "sk-app-own-key-0000", "sk-app-own-xkey-000"  # the client's own credentials
CLIENT_MODEL, DECOY_MODEL = "gpt-4o-mini", "decoy-model"


@dataclass(frozen=True)
class Provider:
    """One provider of the matrix: its LLMProvider spec and what a request shaped for it carries."""
    name: str
    config: dict  # spec.configs.defaultConfig, e.g. {"openAIConfig": {...}}
    chat_path: str
    base_path: str | None
    key: str | None = None
    auth_header: str = "authorization"
    auth_prefix: str = "Bearer "
    model: str | None = None  # the configured model (replaces the client's on chat)
    format: str = "openai"  # "anthropic", "gemini": translated (their doubles check the API's documented schema)
    double: str = "openai"  # the test double: "openai", "azure", "anthropic" or "gemini"
    #: its price per 1M tokens (money budgets): each provider its own, so a charge names who answered
    price: dict = field(default_factory=lambda: {"prompt": 1, "completion": 2})
    more_keys: tuple[str, ...] = ()  # several keys (apiKeys; docs/api-keys.md): each request uses one

    @property
    def keys(self) -> tuple[str, ...]:
        return ((self.key,) if self.key else ()) + self.more_keys

    @property
    def key_slots(self) -> int:
        """The tries it owns on a failover rule: one per key with retryKeysOn, else one."""
        retry = any(v.get("retryKeysOn") for v in self.config.values())
        return len(self.keys) if retry and len(self.keys) > 1 else 1

    @property
    def host(self) -> str:
        return f"{self.name}.cross.example.com"

    def spec(self) -> dict:
        cred = {"apiKeys": list(self.keys)} if self.more_keys else {"apiKey": self.key} if self.key else {}
        config = {k: {**v, **cred} for k, v in self.config.items()}
        spec = {"host": self.host, "tls": {"mode": "DISABLE"}, "timeout": TIMEOUT,
                "configs": {"defaultConfig": config}, "prices": [{"model": "*", **self.price}]}
        if self.base_path is not None:
            spec["basePath"] = self.base_path
        if self.double != "azure" and self.format == "openai":
            spec["path"] = self.chat_path
        return spec

    def serves(self, endpoint: str) -> str | None:
        """What a request to ``endpoint`` is served as: with a basePath the OpenAI endpoint it names
        (None: an unknown one, answered 404); without one every POST is a chat completion (ASM's
        behaviour)."""
        if self.base_path is None:
            return "chat"
        return endpoint if endpoint in ("chat", "embeddings") else None

    def path(self, endpoint: str, streams: bool = False) -> str:
        """The path a request for ``endpoint`` must arrive at (Azure's api-version on every endpoint;
        Gemini streams at its stream method with ``alt=sse``, docs/protocols.md)."""
        served = self.serves(endpoint)
        path = self.chat_path if served == "chat" else f"{self.base_path}/{served}"
        if self.format == "gemini" and streams and served == "chat":
            return path.replace(":generateContent", ":streamGenerateContent") + "?alt=sse"
        return f"{path}?api-version={AZURE_VERSION}" if self.double == "azure" else path

    @property
    def credential(self) -> tuple[str, str] | None:
        return (self.auth_header, self.auth_prefix + self.key) if self.key else None

    @property
    def credentials(self) -> list[tuple[str, str]]:
        """Every credential header a request shaped for this provider may carry (one per key)."""
        return [(self.auth_header, self.auth_prefix + k) for k in self.keys]


def _key(name: str) -> str:
    return f"sk-{name}-".ljust(26, "0")


# ---- dimension: the provider the cell is about (one line each) --------------------------------
PROTOCOLS: dict[str, Provider] = {p.name: p for p in (
    Provider("openai", {"openAIConfig": {"model": "openai-model-with-a-long-name"}}, "/openai/v1/chat/completions",
             "/openai/v1", key=_key("openai"), model="openai-model-with-a-long-name",
             price={"prompt": 3, "completion": 5}),
    Provider("custom", {"openAIConfig": {"model": "c1", "authHeader": "X-Gw-Key", "authPrefix": "Key "}},
             "/custom/v1/chat/completions", "/custom/v1", key=_key("custom"), auth_header="x-gw-key",
             auth_prefix="Key ", model="c1", price={"prompt": 7, "completion": 11}),
    Provider("azure", {"azureOpenAIConfig": {"deployment": "dep-x"}}, "/openai/deployments/dep-x/chat/completions",
             "/openai/deployments/dep-x", key=_key("azure"), auth_header="api-key", auth_prefix="",
             double="azure", price={"prompt": 13, "completion": 17}),
    # no basePath: it is for OpenAI's API only (LLMC241)
    Provider("anthropic", {"anthropicConfig": {"model": "claude-x", "maxTokens": 256}}, "/v1/messages", None,
             key=_key("anthropic"), auth_header="x-api-key", auth_prefix="", model="claude-x", format="anthropic",
             double="anthropic", price={"prompt": 19, "completion": 23}),
    Provider("nokey", {"openAIConfig": {"model": "nokey-model"}}, "/nokey/v1/chat/completions", "/nokey/v1",
             model="nokey-model"),
    # the key form "several keys" (issue 33): apiKeys, one per request by round robin
    Provider("multikey", {"openAIConfig": {"model": "multikey-model"}}, "/multikey/v1/chat/completions",
             "/multikey/v1", key=_key("multikey"), model="multikey-model",
             more_keys=(_key("multikey2"), _key("multikey3"))),
    # the key form "several keys, the next one first" (issue 33): retryKeysOn [429]; on a failover
    # rule one try per key before the next provider (docs/failover.md), each key once
    Provider("keyretry", {"openAIConfig": {"model": "keyretry-model", "retryKeysOn": [429]}},
             "/keyretry/v1/chat/completions", "/keyretry/v1", key=_key("keyretry"), model="keyretry-model",
             more_keys=(_key("keyretry2"),)),
    # the model in the path; no basePath (LLMC241)
    Provider("gemini", {"geminiConfig": {"model": "gemini-x"}}, "/v1beta/models/gemini-x:generateContent", None,
             key=_key("gemini"), auth_header="x-goog-api-key", auth_prefix="", model="gemini-x", format="gemini",
             double="gemini", price={"prompt": 43, "completion": 47}),
    # OpenAI-compatible as ASM has it: chat only (no basePath), so it may fail over to a translated provider
    Provider("plain", {"openAIConfig": {"model": "plain-model"}}, "/plain/v1/chat/completions", None,
             key=_key("plain"), model="plain-model", price={"prompt": 53, "completion": 59}),
)}
# The other side of two-provider rules: no model configured, so a try for it keeps the client's body
# (the shape of issue 24 item 2); AUXC keeps its key in a header of its own (item 1).
AUX = Provider("aux", {"openAIConfig": {}}, "/aux/v1/chat/completions", "/aux/v1", key=_key("aux"),
               price={"prompt": 29, "completion": 31})
AUXC = Provider("auxc", {"openAIConfig": {"authHeader": "X-Auxc-Key"}}, "/auxc/v1/chat/completions", "/auxc/v1",
                key=_key("auxc"), auth_header="x-auxc-key", auth_prefix="", price={"prompt": 37, "completion": 41})
# Translated backups and first choices of the mixed-protocol failover rules (issue 27): chat only.
CLAUDEB = Provider("claudeb", {"anthropicConfig": {"model": "claude-b"}}, "/v1/messages", None, key=_key("claudeb"),
                   auth_header="x-api-key", auth_prefix="", model="claude-b", format="anthropic", double="anthropic",
                   price={"prompt": 61, "completion": 67})
GEMINIB = Provider("geminib", {"geminiConfig": {"model": "gemini-b"}}, "/v1beta/models/gemini-b:generateContent",
                   None, key=_key("geminib"), auth_header="x-goog-api-key", auth_prefix="", model="gemini-b",
                   format="gemini", double="gemini", price={"prompt": 71, "completion": 73})
PROVIDERS: dict[str, Provider] = {**PROTOCOLS, "aux": AUX, "auxc": AUXC, "claudeb": CLAUDEB, "geminib": GEMINIB}
#: every provider's keys (several for a provider with apiKeys)
KEYS = {p.name: p.keys for p in PROVIDERS.values() if p.key}
#: every header that carries a credential somewhere in the matrix (and the client's own)
CREDENTIAL_HEADERS = frozenset({p.auth_header for p in PROVIDERS.values()} | {"authorization", "x-api-key"})


@dataclass(frozen=True)
class RuleKind:
    """How a rule of the cell's kind lists its backends; ``P`` stands for the cell's provider."""
    name: str
    backends: tuple[tuple[str, dict], ...]  # (provider or "P", extra backendRef fields)
    by_model: bool = False  # on the model-routed host
    failover: bool = False

    def providers(self, p: str) -> list[str]:
        return [p if name == "P" else name for name, _ in self.backends]

    def priorities(self, p: str) -> list[list[str]]:
        """The providers by failover priority (one list for a rule without failover)."""
        levels: dict[int, list[str]] = {}
        for name, (_, extra) in zip(self.providers(p), self.backends, strict=True):
            levels.setdefault(extra.get("priority", 0) if self.failover else 0, []).append(name)
        return [levels[k] for k in sorted(levels)]

    def rule(self, p: str, limit: str = "unlimited") -> dict:
        name = rule_name(self.name, p, limit)
        rule: dict = {"name": name, "matches": [
            {"model": {"exact": name}} if self.by_model else {"headers": {"x-cell-rule": {"exact": name}}}],
            "backendRefs": [{"providerHost": PROVIDERS[n].host, **extra}
                            for n, (_, extra) in zip(self.providers(p), self.backends, strict=True)]}
        if self.failover:
            rule["retries"] = {"perTryTimeout": PER_TRY_TIMEOUT}
        if LIMITS[limit] is not None:
            rule["tokenLimits"] = [LIMITS[limit]]
        return rule


def rule_name(rule: str, protocol: str, limit: str = "unlimited") -> str:
    return f"{rule}-{protocol}" + ("" if limit == "unlimited" else f"-{limit}")


# ---- dimension: the rule (one line each) -------------------------------------------------------
RULES: dict[str, RuleKind] = {r.name: r for r in (
    RuleKind("single", (("P", {}),)),
    RuleKind("weighted", (("P", {"weight": 50}), ("aux", {"weight": 50}))),
    RuleKind("model", (("P", {}),), by_model=True),
    RuleKind("failover", (("P", {}), ("aux", {"priority": 1})), failover=True),
    RuleKind("failover_model", (("auxc", {}), ("P", {"priority": 1})), by_model=True, failover=True),
    RuleKind("failover_weighted", (("P", {"weight": 50}), ("aux", {"weight": 50}), ("auxc", {"priority": 1})),
             failover=True),
    # mixed protocols (issue 27): the answer is translated by the driver of the try that answered
    RuleKind("failover_to_claude", (("P", {}), ("claudeb", {"priority": 1})), failover=True),
    RuleKind("failover_from_gemini", (("geminib", {}), ("P", {"priority": 1})), by_model=True, failover=True),
)}

#: (rule, protocol) → (code, field path under the rule): inputs the compiler refuses. Failover rules
#: whose providers do not all set basePath or all not (LLMC235): a retry serves the same endpoint.
REJECTED: dict[tuple[str, str], tuple[str, str]] = {
    (r.name, p): ("LLMC235", "backendRefs") for r in RULES.values() for p in PROTOCOLS
    if r.failover and len({PROVIDERS[n].base_path is None for n in r.providers(p)}) > 1
}

#: (rule, protocol) → (code, field path under the rule): warnings the compiler must give such a rule
WARNED: dict[tuple[str, str], tuple[str, str]] = {
    ("failover", "nokey"): ("LLMC239", "backendRefs[0]"),  # no key on failover: the client's never passes
    ("failover_model", "nokey"): ("LLMC239", "backendRefs[1]"),
    ("failover_weighted", "nokey"): ("LLMC239", "backendRefs[0]"),
    ("weighted", "anthropic"): ("LLMC225", "backendRefs"),  # basePath on one provider of the rule only
    ("weighted", "gemini"): ("LLMC225", "backendRefs"),
    ("weighted", "plain"): ("LLMC225", "backendRefs"),
}

#: rule → (code, field path under the rule): rules the ambient target refuses (a waypoint has no
#: cluster-level filters, docs/ambient.md); their rejected cells use the first protocol a sidecar
#: accepts the rule with (``ambient_protocol``)
AMBIENT_REJECTED: dict[str, tuple[str, str]] = {
    r.name: ("LLMC272", "retries") for r in RULES.values() if r.failover}
#: the ambient target refuses every limit (LLMC274): one rejected cell per limit, on a single rule
AMBIENT_LIMITS = ("LLMC274", "tokenLimits")


#: (target, protocol) pairs the matrix does not run: a waypoint cannot retry with the next key at all
#: (LLMC254, tested by tests/test_several_keys.py). Several keys on a waypoint (``multikey``) run
#: since the bundle is minified (issue 28, docs/performance.md "Bundle sizes"); they were left out
#: while the matrix's waypoint was within 600 characters of TrafficExtension's 65,536 (LLMC279)
NOT_RUN: frozenset[tuple[str, str]] = frozenset({("ambient", "keyretry")})


def not_run(row: dict) -> bool:
    return (row.get("target"), row.get("protocol")) in NOT_RUN


#: protocols the ambient cells leave out: ``plain``, the chat-only provider that exists for
#: mixed-protocol failover, which a waypoint refuses (its other cells are an OpenAI-compatible
#: provider's, which the other protocols cover there). Gemini joined the waypoint cells when the
#: minified bundle let one TrafficExtension carry Anthropic's and Gemini's translators together
#: (issue 28: 55.7 K characters with both; 77.9 K before, over the 65,536 of LLMC279).
AMBIENT_WITHOUT: frozenset[str] = frozenset({"plain"})


def refused(row: dict) -> bool:
    """The compiler refuses the rule of this row (any dimensions given): its rejected cell covers it."""
    if (row.get("rule"), row.get("protocol")) in REJECTED:
        return True
    if row.get("target") == "ambient" and row.get("protocol") in AMBIENT_WITHOUT:
        return True
    if row.get("target") == "ambient" and row.get("limit", "unlimited") != "unlimited":
        return True  # LLMC274: limits need EnvoyFilter patches a waypoint ignores (AMBIENT_LIMITS)
    return row.get("target") == "ambient" and row.get("rule") in AMBIENT_REJECTED


CHAT_MESSAGES = [{"role": "user", "content": "Please introduce yourself"}]
# ---- dimension: the endpoint the client calls (one line each): (path, body members) ------------
ENDPOINTS: dict[str, tuple[str, list]] = {
    "chat": ("/v1/chat/completions", [("messages", CHAT_MESSAGES)]),
    "embeddings": ("/v1/embeddings", [("input", "hello")]),
    "unknown": ("/v1/admin/keys", [("messages", CHAT_MESSAGES)]),
}


def internal_headers() -> list[str]:
    """Every internal header name the filter or the compiler uses (read from their sources, so a new
    one joins the matrix by itself)."""
    lua = "".join(p.read_text() for p in sorted((REPO / "templates" / "lua" / "llmc").glob("*.lua")))
    text = lua + (REPO / "compiler" / "names.py").read_text()
    return sorted(set(re.findall(r"x-llmc-[a-z]+(?:-[a-z]+)*", text)))


# ---- dimension: what the client adds (one line each): (headers, duplicate model, streams) -------
#: "stream": the client streams its chat completion and asks for usage (`stream_options`), as the
#: openai SDK does; an endpoint without `messages` (embeddings) is not streamed
EXTRAS: dict[str, tuple[dict, bool, bool]] = {
    "none": ({"accept-encoding": "identity"}, False, False),
    # its own credentials, and what no keyed provider of the protocol may get (Driver.keyed_removes):
    # Anthropic's beta opt-in, OpenAI's billing organization and project
    "client_keys": ({"accept-encoding": "identity", "authorization": f"Bearer {APP_KEY}", "x-api-key": APP_XKEY,
                     "anthropic-beta": "llmc-cross-beta", "openai-organization": "org-llmc-cross",
                     "openai-project": "proj_llmc_cross"}, False, False),
    "internal": ({"accept-encoding": "identity", **{h: "1" for h in internal_headers()}}, False, False),
    "dup_model": ({"accept-encoding": "identity"}, True, False),
    "gzip": ({"accept-encoding": "gzip"}, False, False),
    "stream": ({"accept-encoding": "identity"}, False, True),
    # a chat that continues a tool call the client's app made (an OpenAI id, no thought signature:
    # another model's history, as after a failover; `content: ""` beside the call, as agents store
    # it): TOOL_HISTORY in place of the messages, with tools
    "tools": ({"accept-encoding": "identity"}, False, False),
}
#: the "tools" extra's conversation: the assistant's call (an id of OpenAI's form) and its result
TOOL_HISTORY = [{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "call_cross1", "type": "function",
                     "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}]},
                {"role": "tool", "tool_call_id": "call_cross1", "content": "sunny, 21 C"}]
TOOLS = [{"type": "function", "function": {"name": "weather", "description": "Weather forecast",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]

# ---- dimension: what the first try meets (one line each): the doubles' `fail` mode --------------
FAILURES: dict[str, str | None] = {"none": None, "503": "503", "reset": "reset", "timeout": "hang"}
HANG = 6.0  # seconds a hanging provider waits before it resets: past the timeouts above

# ---- dimension: token limits on the cell's rule (one line each): its tokenLimits entry ----------
#: the budget never runs out in the matrix (each cell asserts the charge, not a refusal: refusals
#: are tests/test_token_limits_e2e.py's); one bucket per rule (no key)
LIMITS: dict[str, dict | None] = {"unlimited": None,
                                  "limited": {"name": "cell", "tokens": 4_000_000_000, "per": "Day"},
                                  # money (issue 31): at the answering provider's price, in micro units
                                  "budget": {"name": "cell", "budget": {"cost": 4000}, "per": "Day"}}
RATE_LIMIT_SERVICE = "llmc-system/ratelimit:8081"

# ---- dimension: where the rules run (one line each): the extra `llmc render` arguments ----------
TARGETS: dict[str, tuple[str, ...]] = {"sidecar": (), "ambient": ("--target", "ambient")}


@dataclass(frozen=True)
class Cell:
    rule: str
    protocol: str
    endpoint: str = "chat"
    extra: str = "none"
    failure: str = "none"
    limit: str = "unlimited"
    target: str = "sidecar"
    rejected: tuple[str, str] | None = field(default=None, compare=False)

    @property
    def id(self) -> str:
        where = "" if self.target == "sidecar" else f"-{self.target}"
        if self.rejected:
            return f"{self.rule}-{self.protocol}{where}" + ("" if self.limit == "unlimited" else f"-{self.limit}") \
                + "-rejected"
        return "-".join((self.rule, self.protocol, self.endpoint, self.extra, self.failure, self.limit)) + where

    @property
    def kind(self) -> RuleKind:
        return RULES[self.rule]

    @property
    def rule_name(self) -> str:
        return rule_name(self.rule, self.protocol, self.limit)

    @property
    def limit_id(self) -> str | None:
        """The id of the cell's token limit (its counter in the rate-limit service), None: unlimited."""
        if LIMITS[self.limit] is None:
            return None
        route = "cross-models" if self.kind.by_model else "cross"
        return f"route/default/{route}/{self.rule_name}/{LIMITS[self.limit]['name']}"

    @property
    def host(self) -> str:
        return MODEL_HOST if self.kind.by_model else HEADER_HOST

    @property
    def routed_model(self) -> str:
        """The model the client names (the one that routes, on the model host)."""
        return self.rule_name if self.kind.by_model else CLIENT_MODEL

    @property
    def path(self) -> str:
        return ENDPOINTS[self.endpoint][0]

    def headers(self) -> dict[str, str]:
        out = dict(EXTRAS[self.extra][0])
        if not self.kind.by_model:
            out["x-cell-rule"] = self.rule_name
        return out

    @property
    def streams(self) -> bool:
        """The client asks for a stream (and its usage): a chat body only."""
        return EXTRAS[self.extra][2] and any(k == "messages" for k, _ in ENDPOINTS[self.endpoint][1])

    def body(self) -> bytes:
        members = [("model", self.routed_model), *ENDPOINTS[self.endpoint][1]]
        if self.extra == "tools" and any(k == "messages" for k, _ in members):
            members = [(k, TOOL_HISTORY if k == "messages" else v) for k, v in members] + [("tools", TOOLS)]
        if self.streams:
            members += [("stream", True), ("stream_options", {"include_usage": True})]
        if EXTRAS[self.extra][1]:  # the decoy first: the last member is the one parsers (and routing) read
            members = [("model", DECOY_MODEL), *members]
        return ("{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in members) + "}").encode()

    def client_pairs(self) -> list:
        return json.loads(self.body(), object_pairs_hook=list)


DIMENSIONS = {"rule": RULES, "protocol": PROTOCOLS, "endpoint": ENDPOINTS, "extra": EXTRAS, "failure": FAILURES,
              "limit": LIMITS, "target": TARGETS}


#: combinations covered beyond pairs, where issue 24's defects lived: every (rule, protocol) meets
#: every endpoint, every failure of the first try and a limit (a line here makes a stronger matrix)
TRIPLES: tuple[tuple[str, ...], ...] = (("rule", "protocol", "endpoint"), ("rule", "protocol", "failure"),
                                        # how a rule picks providers and how each reports usage decide the charge
                                        ("rule", "protocol", "limit"))


def covering(dimensions: dict[str, list[str]], allowed, groups: tuple[tuple[str, ...], ...] = ()) -> list[dict]:
    """Greedy covering array: rows of the full product, each chosen to cover the most combinations
    not covered yet (first in product order on ties), until every allowed combination of values of
    two dimensions (all-pairs), and of each group in ``groups``, is in some row. Deterministic.
    ``allowed(row)`` excludes rows; a combination no allowed row has is not required."""
    names = list(dimensions)
    rows = [dict(zip(names, combo, strict=True)) for combo in itertools.product(*dimensions.values())]
    rows = [r for r in rows if allowed(r)]
    interactions = [*itertools.combinations(names, 2), *groups]

    def covers(row: dict) -> frozenset:
        return frozenset((g, tuple(row[d] for d in g)) for g in interactions)

    sets = [covers(r) for r in rows]
    needed = set().union(*sets)
    chosen = []
    while needed:
        best = max(range(len(rows)), key=lambda i: len(sets[i] & needed))
        chosen.append(rows[best])
        needed -= sets[best]
    return chosen


def ambient_protocol(rule: str) -> str:
    """The protocol of the ambient target's rejected cell of ``rule``: the first one a sidecar takes
    the rule with, so that the waypoint's refusal is the only error."""
    return next(p for p in PROTOCOLS if (rule, p) not in REJECTED)


def cells() -> list[Cell]:
    """The rejected combinations once each, then the traffic cells: all-pairs, plus ``TRIPLES``."""
    rejected = [Cell(rule, protocol, rejected=diag) for (rule, protocol), diag in REJECTED.items()]
    rejected += [Cell(rule, ambient_protocol(rule), target="ambient", rejected=diag)
                 for rule, diag in AMBIENT_REJECTED.items()]
    rejected += [Cell("single", "openai", target="ambient", limit=limit, rejected=AMBIENT_LIMITS)
                 for limit, spec in LIMITS.items() if spec is not None]
    rows = covering({k: list(v) for k, v in DIMENSIONS.items()}, lambda r: not refused(r) and not not_run(r), TRIPLES)
    return rejected + [Cell(**row) for row in rows]


ROUTES = (("cross", HEADER_HOST, False), ("cross-models", MODEL_HOST, True))  # (name, host, by model)


def route_rules(cells_: list[Cell]) -> dict[str, list[tuple[str, str, str]]]:
    """Per LLMRoute of :func:`manifest`, its rules as (rule, protocol, limit), in their order there."""
    out = {}
    for name, _, by_model in ROUTES:
        rules = sorted({(c.rule, c.protocol, c.limit) for c in cells_ if c.kind.by_model is by_model})
        if rules:
            out[name] = rules
    return out


def limited(cells_: list[Cell]) -> bool:
    """Whether the input of ``cells_`` has token limits (it is rendered with a rate-limit service)."""
    return any(LIMITS[c.limit] is not None for c in cells_)


def manifest(cells_: list[Cell]) -> str:
    """YAML: the providers the rules of ``cells_`` use, and one LLMRoute per host holding those rules
    (sorted). (Only those providers: a waypoint's one TrafficExtension carries every provider's
    context and translator, and has a size limit, LLMC279.)"""
    used = {n for c in cells_ for n in c.kind.providers(c.protocol)}
    docs: list[dict] = [{"apiVersion": "istio.alibabacloud.com/v1beta1", "kind": "LLMProvider",
                         "metadata": {"name": f"p-{p.name}"}, "spec": p.spec()} for p in PROVIDERS.values()
                        if p.name in used]
    hosts = {name: host for name, host, _ in ROUTES}
    for name, rules in route_rules(cells_).items():
        docs.append({"apiVersion": "istio.alibabacloud.com/v1beta1", "kind": "LLMRoute", "metadata": {"name": name},
                     "spec": {"host": hosts[name], "rules": [RULES[r].rule(p, lim) for r, p, lim in rules]}})
    return dump(docs)


def rejected_manifest(cell: Cell) -> str:
    """The providers and a route with the rejected rule alone (its diagnostic is at spec.rules[0])."""
    docs: list[dict] = [{"apiVersion": "istio.alibabacloud.com/v1beta1", "kind": "LLMProvider",
                         "metadata": {"name": f"p-{p.name}"}, "spec": p.spec()} for p in PROVIDERS.values()]
    docs.append({"apiVersion": "istio.alibabacloud.com/v1beta1", "kind": "LLMRoute", "metadata": {"name": "rejected"},
                 "spec": {"host": cell.host, "rules": [cell.kind.rule(cell.protocol, cell.limit)]}})
    return dump(docs)


def dump(docs: list[dict]) -> str:
    import io

    yaml = YAML()
    yaml.default_flow_style = None
    out = io.StringIO()
    yaml.dump_all(docs, out)
    return out.getvalue()
