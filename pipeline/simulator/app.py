"""The simulator as an ASGI app: an OpenAI-compatible vision endpoint with limits and faults.

Routes: ``POST .../chat/completions`` (Azure profile: ``/openai/deployments/DEP/chat/completions
?api-version=...`` or ``/openai/v1/chat/completions``), ``GET /v1/models`` and ``/v1/models/ID``,
``GET /stats`` (what the server saw: counts by status, requests per image, the accepted timeline)
and ``POST /control`` (change knobs while running, e.g. take the endpoint down). What differs by
provider is in ``profiles.py`` (routes, auth, names, headers) and ``bodies.py`` (error answers).

State lives on the app instance. The server thread mutates it; tests read it
through ``stats()`` and wait on it with ``wait_until()`` (a condition variable,
never a sleep loop).
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

import anyio
import orjson

from ..tokens import TextCounter
from . import profiles
from .asgi import Receive, Send, read_body, send_json, send_raw
from .behaviour import (
    BadRequest,
    ParamChecks,
    ParsedRequest,
    completion_body,
    encode_image,
    fault_rule,
    image_key,
    image_spec,
    parse_request,
    prompt_tokens,
)
from .bodies import (
    CLOUDFLARE_502,
    ErrorAnswer,
    error_answer,
    litellm_auth,
    litellm_limited,
    litellm_unknown_model,
    openai_error,
)
from .config import FAULT_KINDS, SimConfig
from .faults import fault_answer
from .ledger import Ledger
from .limits import Decision, TokenBucketLimiter, format_go_duration

# Request headers the log may show: everything but credentials.
_SECRET_HEADERS = frozenset({"authorization", "api-key", "cookie", "proxy-authorization"})
_PARAM_CHECKS: dict[str, ParamChecks] = {"openai": "openai", "azure": "openai", "litellm": "litellm"}


class _ResetConnection(Exception):
    """Abort the response half-way: uvicorn then drops the connection."""


class SimulatorApp:
    def __init__(self, config: SimConfig | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config or SimConfig()
        self._clock = clock
        self._rng = random.Random(self.config.seed)
        self._counter = TextCounter()
        self._limiter = self._make_limiter(self.config)
        self.ledger = Ledger(clock=clock, log_path=self.config.log_path)
        self._lock = self.ledger.lock
        self._record = self.ledger.record
        self._next_id = 0
        self._images: dict[tuple[str, int, int, tuple[int, int, int]], tuple[bytes, str]] = {}
        self._encoding: dict[tuple[str, int, int, tuple[int, int, int]], anyio.Event] = {}

    @staticmethod
    def _make_limiter(config: SimConfig) -> TokenBucketLimiter:
        return TokenBucketLimiter(
            rpm=config.rpm, tpm=config.tpm, burst_window_s=config.burst_window_s, burst_factor=config.burst_factor
        )

    # -- for tests and benchmarks ------------------------------------------------

    def stats(self, *, images: bool = False, timeline: bool = False) -> dict[str, Any]:
        return self.ledger.stats(images=images, timeline=timeline)

    def wait_until(self, predicate: Callable[[dict[str, Any]], bool], timeout_s: float) -> bool:
        """Block the calling thread until ``predicate(stats)`` holds (True) or the timeout (False)."""
        return self.ledger.wait_until(predicate, timeout_s)

    def update(self, **changes: Any) -> None:
        """Change knobs while running (``down=True``, ``fault_rates={...}``, ``rpm=...``)."""
        with self._lock:
            unknown = set(changes) - {f.name for f in dataclasses.fields(SimConfig)}
            if unknown:
                raise ValueError(f"unknown simulator setting(s): {', '.join(sorted(unknown))}")
            self.config = dataclasses.replace(self.config, **changes)
            if {"rpm", "tpm", "burst_window_s", "burst_factor"} & set(changes):
                self._limiter = self._make_limiter(self.config)

    # -- ASGI --------------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        query = dict(parse_qsl(scope.get("query_string", b"").decode(), keep_blank_values=True))
        route = profiles.chat_route(self.config.profile, path, query) if method == "POST" else None
        if route is not None:
            await self._chat(scope, receive, send, route, query)
        elif method == "GET" and (path.endswith("/models") or "/models/" in path):
            await self._models(scope, send, path.partition("/models")[2].lstrip("/"))
        elif path.startswith("/images/") and method == "GET":
            await self._image(scope, send)
        elif path == "/stats" and method == "GET":
            await send_json(send, 200, self.stats(images="images" in query, timeline="timeline" in query))
        elif path == "/control" and method == "POST":
            await self._control(receive, send)
        else:
            body = openai_error(f"Unknown route {method} {path}", type_="invalid_request_error")
            await send_json(send, 404, body, headers=self._base_headers())

    async def _control(self, receive: Receive, send: Send) -> None:
        try:
            changes = orjson.loads(await read_body(receive))
            if "fault_rates" in changes:
                changes["fault_rates"] = {str(k): float(v) for k, v in changes["fault_rates"].items()}
            self.update(**changes)
        except (orjson.JSONDecodeError, ValueError, TypeError, AttributeError) as exc:
            await send_json(send, 400, openai_error(str(exc), type_="invalid_request_error"))
            return
        await send_json(send, 200, {"ok": True})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.ledger.close()
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
        while spec not in self._images:
            encoding = self._encoding.get(spec)
            if encoding is not None:  # one encode per image, however many ask at once
                await encoding.wait()
                continue
            self._encoding[spec] = done = anyio.Event()
            try:
                # A 12 MP PNG takes most of a second to encode: in a thread, so the loop goes on
                # serving answers and cached images (a probe's 5 s bound is not spent queueing).
                encoded = await anyio.to_thread.run_sync(encode_image, *spec)
            finally:
                del self._encoding[spec]
                done.set()
            if len(self._images) >= 64:
                self._images.pop(next(iter(self._images)))
            self._images[spec] = encoded
        data, content_type = self._images[spec]
        await send_raw(send, 200, data, content_type=content_type.encode())

    async def _models(self, scope: dict[str, Any], send: Send, model_id: str) -> None:
        """``GET /v1/models`` and ``/v1/models/{id}``, behind the key like every API route."""
        refusal = self._auth_refusal(_headers(scope), scope["path"])
        if refusal is not None:
            await self._send_error(send, refusal, self._peek())
            return
        cards = [{"id": m, "object": "model", "created": 1715367049, "owned_by": "system"} for m in self.config.models]
        if not model_id:
            await send_json(send, 200, {"object": "list", "data": cards}, headers=self._base_headers())
            return
        card = next((c for c in cards if c["id"] == model_id), None)
        if card is None:
            await self._send_error(send, self._error("model", model=model_id), self._peek())
            return
        await send_json(send, 200, card, headers=self._base_headers())

    # -- answers -----------------------------------------------------------------

    def _base_headers(self) -> list[tuple[bytes, bytes]]:
        """On every answer: a request id (and a gateway's own headers)."""
        request_id = uuid.uuid4().hex
        return [
            (b"x-request-id", f"req_{request_id}".encode()),
            *profiles.front_headers(self.config.profile, call_id=request_id),
        ]

    def _peek(self) -> Decision:
        with self._lock:
            return self._limiter.peek(self._clock())

    def _limit_headers(self, decision: Decision) -> list[tuple[bytes, bytes]]:
        cfg = self.config
        return profiles.limit_headers(
            cfg.profile,
            decision,
            rpm=cfg.rpm,
            tpm=cfg.tpm,
            style=cfg.header_style,
            now_epoch=time.time(),
            upstream_request_id=f"req_{uuid.uuid4().hex}",
        )

    def _error(self, kind: Any, **context: Any) -> ErrorAnswer:
        return error_answer(self.config.profile, kind, **context)

    async def _send_error(self, send: Send, answer: ErrorAnswer, decision: Decision) -> None:
        """An error answer; the rate-limit headers go with it when the model service gave it (OpenAI
        sends them on 400s, 401s and 5xx too: clients probe limits with any answer)."""
        headers = self._base_headers() + answer.headers
        if answer.upstream:
            headers += self._limit_headers(decision)
        await send_json(send, answer.status, answer.body, headers=headers)

    def _auth_refusal(self, headers: dict[str, str], path: str) -> ErrorAnswer | None:
        cfg = self.config
        if not cfg.api_key:
            return None
        presented = profiles.presented_key(cfg.profile, headers, path=path)
        if presented == cfg.api_key:
            return None
        if cfg.profile == "litellm":
            return litellm_auth(presented)
        return self._error("auth")

    def _request_info(self, scope: dict[str, Any], headers: dict[str, str], query: dict[str, str]) -> dict[str, Any]:
        """What the request log shows of a request: where it went, how it was authenticated (a digest,
        never the key), its other headers and its body's keys."""
        return {
            "path": scope["path"],
            "query": query,
            "auth": sorted(name for name in ("api-key", "authorization") if name in headers),
            "credential": profiles.credential_digest(headers),
            "headers": {k: v for k, v in headers.items() if k not in _SECRET_HEADERS},
        }

    async def _chat(
        self,
        scope: dict[str, Any],
        receive: Receive,
        send: Send,
        route: profiles.ChatRoute | profiles.RouteRefusal,
        query: dict[str, str],
    ) -> None:
        raw = await read_body(receive)
        config = self.config
        headers = _headers(scope)
        info = self._request_info(scope, headers, query)
        if isinstance(route, profiles.RouteRefusal):
            self._record(route.status, key=None, fault="route", extras=tuple(info.items()))
            await send_json(send, route.status, route.body, headers=self._base_headers())
            return
        if config.down:
            self._record(503, key=None, fault="down", extras=tuple(info.items()))
            await self._send_error(send, self._error("overloaded"), self._peek())
            return
        refusal = self._auth_refusal(headers, scope["path"])
        if refusal is not None:
            self._record(refusal.status, key=None, fault="auth", extras=tuple(info.items()))
            await self._send_error(send, refusal, self._peek())
            return
        try:
            payload = orjson.loads(raw)
            if isinstance(payload, dict):
                info["body_keys"] = sorted(payload)
                if route.deployment is not None:  # Azure takes the model from the deployment, not the body
                    payload.setdefault("model", route.deployment)
            req = parse_request(
                payload, checks=_PARAM_CHECKS.get(config.profile, "lenient"), extra_params=config.extra_params
            )
        except orjson.JSONDecodeError:
            self._record(400, key=None, fault=None, extras=tuple(info.items()))
            answer = self._error("bad_request", message="We could not parse the JSON body of your request.")
            await self._send_error(send, answer, self._peek())
            return
        except BadRequest as exc:
            self._record(400, key=None, fault=None, extras=tuple(info.items()))
            answer = self._error("bad_request", message=str(exc), param=exc.param, code=exc.code)
            await self._send_error(send, answer, self._peek())
            return
        model = route.deployment or req.model
        key = image_key(req.images[0].url) if req.images else None
        api_version = route.api_version or "2024-10-21"
        if not config.accept_any_model and not profiles.known_model(config.profile, model, config.models):
            answer = litellm_unknown_model(model) if config.profile == "litellm" else self._error("model", model=model)
            self._record(answer.status, key=key, fault="model", extras=tuple(info.items()))
            await self._send_error(send, answer, self._peek())
            return
        tokens = prompt_tokens(req, self._counter)
        charged = tokens + (req.max_tokens or 0) * req.n
        admitted_at = self._clock()
        with self._lock:
            # vLLM publishes no limits and answers no 429: a profile without a limiter.
            unlimited = config.profile == "vllm"
            decision = self._limiter.peek(admitted_at) if unlimited else self._limiter.check(admitted_at, charged)
        if not decision.allowed:
            self._record(429, key=key, fault="limit", extras=tuple(info.items()))
            await self._send_limited(send, decision, model=model, api_version=api_version)
            return
        fault = self._pick_fault(key)
        if fault == "badjson" and req.schema is None:
            fault = None  # a malformed structured answer needs a request for one
        await anyio.sleep(self._latency_s())
        if fault == "slow":
            self.ledger.holding(+1)
            try:
                await anyio.sleep(self.config.stall_s)
            finally:
                self.ledger.holding(-1)
            fault = None
        if fault is not None:
            failed = fault_answer(
                config.profile,
                fault,
                model=model,
                api_version=api_version,
                wait_s=config.fault_wait_s,
                limit=config.rpm,
                now_epoch=time.time(),
            )
            if fault in ("429", "gateway_limit"):  # the headers of a refusal: nothing left, back after the fault's wait
                decision = dataclasses.replace(
                    decision, allowed=False, retry_after_s=self.config.fault_wait_s, remaining_requests=0
                )
            status = failed.status if failed is not None else _TRANSPORT_FAULT_STATUS.get(fault, 200)
            self._record(status, key=key, fault=fault, extras=tuple(info.items()))
            await self._send_fault(fault, failed, send, decision=decision, req=req, model=model)
            return
        body = self._completion(req, tokens, model=model)
        extras = (*req.extras, *info.items())
        self._record(200, key=key, fault=None, tokens=tokens, extras=extras, charged=charged, admitted_at=admitted_at)
        await send_json(send, 200, body, headers=self._base_headers() + self._limit_headers(decision))

    async def _send_limited(self, send: Send, decision: Decision, *, model: str, api_version: str) -> None:
        cfg = self.config
        if cfg.profile == "litellm":
            limit = cfg.tpm if "TPM" in decision.reason else cfg.rpm
            await self._send_error(
                send, litellm_limited(limit=limit, wait_s=decision.retry_after_s, reason=decision.reason), decision
            )
            return
        message = (
            f"Rate limit reached for {model} on {decision.reason}. "
            f"Please try again in {format_go_duration(decision.retry_after_s)}."
        )
        answer = self._error(
            "rate_limit",
            model=model,
            message=message,
            wait_s=decision.retry_after_s,
            api_version=api_version,
            limit=cfg.rpm,
            now_epoch=time.time(),
        )
        answer = dataclasses.replace(answer, headers=profiles.wait_headers(cfg.profile, decision.retry_after_s))
        await self._send_error(send, answer, decision)

    def _completion(
        self, req: ParsedRequest, tokens: int, *, model: str, filtered: str | None = None, plain_text: bool = False
    ) -> dict[str, Any]:
        body = completion_body(
            req,
            response_id=self._response_id(),
            created=int(time.time()),
            prompt_tokens_=tokens,
            counter=self._counter,
            filtered_category=filtered,
            plain_text=plain_text,
            cached_tokens=int(tokens * self.config.cached_share),
        )
        return profiles.dress_answer(self.config.profile, body, requested=model)

    def _response_id(self) -> str:
        with self._lock:
            self._next_id += 1
            return f"chatcmpl-sim{self._next_id:012d}"

    def _latency_s(self) -> float:
        """Lognormal with the configured median and 99th percentile (z(0.99) = 2.326)."""
        median, p99 = self.config.latency_median_s, self.config.latency_p99_s
        if median <= 0:
            return 0.0
        sigma = math.log(p99 / median) / 2.326 if p99 > median else 0.0
        return median * math.exp(sigma * self._rng.gauss(0.0, 1.0))

    def _pick_fault(self, key: str | None) -> str | None:
        if key is not None:
            rule = fault_rule(key)
            if rule is not None:
                kind, times = rule
                seen = self.ledger.seen(key)
                if seen < times and kind in FAULT_KINDS:
                    return kind
        for kind, rate in self.config.fault_rates.items():
            if rate > 0 and self._rng.random() < rate:
                return kind
        return None

    async def _send_fault(
        self, fault: str, answer: ErrorAnswer | None, send: Send, *, decision: Decision, req: ParsedRequest, model: str
    ) -> None:
        profile = self.config.profile
        if answer is not None:
            if fault == "429":
                answer = dataclasses.replace(
                    answer, headers=answer.headers + profiles.wait_headers(profile, self.config.fault_wait_s)
                )
            if fault == "quota" and profile == "azure":
                answer = dataclasses.replace(answer, headers=profiles.wait_headers(profile, 86400.0))
            await self._send_error(send, answer, decision)
            return
        headers = self._base_headers() + self._limit_headers(decision)
        tokens = prompt_tokens(req, self._counter)
        if fault == "502":
            await send_raw(send, 502, CLOUDFLARE_502.encode(), content_type=b"text/html", headers=headers)
        elif fault == "filter_completion":
            await send_json(send, 200, self._completion(req, tokens, model=model, filtered="violence"), headers=headers)
        elif fault == "badjson":
            await send_json(send, 200, self._completion(req, tokens, model=model, plain_text=True), headers=headers)
        elif fault == "nochoices":
            body = {
                "id": self._response_id(),
                "object": "chat.completion",
                "choices": [],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            }
            await send_json(send, 200, body, headers=headers)
        elif fault == "nonjson":
            await send_raw(send, 200, b"upstream returned: <!doctype html>", content_type=b"text/plain")
        elif fault == "truncated":
            await send_raw(send, 200, b'{"id": "chatcmpl-cut", "object": "chat.compl', content_type=b"application/json")
        elif fault == "stall":
            await anyio.sleep(self.config.stall_s)
            await send_json(send, 504, openai_error("Gateway timeout.", type_="server_error"), headers=headers)
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


def _headers(scope: dict[str, Any]) -> dict[str, str]:
    return {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope.get("headers", [])}


# The status of the faults that are not an error answer (what /stats counts them as).
_TRANSPORT_FAULT_STATUS = {"502": 502}
