"""The only place HTTP is spoken; transport exceptions become ``Failure`` values here.

``VisionClient.complete`` makes exactly one attempt and never raises for an
HTTP or transport problem: it returns ``Reply`` or ``Failure``. Retrying,
pacing and the run-level consequences are other modules' jobs.

Transport only: the URL, the auth headers, what an answer or an error answer
means and which headers are kept all come from the provider ``Dialect`` it is
given (``dialects/``), looked up once in ``__init__``, not per request.

Hostile answers stop here: a body is read up to ``max_response_bytes`` and no
further (the connection is dropped, the answer is ``invalid_response``), and an
error body is masked by the ``Scrubber`` before it is parsed or cut, so no
failure message carries the API key.

Two layers:
- The chat-completions POST, the hot path, goes through a ``Poster``. In
  production that is ``AiohttpPoster``, straight on an aiohttp session: httpx's
  request/response objects cost ~0.35 ms of CPU per request on top of aiohttp
  (README, "Transport"), more than everything else the pipeline does per row.
  ``HttpxPoster`` puts the same call on any ``httpx.AsyncClient``, so tests use
  ``httpx.MockTransport`` or ``httpx.ASGITransport`` through the constructor.
- Image downloads and size probes (streamed, bounded, redirects) use httpx's
  API over aiohttp (``httpx-aiohttp``), on a session of their own that reads
  proxies from the environment per request.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Literal, Protocol

import aiohttp
import anyio
import httpx
import orjson
import yarl
from httpx_aiohttp import AiohttpTransport

from .dialects import Dialect
from .errors import ImageUnreadableError
from .models import Failure, Outcome, Reply
from .parse import InvalidResponseError
from .secrets import Scrubber
from .value_types import value_type

Clock = Callable[[], float]
DEFAULT_MAX_RESPONSE_BYTES = 8_000_000


@value_type
class RawResponse:
    """An HTTP answer, whatever carried it: headers look up case-insensitively.

    ``complete`` is False when the body was longer than the poster's ``max_bytes``:
    ``content`` is then empty (what was read is dropped, not kept half).
    """

    status: int
    headers: Mapping[str, str]
    content: bytes
    complete: bool = True


class SendError(Exception):
    """The request got no HTTP answer: ``error_type`` is "timeout" or "connection"."""

    def __init__(self, error_type: Literal["timeout", "connection"], message: str) -> None:
        super().__init__(message)
        self.error_type: Literal["timeout", "connection"] = error_type


class Poster(Protocol):
    async def post(self, url: str, content: bytes, headers: Mapping[str, str], *, max_bytes: int) -> RawResponse:
        """One POST; raises ``SendError`` when no answer arrives within the client's deadline.

        Reads at most ``max_bytes`` of the body; past that the connection is dropped and
        the answer comes back with ``complete=False``.
        """
        ...


_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def proxy_for(url: str, environ: Mapping[str, str]) -> str | None:
    """The proxy the environment names for ``url`` (``https_proxy``/``http_proxy``/``all_proxy``,
    either case, minus ``no_proxy``); loopback is never proxied, so the simulator always works.

    Looked up once per run: aiohttp's own per-request lookup (``trust_env``) costs ~85 us.
    """

    def env(name: str) -> str | None:
        return environ.get(name) or environ.get(name.upper())

    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    proxy = env(f"{parts.scheme}_proxy") or env("all_proxy")
    if not proxy or host in _LOOPBACK_HOSTS:
        return None
    no_proxy = env("no_proxy")
    # proxy_bypass_environment is urllib's own NO_PROXY matcher; typeshed does not list it.
    if no_proxy and urllib.request.proxy_bypass_environment(host, {"no": no_proxy}):  # type: ignore[attr-defined]
        return None
    return proxy


class AiohttpPoster:
    """The production POST: aiohttp directly, its total timeout as the hard deadline."""

    def __init__(self, session: aiohttp.ClientSession, *, timeout_s: float, proxy: str | None = None) -> None:
        self._session = session
        # Over connect + send + read: a server that trickles bytes never trips a per-read timeout.
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, connect=min(10.0, timeout_s))
        self._timeout_s = timeout_s
        self._proxy: str | None = None
        self._proxy_auth: dict[str, str] | None = None
        if proxy:
            # aiohttp wants the proxy's credentials as a header, not inside its URL: on the
            # CONNECT for an https endpoint (proxy_headers), on the request itself for http.
            url = yarl.URL(proxy)
            if url.user:
                token = base64.b64encode(f"{url.user}:{url.password or ''}".encode()).decode()
                self._proxy_auth = {"Proxy-Authorization": f"Basic {token}"}
            self._proxy = str(url.with_user(None))

    async def post(
        self, url: str, content: bytes, headers: Mapping[str, str], *, max_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    ) -> RawResponse:
        if self._proxy_auth is not None and url.startswith("http:"):
            headers = {**headers, **self._proxy_auth}
        try:
            async with self._session.post(
                url,
                data=content,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
                proxy=self._proxy,
                proxy_headers=self._proxy_auth,
            ) as response:
                body = await self._read_capped(response, max_bytes)
                if body is None:
                    response.close()  # drop the connection: the rest of the body is never read
                    return RawResponse(response.status, response.headers, b"", complete=False)
                return RawResponse(response.status, response.headers, body)
        except TimeoutError:
            raise SendError("timeout", f"no complete response within {self._timeout_s:g}s") from None
        except aiohttp.ClientError as exc:
            raise SendError("connection", f"{type(exc).__name__}: {exc or 'connection failed'}") from None

    @staticmethod
    async def _read_capped(response: aiohttp.ClientResponse, max_bytes: int) -> bytes | None:
        """The body, or None once it is longer than ``max_bytes`` (decompressed: a gzip bomb counts in full)."""
        if response.content_length is not None and response.content_length > max_bytes:
            return None
        if response.content_length is not None and not response.headers.get("Content-Encoding"):
            # The usual answer: a declared length within the cap, not compressed, so read() is
            # bounded; one call costs less than a loop of iter_any() chunks (~10% of a row's CPU at
            # concurrency 512).
            return await response.read()
        parts: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_any():
            size += len(chunk)
            if size > max_bytes:
                return None
            parts.append(chunk)
        return b"".join(parts)


class HttpxPoster:
    """The same POST on any httpx client (``MockTransport``, ``ASGITransport``, httpx's own transport)."""

    def __init__(self, http: httpx.AsyncClient, *, timeout_s: float) -> None:
        self._http = http
        self._timeout_s = timeout_s

    async def post(
        self, url: str, content: bytes, headers: Mapping[str, str], *, max_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    ) -> RawResponse:
        try:
            with anyio.fail_after(self._timeout_s):
                # Streamed so a huge body is cut off; leaving the block unread closes the connection.
                async with self._http.stream("POST", url, content=content, headers=headers) as response:
                    parts: list[bytes] = []
                    size = 0
                    async for chunk in response.aiter_bytes():
                        size += len(chunk)
                        if size > max_bytes:
                            return RawResponse(response.status_code, response.headers, b"", complete=False)
                        parts.append(chunk)
        except TimeoutError:
            raise SendError("timeout", f"no complete response within {self._timeout_s:g}s") from None
        except httpx.TransportError as exc:
            kind: Literal["timeout", "connection"] = "timeout" if _is_timeout(exc) else "connection"
            raise SendError(
                kind, f"{type(exc).__name__}: {exc or ('timed out' if kind == 'timeout' else 'connection failed')}"
            ) from None
        return RawResponse(response.status_code, response.headers, b"".join(parts))


@dataclasses.dataclass(frozen=True, slots=True)
class Http:
    """``poster`` for the chat POSTs, ``client`` (httpx's API) for downloads and probes."""

    client: httpx.AsyncClient
    poster: Poster


@contextlib.asynccontextmanager
async def open_http(
    *, concurrency: int, timeout_s: float, endpoint_url: str, environ: Mapping[str, str] = os.environ
) -> AsyncIterator[Http]:
    """The production HTTP stack: one connection per concurrent request, no pool waits.

    Proxies come from the environment, as curl and openai-python take them: the
    endpoint's is resolved once (``proxy_for``); downloads, going to many hosts,
    let aiohttp look it up per request (slow, but a download is slower still).
    """
    posts = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency))
    downloads = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency), trust_env=True)
    async with posts, downloads:
        transport = _BuiltOnFirstUse(lambda: AiohttpTransport(client=downloads))
        async with make_http_client(concurrency=concurrency, timeout_s=timeout_s, transport=transport) as client:
            poster = AiohttpPoster(posts, timeout_s=timeout_s, proxy=proxy_for(endpoint_url, environ))
            yield Http(client=client, poster=poster)


class _BuiltOnFirstUse(httpx.AsyncBaseTransport):
    """A transport made when the first request needs it: ``AiohttpTransport`` loads the CA
    certificates as it is built (~40 ms), and most runs never download or probe an image."""

    def __init__(self, build: Callable[[], httpx.AsyncBaseTransport]) -> None:
        self._build = build
        self._transport: httpx.AsyncBaseTransport | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._transport is None:
            self._transport = self._build()
        return await self._transport.handle_async_request(request)

    async def aclose(self) -> None:
        if self._transport is not None:
            await self._transport.aclose()


def make_http_client(*, concurrency: int, timeout_s: float, transport: httpx.AsyncBaseTransport) -> httpx.AsyncClient:
    """An httpx client with the pipeline's limits and timeouts on ``transport``."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(timeout_s, connect=min(10.0, timeout_s), pool=None)
    return httpx.AsyncClient(transport=transport, timeout=timeout, limits=limits, max_redirects=5)


def _is_timeout(exc: httpx.TransportError) -> bool:
    # httpx-aiohttp maps every aiohttp connection error (a reset, a refused
    # connection) to ConnectTimeout; the cause tells the two apart.
    cause = exc.__cause__
    if isinstance(cause, aiohttp.ClientError) and not isinstance(cause, TimeoutError):
        return False
    return isinstance(exc, httpx.TimeoutException)


async def probe_image_size(
    http: httpx.AsyncClient, url: str, *, max_bytes: int = 65536, timeout_s: float = 5.0
) -> tuple[int, int] | None:
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
    """POSTs request bodies to one endpoint, in its provider's ``dialect``.

    ``query``: parameters every request's URL carries (Azure's ``api-version``), as the dialect places them.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        poster: Poster | None = None,
        dialect: Dialect,
        base_url: str,
        api_key: str | None,
        timeout_s: float,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        scrubber: Scrubber | None = None,
    ) -> None:
        self._http = http
        self._poster = poster or HttpxPoster(http, timeout_s=timeout_s)
        # Worked out once: the hot path only looks these up.
        self._url = dialect.request_url(base_url, query or {})
        self._headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            **(headers or {}),
            # Last, so a configured header can never replace or spoof the key's.
            **dialect.auth_headers(api_key),
        }
        self._kept_headers = dialect.kept_headers
        self._classify = dialect.classify_error
        self._parse = dialect.parse_completion
        # Servers echo the key (an error quoting the Authorization header): masked at the source.
        self._scrub = scrubber if scrubber is not None else Scrubber([api_key])
        self._timeout_s = timeout_s
        self._clock = clock
        self._wall_clock = wall_clock
        self._max_response_bytes = max_response_bytes

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

    async def complete(self, body: dict[str, Any], *, payload: bytes | None = None) -> Outcome:
        """POST ``body`` (``payload``: the same body already serialized, sent as it is)."""
        if payload is None:
            payload = orjson.dumps(body)
        started = self._clock()
        try:
            response = await self._poster.post(self._url, payload, self._headers, max_bytes=self._max_response_bytes)
        except SendError as exc:
            return Failure(exc.error_type, self._scrub(str(exc)), retryable=True, latency_s=self._clock() - started)
        latency = self._clock() - started
        headers = self._kept_headers(response.headers)
        if not response.complete:
            # Not retried: the same server answers the same way, and each try is paid for.
            return Failure(
                "invalid_response",
                f"HTTP {response.status} with a body over endpoint.max_response_bytes "
                f"({self._max_response_bytes} bytes); the rest was not read. Raise endpoint.max_response_bytes "
                "and re-run with --retry-errors if such answers are expected",
                retryable=False,
                http_status=response.status,
                latency_s=latency,
                headers=headers,
            )
        if response.status != 200:
            # Masked before the dialect parses and cuts it: a key straddling the cut would leak its head.
            content = self._scrub.scrub_bytes(response.content)
            failure = self._classify(response.status, content, response.headers, now_epoch=self._wall_clock())
            return dataclasses.replace(
                failure, message=self._scrub(failure.message), latency_s=latency, headers=headers
            )
        try:
            completion = self._parse(response.content)
        except InvalidResponseError as exc:
            return Failure(
                "invalid_response",
                self._scrub(str(exc)),
                retryable=exc.retryable,
                http_status=200,
                latency_s=latency,
                headers=headers,
            )
        return Reply(completion=completion, http_status=200, latency_s=latency, headers=headers)
