"""OpenAI's wire format: URL, auth, kept headers, error classification from a table of real bodies
(shared/reference/providers.md §2), and the x-ratelimit-* header family."""

from __future__ import annotations

import json

import pytest

from pipeline.dialects.openai import auth_headers, classify_http, kept_headers, parse_rate_limit_headers, request_url

TPM_429 = {
    "error": {
        "message": "Rate limit reached for gpt-4 in organization org-x on tokens per min (TPM): Limit 10000, Used 9348, Requested 5086. Please try again in 26.604s. Visit https://platform.openai.com/account/rate-limits to learn more.",
        "type": "tokens",
        "param": None,
        "code": "rate_limit_exceeded",
    }
}
QUOTA_429 = {
    "error": {
        "message": "You exceeded your current quota, please check your plan and billing details.",
        "type": "insufficient_quota",
        "param": None,
        "code": "insufficient_quota",
    }
}
CREDIT_429 = {
    "error": {
        "message": "You have no credits remaining.",
        "type": "insufficient_quota",
        "param": None,
        "code": "credit_balance_exhausted",
    }
}
TOO_LARGE_429 = {
    "error": {
        "message": "Request too large for gpt-4o on tokens per min (TPM): Limit 30000, Requested 30601.",
        "type": "tokens",
        "param": None,
        "code": "rate_limit_exceeded",
    }
}
KEY_401 = {
    "error": {
        "message": "Incorrect API key provided: sk-VKMIs***wjh3.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
}
FILTER_400 = {
    "error": {
        "message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy.",
        "type": None,
        "param": "prompt",
        "code": "content_filter",
        "status": 400,
        "innererror": {
            "code": "ResponsibleAIPolicyViolation",
            "content_filter_result": {
                "hate": {"filtered": False, "severity": "safe"},
                "jailbreak": {"filtered": True, "detected": True},
                "violence": {"filtered": False, "severity": "safe"},
            },
        },
    }
}
IMAGE_400 = {
    "error": {
        "message": "Timeout while downloading 20250503_162129.jpg.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_image_url",
    }
}
BAD_IMAGE_URL_400 = {
    "error": {
        "message": "Invalid image URL: the image could not be downloaded.",
        "type": "invalid_request_error",
        "param": "url",
        "code": "invalid_image_url",
    }
}
FORMAT_400 = {
    "error": {
        "message": "You uploaded an unsupported image.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_image_format",
    }
}
SERVER_500 = {
    "error": {
        "message": "The server had an error processing your request. Sorry about that!",
        "type": "server_error",
        "param": None,
        "code": None,
    }
}
OVERLOADED_503 = {
    "error": {
        "message": "That model is currently overloaded with other requests.",
        "type": "server_error",
        "param": None,
        "code": None,
    }
}
MODEL_404 = {
    "error": {
        "message": "The model `gpt-9` does not exist or you do not have access to it.",
        "type": "invalid_request_error",
        "param": None,
        "code": "model_not_found",
    }
}


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
        (400, IMAGE_400, "timeout", True, None),  # the provider's download timed out: usually transient
        (400, BAD_IMAGE_URL_400, "bad_request", False, None),
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


def test_retry_after_from_message_when_headers_are_missing():
    """OpenAI's 'Please try again in 26.604s' text is used when no header says how long."""
    f = classify_http(429, json.dumps(TPM_429).encode(), {})
    assert f.retry_after_s == pytest.approx(26.604)
    ms = classify_http(429, b'{"error": {"message": "Please try again in 308ms.", "code": "rate_limit_exceeded"}}', {})
    assert ms.retry_after_s == pytest.approx(0.308)


def test_a_429_message_asking_for_years_keeps_its_wait():
    """ "try again in 99999999s" on a 429 is a wait of 99,999,999 s, left for max_wait_s to refuse."""
    body = json.dumps({"error": {"message": "Please try again in 99999999s.", "code": "rate_limit_exceeded"}}).encode()
    failure = classify_http(429, body, {})
    assert failure.error_type == "rate_limited" and failure.retry_after_s == 99999999.0


def test_error_bodies_nested_a_thousand_deep_are_classified_not_raised():
    """A 400 whose message and content-filter result are nested 1,000 deep: a bad_request / content_filter
    failure, never RecursionError."""
    deep = '{"x":' * 1000 + "{}" + "}" * 1000  # within orjson's 1,024 levels, past Python's str()
    body = ('{"error": {"message": ' + deep + ', "code": "invalid_image"}}').encode()
    assert classify_http(400, body, {}).error_type == "bad_request"
    filtered = (
        '{"error": {"message": "blocked", "code": "content_filter", "innererror": '
        '{"content_filter_result": {"hate": ' + deep + "}}}}"
    ).encode()
    failure = classify_http(400, filtered, {})
    assert failure.error_type == "content_filter" and failure.filters is None


def test_rate_limit_header_family_parses_openai_and_azure_names():
    """x-ratelimit-* and Azure's hyphenated x-rate-limit-reset-tokens; -1 means unknown."""
    info = parse_rate_limit_headers(
        {
            "x-ratelimit-limit-requests": "3000",
            "x-ratelimit-remaining-requests": "2999",
            "x-ratelimit-remaining-tokens": "-1",
            "x-rate-limit-reset-tokens": "55",
            "x-ratelimit-reset-requests": "20ms",
        }
    )
    assert info.limit_requests == 3000 and info.remaining_requests == 2999
    assert info.remaining_tokens is None and info.reset_tokens_s == 55.0 and info.reset_requests_s == 0.02


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"x-ratelimit-limit-requests": "inf", "x-ratelimit-remaining-tokens": "1e400"}, (None, None)),
        ({"x-ratelimit-limit-requests": "nan", "x-ratelimit-remaining-tokens": "-1"}, (None, None)),
        ({"x-ratelimit-limit-requests": str(2**60), "x-ratelimit-remaining-tokens": "59.0"}, (None, 59)),
    ],
)
def test_rate_limit_headers_that_are_not_counts_are_ignored(headers, expected):
    """inf, nan, 1e400, negatives and counts past 2^53 are ignored, never an OverflowError."""
    info = parse_rate_limit_headers(headers)
    assert (info.limit_requests, info.remaining_tokens) == expected


def test_the_url_is_the_base_plus_chat_completions_and_any_query():
    """{base_url}/chat/completions whatever trailing slash; query parameters appended, encoded."""
    assert request_url("http://sim.test/v1/", {}) == "http://sim.test/v1/chat/completions"
    assert (
        request_url("http://sim.test/v1", {"api-version": "2024-10-21", "x": "a b"})
        == "http://sim.test/v1/chat/completions?api-version=2024-10-21&x=a+b"
    )


def test_the_key_goes_in_a_bearer_header_and_no_key_sends_none():
    """Authorization: Bearer <key>; without a key (a local vLLM) no auth header at all."""
    assert auth_headers("sk-1") == {"Authorization": "Bearer sk-1"}
    assert auth_headers(None) == {} and auth_headers("") == {}


def test_kept_headers_are_the_rate_limit_family_and_the_waits_lower_cased():
    """x-ratelimit-*, Azure's x-rate-limit-*, retry-after(-ms) and x-ms-retry-after-ms are kept; the rest is not."""
    headers = {
        "X-RateLimit-Remaining-Requests": "5",
        "x-rate-limit-reset-tokens": "55",
        "Retry-After": "2",
        "retry-after-ms": "1500",
        "x-ms-retry-after-ms": "10",
        "server": "x",
        "x-request-id": "r",
    }
    assert kept_headers(headers) == {
        "x-ratelimit-remaining-requests": "5",
        "x-rate-limit-reset-tokens": "55",
        "retry-after": "2",
        "retry-after-ms": "1500",
        "x-ms-retry-after-ms": "10",
    }
