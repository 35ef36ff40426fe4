"""One attempt → Reply or Failure: over httpx.MockTransport (statuses, bodies, transport errors), and over
the production aiohttp poster against the simulator."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import anyio
import httpx
import pytest

from pipeline.client import VisionClient, open_http, proxy_for
from pipeline.dialects import dialect_for
from pipeline.models import Failure, Reply
from pipeline.simulator import SimConfig, SimulatorApp, SimulatorServer

SEED000 = (Path(__file__).parent / "fixtures" / "seed000_azure_filter_response.json").read_bytes()
KEY = "sk-test-SECRET-0123456789"
OPENAI = dialect_for("openai")


def complete_with(handler, *, api_key=KEY, timeout_s=5.0):
    async def go():
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            client = VisionClient(
                http, dialect=OPENAI, base_url="http://sim.test/v1/", api_key=api_key, timeout_s=timeout_s
            )
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
    assert seen == {
        "url": "http://sim.test/v1/chat/completions",
        "auth": f"Bearer {KEY}",
        "body": {"model": "gpt-4o", "messages": []},
    }
    assert isinstance(outcome, Reply) and outcome.completion.usage.prompt_tokens == 1116
    assert outcome.headers == {"x-ratelimit-remaining-requests": "5"}


@pytest.mark.parametrize(
    ("status", "body", "headers", "error_type", "retryable", "retry_after"),
    [
        (
            429,
            b'{"error": {"message": "slow down", "code": "rate_limit_exceeded"}}',
            {"retry-after-ms": "1500"},
            "rate_limited",
            True,
            1.5,
        ),
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
    [
        (httpx.ReadTimeout("read timed out"), "timeout"),
        (httpx.ConnectTimeout("connect"), "timeout"),
        (httpx.ConnectError("refused"), "connection"),
        (httpx.RemoteProtocolError("peer closed"), "connection"),
    ],
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
    outcome = complete_with(
        lambda r: httpx.Response(401, json={"error": {"message": f"Incorrect API key provided: {KEY}"}})
    )
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


def _image_body(url: str) -> dict:
    return {
        "model": "gpt-4o",
        "max_tokens": 50,
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "Describe."}, {"type": "image_url", "image_url": {"url": url}}],
            }
        ],
    }


def complete_over_aiohttp(
    base_url: str,
    urls: list[str],
    *,
    timeout_s: float = 5.0,
    api_key: str | None = None,
    environ: dict[str, str] | None = None,
) -> list:
    """The production path: ``open_http``'s aiohttp poster, against a real server."""

    async def go():
        async with open_http(concurrency=4, timeout_s=timeout_s, endpoint_url=base_url, environ=environ or {}) as http:
            client = VisionClient(
                http.client, poster=http.poster, dialect=OPENAI, base_url=base_url, api_key=api_key, timeout_s=timeout_s
            )
            return [await client.complete(_image_body(url)) for url in urls]

    return anyio.run(go)


def test_the_aiohttp_poster_maps_answers_and_transport_faults_like_the_httpx_path():
    """Against the simulator: a 200, a 429 with its wait and lower-cased headers, a stall past the
    deadline (timeout), a reset connection (connection) and a 401 with the key masked."""
    app = SimulatorApp(
        SimConfig(
            latency_median_s=0.001, latency_p99_s=0.002, accept_any_model=True, stall_s=1.0, api_key=KEY, rpm=1000
        )
    )
    with SimulatorServer(app, log_level="critical") as sim:
        # The simulator's first answer loads its tokenizer (~0.7 s on 2 shared cores): not under the 0.5 s deadline.
        complete_over_aiohttp(sim.base_url, ["https://i.test/warm-up.jpg"], api_key=KEY)
        ok, limited, stalled, reset = complete_over_aiohttp(
            sim.base_url,
            [
                "https://i.test/a.jpg",
                "https://i.test/b.jpg?sim=429",
                "https://i.test/c.jpg?sim=stall",
                "https://i.test/d.jpg?sim=reset",
            ],
            timeout_s=0.5,
            api_key=KEY,
        )
        (refused,) = complete_over_aiohttp(sim.base_url, ["https://i.test/e.jpg"], api_key=KEY + "-wrong")
    assert isinstance(ok, Reply) and ok.completion.caption and ok.completion.usage.prompt_tokens
    assert ok.headers["x-ratelimit-limit-requests"] == "1000" and all(k == k.lower() for k in ok.headers)
    assert isinstance(limited, Failure) and limited.error_type == "rate_limited" and limited.http_status == 429
    assert limited.retry_after_s is not None and limited.retry_after_s > 0
    assert isinstance(stalled, Failure) and stalled.error_type == "timeout" and stalled.http_status is None
    assert 0.5 <= stalled.latency_s < 1.0
    assert isinstance(reset, Failure) and reset.error_type == "connection" and reset.retryable
    assert isinstance(refused, Failure) and refused.fatal == "auth" and KEY not in refused.message


def test_the_aiohttp_poster_reports_a_closed_port_as_a_connection_failure():
    """Nothing listening: a retryable "connection" failure, not an exception."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (outcome,) = complete_over_aiohttp(f"http://127.0.0.1:{port}/v1", ["https://i.test/a.jpg"], timeout_s=2.0)
    assert isinstance(outcome, Failure) and outcome.error_type == "connection" and outcome.retryable


@pytest.mark.parametrize(
    ("url", "environ", "expected"),
    [
        ("https://api.302.ai/v1", {}, None),
        ("https://api.302.ai/v1", {"HTTPS_PROXY": "http://proxy:3128"}, "http://proxy:3128"),
        ("https://api.302.ai/v1", {"https_proxy": "http://lower:1", "HTTPS_PROXY": "http://upper:2"}, "http://lower:1"),
        (
            "http://vllm.internal:8000/v1",
            {"HTTP_PROXY": "http://proxy:3128", "HTTPS_PROXY": "http://other:1"},
            "http://proxy:3128",
        ),
        ("https://api.302.ai/v1", {"ALL_PROXY": "http://all:9"}, "http://all:9"),
        ("https://api.302.ai/v1", {"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": ".302.ai,localhost"}, None),
        ("https://api.302.ai/v1", {"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "*"}, None),
        ("http://127.0.0.1:8000/v1", {"HTTP_PROXY": "http://proxy:3128"}, None),
    ],
)
def test_the_endpoint_proxy_comes_from_the_environment(url, environ, expected):
    """https_proxy/http_proxy/all_proxy in either case, no_proxy honoured, loopback never proxied."""
    assert proxy_for(url, environ) == expected


def test_chat_posts_go_through_the_environments_proxy():
    """With HTTP_PROXY set, the POST for an endpoint on a .invalid host (which cannot resolve) is sent to
    the proxy, here the simulator itself, with the proxy's credentials as a Proxy-Authorization header."""
    seen: list[dict[str, str]] = []
    app = SimulatorApp(SimConfig(latency_median_s=0.001, latency_p99_s=0.002, accept_any_model=True))

    async def recording_proxy(scope, receive, send):
        if scope["type"] == "http":
            seen.append({k.decode(): v.decode() for k, v in scope["headers"]})
        await app(scope, receive, send)

    with SimulatorServer(recording_proxy, log_level="critical") as sim:
        proxy = sim.base_url.removesuffix("/v1").replace("http://", "http://user:pw@")
        (outcome,) = complete_over_aiohttp(
            "http://api.caption-test.invalid/v1", ["https://i.test/a.jpg"], environ={"HTTP_PROXY": proxy}
        )
    assert isinstance(outcome, Reply) and outcome.completion.caption
    assert len(seen) == 1 and seen[0]["proxy-authorization"] == "Basic dXNlcjpwdw=="  # user:pw
    assert seen[0]["host"] == "api.caption-test.invalid"


def test_a_body_over_max_response_bytes_is_invalid_response_and_not_retried():
    """A 200 (or any status) longer than max_response_bytes: invalid_response, not retryable, the body not kept."""

    async def go():
        def handler(request):
            return httpx.Response(200, content=b'{"choices": [{"message": {"content": "' + b"a" * 5000 + b'"}}]}')

        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            client = VisionClient(
                http, dialect=OPENAI, base_url="http://sim.test/v1", api_key=KEY, timeout_s=5.0, max_response_bytes=4096
            )
            return await client.complete({"model": "gpt-4o", "messages": []})

    outcome = anyio.run(go)
    assert isinstance(outcome, Failure) and outcome.error_type == "invalid_response"
    assert not outcome.retryable and outcome.http_status == 200 and "max_response_bytes" in outcome.message


def test_an_error_body_is_masked_before_it_is_cut():
    """A non-JSON 502 quoting the key at character 190: the message has *** there, not the key's head."""
    body = ("." * 190 + KEY + " and more").encode()
    outcome = complete_with(lambda request: httpx.Response(502, content=body))
    assert isinstance(outcome, Failure) and "***" in outcome.message and KEY[:8] not in outcome.message


def test_a_200_error_object_quoting_the_key_is_masked():
    """{"error": {"message": "... Bearer KEY"}} in a 200: invalid_response with the key masked."""
    body = json.dumps({"error": {"message": f"proxy saw Authorization: Bearer {KEY}"}}).encode()
    outcome = complete_with(lambda request: httpx.Response(200, content=body))
    assert isinstance(outcome, Failure) and outcome.error_type == "invalid_response"
    assert KEY not in outcome.message and "Bearer ***" in outcome.message


def test_open_http_downloads_images_through_a_transport_built_on_first_use():
    """The download client's transport (which loads CA certificates) is made by the first
    download, once, and downloads work through it."""
    app = SimulatorApp(SimConfig(latency_median_s=0.001, latency_p99_s=0.002, accept_any_model=True))
    with SimulatorServer(app, log_level="critical") as sim:
        image_url = sim.base_url.removesuffix("/v1") + "/images/a.png?size=64x48"

        async def go():
            async with open_http(concurrency=2, timeout_s=5, endpoint_url=sim.base_url, environ={}) as http:
                transport = http.client._transport
                built_before = transport._transport is not None
                client = VisionClient(http.client, dialect=OPENAI, base_url=sim.base_url, api_key=KEY, timeout_s=5)
                first = await client.fetch_image(image_url, max_bytes=1_000_000, timeout_s=5)
                built = transport._transport
                second = await client.fetch_image(image_url, max_bytes=1_000_000, timeout_s=5)
                return built_before, first, second, built is transport._transport is not None

        built_before, first, second, built_once = anyio.run(go)
    assert not built_before and built_once
    assert first == second and first.startswith(b"\x89PNG")
