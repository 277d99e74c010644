"""What llmc knows about each provider API ("protocol"), as data: the filter's generic request path
reads a protocol's record from its filter context, as APISIX's ``ai-providers`` and Kong's LLM
drivers keep one record per provider. A new protocol is a record here (plus, where the body must be
translated, a translator module ``templates/lua/llmc/<format>.lua``).

``format`` names the body format the provider speaks: ``openai`` bodies are shaped byte-preserving
(model/stream spliced in); ``anthropic`` bodies are translated both ways by the Lua (docs/protocols.md).
``client_key``: with no key configured, the client's ``Authorization: Bearer <key>``
is moved to ``auth_header`` (APIs that do not read Authorization); otherwise it passes unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

AZURE_API_VERSION = "2024-10-21"  # the latest GA data-plane inference version (docs/protocols.md)
ANTHROPIC_VERSION = "2023-06-01"  # the anthropic-version Anthropic documents for the Messages API
ANTHROPIC_MAX_TOKENS = 4096  # max_tokens when neither the client nor anthropicConfig sets one


@dataclass(frozen=True)
class Protocol:
    name: str
    auth_header: str  # where the API key goes
    auth_prefix: str  # what precedes the key in that header
    usage: str  # how token usage is read from responses ("openai": a `usage` object)
    headers: dict[str, str] = field(default_factory=dict)  # fixed request headers the API requires
    format: str = "openai"  # the body format: "openai" (shaped) or "anthropic" (translated)
    client_key: bool = False  # no key configured: move the client's bearer token to auth_header

    def context(self) -> dict:
        """The record as the Lua filter reads it (see lua_context)."""
        out: dict[str, object] = {"auth_header": self.auth_header, "auth_prefix": self.auth_prefix,
                                  "usage": self.usage,
               "headers": dict(sorted(self.headers.items()))}
        if self.format != "openai":
            out["format"] = self.format
        if self.client_key:
            out["client_key"] = True
        return out


OPENAI = Protocol("openai", auth_header="authorization", auth_prefix="Bearer ", usage="openai")
AZURE_OPENAI = Protocol("azure-openai", auth_header="api-key", auth_prefix="", usage="openai")
ANTHROPIC = Protocol("anthropic", auth_header="x-api-key", auth_prefix="", usage="anthropic",
                     format="anthropic", client_key=True)

PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (OPENAI, AZURE_OPENAI, ANTHROPIC)}

#: The API config field of each protocol in ``spec.configs.*``.
CONFIG_FIELDS: dict[str, str] = {"openAIConfig": "openai", "azureOpenAIConfig": "azure-openai",
                                 "anthropicConfig": "anthropic"}


def auth_header(protocol: str, auth_header_field: str | None) -> str:
    """The header a backend's key travels in: its config's ``authHeader``, else the protocol's."""
    return (auth_header_field or PROTOCOLS[protocol].auth_header).lower()


def credential_headers(extra: Iterable[str] = ()) -> list[str]:
    """Every header a credential may travel in: each protocol's, and the ``authHeader`` names given."""
    return sorted({p.auth_header for p in PROTOCOLS.values()} | {h.lower() for h in extra})


def azure_path(deployment: str, api_version: str | None) -> str:
    return f"/openai/deployments/{deployment}/chat/completions?api-version={api_version or AZURE_API_VERSION}"


def endpoint(protocol: str, spec_path: str | None, deployment: str | None = None,
             api_version: str | None = None) -> str:
    """The request path (with query) of a backend: ``spec.path`` when set (Azure's api-version is
    added when it has no query string), else the protocol's documented endpoint."""
    if protocol == "azure-openai":
        if spec_path is None:
            return azure_path(deployment or "", api_version)
        if "?" in spec_path:
            return spec_path
        return f"{spec_path}?api-version={api_version or AZURE_API_VERSION}"
    if spec_path is not None:
        return spec_path
    if protocol == "anthropic":
        return "/v1/messages"
    raise ValueError(f"protocol {protocol!r} has no default endpoint")
