"""Google's Gemini API (``geminiConfig``): OpenAI chat requests and answers are translated both ways by
the Lua translator ``gemini`` (``generateContent``; ``streamGenerateContent?alt=sse`` when streaming);
the key travels in ``x-goog-api-key``. Gemini takes the model in the path, so the endpoint is a
template: the translator writes the model (the configured one, else the client's) in place of
``{model}`` for every request and every failover try (docs/protocols.md, "Gemini")."""

from __future__ import annotations

from typing import Any

from .driver import Driver, Protocol, Site, warn_stream

#: Gemini's documented REST endpoint (ai.google.dev/api/generate-content), ``{model}`` filled per request
GEMINI_PATH = "/v1beta/models/{model}:generateContent"
MODEL_PLACE, METHOD = "{model}", ":generateContent"

GEMINI = Protocol("gemini", auth_header="x-goog-api-key", auth_prefix="", usage="gemini", format="gemini",
                  client_key=True)


class GeminiDriver(Driver):
    record = GEMINI
    config_field = "geminiConfig"
    default_path = GEMINI_PATH
    gen_ai_name = "gcp.gemini"
    gen_ai_hosts = ("generativelanguage.googleapis.com",)  # also serves an OpenAI-compatible endpoint

    def request_fields(self, cfg: Any, site: Site) -> dict[str, Any]:
        warn_stream(cfg, site)
        return {"model": cfg.model, "stream": cfg.stream, "max_tokens": cfg.maxOutputTokens}

    def check_endpoint(self, spec_path: str | None, configs: list, site: Site) -> None:
        path, _, query = (spec_path or "").partition("?")
        if spec_path is not None and (MODEL_PLACE not in path or not path.endswith(METHOD)):
            site.error("LLMC237", "a Gemini provider's spec.path must say where the model goes ({model}) and "
                       "end with the method :generateContent (streams use :streamGenerateContent)", "path",
                       hint=f"e.g. path: {GEMINI_PATH}, or remove spec.path")
        # Google also takes the key as ?key=: in spec.path it would sit in plain text in the EnvoyFilter
        # and in `llmc explain` (which masks keys only where keys belong). The message never repeats it.
        if any(p.split("=", 1)[0] == "key" for p in query.split("&")):
            site.error("LLMC237", "a Gemini provider's spec.path must not carry the API key (?key=): it would be "
                       "stored and printed as part of the path", "path",
                       hint="put the key in geminiConfig.apiKeySecretRef (or apiKey); llmc sends it as "
                       "x-goog-api-key")

    def filter_settings(self, config: Any) -> dict[str, Any]:
        out = super().filter_settings(config)
        if config.max_tokens is not None:
            out["max_tokens"] = config.max_tokens
        return out

    def sent(self, url: str, headers: dict[str, str]) -> bool:
        path = url.split("?", 1)[0]
        return path.endswith(METHOD) or path.endswith(":streamGenerateContent")


DRIVER = GeminiDriver()
