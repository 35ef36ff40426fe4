"""One attempt → Reply or Failure, over httpx.MockTransport (statuses, bodies, transport errors)."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import httpx
import pytest

from pipeline.client import VisionClient
from pipeline.models import Failure, Reply

SEED000 = (Path(__file__).parent / "fixtures" / "seed000_azure_filter_response.json").read_bytes()
KEY = "sk-test-SECRET-0123456789"


def complete_with(handler, *, api_key=KEY, timeout_s=5.0):
    async def go():
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            client = VisionClient(http, base_url="http://sim.test/v1/", api_key=api_key, timeout_s=timeout_s)
            return await client.complete({"model": "gpt-4o", "messages": []})

    return anyio.run(go)


def test_sends_bearer_key_to_chat_completions_and_parses_a_200():
    """POST {base}/chat/completions with the bearer key; a 200 becomes a Reply."""
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["url"] = str(request.url)
        seen["auth"] = request.headers["authorization"]
        seen["body"] = json.loads(request.content)
        return httpx.Response(200, content=SEED000, headers={"x-ratelimit-remaining-requests": "5", "server": "x"})

    outcome = complete_with(handler)
    assert seen == {"url": "http://sim.test/v1/chat/completions", "auth": f"Bearer {KEY}",
                    "body": {"model": "gpt-4o", "messages": []}}
    assert isinstance(outcome, Reply) and outcome.completion.usage.prompt_tokens == 1116
    assert outcome.headers == {"x-ratelimit-remaining-requests": "5"}


@pytest.mark.parametrize(
    ("status", "body", "headers", "error_type", "retryable", "retry_after"),
    [
        (429, b'{"error": {"message": "slow down", "code": "rate_limit_exceeded"}}', {"retry-after-ms": "1500"}, "rate_limited", True, 1.5),
        (503, b'{"error": {"message": "overloaded", "type": "server_error"}}', {}, "server_error", True, None),
        (200, b"<html>oops</html>", {}, "invalid_response", True, None),
        (200, b'{"choices": []}', {}, "invalid_response", True, None),
        (400, b'{"error": {"message": "bad image", "code": "invalid_image_format"}}', {}, "bad_request", False, None),
    ],
)
def test_http_answers_become_failures(status, body, headers, error_type, retryable, retry_after):
    """Statuses and bodies map to error type, retryability and the server's wait."""
    outcome = complete_with(lambda request: httpx.Response(status, content=body, headers=headers))
    assert isinstance(outcome, Failure)
    assert (outcome.error_type, outcome.retryable, outcome.retry_after_s) == (error_type, retryable, retry_after)
    assert outcome.http_status == status and outcome.latency_s is not None


@pytest.mark.parametrize(
    ("exc", "error_type"),
    [(httpx.ReadTimeout("read timed out"), "timeout"), (httpx.ConnectTimeout("connect"), "timeout"),
     (httpx.ConnectError("refused"), "connection"), (httpx.RemoteProtocolError("peer closed"), "connection")],
)
def test_transport_errors_become_retryable_failures_without_status(exc, error_type):
    """Timeouts and connection errors are retryable and carry no HTTP status."""
    def handler(request):
        raise exc

    outcome = complete_with(handler)
    assert isinstance(outcome, Failure) and outcome.error_type == error_type
    assert outcome.retryable and outcome.http_status is None


def test_a_server_echoing_the_key_does_not_leak_it():
    """An error message that contains the key has it masked."""
    outcome = complete_with(lambda r: httpx.Response(401, json={"error": {"message": f"Incorrect API key provided: {KEY}"}}))
    assert isinstance(outcome, Failure) and outcome.fatal == "auth"
    assert KEY not in outcome.message and "***" in outcome.message


def test_no_key_sends_no_authorization_header():
    """Without a key (a local vLLM) no Authorization header is sent."""
    seen = {}

    def handler(request):
        seen["auth"] = request.headers.get("authorization")
        return httpx.Response(200, content=SEED000)

    complete_with(handler, api_key=None)
    assert seen["auth"] is None
