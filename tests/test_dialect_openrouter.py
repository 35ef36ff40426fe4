"""The OpenRouter dialect: what its answers mean that OpenAI's reading gets wrong."""

from __future__ import annotations

import json

import pytest

from pipeline.dialects.openrouter import classify_http


def test_openrouter_429_waits_until_its_x_ratelimit_reset():
    """OpenRouter sends no Retry-After: the wait is X-RateLimit-Reset (epoch ms) minus now; a
    Retry-After, when one comes, still wins; a reset in the past or unreadable is no wait."""
    body = json.dumps({"error": {"code": 429, "message": "Rate limit exceeded: limit_rpm/openai/gpt-4o."}}).encode()
    now = 1_800_000_000.0
    reset = {"X-RateLimit-Limit": "20", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int((now + 7.5) * 1000))}
    failure = classify_http(429, body, reset, now_epoch=now)
    assert failure.error_type == "rate_limited" and failure.retryable and failure.retry_after_s == pytest.approx(7.5)
    assert classify_http(429, body, {**reset, "retry-after": "2"}, now_epoch=now).retry_after_s == 2.0
    assert (
        classify_http(429, body, {"x-ratelimit-reset": str(int(now * 1000) - 5000)}, now_epoch=now).retry_after_s == 0
    )
    assert classify_http(429, body, {"x-ratelimit-reset": "soon"}, now_epoch=now).retry_after_s is None
