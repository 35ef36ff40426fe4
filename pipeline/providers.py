"""PURE: what each provider defaults to: its base URL, the variable its key is read from, its limits.

A key goes only where it belongs: each provider reads its own variable, so an
OpenAI key is never sent to a gateway because a config left the default in place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

Provider = Literal["openai", "azure", "302ai", "openrouter", "vllm", "litellm", "generic"]


@dataclass(frozen=True, slots=True)
class ProviderDefaults:
    base_url: str  # "" → the config must give endpoint.base_url (the resource or the server is the user's)
    key_env: str  # the environment variable the key is read from unless endpoint.api_key_env names another
    key_required: bool = True
    base_url_env: str | None = None  # a variable that may name the base URL (OPENAI_BASE_URL for openai)
    # Self-hosted servers publish no rpm/tpm: concurrency bounds them, unless the config sets limits.
    default_limits: bool = True


PROVIDERS: dict[Provider, ProviderDefaults] = {
    "302ai": ProviderDefaults(base_url="https://api.302.ai/v1", key_env="AI302_API_KEY"),
    "openai": ProviderDefaults(
        base_url="https://api.openai.com/v1", key_env="OPENAI_API_KEY", base_url_env="OPENAI_BASE_URL"
    ),
    # https://RESOURCE.openai.azure.com/openai/deployments/DEPLOYMENT (or .../openai/v1)
    "azure": ProviderDefaults(base_url="", key_env="AZURE_OPENAI_API_KEY"),
    "openrouter": ProviderDefaults(base_url="https://openrouter.ai/api/v1", key_env="OPENROUTER_API_KEY"),
    "vllm": ProviderDefaults(base_url="", key_env="VLLM_API_KEY", key_required=False, default_limits=False),
    "litellm": ProviderDefaults(base_url="", key_env="LITELLM_API_KEY"),
    "generic": ProviderDefaults(base_url="", key_env="OPENAI_API_KEY"),
}


def endpoint_host(url: str) -> str:
    """The endpoint's host and port, without any credentials or path the URL may carry."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    return (parts.hostname or "?") + (f":{port}" if port else "")
