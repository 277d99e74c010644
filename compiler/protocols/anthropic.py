"""Anthropic Messages (``anthropicConfig``): OpenAI chat requests and answers are translated both ways
by the Lua translator ``anthropic``; the key travels in ``x-api-key`` with the ``anthropic-version``
header; ``max_tokens`` is required by the API, so a default applies (docs/protocols.md)."""

from __future__ import annotations

from typing import Any

from .driver import Driver, Protocol, Site

ANTHROPIC_VERSION = "2023-06-01"  # the anthropic-version Anthropic documents for the Messages API
ANTHROPIC_MAX_TOKENS = 4096  # max_tokens when neither the client nor anthropicConfig sets one

ANTHROPIC = Protocol("anthropic", auth_header="x-api-key", auth_prefix="", usage="anthropic",
                     format="anthropic", client_key=True)


class AnthropicDriver(Driver):
    record = ANTHROPIC
    config_field = "anthropicConfig"
    default_path = "/v1/messages"
    # a beta feature is opted into with the platform's key and bill
    keyed_removes = ("anthropic-beta",)
    gen_ai_name = "anthropic"
    gen_ai_hosts = ("api.anthropic.com",)

    def request_fields(self, cfg: Any, site: Site) -> dict[str, Any]:
        return {"model": cfg.model, "max_tokens": cfg.maxTokens, "version": cfg.version}

    def filter_settings(self, config: Any) -> dict[str, Any]:
        return {**super().filter_settings(config), "max_tokens": config.max_tokens or ANTHROPIC_MAX_TOKENS,
                "headers": {"anthropic-version": config.version or ANTHROPIC_VERSION}}

    def sent(self, url: str, headers: dict[str, str]) -> bool:
        return "anthropic-version" in headers


DRIVER = AnthropicDriver()
