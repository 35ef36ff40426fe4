"""The simulator's knobs: profile, latency, enforced limits, faults, key, header style."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

HeaderStyle = Literal["openai", "azure"]
# Which provider the simulator stands in for: its URLs, auth, headers, error bodies and model names.
Profile = Literal["openai", "azure", "openrouter", "vllm", "litellm"]
PROFILES: tuple[Profile, ...] = ("openai", "azure", "openrouter", "vllm", "litellm")

# Fault kinds, usable by rate (``fault_rates``) or by rule in an image URL (``?sim=KIND`` or ``?sim=KINDxN``).
FAULT_KINDS = (
    "500",
    "502",
    "503",
    "429",
    # A gateway's own limiter refusing (LiteLLM's: its wait only in llm_provider-retry-after).
    "gateway_limit",
    "reset",
    "stall",
    "truncated",
    "nonjson",
    "nochoices",
    "invalid_image_url",
    # The provider timing out while it downloads the image: a 400 that is worth retrying.
    "image_timeout",
    "filter_completion",
    "filter_prompt",
    "quota",
    "auth",
    "badjson",
    # Not a failure: a normal answer held for ``stall_s`` first (a request still in flight when
    # another one stops the run).
    "slow",
)
# What a retry can get past; the rest say the same thing every time (or are not failures at all).
TRANSIENT_FAULTS = frozenset(FAULT_KINDS) - {
    "invalid_image_url",
    "filter_completion",
    "filter_prompt",
    "quota",
    "auth",
    "badjson",
    "slow",
}


@dataclass(frozen=True, kw_only=True)
class SimConfig:
    latency_median_s: float = 0.05
    latency_p99_s: float = 0.2
    rpm: int | None = None
    tpm: int | None = None
    # A per-second cap on top of the 60 s window, as Azure checks in 1-10 s windows.
    burst_window_s: float = 1.0
    burst_factor: float = 2.0
    api_key: str | None = None
    models: tuple[str, ...] = (
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4.1",
        "gpt-4.1-mini",
        "gpt-4.1-nano",
        "gpt-5",
        "gpt-5-mini",
        "gpt-5-nano",
        "o1",
        "o3",
        "o4-mini",
        "gpt-3.5-turbo",
    )
    accept_any_model: bool = False
    fault_rates: dict[str, float] = field(default_factory=dict)
    stall_s: float = 30.0
    # The wait a 429 fault asks for, in its message, its retry-after-ms and its Retry-After (whole
    # seconds, rounded up: an integer header can only err on the long side).
    fault_wait_s: float = 1.0
    # Only the rate-limit header format (the profile's unless set): kept for ``--header-style``.
    header_style: HeaderStyle | None = None
    profile: Profile = "openai"
    # Body keys accepted beyond OpenAI's own: the default simulator also stands for the 302.AI
    # gateway, whose ``ocr_model`` the pipeline may send.
    extra_params: tuple[str, ...] = ("ocr_model",)
    down: bool = False
    # The share of each answered prompt reported as cached (``prompt_tokens_details.cached_tokens``),
    # as a provider's prompt cache reports a repeated prefix: what an estimate must price at the cached rate.
    cached_share: float = 0.0
    seed: int = 0
    log_path: str | None = None
