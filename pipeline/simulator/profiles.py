"""PURE: what differs between the providers the simulator stands in for, apart from error bodies.

Per profile: which paths serve chat (Azure's deployment path and its ``api-version``), how the
key is carried (``Authorization: Bearer``, Azure's ``api-key``, none for vLLM), the model name an
answer reports (OpenAI's dated snapshots), how a 200's body is dressed (filter results, OpenRouter's
``provider``, LiteLLM's ``provider_specific_fields``) and which rate-limit headers go out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .config import HeaderStyle, Profile
from .limits import Decision, format_go_duration

# What OpenAI (and Azure, and an upstream behind LiteLLM) reports for an alias: a dated snapshot.
SNAPSHOTS = {
    "gpt-4o": "gpt-4o-2024-08-06",
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "gpt-4.1": "gpt-4.1-2025-04-14",
    "gpt-4.1-mini": "gpt-4.1-mini-2025-04-14",
    "gpt-4.1-nano": "gpt-4.1-nano-2025-04-14",
    "gpt-5": "gpt-5-2025-08-07",
    "gpt-5-mini": "gpt-5-mini-2025-08-07",
    "gpt-5-nano": "gpt-5-nano-2025-08-07",
    "o1": "o1-2024-12-17",
    "o3": "o3-2025-04-16",
    "o4-mini": "o4-mini-2025-04-16",
    "gpt-3.5-turbo": "gpt-3.5-turbo-0125",
}
# Azure versions the simulator serves on the deployments path (any other is refused, as Azure does).
AZURE_API_VERSIONS = frozenset(
    {"2024-02-01", "2024-06-01", "2024-10-21", "2024-12-01-preview", "2025-01-01-preview", "2025-04-01-preview"}
)


@dataclass(frozen=True, slots=True)
class ChatRoute:
    """A chat request's place: Azure's deployment (the model) and API version, when the path names them."""

    deployment: str | None = None
    api_version: str | None = None


@dataclass(frozen=True, slots=True)
class RouteRefusal:
    status: int
    body: dict[str, Any]


_NOT_FOUND = {"error": {"code": "404", "message": "Resource not found"}}


def chat_route(profile: Profile, path: str, query: Mapping[str, str]) -> ChatRoute | RouteRefusal | None:
    """The chat route ``path`` names, a refusal (Azure: no or an unknown ``api-version``), or None
    when the path is not a chat route at all."""
    if not path.endswith("/chat/completions"):
        return None
    if profile != "azure":
        return ChatRoute()
    if path == "/openai/v1/chat/completions":  # Azure's v1 API: no api-version, the model in the body
        return ChatRoute(api_version=query.get("api-version"))
    parts = path.split("/")
    if len(parts) != 6 or parts[1:3] != ["openai", "deployments"] or not parts[3]:
        return RouteRefusal(404, _NOT_FOUND)
    version = query.get("api-version")
    if version is None:
        return RouteRefusal(404, _NOT_FOUND)
    if version not in AZURE_API_VERSIONS:
        return RouteRefusal(400, {"error": {"code": "BadRequest", "message": f"API version not supported: {version}"}})
    return ChatRoute(deployment=parts[3], api_version=version)


def presented_key(profile: Profile, headers: Mapping[str, str], *, path: str = "") -> str | None:
    """The key the request carries where ``profile`` looks for it. Azure: ``api-key`` (a Bearer token
    there is an Entra ID token, never the key), except on its v1 API, which takes the key either way."""
    if profile == "azure" and (not path.startswith("/openai/v1/") or "api-key" in headers):
        return headers.get("api-key")
    value = headers.get("authorization", "")
    return value[len("Bearer ") :] if value.startswith("Bearer ") else None


def credential_digest(headers: Mapping[str, str]) -> str | None:
    """A short digest of whatever credential a request carries (for the request log; never the key)."""
    value = headers.get("api-key") or headers.get("authorization", "").removeprefix("Bearer ")
    return hashlib.sha256(value.encode()).hexdigest()[:16] if value else None


def known_model(profile: Profile, model: str, models: tuple[str, ...]) -> bool:
    name = model.removesuffix("-ocr")
    if profile == "openrouter":
        name = name.removeprefix("openai/")
    return name in models or any(SNAPSHOTS.get(alias) == name for alias in models)


def answer_model(profile: Profile, requested: str) -> str:
    """The ``model`` an answer reports: OpenAI's (Azure's, LiteLLM's upstream's) dated snapshot,
    OpenRouter's ``vendor/model`` slug, vLLM's served name as asked for."""
    if profile == "vllm":
        return requested
    if profile == "openrouter":
        return requested if "/" in requested else f"openai/{requested}"
    return SNAPSHOTS.get(requested, requested)


def dress_answer(profile: Profile, body: dict[str, Any], *, requested: str) -> dict[str, Any]:
    """A simulated completion (Azure-flavoured, filter results included) as ``profile`` sends it."""
    body["model"] = answer_model(profile, requested)
    if profile in ("vllm", "openrouter"):
        # Neither runs Azure's filter: no per-choice or prompt filter results.
        body.pop("prompt_filter_results", None)
        for choice in body["choices"]:
            choice.pop("content_filter_results", None)
    if profile == "openrouter":
        body["id"] = "gen-" + body["id"].removeprefix("chatcmpl-")
        body["provider"] = "OpenAI"
    if profile == "vllm":
        body.pop("system_fingerprint", None)
    if profile == "litellm":
        # LiteLLM keeps only the fields its Choices and Message types know; the rest moves into
        # provider_specific_fields (as captured from LiteLLM 1.80.0).
        for choice in body["choices"]:
            results = choice.pop("content_filter_results", None)
            choice.pop("logprobs", None)
            choice["provider_specific_fields"] = {"content_filter_results": results} if results else {}
            message = choice["message"]
            message["provider_specific_fields"] = {"refusal": message.pop("refusal", None)}
            if message.get("content") is None:  # a filtered answer's null content is left out
                message.pop("content", None)
    return body


def _openai_limit_headers(d: Decision, rpm: int | None, tpm: int | None) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    if rpm is not None:
        headers += [
            ("x-ratelimit-limit-requests", str(rpm)),
            ("x-ratelimit-remaining-requests", str(d.remaining_requests)),
            ("x-ratelimit-reset-requests", format_go_duration(d.reset_requests_s)),
        ]
    if tpm is not None:
        headers += [
            ("x-ratelimit-limit-tokens", str(tpm)),
            ("x-ratelimit-remaining-tokens", str(d.remaining_tokens)),
            ("x-ratelimit-reset-tokens", format_go_duration(d.reset_tokens_s)),
        ]
    return headers


def _azure_limit_headers(d: Decision) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    if d.remaining_requests is not None:
        headers.append(("x-ratelimit-remaining-requests", str(d.remaining_requests)))
    if d.remaining_tokens is not None:
        headers.append(("x-ratelimit-remaining-tokens", str(d.remaining_tokens)))
        # Azure's hyphenated name, in integer seconds (openai/openai-python#937).
        headers.append(("x-rate-limit-reset-tokens", str(round(d.reset_tokens_s))))
    return headers


def limit_headers(
    profile: Profile,
    d: Decision,
    *,
    rpm: int | None,
    tpm: int | None,
    style: HeaderStyle | None = None,
    now_epoch: float = 0.0,
    upstream_request_id: str = "",
) -> list[tuple[bytes, bytes]]:
    """The rate-limit headers ``profile`` sends with every answer (vLLM: none)."""
    out: list[tuple[str, str]]
    if profile == "vllm":
        out = []
    elif profile == "openrouter":
        out = []
        if rpm is not None:
            # When the window lets a request through again: after a refusal, its wait.
            reset_ms = int((now_epoch + (d.reset_requests_s if d.allowed else d.retry_after_s)) * 1000)
            out = [
                ("x-ratelimit-limit", str(rpm)),
                ("x-ratelimit-remaining", str(d.remaining_requests)),
                ("x-ratelimit-reset", str(reset_ms)),  # epoch milliseconds
            ]
    elif profile == "azure" or style == "azure":
        out = _azure_limit_headers(d)
    elif profile == "litellm":
        # The upstream's headers, renamed llm_provider-*, and the four OpenAI ones LiteLLM copies
        # back under their own names (no reset times).
        upstream = _openai_limit_headers(d, rpm, tpm)
        if upstream_request_id:
            upstream.append(("x-request-id", upstream_request_id))
        out = [("llm_provider-" + name, value) for name, value in upstream]
        out += [(n, v) for n, v in upstream if n.startswith(("x-ratelimit-limit-", "x-ratelimit-remaining-"))]
    else:
        out = _openai_limit_headers(d, rpm, tpm)
    return [(name.encode(), value.encode()) for name, value in out]


def wait_headers(profile: Profile, wait_s: float) -> list[tuple[bytes, bytes]]:
    """How ``profile`` says how long to wait on a 429 (LiteLLM passes no upstream wait on;
    OpenRouter says it only in ``X-RateLimit-Reset``)."""
    if profile in ("litellm", "vllm", "openrouter"):
        return []
    seconds = max(1, round(wait_s + 0.499))  # delay-seconds is an integer: rounded up, never shorter
    return [(b"retry-after", str(seconds).encode()), (b"retry-after-ms", str(round(wait_s * 1000)).encode())]


def front_headers(profile: Profile, *, call_id: str) -> list[tuple[bytes, bytes]]:
    """Headers a gateway adds to everything it answers itself."""
    if profile == "litellm":
        return [(b"x-litellm-call-id", call_id.encode()), (b"x-litellm-version", b"1.80.0")]
    return []
