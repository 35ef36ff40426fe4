"""The simulator's knobs: latency, enforced limits, faults, key, header style."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

HeaderStyle = Literal["openai", "azure"]

# Fault kinds, usable by rate (``fault_rates``) or by rule in an image URL (``?sim=KIND`` or ``?sim=KINDxN``).
FAULT_KINDS = (
    "500",
    "502",
    "503",
    "429",
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
TRANSIENT_FAULTS = frozenset(
    {"500", "502", "503", "429", "reset", "stall", "truncated", "nonjson", "nochoices", "image_timeout"}
)


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
        "o4-mini",
        "gpt-3.5-turbo",
    )
    accept_any_model: bool = False
    fault_rates: dict[str, float] = field(default_factory=dict)
    stall_s: float = 30.0
    header_style: HeaderStyle = "openai"
    down: bool = False
    seed: int = 0
    log_path: str | None = None
