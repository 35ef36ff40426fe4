"""Provider dialects: one module per wire format, looked up by name.

Adding a provider: a module beside ``openai.py`` building its ``Dialect`` (often
``dataclasses.replace(openai.DIALECT, ...)`` with the functions that differ), and
its names in ``dialect_for``'s table. Nothing else names a provider.
"""

from __future__ import annotations

from types import MappingProxyType

from ..errors import ConfigError
from . import openai
from .base import BodyBuilder, Dialect, ErrorClassifier

__all__ = ["DEFAULT_DIALECT", "BodyBuilder", "Dialect", "ErrorClassifier", "dialect_for"]

# Until ``endpoint.provider`` exists (issue 13) every endpoint is spoken to as OpenAI is.
DEFAULT_DIALECT = "openai"

# 302.AI and "anything else OpenAI-compatible" speak OpenAI's format today.
_DIALECTS = MappingProxyType({"openai": openai.DIALECT, "generic": openai.DIALECT, "302ai": openai.DIALECT})


def dialect_for(name: str) -> Dialect:
    """The dialect called ``name``; ``ConfigError`` naming the known ones otherwise."""
    try:
        return _DIALECTS[name]
    except KeyError:
        known = ", ".join(sorted(_DIALECTS))
        raise ConfigError(f"unknown provider dialect '{name}'; known: {known}") from None
