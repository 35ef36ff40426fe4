"""The only place httpx is called; its exceptions become ``Failure`` values here.

``VisionClient.complete`` makes exactly one attempt and never raises for an
HTTP or transport problem: it returns ``Reply`` or ``Failure``. Retrying,
pacing and the run-level consequences are other modules' jobs.

Transport: httpx's API over aiohttp's HTTP/1.1 stack (``httpx-aiohttp``). On
2 cores httpx's own transport spends ~5 ms of CPU per request; aiohttp ~1 ms
(README, "Transport"). Tests swap in ``httpx.MockTransport`` or
``httpx.ASGITransport`` through the same constructor.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import anyio
import httpx
import orjson
from httpx_aiohttp import AiohttpTransport

from .errors import ImageUnreadableError
from .models import Failure, Outcome, Reply
from .parse import InvalidResponseError, parse_completion_bytes
from .retry import classify_http

Clock = Callable[[], float]

# Headers worth keeping from a response: the rate-limit family and the waits.
_KEPT_HEADER_PREFIXES = ("x-ratelimit-", "x-rate-limit-", "retry-after", "x-ms-retry-after")


def make_http_client(*, concurrency: int, timeout_s: float, transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    """The production client: one connection per concurrent request, no pool waits."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    if transport is None:
        transport = AiohttpTransport(limits=limits)
    timeout = httpx.Timeout(timeout_s, connect=min(10.0, timeout_s), pool=None)
    return httpx.AsyncClient(transport=transport, timeout=timeout, limits=limits, max_redirects=5)


def _kept_headers(headers: httpx.Headers) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.startswith(_KEPT_HEADER_PREFIXES)}


def _is_timeout(exc: httpx.TransportError) -> bool:
    # httpx-aiohttp maps every aiohttp connection error (a reset, a refused
    # connection) to ConnectTimeout; the cause tells the two apart.
    cause = exc.__cause__
    if isinstance(cause, aiohttp.ClientError) and not isinstance(cause, TimeoutError):
        return False
    return isinstance(exc, httpx.TimeoutException)


async def probe_image_size(http: httpx.AsyncClient, url: str, *, max_bytes: int = 65536,
                           timeout_s: float = 5.0) -> tuple[int, int] | None:
    """Read only enough of a remote image to learn its size: bounded in bytes and in time."""
    from .images import header_size

    head = bytearray()
    try:
        with anyio.fail_after(timeout_s):
            async with http.stream("GET", url, headers={"Range": f"bytes=0-{max_bytes - 1}"}) as response:
                if response.status_code not in (200, 206):
                    return None
                async for chunk in response.aiter_bytes():
                    head.extend(chunk)
                    size = header_size(bytes(head))
                    if size is not None or len(head) >= max_bytes:
                        return size
    except (TimeoutError, httpx.HTTPError):
        return None
    return header_size(bytes(head))


class VisionClient:
    """POSTs chat-completions bodies to one OpenAI-compatible endpoint."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        api_key: str | None,
        timeout_s: float,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
    ) -> None:
        self._http = http
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._api_key = api_key
        self._timeout_s = timeout_s
        self._clock = clock
        self._wall_clock = wall_clock

    def _scrub(self, text: str) -> str:
        """Servers sometimes echo the key in an error message; it must not reach the output."""
        return text.replace(self._api_key, "***") if self._api_key else text

    async def fetch_image(self, url: str, *, max_bytes: int, timeout_s: float) -> bytes:
        """Download an image to inline it: bounded in bytes and time, an image content type, http(s) redirects only.

        Sent without the API key: image hosts must never see it.
        """
        data = bytearray()
        try:
            with anyio.fail_after(timeout_s):
                async with self._http.stream("GET", url, follow_redirects=True) as response:
                    if response.status_code != 200:
                        raise ImageUnreadableError(f"{url}: download failed with HTTP {response.status_code}")
                    kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
                    if kind and not kind.startswith("image/") and kind != "application/octet-stream":
                        raise ImageUnreadableError(f"{url}: the server sent '{kind}', not an image")
                    async for chunk in response.aiter_bytes():
                        data.extend(chunk)
                        if len(data) > max_bytes:
                            raise ImageUnreadableError(f"{url}: larger than images.max_bytes ({max_bytes})")
        except TimeoutError:
            raise ImageUnreadableError(f"{url}: the download took longer than {timeout_s:g}s") from None
        except httpx.TooManyRedirects:
            raise ImageUnreadableError(f"{url}: too many redirects") from None
        except httpx.UnsupportedProtocol as exc:
            raise ImageUnreadableError(f"{url}: redirected to a URL that is not http(s) ({exc})") from None
        except httpx.HTTPError as exc:
            raise ImageUnreadableError(f"{url}: download failed ({type(exc).__name__}: {exc})") from None
        return bytes(data)

    async def complete(self, body: dict[str, Any]) -> Outcome:
        payload = orjson.dumps(body)
        started = self._clock()
        try:
            # A hard deadline over connect + send + read: a server that trickles
            # bytes would otherwise never trip the per-read timeout.
            with anyio.fail_after(self._timeout_s):
                response = await self._http.post(self._url, content=payload, headers=self._headers)
        except TimeoutError:
            return Failure("timeout", f"no complete response within {self._timeout_s:g}s", retryable=True,
                           latency_s=self._clock() - started)
        except httpx.TransportError as exc:
            latency = self._clock() - started
            if _is_timeout(exc):
                return Failure("timeout", f"{type(exc).__name__}: {exc or 'timed out'}", retryable=True, latency_s=latency)
            return Failure("connection", f"{type(exc).__name__}: {exc or 'connection failed'}", retryable=True, latency_s=latency)
        latency = self._clock() - started
        headers = _kept_headers(response.headers)
        if response.status_code != 200:
            failure = classify_http(response.status_code, response.content, response.headers, now_epoch=self._wall_clock())
            return dataclasses.replace(failure, message=self._scrub(failure.message), latency_s=latency, headers=headers)
        try:
            completion = parse_completion_bytes(response.content)
        except InvalidResponseError as exc:
            return Failure("invalid_response", str(exc), retryable=True, http_status=200, latency_s=latency, headers=headers)
        return Reply(completion=completion, http_status=200, latency_s=latency, headers=headers)

