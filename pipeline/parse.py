"""PURE: a chat-completions response body → ``Completion``; an error body → its parts.

Tolerant by design: vendor extras in ``usage`` (seed 003), absent detail
objects, Azure's ``content_filter_results`` per choice and
``prompt_filter_results`` (whose entries say ``content_filter_results`` or,
as in seed 000, ``content_filter_result``).

Strict about the fields it uses: a value of the wrong type or outside sane
bounds (a caption that is a number, usage of -5 or 2^64 tokens, filter results
nested past what can be stored) raises ``InvalidResponseError`` naming the
field, so the row is an ``invalid_response`` error rather than an ``ok`` with
a wrong caption, a negative cost or an uncaught exception.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import orjson

from .models import SEVERITY_ORDER, Completion, FilterVerdict, Usage

# No model has a context window within a factor of 100 of this: a count above it is a
# broken or hostile server, and believing it would price one row at thousands of dollars
# (and overflow the Int64 columns past 2^63).
MAX_USAGE_TOKENS = 10**9


class InvalidResponseError(ValueError):
    """The body of a 200 is not a usable completion.

    ``retryable``: whether asking again may help. A body that is not JSON or has no
    choices may be a cut connection (retried); a well-formed answer of the wrong shape
    was answered and paid for, and the same server will answer the same way (not retried).
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


def _shape_error(message: str) -> InvalidResponseError:
    return InvalidResponseError(message, retryable=False)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _token_count(value: Any, field: str) -> int | None:
    """A token count: null, or an integer (an integral float is tolerated) within 0..MAX_USAGE_TOKENS."""
    if type(value) is int and 0 <= value <= MAX_USAGE_TOKENS:
        return value  # nearly every count: one check instead of four
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _shape_error(f"{field} is {_type_name(value)} {value!r:.40}, expected an integer")
    if not 0 <= value <= MAX_USAGE_TOKENS:
        raise _shape_error(f"{field} is {value}, outside 0..{MAX_USAGE_TOKENS}")
    return value


def parse_usage(usage: Any) -> Usage:
    if usage is None:
        return Usage()
    if not isinstance(usage, dict):
        raise _shape_error(f"usage is {_type_name(usage)}, expected an object")
    prompt_details = usage.get("prompt_tokens_details")
    completion_details = usage.get("completion_tokens_details")
    cached = prompt_details.get("cached_tokens") if isinstance(prompt_details, dict) else None
    reasoning = completion_details.get("reasoning_tokens") if isinstance(completion_details, dict) else None
    return Usage(
        prompt_tokens=_token_count(usage.get("prompt_tokens"), "usage.prompt_tokens"),
        completion_tokens=_token_count(usage.get("completion_tokens"), "usage.completion_tokens"),
        total_tokens=_token_count(usage.get("total_tokens"), "usage.total_tokens"),
        cached_tokens=_token_count(cached, "usage.prompt_tokens_details.cached_tokens"),
        reasoning_tokens=_token_count(reasoning, "usage.completion_tokens_details.reasoning_tokens"),
    )


_SEVERITY_NAMES = {rank: name for name, rank in SEVERITY_ORDER.items()}
_ALL_CLEAR = MappingProxyType({"filtered": False, "severity": "safe"})
_SAFE = SEVERITY_ORDER["safe"]


def _filter_blocks(prompt_results: Any, choice_results: list[Any]) -> list[dict[str, Any]]:
    """The category → result blocks of the prompt entries and the choices (other shapes: none)."""
    blocks: list[dict[str, Any]] = []
    if isinstance(prompt_results, list):
        for entry in prompt_results:
            if isinstance(entry, dict):
                block = (
                    entry["content_filter_results"]
                    if "content_filter_results" in entry
                    else entry.get("content_filter_result")
                )
                if isinstance(block, dict):
                    blocks.append(block)
    elif isinstance(prompt_results, dict):
        blocks.append(prompt_results)
    for block in choice_results:
        if isinstance(block, dict):
            blocks.append(block)
    return blocks


def filter_verdict(prompt_results: Any, choice_results: list[Any]) -> FilterVerdict:
    """Fold prompt-level and choice-level filter results into flags and a max severity."""
    categories: set[str] = set()
    worst = -1
    all_clear = dict(_ALL_CLEAR)  # a dict: list.count compares dicts in C, a mapping proxy in Python
    for block in _filter_blocks(prompt_results, choice_results):
        results = list(block.values())
        if results.count(all_clear) == len(results):
            # Nearly every answer: each category safe and not filtered (the checks below, per
            # category, cost more than parsing the rest of the answer).
            if results and worst < _SAFE:
                worst = _SAFE
            continue
        for category, result in block.items():
            if not isinstance(result, dict):
                continue
            if result.get("filtered") is True:
                categories.add(category)
            severity = result.get("severity")
            if isinstance(severity, str):
                worst = max(worst, SEVERITY_ORDER.get(severity, -1))
    try:
        raw_json = orjson.dumps({"prompt": prompt_results, "choices": choice_results}).decode()
    except TypeError as exc:  # orjson refuses nesting past 254 levels (and non-JSON values)
        raise _shape_error(f"content_filter_results / prompt_filter_results cannot be stored ({exc})") from None
    return FilterVerdict(
        flagged=bool(categories),
        categories=tuple(sorted(categories)) if categories else (),
        max_severity=_SEVERITY_NAMES.get(worst),  # type: ignore[arg-type]
        raw_json=raw_json,
    )


def _message_text(message: Any, where: str) -> tuple[str | None, str | None]:
    """The text of ``choices[i].message`` (a string, or a list of content parts) and its refusal.

    Absent or null content is a valid answer with no text (a refusal, a filtered
    completion); any other type is not an answer this pipeline can store.
    """
    if message is None:
        return None, None
    if not isinstance(message, dict):
        raise _shape_error(f"{where} is {_type_name(message)}, expected an object")
    content = message.get("content")
    refusal = message.get("refusal") if isinstance(message.get("refusal"), str) else None
    if isinstance(content, list):  # some servers return content parts
        texts = []
        for i, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") == "text":
                text = part.get("text", "")
                if not isinstance(text, str):
                    raise _shape_error(f"{where}.content[{i}].text is {_type_name(text)}, expected a string")
                texts.append(text)
        content = "".join(texts) if texts else None
    if content is not None and not isinstance(content, str):
        raise _shape_error(f"{where}.content is {_type_name(content)}, expected a string, a list of parts or null")
    return content, refusal


def parse_completion(data: Any) -> Completion:
    if not isinstance(data, dict):
        raise InvalidResponseError("the response is not a JSON object")
    if isinstance(data.get("error"), dict):
        message = data["error"].get("message") or "an error object"
        raise InvalidResponseError(f"a 200 carrying an error: {message}")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise InvalidResponseError("the response has no choices")
    first = choices[0]
    caption, refusal = _message_text(first.get("message"), "choices[0].message")
    if len(choices) == 1:  # the usual answer: no comprehension to set up
        choice_filters = [first.get("content_filter_results")]
    else:
        choice_filters = [c.get("content_filter_results") for c in choices if isinstance(c, dict)]
    prompt_filters = data.get("prompt_filter_results")
    has_filters = prompt_filters is not None or choice_filters.count(None) < len(choice_filters)
    verdict = filter_verdict(prompt_filters, choice_filters) if has_filters else FilterVerdict()
    texts = (
        (caption,)
        if len(choices) == 1
        else tuple(
            _message_text(c.get("message"), f"choices[{i}].message")[0]
            for i, c in enumerate(choices)
            if isinstance(c, dict)
        )
    )
    model, finish_reason, response_id = data.get("model"), first.get("finish_reason"), data.get("id")
    return Completion(
        captions=texts,
        caption=caption,
        model=model if isinstance(model, str) else None,
        finish_reason=finish_reason if isinstance(finish_reason, str) else None,
        usage=parse_usage(data.get("usage")),
        filters=verdict,
        response_id=response_id if isinstance(response_id, str) else None,
        refusal=refusal,
    )


def parse_completion_bytes(body: bytes, *, reshape: Callable[[Any], Any] | None = None) -> Completion:
    """A 200's body → ``Completion``; ``reshape`` lets a dialect put moved fields back first."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        # orjson also refuses numbers that overflow a double (1e400) and nesting past 1024.
        raise InvalidResponseError(f"the response is not valid JSON ({len(body)} bytes: {exc})") from None
    try:
        return parse_completion(reshape(data) if reshape is not None else data)
    except (RecursionError, OverflowError) as exc:
        # A backstop for shapes no check above foresaw: a classified row, never a crash.
        raise _shape_error(f"the response cannot be read ({type(exc).__name__}: {exc})") from None


@dataclass(frozen=True, slots=True)
class ErrorBody:
    """OpenAI's error envelope, read tolerantly; every field may be absent."""

    message: str
    type: str | None = None
    code: str | None = None
    param: str | None = None
    inner_filter: dict[str, Any] | None = None


def parse_error_body(body: bytes) -> ErrorBody:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()
        return ErrorBody(message=_summarise_text(text))
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        if isinstance(data, dict) and isinstance(data.get("message"), str):
            return ErrorBody(message=data["message"])
        return ErrorBody(message=_summarise_text(body.decode("utf-8", "replace")))
    inner = error.get("innererror")
    inner_filter = None
    if isinstance(inner, dict):
        found = inner.get("content_filter_result", inner.get("content_filter_results"))
        inner_filter = found if isinstance(found, dict) else None

    def field_text(key: str) -> str | None:
        value = error.get(key)
        if value is None:
            return None
        # A nested object is named, not printed: str() of one nested 1,000 deep raises RecursionError.
        return str(value) if isinstance(value, (str, int, float)) else f"({_type_name(value)})"

    return ErrorBody(
        message=field_text("message") or "(no message)",
        type=field_text("type"),
        code=field_text("code"),
        param=field_text("param"),
        inner_filter=inner_filter,
    )


def _summarise_text(text: str, limit: int = 200) -> str:
    """An HTML error page (Cloudflare's 502) reduced to its title, else its first characters."""
    lower = text.lower()
    start, end = lower.find("<title>"), lower.find("</title>")
    if start != -1 and end > start:
        return text[start + 7 : end].strip()
    text = " ".join(text.split())
    return text[:limit] + ("…" if len(text) > limit else "") if text else "(empty body)"
