"""Protocol drivers: what llmc knows about each provider API, one module per protocol, one table.

The filter's generic request path reads a protocol's record (:class:`Protocol`) from its filter
context, as APISIX's ``ai-providers`` and Kong's LLM drivers keep one record per provider; the
compiler's generic stages call a driver's hooks (:class:`Driver`). Nothing outside this package asks
which protocol a provider speaks. A new protocol is a module here with a ``DRIVER``, one entry in
:data:`DRIVERS`, its config model in :mod:`compiler.api`, and (when the body is translated) its Lua
translator ``templates/lua/llmc/<format>.lua`` (CONTRIBUTING.md, "Adding a protocol").
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from . import anthropic, azure, driver, gemini, openai
from .anthropic import ANTHROPIC, ANTHROPIC_MAX_TOKENS, ANTHROPIC_VERSION
from .azure import AZURE_API_VERSION, AZURE_OPENAI
from .driver import Driver, Protocol, Site
from .openai import OPENAI

#: The drivers by protocol name (``Provider.protocol`` in the IR), in registration order.
DRIVERS: dict[str, Driver] = {d.name: d for d in (openai.DRIVER, azure.DRIVER, anthropic.DRIVER, gemini.DRIVER)}
driver._REGISTRY[:] = DRIVERS.values()

#: The Lua filter's record of each protocol.
PROTOCOLS: dict[str, Protocol] = {name: d.record for name, d in DRIVERS.items()}

#: The API config field of each protocol in ``spec.configs.*``.
CONFIG_FIELDS: dict[str, str] = {d.config_field: name for name, d in DRIVERS.items()}

#: The protocol of a provider without any protocol config (ASM's: OpenAI-compatible).
DEFAULT_PROTOCOL = "openai"

__all__ = ["ANTHROPIC", "ANTHROPIC_MAX_TOKENS", "ANTHROPIC_VERSION", "AZURE_API_VERSION", "AZURE_OPENAI",
           "CONFIG_FIELDS", "DEFAULT_PROTOCOL", "DRIVERS", "OPENAI", "PROTOCOLS", "Driver", "Protocol", "Site",
           "auth_header", "credential_headers", "endpoint", "format_of", "get"]


def get(protocol: str) -> Driver:
    """The driver of a protocol name (a key of :data:`DRIVERS`)."""
    return DRIVERS[protocol]


def auth_header(protocol: str, auth_header_field: str | None) -> str:
    """The header a backend's key travels in: its config's ``authHeader``, else the protocol's."""
    return (auth_header_field or PROTOCOLS[protocol].auth_header).lower()


def credential_headers(extra: Iterable[str] = ()) -> list[str]:
    """Every header a credential may travel in: each protocol's, and the ``authHeader`` names given."""
    return sorted({p.auth_header for p in PROTOCOLS.values()} | {h.lower() for h in extra})


def endpoint(protocol: str, spec_path: str | None, config: Any) -> str:
    """The request path (with query) of a backend of ``protocol`` (see :meth:`Driver.endpoint`)."""
    return DRIVERS[protocol].endpoint(spec_path, config)


def format_of(url: str, headers: dict[str, str]) -> str:
    """The body format of an upstream request as ``llmc explain`` shows it."""
    return next((d.record.format for d in DRIVERS.values() if d.sent(url, headers)), "openai")
