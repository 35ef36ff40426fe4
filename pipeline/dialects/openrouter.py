"""PURE: OpenRouter's wire format: OpenAI's, but its errors say more by status (openrouter.ai/docs/errors).

Its error body is ``{"error": {"code": <the HTTP status>, "message": ..., "metadata": {...}}}``:
- 402: the account or key has no credits left. Every row would fail alike: a quota stop.
- 403: the chosen model requires moderation and *this* input was flagged. A verdict on the
  row (``filtered``), not a refused key: OpenAI's reading (403 = auth) would stop the run.
- 429: no Retry-After; the wait is ``X-RateLimit-Reset``, the epoch in milliseconds when the
  limit's window lets requests through again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import orjson

from ..models import Failure, FilterVerdict
from . import openai
from .base import Dialect


def _metadata(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    error = data.get("error") if isinstance(data, dict) else None
    metadata = error.get("metadata") if isinstance(error, dict) else None
    return metadata if isinstance(metadata, dict) else {}


def _moderation_verdict(metadata: dict[str, Any]) -> FilterVerdict:
    reasons = metadata.get("reasons")
    categories = tuple(sorted({r for r in reasons if isinstance(r, str)})) if isinstance(reasons, list) else ()
    try:
        raw = orjson.dumps(metadata).decode()
    except TypeError:  # nested past what orjson writes: the flag is what matters
        raw = None
    return FilterVerdict(flagged=True, categories=categories or ("moderation",), raw_json=raw)


def _reset_wait_s(headers: Mapping[str, str], now_epoch: float | None) -> float | None:
    raw = headers.get("x-ratelimit-reset")
    if raw is None or now_epoch is None:
        return None
    try:
        reset_ms = float(raw)
    except ValueError:
        return None
    if reset_ms != reset_ms or reset_ms in (float("inf"), float("-inf")):  # NaN or infinite: no usable wait
        return None
    return max(0.0, reset_ms / 1000.0 - now_epoch)


def classify_http(status: int, body: bytes, headers: Mapping[str, str], *, now_epoch: float | None = None) -> Failure:
    failure = openai.classify_http(status, body, headers, now_epoch=now_epoch)
    if status == 429 and failure.retryable and failure.retry_after_s is None:
        wait = _reset_wait_s({k.lower(): v for k, v in headers.items()}, now_epoch)
        if wait is not None:
            return dataclasses.replace(failure, retry_after_s=wait)
    if status == 402:
        return dataclasses.replace(failure, error_type="quota", retryable=False, retry_after_s=None, fatal="quota")
    if status == 403:
        return dataclasses.replace(
            failure,
            error_type="content_filter",
            retryable=False,
            fatal=None,
            retry_after_s=None,
            filters=_moderation_verdict(_metadata(body)),
        )
    return failure


DIALECT: Dialect = dataclasses.replace(openai.DIALECT, name="openrouter", classify_error=classify_http)
