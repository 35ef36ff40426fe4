"""Retry decisions from a table of real error bodies (shared/reference/providers.md §2), and the retry loop."""

from __future__ import annotations

import json
import random

import anyio
import pytest

from pipeline.models import Failure, Reply
from pipeline.retry import backoff_s, call_with_retries, classify_http, retry_after_s, wait_before_retry

TPM_429 = {"error": {"message": "Rate limit reached for gpt-4 in organization org-x on tokens per min (TPM): Limit 10000, Used 9348, Requested 5086. Please try again in 26.604s. Visit https://platform.openai.com/account/rate-limits to learn more.", "type": "tokens", "param": None, "code": "rate_limit_exceeded"}}
QUOTA_429 = {"error": {"message": "You exceeded your current quota, please check your plan and billing details.", "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}}
CREDIT_429 = {"error": {"message": "You have no credits remaining.", "type": "insufficient_quota", "param": None, "code": "credit_balance_exhausted"}}
TOO_LARGE_429 = {"error": {"message": "Request too large for gpt-4o on tokens per min (TPM): Limit 30000, Requested 30601.", "type": "tokens", "param": None, "code": "rate_limit_exceeded"}}
KEY_401 = {"error": {"message": "Incorrect API key provided: sk-VKMIs***wjh3.", "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}}
FILTER_400 = {"error": {"message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy.", "type": None, "param": "prompt", "code": "content_filter", "status": 400,
              "innererror": {"code": "ResponsibleAIPolicyViolation", "content_filter_result": {
                  "hate": {"filtered": False, "severity": "safe"}, "jailbreak": {"filtered": True, "detected": True},
                  "violence": {"filtered": False, "severity": "safe"}}}}}
IMAGE_400 = {"error": {"message": "Timeout while downloading 20250503_162129.jpg.", "type": "invalid_request_error", "param": None, "code": "invalid_image_url"}}
FORMAT_400 = {"error": {"message": "You uploaded an unsupported image.", "type": "invalid_request_error", "param": None, "code": "invalid_image_format"}}
SERVER_500 = {"error": {"message": "The server had an error processing your request. Sorry about that!", "type": "server_error", "param": None, "code": None}}
OVERLOADED_503 = {"error": {"message": "That model is currently overloaded with other requests.", "type": "server_error", "param": None, "code": None}}
MODEL_404 = {"error": {"message": "The model `gpt-9` does not exist or you do not have access to it.", "type": "invalid_request_error", "param": None, "code": "model_not_found"}}


@pytest.mark.parametrize(
    ("status", "body", "error_type", "retryable", "fatal"),
    [
        (429, TPM_429, "rate_limited", True, None),
        (429, QUOTA_429, "quota", False, "quota"),
        (429, CREDIT_429, "quota", False, "quota"),
        (429, TOO_LARGE_429, "bad_request", False, None),
        (401, KEY_401, "auth", False, "auth"),
        (403, {"error": {"message": "forbidden"}}, "auth", False, "auth"),
        (400, FILTER_400, "content_filter", False, None),
        (400, IMAGE_400, "bad_request", False, None),
        (400, FORMAT_400, "bad_request", False, None),
        (404, MODEL_404, "model_not_found", False, "model_not_found"),
        (408, {}, "timeout", True, None),
        (409, {}, "server_error", True, None),
        (500, SERVER_500, "server_error", True, None),
        (503, OVERLOADED_503, "server_error", True, None),
    ],
)
def test_classify_real_error_bodies(status, body, error_type, retryable, fatal):
    """Each real body maps to its error type, retryability and run-level consequence."""
    f = classify_http(status, json.dumps(body).encode(), {})
    assert (f.error_type, f.retryable, f.fatal, f.http_status) == (error_type, retryable, fatal, status)
    assert f"HTTP {status}" in f.message


def test_cloudflare_html_502_is_a_retryable_server_error():
    """An HTML 502 from the CDN is retried and its message is the page title."""
    f = classify_http(502, b"<html><head><title>api.openai.com | 502: Bad gateway</title></head></html>", {})
    assert f.error_type == "server_error" and f.retryable and "502: Bad gateway" in f.message


def test_prompt_filter_400_carries_categories():
    """Azure's prompt-filter 400 yields the filtered categories for the row."""
    f = classify_http(400, json.dumps(FILTER_400).encode(), {})
    assert f.filters is not None and f.filters.flagged and f.filters.categories == ("jailbreak",)
    assert f.filters.max_severity == "safe"


def test_retry_after_headers_in_each_format():
    """retry-after-ms beats retry-after; seconds, fractional seconds and HTTP dates all parse."""
    assert retry_after_s({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after_s({"retry-after": "2"}) == 2.0
    assert retry_after_s({"retry-after": "1.5"}) == 1.5
    assert retry_after_s({"retry-after": "Wed, 21 Oct 2015 07:28:10 GMT"}, now_epoch=1445412480.0) == 10.0
    assert retry_after_s({"retry-after": "soon"}) is None
    assert retry_after_s({}) is None


def test_retry_after_from_message_when_headers_are_missing():
    """OpenAI's 'Please try again in 26.604s' text is used when no header says how long."""
    f = classify_http(429, json.dumps(TPM_429).encode(), {})
    assert f.retry_after_s == pytest.approx(26.604)
    ms = classify_http(429, b'{"error": {"message": "Please try again in 308ms.", "code": "rate_limit_exceeded"}}', {})
    assert ms.retry_after_s == pytest.approx(0.308)


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

    outcome, attempts = anyio.run(lambda: call_with_retries(attempt, max_attempts=5, sleep=fake_sleep, rng=random.Random(0)))
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

    outcome, attempts = anyio.run(lambda: call_with_retries(always_503, max_attempts=4, sleep=no_sleep, rng=random.Random(0)))
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

    outcome, attempts = anyio.run(lambda: call_with_retries(always_503, max_attempts=4, sleep=record_sleep,
                                                           rng=random.Random(0)))
    assert attempts == 4 and calls == [1, 2, 3, 4]
    assert all(0.75 * b <= s <= b for s, b in zip(slept, (0.5, 1.0, 2.0), strict=True))
    calls.clear()
    slept.clear()
    outcome, attempts = anyio.run(lambda: call_with_retries(always_503, max_attempts=1, sleep=record_sleep,
                                                           rng=random.Random(0)))
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


def test_a_429_message_asking_for_years_keeps_its_wait():
    """"try again in 99999999s" on a 429 is a wait of 99,999,999 s, left for max_wait_s to refuse."""
    body = json.dumps({"error": {"message": "Please try again in 99999999s.", "code": "rate_limit_exceeded"}}).encode()
    failure = classify_http(429, body, {})
    assert failure.error_type == "rate_limited" and failure.retry_after_s == 99999999.0


def test_error_bodies_nested_a_thousand_deep_are_classified_not_raised():
    """A 400 whose message and content-filter result are nested 1,000 deep: a bad_request / content_filter
    failure, never RecursionError."""
    deep = '{"x":' * 1000 + "{}" + "}" * 1000  # within orjson's 1,024 levels, past Python's str()
    body = ('{"error": {"message": ' + deep + ', "code": "invalid_image"}}').encode()
    assert classify_http(400, body, {}).error_type == "bad_request"
    filtered = ('{"error": {"message": "blocked", "code": "content_filter", "innererror": '
                '{"content_filter_result": {"hate": ' + deep + "}}}}").encode()
    failure = classify_http(400, filtered, {})
    assert failure.error_type == "content_filter" and failure.filters is None
