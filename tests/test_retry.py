"""The generic retry decisions (the server's wait, backoff) and the retry loop; what an error body means is
the dialect's (test_dialect_openai.py)."""

from __future__ import annotations

import random

import anyio
import pytest

from pipeline.models import Failure, Reply
from pipeline.retry import backoff_s, call_with_retries, retry_after_from_message, retry_after_s, wait_before_retry


def test_retry_after_headers_in_each_format():
    """retry-after-ms beats retry-after; seconds, fractional seconds and HTTP dates all parse."""
    assert retry_after_s({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after_s({"retry-after": "2"}) == 2.0
    assert retry_after_s({"retry-after": "1.5"}) == 1.5
    assert retry_after_s({"retry-after": "Wed, 21 Oct 2015 07:28:10 GMT"}, now_epoch=1445412480.0) == 10.0
    assert retry_after_s({"retry-after": "soon"}) is None
    assert retry_after_s({}) is None


def test_retry_after_from_message_reads_seconds_and_milliseconds():
    """'try again in 26.604s' / '308ms' / 'retry after 33 seconds' in a message are waits; other text is none."""
    assert retry_after_from_message("Please try again in 26.604s. Visit ...") == 26.604
    assert retry_after_from_message("Please try again in 308ms.") == 0.308
    assert retry_after_from_message("Please retry after 33 seconds.") == 33.0
    assert retry_after_from_message("Rate limit reached.") is None


def test_backoff_is_exponential_capped_and_jittered_downwards():
    """Backoff doubles per attempt, never exceeds the cap, and jitter only shortens it."""
    rng = random.Random(1)
    waits = [backoff_s(a, rng=rng, initial_s=0.5, max_s=8.0) for a in range(1, 10)]
    for attempt, wait in enumerate(waits, start=1):
        nominal = min(8.0, 0.5 * 2 ** (attempt - 1))
        assert 0.75 * nominal <= wait <= nominal
    assert max(waits) <= 8.0


def test_server_wait_wins_over_backoff_up_to_a_ceiling():
    """A Retry-After is used as given, but never more than the ceiling."""
    rng = random.Random(0)
    assert wait_before_retry(Failure("rate_limited", "x", True, retry_after_s=3.0), 1, rng=rng) == 3.0
    assert wait_before_retry(Failure("rate_limited", "x", True, retry_after_s=86400.0), 1, rng=rng) == 300.0


def _ok() -> Reply:
    from pipeline.models import Completion, FilterVerdict, Usage

    return Reply(Completion("c", "m", "stop", Usage(), FilterVerdict(), "id"), 200, 0.01)


def test_call_with_retries_retries_transient_then_succeeds_with_injected_sleep():
    """Transient failures are retried with the fake sleep; the attempt count is returned."""
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    outcomes = [Failure("server_error", "a", True), Failure("rate_limited", "b", True, retry_after_s=2.0), _ok()]

    async def attempt(n: int):
        return outcomes[n - 1]

    outcome, attempts = anyio.run(
        lambda: call_with_retries(attempt, max_attempts=5, sleep=fake_sleep, rng=random.Random(0))
    )
    assert isinstance(outcome, Reply) and attempts == 3
    assert len(slept) == 2 and 0.375 <= slept[0] <= 0.5 and slept[1] == 2.0


def test_call_with_retries_stops_at_max_attempts_and_never_retries_permanent():
    """Attempts stop at max_attempts; a non-retryable failure is returned after one attempt."""

    async def no_sleep(_: float) -> None:
        return None

    async def always_503(n: int):
        return Failure("server_error", "down", True)

    async def bad(n: int):
        return Failure("bad_request", "bad", False)

    outcome, attempts = anyio.run(
        lambda: call_with_retries(always_503, max_attempts=4, sleep=no_sleep, rng=random.Random(0))
    )
    assert attempts == 4 and isinstance(outcome, Failure) and outcome.retryable
    outcome, attempts = anyio.run(lambda: call_with_retries(bad, max_attempts=4, sleep=no_sleep, rng=random.Random(0)))
    assert attempts == 1 and outcome.error_type == "bad_request"


def test_call_with_retries_backs_off_exponentially_across_attempts_and_respects_one_attempt():
    """Each retry waits for its own attempt number (0.5 s, 1 s, 2 s, less jitter); max_attempts=1 never retries."""
    slept: list[float] = []
    calls: list[int] = []

    async def record_sleep(seconds: float) -> None:
        slept.append(seconds)

    async def always_503(n: int):
        calls.append(n)
        return Failure("server_error", "down", True)

    outcome, attempts = anyio.run(
        lambda: call_with_retries(always_503, max_attempts=4, sleep=record_sleep, rng=random.Random(0))
    )
    assert attempts == 4 and calls == [1, 2, 3, 4]
    assert all(0.75 * b <= s <= b for s, b in zip(slept, (0.5, 1.0, 2.0), strict=True))
    calls.clear()
    slept.clear()
    outcome, attempts = anyio.run(
        lambda: call_with_retries(always_503, max_attempts=1, sleep=record_sleep, rng=random.Random(0))
    )
    assert attempts == 1 and calls == [1] and slept == [] and outcome.retryable


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "inf"}, float("inf")),
        ({"retry-after": "1e400"}, float("inf")),
        ({"retry-after-ms": "inf"}, float("inf")),
        ({"retry-after": "nan"}, None),
        ({"retry-after-ms": "nan", "retry-after": "3"}, 3.0),
        ({"retry-after": "-20"}, 0.0),
        ({"retry-after": "86400"}, 86400.0),
        ({"retry-after": "Wed, 21 Oct 99999 07:28:00 GMT"}, None),
    ],
)
def test_retry_after_reads_infinite_nan_and_absurd_values_without_raising(headers, seconds):
    """inf (or 1e400) is the longest wait there is; nan and dates past the calendar are no answer."""
    assert retry_after_s(headers, now_epoch=0.0) == seconds


def test_call_with_retries_goes_on_from_a_first_outcome_made_by_the_caller():
    calls = []

    async def attempt(n):
        calls.append(n)
        return _ok()

    async def no_sleep(_: float) -> None:
        pass

    first = Failure("server_error", "HTTP 503", retryable=True, http_status=503)
    outcome, attempts = anyio.run(
        lambda: call_with_retries(attempt, max_attempts=3, sleep=no_sleep, rng=random.Random(0), first=first)
    )
    assert isinstance(outcome, Reply) and attempts == 2 and calls == [2]
