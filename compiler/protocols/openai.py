"""OpenAI-compatible providers (``openAIConfig``, ASM's own): the body is shaped byte-preserving
(model, stream and stream_options spliced in); the key travels as ``Authorization: Bearer``, or in
the header ``authHeader`` names (with ``authPrefix``); ``spec.path`` is required."""

from __future__ import annotations

from typing import Any

from .. import names
from .driver import Driver, Protocol, Site, warn_stream

#: Headers an authHeader may not name: the filter sets them itself, or they frame the request.
RESERVED_AUTH_HEADERS = {"host", "content-type", "content-length", "transfer-encoding", "accept-encoding",
                         "connection", "te", "upgrade", "anthropic-version"}

OPENAI = Protocol("openai", auth_header="authorization", auth_prefix="Bearer ", usage="openai")


def _auth_header(cfg: Any, site: Site) -> str | None:
    if cfg.authHeader is None:
        return None
    name = cfg.authHeader.lower()
    if (not names.HEADER_NAME.fullmatch(name) or name in RESERVED_AUTH_HEADERS
            or name.startswith(names.RESERVED_HEADER_PREFIX)):
        site.error("LLMC238", f"authHeader {cfg.authHeader!r} cannot carry the API key: it is not a header "
                   "name, or the filter or the HTTP framing owns it", "authHeader",
                   hint="e.g. x-api-key or authorization")
        return None
    return name


class OpenAIDriver(Driver):
    record = OPENAI
    config_field = "openAIConfig"
    #: OpenAI's billing selectors: with the platform's key, the key's own organization and project
    #: (an app's leftover OPENAI_ORG_ID would get the platform's key refused, 401 mismatched_organization)
    keyed_removes = ("openai-organization", "openai-project")

    def request_fields(self, cfg: Any, site: Site) -> dict[str, Any]:
        warn_stream(cfg, site)
        return {"model": cfg.model, "stream": cfg.stream, "include_usage": cfg.streamIncludeUsage is not False,
                "include_usage_set": cfg.streamIncludeUsage is not None,
                "auth_header": _auth_header(cfg, site), "auth_prefix": cfg.authPrefix}


DRIVER = OpenAIDriver()
