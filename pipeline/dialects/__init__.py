"""Provider dialects: one module per wire format, looked up by name.

Adding a provider: a module beside ``openai.py`` building its ``Dialect`` (often
``dataclasses.replace(openai.DIALECT, ...)`` with the functions that differ), and
its names in ``dialect_for``'s table. Nothing else names a provider.
"""

from __future__ import annotations

from types import MappingProxyType

from ..errors import ConfigError
from . import azure, litellm, openai, openrouter
from .base import BodyBuilder, Dialect, ErrorClassifier

__all__ = ["DEFAULT_DIALECT", "BodyBuilder", "Dialect", "ErrorClassifier", "dialect_for"]

DEFAULT_DIALECT = "openai"

# The gateways and self-hosted servers speak OpenAI's format; OpenRouter's and LiteLLM's errors,
# headers and answers differ in ways told apart by their own dialects.
_DIALECTS = MappingProxyType(
    {
        "openai": openai.DIALECT,
        "generic": openai.DIALECT,
        "302ai": openai.DIALECT,
        "openrouter": openrouter.DIALECT,
        "vllm": openai.DIALECT,
        "litellm": litellm.DIALECT,
        "azure": azure.DIALECT,
    }
)


def dialect_for(name: str) -> Dialect:
    """The dialect called ``name``; ``ConfigError`` naming the known ones otherwise."""
    try:
        return _DIALECTS[name]
    except KeyError:
        known = ", ".join(sorted(_DIALECTS))
        raise ConfigError(f"unknown provider dialect '{name}'; known: {known}") from None
