"""What a protocol driver is: the record the Lua filter reads, and the hooks the compiler calls.

One driver per provider API (``openai``, ``azure``, ``anthropic``, ``gemini``), as Envoy Gateway
registers one ``httpFilter`` per file and Kong keeps one driver per provider: a driver owns its
config field in ``spec.configs.*``, the IR settings it takes from that config, its compile-time
checks, its endpoint rules and the per-backend settings of the Lua filter. The generic stages
(``resolve``, ``translate``) call the hooks and never ask which protocol they hold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..diagnostics import Diagnostics
from ..load import Document


@dataclass(frozen=True)
class Protocol:
    """The record of a provider API as the Lua filter reads it (``protocols`` in its context).

    ``format`` names the body format the provider speaks: ``openai`` bodies are shaped byte-preserving
    (model/stream spliced in); any other format names the Lua translator (``templates/lua/llmc/<format>.lua``)
    that translates requests and responses both ways (docs/protocols.md). ``client_key``: with no key
    configured, the client's ``Authorization: Bearer <key>`` is moved to ``auth_header`` (APIs that do
    not read Authorization); otherwise it passes unchanged.
    """

    name: str
    auth_header: str  # where the API key goes
    auth_prefix: str  # what precedes the key in that header
    usage: str  # how token usage is read from responses ("openai": a `usage` object)
    headers: dict[str, str] = field(default_factory=dict)  # fixed request headers the API requires
    format: str = "openai"  # the body format: "openai" (shaped) or a translator's name
    client_key: bool = False  # no key configured: move the client's bearer token to auth_header

    def context(self) -> dict:
        """The record as the Lua filter reads it (see translate.envoyfilter.lua_context)."""
        out: dict[str, object] = {"auth_header": self.auth_header, "auth_prefix": self.auth_prefix,
                                  "usage": self.usage,
                                  "headers": dict(sorted(self.headers.items()))}
        if self.format != "openai":
            out["format"] = self.format
        if self.client_key:
            out["client_key"] = True
        return out

    @property
    def translated(self) -> bool:
        """Bodies are translated (not spliced): OpenAI-only endpoints and features do not apply."""
        return self.format != "openai"


@dataclass(frozen=True)
class Site:
    """Where one protocol config sits (``spec.configs.<...>.<configField>``), for located diagnostics."""

    doc: Document
    path: tuple
    diags: Diagnostics

    def where(self, *fields: str | int) -> dict[str, Any]:
        return self.doc.where(self.path + fields)

    def error(self, code: str, message: str, *fields: str | int, hint: str | None = None) -> None:
        self.diags.error(code, message, **self.where(*fields), hint=hint)

    def warning(self, code: str, message: str, *fields: str | int, hint: str | None = None) -> None:
        self.diags.warning(code, message, **self.where(*fields), hint=hint)


class Driver:
    """One provider API. Subclasses set the class attributes and override the hooks they need.

    ``config`` below is the IR's merged ``RequestConfig`` of one backend (a provider's defaultConfig
    overlaid with a rule's routeSpecificConfigs entry).
    """

    record: Protocol
    #: the field of ``spec.configs.*`` (an ASM ``ProviderConfig``) that selects this protocol
    config_field: str
    #: the request path when ``spec.path`` is not set; None: ``spec.path`` is required
    default_path: str | None = None
    #: client request headers a keyed provider of this protocol never receives (the platform's key
    #: would pay for what they opt into)
    keyed_removes: tuple[str, ...] = ()
    #: ``gen_ai.provider.name`` (OpenTelemetry GenAI conventions) of every provider of this protocol,
    #: when the protocol is one vendor's API; None: an OpenAI-compatible API names no vendor (the host
    #: decides, compiler/telemetry.py)
    gen_ai_name: str | None = None
    #: the vendor's hosts: a provider there is ``gen_ai_name`` whatever protocol it speaks (the
    #: vendor's OpenAI-compatible endpoint)
    gen_ai_hosts: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def has_default_endpoint(self) -> bool:
        return self.default_path is not None

    def request_fields(self, cfg: Any, site: Site) -> dict[str, Any]:
        """The ``RequestConfig`` fields this protocol's config sets, besides the credential (checked
        and set generically); reports the config's problems at ``site``."""
        return {}

    def check_endpoint(self, spec_path: str | None, configs: list, site: Site) -> None:
        """``site`` is the provider's ``spec``; ``configs`` every merged config a rule may use."""
        if spec_path is None and not self.has_default_endpoint:
            fields = [d.config_field for d in _with_default_path()]
            defaults = " and ".join([", ".join(fields[:-1]), fields[-1]] if len(fields) > 1 else fields)
            site.error("LLMC237", "spec.path is required for an OpenAI-compatible provider",
                       hint=f"e.g. path: /v1/chat/completions; only {defaults} have a default endpoint")

    def endpoint(self, spec_path: str | None, config: Any) -> str:
        """The request path (with query) of a backend: ``spec.path`` when set, else the default."""
        path = spec_path if spec_path is not None else self.default_path
        if path is None:
            raise ValueError(f"protocol {self.name!r} has no default endpoint")
        return path

    def filter_settings(self, config: Any) -> dict[str, Any]:
        """Per-backend values of the Lua context that refine the record: another auth header or prefix
        (any driver's config may set ``auth_header``/``auth_prefix``), and the protocol's own."""
        out: dict[str, Any] = {}
        if config.auth_header is not None or config.auth_prefix is not None:
            header = config.auth_header or self.record.auth_header
            default_prefix = self.record.auth_prefix if header == self.record.auth_header else ""
            out["auth_header"] = header
            out["auth_prefix"] = config.auth_prefix if config.auth_prefix is not None else default_prefix
        return out

    def base_query(self, config: Any, base_path: str) -> str | None:
        """The query string every endpoint under ``spec.basePath`` needs (None: none)."""
        return None

    def validation_key(self, config: Any) -> tuple:
        """What the request step's refusals for a backend depend on besides the request: backends with
        equal keys accept exactly the same requests, so a failover rule validates each request once per
        key its tries have (translate.envoyfilter ``later``). OpenAI's format is validated alike for
        every backend; a translator takes the configured model, else the client's, and refuses a request
        without one (or, for Gemini, one that cannot go in a path; a configured model is schema-checked)."""
        if not self.record.translated:
            return (self.record.format,)
        return (self.record.format, config.model is None)

    def sent(self, url: str, headers: dict[str, str]) -> bool:
        """Whether an upstream request (as ``llmc explain`` shows it) was made for this protocol;
        only translated protocols need say (every other request is in OpenAI's format)."""
        return False


def warn_stream(cfg: Any, site: Site) -> None:
    """LLMC219 for a config with ``stream: true`` (any protocol whose config has ``stream``)."""
    if cfg.stream is True:
        site.warning("LLMC219", "stream: true makes every request that does not say `stream` a streaming "
                     "one; the openai SDK omits `stream` on non-streaming calls, so those callers get "
                     "server-sent events they do not parse", "stream",
                     hint="leave `stream` unset and let clients choose (a client's explicit `stream` "
                     "always wins)")


_REGISTRY: list[Driver] = []


def _with_default_path() -> list[Driver]:
    return [d for d in _REGISTRY if d.has_default_endpoint]
