"""The LiteLLM dialect against answers captured from a real LiteLLM proxy (1.80.0) in front of the
simulator: tests/fixtures/litellm_proxy_1.80.0.json (scripts/check_litellm.py re-captures them)."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from pipeline.dialects import dialect_for
from pipeline.dialects import openai as openai_dialect

CAPTURED = json.loads((Path(__file__).parent / "fixtures" / "litellm_proxy_1.80.0.json").read_text())["answers"]
LITELLM = dialect_for("litellm")


def classify(name: str, dialect=LITELLM):
    answer = CAPTURED[name]
    return dialect.classify_error(answer["status"], orjson.dumps(answer["body"]), answer["headers"])


@pytest.mark.parametrize(
    ("name", "error_type", "fatal", "retryable"),
    [
        ("quota", "quota", "quota", False),  # a generic 429 whose words say quota
        ("upstream_auth", "auth", "auth", False),
        ("wrong_proxy_key", "auth", "auth", False),  # 400 "No connected db.": no key can be checked
        ("unknown_model", "model_not_found", "model_not_found", False),
        ("filter_prompt", "content_filter", None, False),  # that row's verdict; the run goes on
        ("invalid_image_url", "timeout", None, True),  # "Timeout while downloading the image"
        ("429", "rate_limited", None, True),
        ("cooldown", "rate_limited", None, True),
        ("503", "server_error", None, True),
    ],
)
def test_each_captured_error_means_what_it_says(name, error_type, fatal, retryable):
    failure = classify(name)
    assert (failure.error_type, failure.fatal, failure.retryable) == (error_type, fatal, retryable)


def test_openais_reading_of_the_same_answers_gets_quota_the_key_and_the_model_wrong():
    """Why the dialect exists: read as OpenAI's, these would be retried for ever or fail every row."""
    for name in ("quota", "wrong_proxy_key", "unknown_model"):
        assert classify(name, openai_dialect.DIALECT).fatal is None


def test_waits_come_from_the_words_or_the_renamed_header():
    assert classify("429").retry_after_s == 1.0  # "Please try again in 1s"
    assert classify("cooldown").retry_after_s == 5.0  # "Try again in 5 seconds"
    body = orjson.dumps(CAPTURED["429"]["body"])
    renamed = LITELLM.classify_error(429, body, {"llm_provider-retry-after": "7"})
    assert renamed.retry_after_s == 7.0
    own = LITELLM.classify_error(429, body, {"Retry-After": "2", "llm_provider-retry-after": "7"})
    assert own.retry_after_s == 2.0  # the proxy's own limiter speaks for itself


@pytest.mark.parametrize(
    "words",
    [
        "litellm.BadRequestError: OpenAIException - Unrecognized request argument supplied: frobnicate",
        "litellm.UnsupportedParamsError: openai does not support parameters: ['reasoning_effort'], for model=gpt-4o",
        "litellm.BadRequestError: OpenAIException - {'code': 'unsupported_parameter', 'message': 'Use max_completion_tokens'}",
    ],
)
def test_a_parameter_the_model_refuses_stops_the_run(words):
    body = orjson.dumps({"error": {"message": words, "type": None, "param": None, "code": "400"}})
    failure = LITELLM.classify_error(400, body, {})
    assert failure.fatal == "request_shape" and not failure.retryable


def test_the_proxys_budget_is_a_quota_stop():
    body = orjson.dumps(
        {
            "error": {
                "message": "Budget has been exceeded! Team=t1 Current cost: 12.5, Max budget: 10.0",
                "type": "budget_exceeded",
                "param": None,
                "code": "400",
            }
        }
    )
    assert LITELLM.classify_error(400, body, {}).fatal == "quota"


def test_choice_filters_moved_into_provider_specific_fields_are_found():
    completion = LITELLM.parse_completion(orjson.dumps(CAPTURED["filter_completion"]["body"]))
    assert completion.filters.flagged and "violence" in completion.filters.categories
    plain = openai_dialect.DIALECT.parse_completion(orjson.dumps(CAPTURED["filter_completion"]["body"]))
    assert "violence" not in plain.filters.categories  # lost to OpenAI's reading
    ok = LITELLM.parse_completion(orjson.dumps(CAPTURED["ok"]["body"]))
    assert ok.caption and not ok.filters.flagged and ok.filters.raw_json is not None


def test_rate_limit_headers_read_plain_and_renamed():
    kept = LITELLM.kept_headers(CAPTURED["ok"]["headers"])
    limits = LITELLM.rate_limit_headers(kept)
    assert limits.limit_requests == 6000 and limits.remaining_requests is not None
    assert limits.reset_requests_s is not None  # only sent as llm_provider-x-ratelimit-reset-requests
    assert (
        openai_dialect.DIALECT.rate_limit_headers(
            openai_dialect.kept_headers(CAPTURED["ok"]["headers"])
        ).reset_requests_s
        is None
    )
