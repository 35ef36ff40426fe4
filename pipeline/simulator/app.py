"""The simulator as an ASGI app: an OpenAI-compatible vision endpoint with limits and faults.

Routes: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /stats`` (what the
server saw: counts by status, requests per image, the accepted timeline) and
``POST /control`` (change knobs while running, e.g. take the endpoint down).

State lives on the app instance. The server thread mutates it; tests read it
through ``stats()`` and wait on it with ``wait_until()`` (a condition variable,
never a sleep loop).
"""

from __future__ import annotations

import dataclasses
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TextIO

import anyio
import orjson

from ..tokens import TextCounter
from .asgi import Receive, Send, read_body, send_json, send_raw
from .behaviour import (
    CLOUDFLARE_502,
    BadRequest,
    ParsedRequest,
    completion_body,
    encode_image,
    error_body,
    fault_rule,
    image_key,
    image_spec,
    parse_request,
    prompt_filter_error,
    prompt_tokens,
)
from .config import FAULT_KINDS, SimConfig
from .limits import Decision, SlidingWindowLimiter, format_go_duration


class _ResetConnection(Exception):
    """Abort the response half-way: uvicorn then drops the connection."""


class SimulatorApp:
    def __init__(self, config: SimConfig | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config or SimConfig()
        self._clock = clock
        self._rng = random.Random(self.config.seed)
        self._counter = TextCounter()
        self._limiter = self._make_limiter(self.config)
        self._lock = threading.Condition()
        self._started = clock()
        self._by_status: Counter[str] = Counter()
        self._by_fault: Counter[str] = Counter()
        self._per_image: Counter[str] = Counter()
        self._timeline: list[float] = []
        self._requests = 0
        self._held = 0
        self._prompt_tokens = 0
        self._charged_tokens = 0  # what the TPM limit counted for accepted requests: prompt + max_tokens
        self._next_id = 0
        self._images: dict[tuple[str, int, int, tuple[int, int, int]], tuple[bytes, str]] = {}
        self._log: TextIO | None = open(self.config.log_path, "a", buffering=1) if self.config.log_path else None

    @staticmethod
    def _make_limiter(config: SimConfig) -> SlidingWindowLimiter:
        return SlidingWindowLimiter(
            rpm=config.rpm, tpm=config.tpm, burst_window_s=config.burst_window_s, burst_factor=config.burst_factor
        )

    # -- for tests and benchmarks ------------------------------------------------

    def stats(self, *, images: bool = False, timeline: bool = False) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = {
                "requests": self._requests,
                "held": self._held,
                "by_status": dict(self._by_status),
                "by_fault": dict(self._by_fault),
                "accepted": self._by_status.get("200", 0),
                "prompt_tokens": self._prompt_tokens,
                "charged_tokens": self._charged_tokens,
                "uptime_s": self._clock() - self._started,
            }
            if images:
                out["images"] = dict(self._per_image)
            if timeline:
                out["timeline"] = list(self._timeline)
            return out

    def wait_until(self, predicate: Callable[[dict[str, Any]], bool], timeout_s: float) -> bool:
        """Block the calling thread until ``predicate(stats)`` holds (True) or the timeout (False)."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while not predicate(self.stats(images=True)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(remaining)
            return True

    def _holding(self, delta: int) -> None:
        """Count requests held by the 'slow' rule, so a test can wait until they are all in flight."""
        with self._lock:
            self._held += delta
            self._lock.notify_all()

    def update(self, **changes: Any) -> None:
        """Change knobs while running (``down=True``, ``fault_rates={...}``, ``rpm=...``)."""
        with self._lock:
            unknown = set(changes) - {f.name for f in dataclasses.fields(SimConfig)}
            if unknown:
                raise ValueError(f"unknown simulator setting(s): {', '.join(sorted(unknown))}")
            self.config = dataclasses.replace(self.config, **changes)
            if {"rpm", "tpm", "burst_window_s", "burst_factor"} & set(changes):
                self._limiter = self._make_limiter(self.config)

    def _record(
        self,
        status: int,
        *,
        key: str | None,
        fault: str | None,
        tokens: int = 0,
        extras: tuple[tuple[str, Any], ...] = (),
        charged: int = 0,
        admitted_at: float | None = None,
    ) -> None:
        with self._lock:
            self._requests += 1
            self._by_status[str(status)] += 1
            if fault:
                self._by_fault[fault] += 1
            if key is not None:
                self._per_image[key] += 1
            if status == 200:
                # When the limiter admitted it, not when it was answered: latency would blur the rate.
                self._timeline.append((admitted_at if admitted_at is not None else self._clock()) - self._started)
                self._prompt_tokens += tokens
                self._charged_tokens += charged
            self._lock.notify_all()
        if self._log is not None:
            entry = {
                "t": round(time.time(), 4),
                "status": status,
                "image": key,
                "fault": fault,
                "prompt_tokens": tokens,
            }
            self._log.write(orjson.dumps({**entry, **dict(extras)}).decode() + "\n")

    # -- ASGI --------------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path.endswith("/chat/completions") and method == "POST":
            await self._chat(scope, receive, send)
        elif path.endswith("/models") and method == "GET":
            await send_json(
                send,
                200,
                {
                    "object": "list",
                    "data": [
                        {"id": m, "object": "model", "created": 0, "owned_by": "simulator"} for m in self.config.models
                    ],
                },
            )
        elif path.startswith("/images/") and method == "GET":
            await self._image(scope, send)
        elif path == "/stats" and method == "GET":
            query = scope.get("query_string", b"").decode()
            await send_json(send, 200, self.stats(images="images=1" in query, timeline="timeline=1" in query))
        elif path == "/control" and method == "POST":
            try:
                changes = orjson.loads(await read_body(receive))
                if "fault_rates" in changes:
                    changes["fault_rates"] = {str(k): float(v) for k, v in changes["fault_rates"].items()}
                self.update(**changes)
            except (orjson.JSONDecodeError, ValueError, TypeError, AttributeError) as exc:
                await send_json(send, 400, error_body(str(exc), type_="invalid_request_error"))
                return
            await send_json(send, 200, {"ok": True})
        else:
            await send_json(send, 404, error_body(f"Unknown route {method} {path}", type_="invalid_request_error"))

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._log is not None:
                    self._log.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _image(self, scope: dict[str, Any], send: Send) -> None:
        """A generated image for remote-URL tests: ``/images/name.png?size=640x480`` (no network needed)."""
        query = scope.get("query_string", b"").decode()
        name = scope["path"].rsplit("/", 1)[-1]
        options = dict(pair.partition("=")[::2] for pair in query.split("&") if pair)
        if options.get("delay"):
            await anyio.sleep(float(options["delay"]))
        if options.get("type") == "text":
            await send_raw(send, 200, b"<html>not an image</html>", content_type=b"text/html")
            return
        spec = image_spec(name, query)
        if spec not in self._images:
            if len(self._images) >= 64:
                self._images.pop(next(iter(self._images)))
            self._images[spec] = encode_image(*spec)
        data, content_type = self._images[spec]
        await send_raw(send, 200, data, content_type=content_type.encode())

    def _authorized(self, scope: dict[str, Any]) -> bool:
        if not self.config.api_key:
            return True
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                return bool(value.decode("latin-1") == f"Bearer {self.config.api_key}")
        return False

    def _pick_fault(self, key: str | None) -> str | None:
        if key is not None:
            rule = fault_rule(key)
            if rule is not None:
                kind, times = rule
                with self._lock:
                    seen = self._per_image[key]
                if seen < times and kind in FAULT_KINDS:
                    return kind
        for kind, rate in self.config.fault_rates.items():
            if rate > 0 and self._rng.random() < rate:
                return kind
        return None

    async def _chat(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        raw = await read_body(receive)
        config = self.config
        if config.down:
            self._record(503, key=None, fault="down")
            await send_json(send, 503, error_body("The service is temporarily unavailable.", type_="server_error"))
            return
        if not self._authorized(scope):
            self._record(401, key=None, fault="auth")
            await send_json(
                send,
                401,
                error_body(
                    "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.",
                    type_="invalid_request_error",
                    code="invalid_api_key",
                ),
            )
            return
        try:
            req = parse_request(orjson.loads(raw))
        except orjson.JSONDecodeError:
            self._record(400, key=None, fault=None)
            await send_json(
                send,
                400,
                error_body("We could not parse the JSON body of your request.", type_="invalid_request_error"),
            )
            return
        except BadRequest as exc:
            self._record(400, key=None, fault=None)
            await send_json(
                send, 400, error_body(str(exc), type_="invalid_request_error", code=exc.code, param=exc.param)
            )
            return
        key = image_key(req.images[0].url) if req.images else None
        if not config.accept_any_model and req.model.removesuffix("-ocr") not in config.models:
            self._record(404, key=key, fault="model")
            await send_json(
                send,
                404,
                error_body(
                    f"The model `{req.model}` does not exist or you do not have access to it.",
                    type_="invalid_request_error",
                    code="model_not_found",
                ),
            )
            return
        tokens = prompt_tokens(req, self._counter)
        charged = tokens + (req.max_tokens or 0) * req.n
        admitted_at = self._clock()
        decision = self._limiter.check(admitted_at, charged)
        limit_headers = self._limit_headers(decision)
        if not decision.allowed:
            self._record(429, key=key, fault="limit")
            await send_json(
                send,
                429,
                error_body(
                    f"Rate limit reached for {req.model} on {decision.reason}. "
                    f"Please try again in {format_go_duration(decision.retry_after_s)}.",
                    type_="tokens" if "TPM" in decision.reason else "requests",
                    code="rate_limit_exceeded",
                ),
                headers=limit_headers
                + [
                    (b"retry-after", str(max(1, round(decision.retry_after_s))).encode()),
                    (b"retry-after-ms", str(round(decision.retry_after_s * 1000)).encode()),
                ],
            )
            return
        fault = self._pick_fault(key)
        if fault == "badjson" and req.schema is None:
            fault = None  # a malformed structured answer needs a request for one
        await anyio.sleep(self._latency_s())
        if fault == "slow":
            self._holding(+1)
            try:
                await anyio.sleep(self.config.stall_s)
            finally:
                self._holding(-1)
            fault = None
        if fault is not None:
            await self._send_fault(fault, send, key=key, headers=limit_headers, req=req)
            return
        body = completion_body(
            req, response_id=self._response_id(), created=int(time.time()), prompt_tokens_=tokens, counter=self._counter
        )
        self._record(
            200, key=key, fault=None, tokens=tokens, extras=req.extras, charged=charged, admitted_at=admitted_at
        )
        await send_json(send, 200, body, headers=limit_headers)

    def _response_id(self) -> str:
        self._next_id += 1
        return f"chatcmpl-sim{self._next_id:012d}"

    def _latency_s(self) -> float:
        """Lognormal with the configured median and 99th percentile (z(0.99) = 2.326)."""
        median, p99 = self.config.latency_median_s, self.config.latency_p99_s
        if median <= 0:
            return 0.0
        sigma = math.log(p99 / median) / 2.326 if p99 > median else 0.0
        return median * math.exp(sigma * self._rng.gauss(0.0, 1.0))

    def _limit_headers(self, d: Decision) -> list[tuple[bytes, bytes]]:
        cfg = self.config
        headers: list[tuple[bytes, bytes]] = []
        if cfg.header_style == "azure":
            if d.remaining_requests is not None:
                headers.append((b"x-ratelimit-remaining-requests", str(d.remaining_requests).encode()))
            if d.remaining_tokens is not None:
                headers.append((b"x-ratelimit-remaining-tokens", str(d.remaining_tokens).encode()))
                headers.append((b"x-rate-limit-reset-tokens", str(round(d.reset_tokens_s)).encode()))
            return headers
        if cfg.rpm is not None:
            headers += [
                (b"x-ratelimit-limit-requests", str(cfg.rpm).encode()),
                (b"x-ratelimit-remaining-requests", str(d.remaining_requests).encode()),
                (b"x-ratelimit-reset-requests", format_go_duration(d.reset_requests_s).encode()),
            ]
        if cfg.tpm is not None:
            headers += [
                (b"x-ratelimit-limit-tokens", str(cfg.tpm).encode()),
                (b"x-ratelimit-remaining-tokens", str(d.remaining_tokens).encode()),
                (b"x-ratelimit-reset-tokens", format_go_duration(d.reset_tokens_s).encode()),
            ]
        return headers

    async def _send_fault(
        self, fault: str, send: Send, *, key: str | None, headers: list[tuple[bytes, bytes]], req: ParsedRequest
    ) -> None:
        status = {
            "500": 500,
            "502": 502,
            "503": 503,
            "429": 429,
            "invalid_image_url": 400,
            "image_timeout": 400,
            "filter_prompt": 400,
            "quota": 429,
            "auth": 401,
        }.get(fault, 200)
        self._record(status, key=key, fault=fault)
        if fault == "500":
            await send_json(
                send,
                500,
                error_body("The server had an error processing your request. Sorry about that!", type_="server_error"),
            )
        elif fault == "502":
            await send_raw(send, 502, CLOUDFLARE_502.encode(), content_type=b"text/html")
        elif fault == "503":
            await send_json(
                send, 503, error_body("That model is currently overloaded with other requests.", type_="server_error")
            )
        elif fault == "429":
            await send_json(
                send,
                429,
                error_body("Rate limit reached. Please try again in 1s.", type_="requests", code="rate_limit_exceeded"),
                headers=[(b"retry-after-ms", b"200")],
            )
        elif fault == "quota":
            await send_json(
                send,
                429,
                error_body(
                    "You exceeded your current quota, please check your plan and billing details.",
                    type_="insufficient_quota",
                    code="insufficient_quota",
                ),
            )
        elif fault == "auth":
            await send_json(
                send,
                401,
                error_body("Incorrect API key provided.", type_="invalid_request_error", code="invalid_api_key"),
            )
        elif fault in ("invalid_image_url", "image_timeout"):
            # The same code for both, as the real API: only the message tells a slow host from a bad URL.
            message = (
                "Timeout while downloading the image."
                if fault == "image_timeout"
                else "Invalid image URL: the image could not be downloaded."
            )
            await send_json(
                send, 400, error_body(message, type_="invalid_request_error", code="invalid_image_url", param="url")
            )
        elif fault == "filter_prompt":
            await send_json(send, 400, prompt_filter_error())
        elif fault == "filter_completion":
            body = completion_body(
                req,
                response_id=self._response_id(),
                created=int(time.time()),
                prompt_tokens_=prompt_tokens(req, self._counter),
                counter=self._counter,
                filtered_category="violence",
            )
            await send_json(send, 200, body, headers=headers)
        elif fault == "badjson":
            body = completion_body(
                req,
                response_id=self._response_id(),
                created=int(time.time()),
                prompt_tokens_=prompt_tokens(req, self._counter),
                counter=self._counter,
                plain_text=True,
            )
            await send_json(send, 200, body, headers=headers)
        elif fault == "nochoices":
            await send_json(
                send,
                200,
                {
                    "id": self._response_id(),
                    "object": "chat.completion",
                    "choices": [],
                    "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
                },
            )
        elif fault == "nonjson":
            await send_raw(send, 200, b"upstream returned: <!doctype html>", content_type=b"text/plain")
        elif fault == "truncated":
            await send_raw(send, 200, b'{"id": "chatcmpl-cut", "object": "chat.compl', content_type=b"application/json")
        elif fault == "stall":
            await anyio.sleep(self.config.stall_s)
            await send_json(send, 504, error_body("Gateway timeout.", type_="server_error"))
        elif fault == "reset":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"4096")],
                }
            )
            await send({"type": "http.response.body", "body": b'{"id": "chat', "more_body": True})
            raise _ResetConnection
