"""PURE: what an injected fault answers in each profile, for the faults that are an error answer.

The transport faults (a reset connection, a stall, a cut or non-JSON body, a Cloudflare page) and
the 200s that go wrong (no choices, a filtered completion, malformed JSON) are the same bytes in
every profile and stay with the app; this is the part that speaks each provider's words.
"""

from __future__ import annotations

from .bodies import ErrorAnswer, Kind, error_answer, litellm_limited, litellm_wrapped
from .config import Profile
from .limits import format_go_duration

_KINDS: dict[str, Kind] = {
    "500": "server",
    "503": "overloaded",
    "429": "rate_limit",
    "quota": "quota",
    "auth": "auth",
    "invalid_image_url": "invalid_image_url",
    "image_timeout": "image_timeout",
    "filter_prompt": "filter_prompt",
}


def fault_answer(
    profile: Profile,
    fault: str,
    *,
    model: str,
    api_version: str,
    wait_s: float = 1.0,
    limit: int | None = None,
    now_epoch: float = 0.0,
) -> ErrorAnswer | None:
    """The error answer for ``fault`` in ``profile``; None for a fault that is not one. A 429's
    message says ``wait_s`` as its Retry-After and retry-after-ms do (``wait_headers``)."""
    if fault == "gateway_limit":
        if profile == "litellm":  # the proxy's own limiter, not upstream's
            return litellm_limited(limit=limit, wait_s=wait_s, reason="RPM")
        fault = "429"  # elsewhere the gateway and the provider are one
    kind = _KINDS.get(fault)
    if kind is None:
        return None
    message = ""
    if kind == "rate_limit":
        message = (
            f"Rate limit reached for {model} in organization org-simulator on requests per min (RPM): "
            f"Limit 3, Used 3, Requested 1. Please try again in {format_go_duration(wait_s)}."
        )
    answer = error_answer(
        profile,
        kind,
        model=model,
        message=message,
        wait_s=wait_s,
        api_version=api_version,
        limit=limit,
        now_epoch=now_epoch,
    )
    if kind == "auth" and profile == "litellm":
        # The proxy's own key was accepted: it is the upstream's key that is refused.
        return litellm_wrapped(401, error_answer("openai", "auth", model=model).body, model=model)
    return answer
