"""The simulator's enforced limits: RPM and TPM over a sliding 60 s window, plus a burst cap.

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


class SlidingWindowLimiter:
    WINDOW_S = 60.0

    def __init__(
        self, *, rpm: int | None, tpm: int | None, burst_window_s: float = 1.0, burst_factor: float = 2.0
    ) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self._burst_window_s = burst_window_s
        self._burst_cap = max(1, math.ceil(rpm / 60.0 * burst_window_s * burst_factor)) if rpm else None
        self._requests: deque[float] = deque()
        self._tokens: deque[tuple[float, int]] = deque()
        self._token_sum = 0

    def _expire(self, now: float) -> None:
        horizon = now - self.WINDOW_S
        while self._requests and self._requests[0] <= horizon:
            self._requests.popleft()
        while self._tokens and self._tokens[0][0] <= horizon:
            self._token_sum -= self._tokens.popleft()[1]

    def _recent(self, now: float) -> int:
        horizon = now - self._burst_window_s
        count = 0
        for t in reversed(self._requests):
            if t <= horizon:
                break
            count += 1
        return count

    def check(self, now: float, tokens: int) -> Decision:
        """Admit (and charge) one request of ``tokens``, or say how long to wait."""
        self._expire(now)
        reset_r = (self._requests[0] + self.WINDOW_S - now) if self._requests else 0.0
        reset_t = (self._tokens[0][0] + self.WINDOW_S - now) if self._tokens else 0.0
        wait, reason = 0.0, ""
        if self.rpm is not None and len(self._requests) >= self.rpm:
            wait, reason = reset_r, "requests per min (RPM)"
        elif self._burst_cap is not None and self._recent(now) >= self._burst_cap:
            wait, reason = self._burst_window_s, "requests per second (burst)"
        elif self.tpm is not None and self._token_sum + tokens > self.tpm:
            wait, reason = self._tokens_free_after(now, tokens), "tokens per min (TPM)"
        if reason:
            return Decision(
                False, max(wait, 0.001), self._remaining_requests(), self._remaining_tokens(), reset_r, reset_t, reason
            )
        self._requests.append(now)
        self._tokens.append((now, tokens))
        self._token_sum += tokens
        return Decision(
            True,
            0.0,
            self._remaining_requests(),
            self._remaining_tokens(),
            self._requests[0] + self.WINDOW_S - now,
            self._tokens[0][0] + self.WINDOW_S - now,
        )

    def _tokens_free_after(self, now: float, tokens: int) -> float:
        needed = self._token_sum + tokens - (self.tpm or 0)
        freed = 0
        for t, n in self._tokens:
            freed += n
            if freed >= needed:
                return t + self.WINDOW_S - now
        return self.WINDOW_S

    def _remaining_requests(self) -> int | None:
        return None if self.rpm is None else max(0, self.rpm - len(self._requests))

    def _remaining_tokens(self) -> int | None:
        return None if self.tpm is None else max(0, self.tpm - self._token_sum)
