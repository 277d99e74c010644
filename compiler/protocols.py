"""What llmc knows about each provider API ("protocol"), as data: the filter's generic request path
reads a protocol's record from its filter context, as APISIX's ``ai-providers`` and Kong's LLM
drivers keep one record per provider. A new protocol is a record here (plus, where the body must be
translated, a named step in ``templates/lua/llmc.lua``).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Protocol:
    name: str
    auth_header: str  # where the API key goes
    auth_prefix: str  # what precedes the key in that header
    usage: str  # how token usage is read from responses ("openai": a `usage` object)
    headers: dict[str, str] = field(default_factory=dict)  # fixed request headers the API requires

    def context(self) -> dict:
        """The record as the Lua filter reads it (see lua_context)."""
        return {"auth_header": self.auth_header, "auth_prefix": self.auth_prefix, "usage": self.usage,
                "headers": dict(sorted(self.headers.items()))}


OPENAI = Protocol("openai", auth_header="authorization", auth_prefix="Bearer ", usage="openai")

PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (OPENAI,)}
