"""Retry decisions as small pure functions, and the retry loop.

- ``classify_http``: an HTTP status + error body → a ``Failure`` (error type,
  retryable, fatal for the whole run). Tested from a table of real bodies.
- ``retry_after_s``: the server's wait, from ``retry-after-ms``, ``retry-after``
  (seconds or an HTTP date) or the "try again in 1.5s" text OpenAI puts in messages.
- ``backoff_s``: capped exponential backoff with jitter, for when the server is silent.
- ``call_with_retries``: the retry loop; ``sleep`` injectable.
"""

from __future__ import annotations

import email.utils
import math
import random
import re
from collections.abc import Awaitable, Callable, Mapping

from .models import ErrorType, Failure, FatalKind, FilterVerdict, Outcome
from .parse import ErrorBody, InvalidResponseError, filter_verdict, parse_error_body

RETRYABLE_STATUSES = frozenset({408, 409, 429})
QUOTA_CODES = frozenset({"insufficient_quota", "credit_balance_exhausted", "billing_hard_limit_reached"})
MAX_SERVER_WAIT_S = 300.0

_TRY_AGAIN = re.compile(r"(?:try again|retry after)\s+(?:in\s+)?(\d+(?:\.\d+)?)\s*(ms|s|sec|seconds?)\b", re.I)


def _seconds(raw: str, scale: float = 1.0) -> float | None:
    """A wait in seconds from a number: negative is 0, ``inf`` (or 1e400) is forever, ``nan`` is no answer.

    Forever is kept, not dropped: it is the longest wait there is, and the run must
    stop on it (limits.max_wait_s) rather than retry at once.
    """
    try:
        value = float(raw) * scale
    except (ValueError, OverflowError):
        return None
    if math.isnan(value):
        return None
    return max(0.0, value)


def retry_after_s(headers: Mapping[str, str], *, now_epoch: float | None = None) -> float | None:
    """Seconds the server asked us to wait, or None; header names are lower-case."""
    raw_ms = headers.get("retry-after-ms") or headers.get("x-ms-retry-after-ms")
    if raw_ms is not None:
        wait = _seconds(raw_ms, 1e-3)
        if wait is not None:
            return wait
    raw = headers.get("retry-after")
    if raw is None:
        return None
    wait = _seconds(raw)
    if wait is not None or raw.strip().lower() in ("nan", "+nan", "-nan"):
        return wait
    parsed = email.utils.parsedate_tz(raw)
    if parsed is None or now_epoch is None:
        return None
    try:
        return max(0.0, email.utils.mktime_tz(parsed) - now_epoch)
    except (ValueError, OverflowError):  # a date in year 99999: past what a calendar holds
        return None


def retry_after_from_message(message: str) -> float | None:
    match = _TRY_AGAIN.search(message)
    if not match:
        return None
    return _seconds(match.group(1), 1e-3 if match.group(2).lower() == "ms" else 1.0)


def _is_quota(err: ErrorBody) -> bool:
    return err.type in QUOTA_CODES or err.code in QUOTA_CODES


def _is_content_filter(err: ErrorBody) -> bool:
    return err.code == "content_filter" or err.inner_filter is not None


def classify_http(status: int, body: bytes, headers: Mapping[str, str], *, now_epoch: float | None = None) -> Failure:
    """What a non-200 answer means for this row and for the run."""
    err = parse_error_body(body)
    detail = " ".join(x for x in (f"HTTP {status}", f"[{err.code or err.type}]" if (err.code or err.type) else "", err.message) if x)
    wait = retry_after_s(headers, now_epoch=now_epoch)
    if wait is None:
        wait = retry_after_from_message(err.message)

    def failure(error_type: ErrorType, *, retryable: bool, fatal: FatalKind | None = None,
                filters: FilterVerdict | None = None) -> Failure:
        return Failure(
            error_type=error_type, message=detail, retryable=retryable, http_status=status,
            retry_after_s=wait if retryable else None, fatal=fatal, filters=filters,
        )

    if status in (401, 403):
        return failure("auth", retryable=False, fatal="auth")
    if _is_quota(err):
        return failure("quota", retryable=False, fatal="quota")
    if status == 404 or err.code == "model_not_found":
        return failure("model_not_found", retryable=False, fatal="model_not_found")
    if _is_content_filter(err):
        try:
            filters = filter_verdict(err.inner_filter or {}, [])
        except InvalidResponseError:  # categories nested past what can be stored: blocked, categories unknown
            filters = None
        return failure("content_filter", retryable=False, filters=filters)
    if status == 429:
        if err.message.startswith("Request too large"):
            return failure("bad_request", retryable=False)
        return failure("rate_limited", retryable=True)
    if status in RETRYABLE_STATUSES:
        return failure("timeout" if status == 408 else "server_error", retryable=True)
    if status >= 500:
        return failure("server_error", retryable=True)
    return failure("bad_request", retryable=False)


def backoff_s(attempt: int, *, rng: random.Random, initial_s: float = 0.5, max_s: float = 30.0) -> float:
    """Wait before attempt ``attempt + 1``: exponential, capped, with 25% downward jitter.

    The jitter only shortens (as openai-python does), so the cap is a real cap.
    """
    base = min(max_s, initial_s * 2.0 ** max(0, attempt - 1))
    return base * (1.0 - 0.25 * rng.random())


def wait_before_retry(failure: Failure, attempt: int, *, rng: random.Random) -> float:
    """The server's word wins (up to a ceiling); otherwise backoff."""
    if failure.retry_after_s is not None and failure.retry_after_s > 0:
        return min(failure.retry_after_s, MAX_SERVER_WAIT_S)
    return backoff_s(attempt, rng=rng)


async def call_with_retries(
    attempt_fn: Callable[[int], Awaitable[Outcome]],
    *,
    max_attempts: int,
    sleep: Callable[[float], Awaitable[None]],
    rng: random.Random,
) -> tuple[Outcome, int]:
    """Run ``attempt_fn(attempt)`` until it succeeds, fails for good, or attempts run out.

    Returns the last outcome and how many attempts were made. A plain loop, as
    openai-python's ``_retry_request`` is: the decisions (``Failure.retryable``,
    ``wait_before_retry``) are the pure functions above, so nothing is left for a
    retry library to own, and tenacity's per-call set-up (~34 us of CPU) was a tenth
    of the pipeline's per-row budget.
    """
    attempt = 1
    while True:
        outcome = await attempt_fn(attempt)
        if not isinstance(outcome, Failure) or not outcome.retryable or attempt >= max_attempts:
            return outcome, attempt
        await sleep(wait_before_retry(outcome, attempt, rng=rng))
        attempt += 1
