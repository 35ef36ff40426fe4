"""PURE: each profile's error answers for the same events (a wrong key, an unknown model, a limit, a fault).

Shapes, from shared/reference/providers.md and the providers' own docs and issues:

- openai: ``{"error": {"message", "type", "param", "code"}}``.
- azure: Azure's own ``{"error": {"code": "429" | "DeploymentNotFound" | "401", "message"}}`` for
  what the Azure front end decides (key, deployment, limits, quota); OpenAI's envelope for what the
  model service refuses (parameters, images), and ``innererror.content_filter_result`` for its filter.
- openrouter (openrouter.ai/docs/errors): ``{"error": {"code": <status as a number>, "message",
  "metadata"?}}``; no credits is 402, a prompt flagged by moderation 403 with ``metadata.reasons``
  and ``flagged_input``; an unknown model is a 400.
- vllm: ``{"error": {"message", "type": "BadRequestError" | "NotFoundError", "param", "code": <int>}}``;
  a wrong key (``--api-key``) is ``{"error": "Unauthorized"}``.
- litellm (the proxy, 1.80.0, in front of an OpenAI upstream; tests/fixtures/litellm_proxy_1.80.0.json
  is a capture of the real proxy): every error is ``{"error": {"message", "type", "param", "code":
  "<status>"}}``; an upstream error's message is inside the proxy's
  (``litellm.RateLimitError: RateLimitError: OpenAIException - You exceeded your current quota...``),
  so an ``insufficient_quota`` arrives as a generic 429 whose only trace of it is those words.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

from .config import Profile

Kind = Literal[
    "auth",  # a missing or wrong key
    "model",  # an unknown model or deployment
    "bad_request",  # the model service refuses the request (message/param/code given)
    "rate_limit",  # the upstream's limiter (message and wait given)
    "quota",  # the account cannot pay
    "server",  # 500
    "overloaded",  # 503
    "invalid_image_url",  # the image could not be fetched
    "image_timeout",  # fetching the image timed out (the same code: only the message differs)
    "filter_prompt",  # the prompt (image) was blocked
]


@dataclass(frozen=True, slots=True)
class ErrorAnswer:
    status: int
    body: dict[str, Any]
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    upstream: bool = True  # came from the model service (carries its rate-limit headers), not the front end


def openai_error(
    message: str, *, type_: str | None, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _openai(kind: Kind, *, model: str, message: str, param: str | None, code: str | None, wait_s: float) -> ErrorAnswer:
    if kind == "auth":
        return ErrorAnswer(
            401,
            openai_error(
                "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.",
                type_="invalid_request_error",
                code="invalid_api_key",
            ),
        )
    if kind == "model":
        return ErrorAnswer(
            404,
            openai_error(
                f"The model `{model}` does not exist or you do not have access to it.",
                type_="invalid_request_error",
                code="model_not_found",
            ),
        )
    if kind == "bad_request":
        return ErrorAnswer(400, openai_error(message, type_="invalid_request_error", code=code, param=param))
    if kind == "rate_limit":
        kind_type = "tokens" if "TPM" in message or "tokens" in message else "requests"
        return ErrorAnswer(429, openai_error(message, type_=kind_type, code="rate_limit_exceeded"))
    if kind == "quota":
        return ErrorAnswer(
            429,
            openai_error(
                "You exceeded your current quota, please check your plan and billing details. For more information "
                "on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
                type_="insufficient_quota",
                code="insufficient_quota",
            ),
        )
    if kind == "server":
        return ErrorAnswer(
            500,
            openai_error("The server had an error processing your request. Sorry about that!", type_="server_error"),
        )
    if kind == "overloaded":
        return ErrorAnswer(
            503, openai_error("That model is currently overloaded with other requests.", type_="server_error")
        )
    if kind in ("invalid_image_url", "image_timeout"):
        # The same code for both, as the real API: only the message tells a slow host from a bad URL.
        text = (
            "Timeout while downloading the image."
            if kind == "image_timeout"
            else "Invalid image URL: the image could not be downloaded."
        )
        return ErrorAnswer(
            400, openai_error(text, type_="invalid_request_error", code="invalid_image_url", param="url")
        )
    return ErrorAnswer(400, prompt_filter_error())


def _azure(kind: Kind, *, model: str, api_version: str, wait_s: float) -> ErrorAnswer | None:
    def native(status: int, code: str, message: str) -> ErrorAnswer:
        return ErrorAnswer(status, {"error": {"code": code, "message": message}})

    if kind == "auth":
        return native(
            401,
            "401",
            "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key "
            "for an active subscription and use a correct regional API endpoint for your resource.",
        )
    if kind == "model":
        return native(
            404,
            "DeploymentNotFound",
            "The API deployment for this resource does not exist. If you created the deployment within the last "
            "5 minutes, please wait a moment and try again.",
        )
    if kind in ("rate_limit", "quota"):
        # Azure has no insufficient_quota: a spent daily quota is a 429 asking for a day's wait.
        seconds = 86400 if kind == "quota" else max(1, round(wait_s + 0.499))
        return native(
            429,
            "429",
            f"Requests to the ChatCompletions_Create Operation under Azure OpenAI API version {api_version} have "
            f"exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after {seconds} "
            "seconds. Please go here: https://aka.ms/oai/quotaincrease if you would like to further increase the "
            "default rate limit.",
        )
    if kind == "overloaded":
        return native(
            503,
            "ServiceUnavailable",
            "The service is temporarily unable to process your request. Please try again later.",
        )
    return None  # what the model service itself says: OpenAI's envelope


def _openrouter(
    kind: Kind, *, model: str, message: str, wait_s: float, limit: int | None, now_epoch: float
) -> ErrorAnswer | None:
    def native(status: int, text: str, metadata: dict[str, Any] | None = None) -> ErrorAnswer:
        error: dict[str, Any] = {"code": status, "message": text}
        if metadata is not None:
            error["metadata"] = metadata
        return ErrorAnswer(status, {"error": error})

    slug = model if "/" in model else f"openai/{model}"
    if kind == "auth":
        return native(401, "User not found.")
    if kind == "model":
        return native(400, f"{model} is not a valid model ID")
    if kind == "quota":
        return native(
            402,
            "This request requires more credits, or fewer max_tokens. Add more credits at "
            "https://openrouter.ai/settings/credits and retry the request.",
        )
    if kind == "filter_prompt":
        return native(
            403,
            f'{slug} requires moderation on OpenAI. Your input was flagged for "violence/graphic". No credits were charged.',
            {
                "reasons": ["violence/graphic"],
                "flagged_input": "Describe this image...",
                "provider_name": "OpenAI",
                "model_slug": slug,
            },
        )
    if kind == "rate_limit":
        # No Retry-After: the wait is X-RateLimit-Reset (epoch milliseconds), also echoed in metadata.
        reset_ms = int((now_epoch + wait_s) * 1000)
        headers = {"X-RateLimit-Limit": str(limit), "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(reset_ms)}
        return native(429, f"Rate limit exceeded: limit_rpm/{slug}.", {"headers": headers, "provider_name": None})
    if kind in ("server", "overloaded", "bad_request", "invalid_image_url", "image_timeout"):
        status = {"server": 500, "overloaded": 503}.get(kind, 400)
        return native(status, "Provider returned error", {"provider_name": "OpenAI", "raw": message or None})
    return None


def _vllm(kind: Kind, *, model: str, message: str) -> ErrorAnswer | None:
    def native(status: int, type_: str, text: str) -> ErrorAnswer:
        return ErrorAnswer(status, {"error": {"message": text, "type": type_, "param": None, "code": status}})

    if kind == "auth":
        return ErrorAnswer(401, {"error": "Unauthorized"})
    if kind == "model":
        return native(404, "NotFoundError", f"The model `{model}` does not exist.")
    if kind in ("bad_request", "invalid_image_url", "image_timeout"):
        return native(400, "BadRequestError", message or "Invalid image URL.")
    if kind == "server":
        return native(500, "InternalServerError", "Internal server error.")
    return None  # vLLM has no quota, limiter or filter: an injected one keeps OpenAI's shape


_LITELLM_CLASSES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    429: "RateLimitError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


def litellm_wrapped(status: int, upstream: dict[str, Any], *, model: str) -> ErrorAnswer:
    """An upstream error as LiteLLM 1.80.0 passes it on (tests/fixtures/litellm_proxy_1.80.0.json, captured
    from a real proxy in front of this simulator): the status kept, the upstream's *message* inside its
    own, its code and type gone (a 429 is a ``throttling_error``, whatever the upstream's type was)."""
    name = _LITELLM_CLASSES.get(status, "APIError")
    text = str(upstream.get("error", {}).get("message", ""))
    prefix = f"litellm.{name}: " if status == 400 else f"litellm.{name}: {name}: "
    message = f"{prefix}OpenAIException - {text}. Received Model Group={model}\nAvailable Model Group Fallbacks=None"
    type_ = "throttling_error" if status == 429 else None
    # The upstream's rate-limit headers do not survive the proxy's error path (only its 200s carry them).
    return ErrorAnswer(
        status, {"error": {"message": message, "type": type_, "param": None, "code": str(status)}}, upstream=False
    )


def litellm_auth(presented: str | None) -> ErrorAnswer:
    """The proxy's own key check, as the captured proxy runs (a master key, no database): no key is a
    401; any other key than the master key cannot be looked up, a 400 ``no_db_connection``."""
    if not presented:
        missing = {"message": "Authentication Error, No api key passed in.", "type": "auth_error", "param": "None"}
        return ErrorAnswer(401, {"error": {**missing, "code": "401"}}, upstream=False)
    unknown: dict[str, Any] = {"message": "No connected db.", "type": "no_db_connection", "param": None}
    return ErrorAnswer(400, {"error": {**unknown, "code": "400"}}, upstream=False)


def litellm_unknown_model(model: str) -> ErrorAnswer:
    message = (
        f"{{'error': '/chat/completions: Invalid model name passed in model={model}. "
        "Call `/v1/models` to view available models for your key.'}"
    )
    return ErrorAnswer(
        400, {"error": {"message": message, "type": "None", "param": "None", "code": "400"}}, upstream=False
    )


def litellm_limited(*, limit: int | None, wait_s: float, reason: str) -> ErrorAnswer:
    """The proxy's own limiter: its wait goes out only as ``llm_provider-retry-after`` (the proxy runs
    the limiter's headers through its ``llm_provider-`` renaming), no ``retry-after``, no ``x-ratelimit-*``."""
    limit_type = "tokens" if "TPM" in reason else "requests"
    seconds = max(1, round(wait_s + 0.499))
    message = (
        f"Rate limit exceeded for api_key: {hashlib.sha256(b'sim').hexdigest()}. Limit type: {limit_type}. "
        f"Current limit: {limit}, Remaining: 0. Limit resets in {seconds} seconds"
    )
    return ErrorAnswer(
        429,
        {"error": {"message": message, "type": "None", "param": "None", "code": "429"}},
        [(b"llm_provider-retry-after", str(seconds).encode()), (b"llm_provider-rate_limit_type", limit_type.encode())],
        upstream=False,
    )


def error_answer(
    profile: Profile,
    kind: Kind,
    *,
    model: str = "",
    message: str = "",
    param: str | None = None,
    code: str | None = None,
    wait_s: float = 0.0,
    api_version: str = "2024-10-21",
    limit: int | None = None,
    now_epoch: float = 0.0,
) -> ErrorAnswer:
    """What ``profile`` answers for ``kind``; OpenAI's shape where the provider has no word of its own."""
    found: ErrorAnswer | None = None
    if profile == "azure":
        found = _azure(kind, model=model, api_version=api_version, wait_s=wait_s)
    elif profile == "openrouter":
        found = _openrouter(kind, model=model, message=message, wait_s=wait_s, limit=limit, now_epoch=now_epoch)
    elif profile == "vllm":
        found = _vllm(kind, model=model, message=message)
    if found is not None:
        return found
    answer = _openai(kind, model=model, message=message, param=param, code=code, wait_s=wait_s)
    if profile == "litellm":
        if kind == "model":
            return litellm_unknown_model(model)
        return litellm_wrapped(answer.status, answer.body, model=model)
    return answer


def prompt_filter_error() -> dict[str, Any]:
    """Azure's 400 for a prompt its filter blocked (`innererror.content_filter_result`, singular)."""
    body = openai_error(
        "The response was filtered due to the prompt triggering Azure OpenAI's content management policy. "
        "Please modify your prompt and retry.",
        type_=None,
        code="content_filter",
        param="prompt",
    )
    body["error"]["status"] = 400
    body["error"]["innererror"] = {
        "code": "ResponsibleAIPolicyViolation",
        "content_filter_result": {
            **{c: {"filtered": False, "severity": "safe"} for c in ("hate", "self_harm", "sexual")},
            "violence": {"filtered": True, "severity": "medium"},
        },
    }
    return body


CLOUDFLARE_502 = (
    "<html>\r\n<head><title>api.openai.com | 502: Bad gateway</title></head>\r\n"
    "<body><h1>502 Bad Gateway</h1><p>cloudflare</p></body>\r\n</html>\r\n"
)
