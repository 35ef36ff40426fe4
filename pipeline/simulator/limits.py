"""The simulator's enforced limits: RPM and TPM as buckets refilled continuously, plus a burst cap.

OpenAI's limiter refills continuously (``limit / 60`` per second) rather than
forgetting a sliding 60 s window: a bucket starts full, a request takes one
request and its tokens, and ``x-ratelimit-reset-*`` is the time until the bucket
is full again, so one request at 3,000 rpm reports ``20ms``.

Tokens are charged on arrival as OpenAI does: the prompt estimate plus ``max_tokens``.
Rejected requests are not charged. ``format_go_duration`` writes reset times the
way OpenAI's headers do (``20ms``, ``1s``, ``6m0s``).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


def format_go_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    minutes, secs = divmod(seconds, 60)
    secs_text = f"{secs:.3f}".rstrip("0").rstrip(".")
    if minutes >= 1:
        return f"{int(minutes)}m{secs_text}s"
    return f"{secs_text}s"


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    retry_after_s: float
    remaining_requests: int | None
    remaining_tokens: int | None
    reset_requests_s: float
    reset_tokens_s: float
    reason: str = ""


class _Bucket:
    """``capacity`` units refilled at ``capacity / 60`` per second, full at the start."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.rate = capacity / 60.0
        self.level = float(capacity)

    def refill(self, elapsed_s: float) -> None:
        self.level = min(float(self.capacity), self.level + elapsed_s * self.rate)

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` is available (a request larger than the bucket: a full minute)."""
        if amount > self.capacity:
            return 60.0
        return max(0.0, (amount - self.level) / self.rate)

    def reset_s(self) -> float:
        return (self.capacity - self.level) / self.rate

    def remaining(self) -> int:
        return max(0, math.floor(self.level + 1e-9))


class TokenBucketLimiter:
    def __init__(
        self, *, rpm: int | None, tpm: int | None, burst_window_s: float = 1.0, burst_factor: float = 2.0
    ) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self._requests = _Bucket(rpm) if rpm else None
        self._tokens = _Bucket(tpm) if tpm else None
        self._burst_window_s = burst_window_s
        # A short-window cap on top of the minute's, as Azure checks RPM over 1-10 s windows.
        self._burst_cap = max(1, math.ceil(rpm / 60.0 * burst_window_s * burst_factor)) if rpm else None
        self._recent: deque[float] = deque()
        self._last: float | None = None

    def _refill(self, now: float) -> None:
        elapsed = 0.0 if self._last is None else max(0.0, now - self._last)
        self._last = now if self._last is None else max(self._last, now)
        for bucket in (self._requests, self._tokens):
            if bucket is not None:
                bucket.refill(elapsed)
        horizon = now - self._burst_window_s
        while self._recent and self._recent[0] <= horizon:
            self._recent.popleft()

    def _decision(self, allowed: bool, wait: float = 0.0, reason: str = "") -> Decision:
        r, t = self._requests, self._tokens
        return Decision(
            allowed,
            wait,
            None if r is None else r.remaining(),
            None if t is None else t.remaining(),
            0.0 if r is None else r.reset_s(),
            0.0 if t is None else t.reset_s(),
            reason,
        )

    def peek(self, now: float) -> Decision:
        """The state as headers report it, charging nothing (for answers the limiter did not admit)."""
        self._refill(now)
        return self._decision(True)

    def check(self, now: float, tokens: int) -> Decision:
        """Admit (and charge) one request of ``tokens``, or say how long to wait."""
        self._refill(now)
        if self._requests is not None and self._requests.level < 1:
            return self._decision(False, max(self._requests.wait_for(1), 0.001), "requests per min (RPM)")
        if self._burst_cap is not None and len(self._recent) >= self._burst_cap:
            # A short-window limiter asks for its whole window, as Azure's 1-10 s checks answer.
            return self._decision(False, self._burst_window_s, "requests per second (burst)")
        if self._tokens is not None and self._tokens.level < tokens:
            return self._decision(False, max(self._tokens.wait_for(tokens), 0.001), "tokens per min (TPM)")
        if self._requests is not None:
            self._requests.level -= 1
            self._recent.append(now)
        if self._tokens is not None:
            self._tokens.level -= tokens
        return self._decision(True)
