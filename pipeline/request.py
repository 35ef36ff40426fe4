"""PURE: manifest item + request config → the chat-completions request body."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from .config import RequestConfig
from .tokens import close_enough_for_pacing

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")


def placeholders(template: str) -> list[str]:
    """Column names a prompt template refers to, in order of appearance."""
    return [m.group(1) for m in _PLACEHOLDER.finditer(template) if m.group(1)]


def missing_columns(template: str, columns: Iterable[str]) -> list[str]:
    available = set(columns)
    return [name for name in dict.fromkeys(placeholders(template)) if name not in available]


def render_prompt(template: str, fields: Mapping[str, Any]) -> str:
    """Fill ``{column}`` from the row; ``{{``/``}}`` are literal braces; other braces are kept.

    Unlike ``str.format`` a JSON example inside a prompt does not break it.
    """
    if "{" not in template and "}" not in template:
        return template  # a fixed prompt, the usual one: nothing to fill, no regex pass per row

    def substitute(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "{{":
            return "{"
        if token == "}}":
            return "}"
        value = fields.get(match.group(1))
        return "" if value is None else str(value)

    return _PLACEHOLDER.sub(substitute, template)


_OPTIONAL_KNOBS = ("temperature", "top_p", "n", "stop", "response_format")
# o1, o3, o4, gpt-5, alone or followed by "-" (snapshots, -mini/-nano), as the last path segment
# (after any ``vendor/`` prefix).
_REASONING_MODEL = re.compile(r"(?:.*/)?(?:o1|o3|o4|gpt-5)(?:-[^/]*)?", re.IGNORECASE | re.DOTALL)


def is_reasoning_model(model: str) -> bool:
    """o1, o3, o4-mini, gpt-5 and their snapshots and -mini/-nano variants, with or without a
    gateway's ``vendor/`` prefix: they take ``max_completion_tokens``, never ``max_tokens``."""
    return _REASONING_MODEL.fullmatch(model) is not None


def build_body(request: RequestConfig, *, image_url: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    content = [
        {"type": "text", "text": render_prompt(request.prompt, fields)},
        {"type": "image_url", "image_url": {"url": image_url, "detail": request.detail}},
    ]
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": render_prompt(request.system, fields)})
    messages.append({"role": "user", "content": content})
    body: dict[str, Any] = {"model": request.model, "messages": messages}
    if is_reasoning_model(request.model):
        # Reasoning models refuse max_tokens (400 unsupported_parameter): the limit covers the
        # reasoning tokens too, under its newer name.
        body["max_completion_tokens"] = request.max_tokens
        if request.reasoning_effort is not None:
            body["reasoning_effort"] = request.reasoning_effort
    else:
        body["max_tokens"] = request.max_tokens
    for knob in _OPTIONAL_KNOBS:
        value = getattr(request, knob)
        if value is not None:
            body[knob] = value
    # Verbatim, last: the gateway's own fields (ocr_model, ...) may override anything above.
    body.update(request.extra_body)
    return body


def prompt_text(body: dict[str, Any]) -> str:
    """Every text a body sends (system and user parts), as the provider counts them."""
    parts = []
    for message in body["messages"]:
        content = message["content"]
        if isinstance(content, str):
            parts.append(content)
        else:
            for part in content:
                if part.get("type") == "text":
                    parts.append(part["text"])
    return "\n".join(parts)


def prompts_need_tokenizer(request: RequestConfig) -> bool:
    """Whether a run's prompts can need the tokenizer (``TextCounter.count_for_pacing``): a
    template that varies per row, or fixed text too long or not ASCII to estimate."""
    texts = [t for t in (request.system, request.prompt) if t]
    return any(placeholders(t) for t in texts) or not close_enough_for_pacing("\n".join(texts))
