"""A small aiohttp server on 127.0.0.1 (port 0) that answers badly on purpose.

Each row's image URL names its answer (``https://img.test/<marker>.jpg``): a test
builds a manifest of markers and ``HostileServer.answers`` maps each marker to a
handler. The handlers echo the Authorization header back, ask for waits of a
day, report absurd usage, stream bodies of hundreds of MB, or send valid JSON
of shapes no server should send. The server runs in a thread with its own event
loop, so the CLI under test can be a real subprocess.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def completion(content: Any = "A hostile caption.", *, usage: Any = None, choice_extra: dict | None = None) -> dict:
    """A chat completion in OpenAI's shape, with the parts a test wants to break."""
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": content},
        "finish_reason": "stop",
        **(choice_extra or {}),
    }
    return {
        "id": "chatcmpl-hostile",
        "object": "chat.completion",
        "model": "gpt-4o",
        "choices": [choice],
        "usage": usage if usage is not None else {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110},
    }


def _auth(request: web.Request) -> str:
    return request.headers.get("Authorization", "")


def _key(request: web.Request) -> str:
    return _auth(request).removeprefix("Bearer ")


def json_answer(status: int, body: Any, headers: dict[str, str] | None = None) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, text=json.dumps(body), content_type="application/json", headers=headers)

    return handler


# -- answers that echo the key ------------------------------------------------------


async def echo_key_in_200_error(request: web.Request) -> web.StreamResponse:
    """A 200 whose body is an error object quoting the Authorization header."""
    body = {
        "error": {"message": f"upstream refused the request (Authorization: {_auth(request)})", "type": "proxy_error"}
    }
    return web.json_response(body)


KEY_OFFSET = 190


async def echo_key_in_text_500(request: web.Request) -> web.StreamResponse:
    """A non-JSON 500 where the key starts at character 190, straddling a 200-character cut."""
    prefix = "upstream failure while forwarding the request; headers were: Authorization: Bearer "
    text = prefix.ljust(KEY_OFFSET - 1, ".") + " " + _key(request) + " (end of dump)"
    assert text.index(_key(request)) == KEY_OFFSET
    return web.Response(status=500, text=text, content_type="text/plain")


async def echo_key_in_401(request: web.Request) -> web.StreamResponse:
    """OpenAI's 401 for a wrong key, quoting the key with only its tail starred out (as some gateways do)."""
    key = _key(request)
    body = {
        "error": {
            "message": f"Incorrect API key provided: {key[:-6]}******. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            "type": "invalid_request_error",
            "code": "invalid_api_key",
        }
    }
    return web.json_response(body, status=401)


# -- answers that ask for a day -----------------------------------------------------


def rate_limited(*, headers: dict[str, str] | None = None, message: str = "Rate limit reached.") -> Handler:
    return json_answer(429, {"error": {"message": message, "type": "requests", "code": "rate_limit_exceeded"}}, headers)


WAIT_A_DAY: dict[str, Handler] = {
    "retry_after": rate_limited(headers={"Retry-After": "86400"}),
    "reset_header": rate_limited(
        headers={
            "x-ratelimit-limit-requests": "10000",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "24h0m0s",
        }
    ),
    "message": rate_limited(message="Rate limit reached for requests per day. Please try again in 99999999s."),
}

# -- absurd usage and shapes ----------------------------------------------------------


def usage_of(prompt_tokens: int) -> Handler:
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": 10, "total_tokens": 10}
    return json_answer(200, completion(usage=usage))


def _nested(depth: int) -> dict:
    block: dict = {"filtered": False, "severity": "safe"}
    for _ in range(depth):
        block = {"hate": block}
    return block


WRONG_SHAPES: dict[str, Handler] = {
    "deep_filter": json_answer(200, completion(choice_extra={"content_filter_results": _nested(300)})),
    "text_not_string": json_answer(200, completion([{"type": "text", "text": 5}, {"type": "text", "text": ["x"]}])),
    "content_dict": json_answer(200, completion({"text": "a caption in the wrong place"})),
    "content_int": json_answer(200, completion(42)),
    "inf_headers": json_answer(
        200,
        completion(),
        {
            "x-ratelimit-limit-requests": "inf",
            "x-ratelimit-limit-tokens": "nan",
            "x-ratelimit-remaining-tokens": "1e400",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "nan",
        },
    ),
}


def huge_body(total_bytes: int, *, declare_length: bool) -> Handler:
    """A 200 whose caption is ``total_bytes`` long, streamed 1 MB at a time (never held whole here)."""
    head, tail = b'{"choices":[{"message":{"content":"', b'"}}]}'
    block = b"a" * (1 << 20)

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        if declare_length:
            response.content_length = total_bytes
        else:
            response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            await response.write(head)
            sent = len(head) + len(tail)
            while sent < total_bytes:
                piece = block[: total_bytes - sent]
                await response.write(piece)
                sent += len(piece)
            await response.write(tail)
            await response.write_eof()
        except (ConnectionResetError, ConnectionError):
            pass  # the client hung up, which is what it should do
        return response

    return handler


class HostileServer:
    """``with HostileServer() as server: server.answers = {...}; server.base_url``."""

    def __init__(self) -> None:
        self.answers: dict[str, Handler] = {}
        self.requests = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        body = await request.json()
        url = body["messages"][-1]["content"][-1]["image_url"]["url"]
        marker = url.rsplit("/", 1)[-1].split(".", 1)[0]
        return await self.answers[marker](request)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def __enter__(self) -> HostileServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
