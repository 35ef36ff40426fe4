"""The retry loop, and the generic decisions it needs as small pure functions.

What an answer means (retryable? fatal?) is the provider dialect's call
(``dialects/``); this module only decides how long to wait and when to give up.

- ``retry_after_s``: the server's wait, from ``retry-after-ms``, ``retry-after``
  (seconds or an HTTP date); ``retry_after_from_message``: from the "try again in
  1.5s" / "retry after 33 seconds" text providers put in messages. Dialects use both.
- ``backoff_s``: capped exponential backoff with jitter, for when the server is silent.
- ``call_with_retries``: the retry loop; ``sleep`` injectable.
"""

from __future__ import annotations

import email.utils
import math
import random
import re
from collections.abc import Awaitable, Callable, Mapping

from .models import Failure, Outcome

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
    on_retry: Callable[[Failure, int, float], None] | None = None,
    first: Outcome | None = None,
) -> tuple[Outcome, int]:
    """Run ``attempt_fn(attempt)`` until it succeeds, fails for good, or attempts run out.

    Returns the last outcome and how many attempts were made. A plain loop, as
    openai-python's ``_retry_request`` is: the decisions (``Failure.retryable``,
    ``wait_before_retry``) are the pure functions above, so nothing is left for a
    retry library to own, and tenacity's per-call set-up (~34 us of CPU) was a tenth
    of the pipeline's per-row budget. ``on_retry(failure, attempt, wait_s)`` hears of
    each retry before its wait (the ``-v`` log line). ``first``: the outcome of attempt 1, when the
    caller made it already (most rows are answered at once and never need the loop).
    """
    attempt = 1
    while True:
        outcome = first if first is not None and attempt == 1 else await attempt_fn(attempt)
        if not isinstance(outcome, Failure) or not outcome.retryable or attempt >= max_attempts:
            return outcome, attempt
        wait_s = wait_before_retry(outcome, attempt, rng=rng)
        if on_retry is not None:
            on_retry(outcome, attempt, wait_s)
        await sleep(wait_s)
        attempt += 1
