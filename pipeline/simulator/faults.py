"""PURE: what an injected fault answers in each profile, for the faults that are an error answer.

The transport faults (a reset connection, a stall, a cut or non-JSON body, a Cloudflare page) and
the 200s that go wrong (no choices, a filtered completion, malformed JSON) are the same bytes in
every profile and stay with the app; this is the part that speaks each provider's words.
"""

from __future__ import annotations

from .bodies import ErrorAnswer, Kind, error_answer, litellm_wrapped
from .config import Profile

# The ``?sim=429`` fault: an upstream limit whose message, Retry-After and retry-after-ms agree.
FAULT_429_WAIT_S = 1.0

_KINDS: dict[str, Kind] = {
    "500": "server",
    "503": "overloaded",
    "429": "rate_limit",
    "quota": "quota",
    "auth": "auth",
    "invalid_image_url": "invalid_image_url",
    "filter_prompt": "filter_prompt",
}


def fault_answer(
    profile: Profile, fault: str, *, model: str, api_version: str, limit: int | None = None, now_epoch: float = 0.0
) -> ErrorAnswer | None:
    """The error answer for ``fault`` in ``profile``; None for a fault that is not one."""
    kind = _KINDS.get(fault)
    if kind is None:
        return None
    message = ""
    if kind == "rate_limit":
        message = (
            f"Rate limit reached for {model} in organization org-simulator on requests per min (RPM): "
            "Limit 3, Used 3, Requested 1. Please try again in 1s."
        )
    answer = error_answer(profile, kind, model=model, message=message, wait_s=FAULT_429_WAIT_S, api_version=api_version)
    if kind == "auth" and profile == "litellm":
        # The proxy's own key was accepted: it is the upstream's key that is refused.
        return litellm_wrapped(401, error_answer("openai", "auth", model=model).body, model=model)
    return answer
