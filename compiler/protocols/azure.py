"""Azure OpenAI Service (``azureOpenAIConfig``): OpenAI's body format, the key in ``api-key``, and a
deployment path with an ``api-version`` query on every endpoint (docs/protocols.md)."""

from __future__ import annotations

from typing import Any

from .driver import Driver, Protocol, Site

AZURE_API_VERSION = "2024-10-21"  # the latest GA data-plane inference version (docs/protocols.md)

AZURE_OPENAI = Protocol("azure-openai", auth_header="api-key", auth_prefix="", usage="openai")


def azure_path(deployment: str, api_version: str | None) -> str:
    return f"/openai/deployments/{deployment}/chat/completions?api-version={api_version or AZURE_API_VERSION}"


class AzureDriver(Driver):
    record = AZURE_OPENAI
    config_field = "azureOpenAIConfig"
    gen_ai_name = "azure.ai.openai"
    gen_ai_hosts = (".openai.azure.com",)  # also Azure's OpenAI-compatible v1 path (openAIConfig)

    @property
    def has_default_endpoint(self) -> bool:
        return True  # the deployment's

    def request_fields(self, cfg: Any, site: Site) -> dict[str, Any]:
        return {"deployment": cfg.deployment, "api_version": cfg.apiVersion}

    def check_endpoint(self, spec_path: str | None, configs: list, site: Site) -> None:
        if spec_path is None and any(c.deployment is None for c in configs):
            site.error("LLMC237", "azureOpenAIConfig needs a deployment in defaultConfig (a "
                       "routeSpecificConfigs entry may replace it) unless spec.path is set", "configs",
                       hint="deployment: <the Azure deployment name>")

    def endpoint(self, spec_path: str | None, config: Any) -> str:
        """``spec.path`` when set (the api-version is added when it has no query string), else the
        deployment's chat completions path."""
        if spec_path is None:
            return azure_path(config.deployment or "", config.api_version)
        if "?" in spec_path:
            return spec_path
        return f"{spec_path}?api-version={config.api_version or AZURE_API_VERSION}"

    def base_query(self, config: Any, base_path: str) -> str | None:
        # Azure's every endpoint needs its api-version (found by the crossing matrix)
        if "?" in base_path:
            return None
        return f"?api-version={config.api_version or AZURE_API_VERSION}"


DRIVER = AzureDriver()
