"""Pacing for rpm and tpm, and the run-wide pause the server can ask for.

Pacing is GCRA (a virtual-scheduling token bucket): each grant pushes a
"theoretical arrival time" by 60/rpm seconds (and by tokens * 60/tpm). That
spreads requests evenly: providers check limits over 1-10 s windows, so a burst
at the top of a minute gets 429s even under the per-minute total. ``burst_s``
of credit is off by default because any credit lets a sliding 60 s window see
more than rpm requests (rpm + burst_s * rpm / 60).

The server's word wins: a 429 (or ``remaining-requests: 0``) pauses every
dispatch until its Retry-After / reset time, not only the request that got it.

``parse_duration_s`` reads the reset formats seen in the wild: OpenAI's Go
durations (``20ms``, ``1s``, ``6m0s``), Azure's integer seconds, ``-1`` = unknown.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

_SAFETY = 1.001
_GO_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_GO_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_duration_s(raw: str | None) -> float | None:
    if raw is None:
        return None
    raw = raw.strip()
    try:
        value = float(raw)
    except ValueError:
        pass
    else:
        return None if value < 0 else value
    parts = _GO_PART.findall(raw)
    if not parts or "".join(n + u for n, u in parts) != raw:
        return None
    return sum(float(n) * _GO_UNITS[u] for n, u in parts)


@dataclass(frozen=True, slots=True)
class RateLimitHeaders:
    limit_requests: int | None = None
    limit_tokens: int | None = None
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests_s: float | None = None
    reset_tokens_s: float | None = None


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = int(float(raw))
    except ValueError:
        return None
    return None if value < 0 else value


def parse_rate_limit_headers(headers: Mapping[str, str]) -> RateLimitHeaders:
    """OpenAI's ``x-ratelimit-*`` family (and Azure's hyphenated ``x-rate-limit-reset-tokens``)."""
    reset_tokens = headers.get("x-ratelimit-reset-tokens", headers.get("x-rate-limit-reset-tokens"))
    return RateLimitHeaders(
        limit_requests=_int_header(headers, "x-ratelimit-limit-requests"),
        limit_tokens=_int_header(headers, "x-ratelimit-limit-tokens"),
        remaining_requests=_int_header(headers, "x-ratelimit-remaining-requests"),
        remaining_tokens=_int_header(headers, "x-ratelimit-remaining-tokens"),
        reset_requests_s=parse_duration_s(headers.get("x-ratelimit-reset-requests")),
        reset_tokens_s=parse_duration_s(reset_tokens),
    )


class RateLimiter:
    """Grants dispatch slots no faster than rpm / tpm allow; all waits go through ``sleep``."""

    def __init__(
        self,
        *,
        rpm: int | None,
        tpm: int | None,
        clock: Clock,
        sleep: Sleep,
        burst_s: float = 0.0,
        default_pause_s: float = 1.0,
    ) -> None:
        # A hair slower than the limit, so float drift never fits rpm + 1 into a 60 s window.
        self._request_interval_s = 60.0 / rpm * _SAFETY if rpm else 0.0
        self._token_interval_s = 60.0 / tpm * _SAFETY if tpm else 0.0
        self._clock = clock
        self._sleep = sleep
        self._burst_s = burst_s
        self._default_pause_s = default_pause_s
        now = clock()
        self._tat_requests = now
        self._tat_tokens = now
        self._paused_until = now
        self.pauses = 0

    @property
    def paused_until(self) -> float:
        return self._paused_until

    async def acquire(self, tokens: int) -> None:
        """Wait until one request of ``tokens`` may be sent, then count it as sent."""
        while True:
            now = self._clock()
            start = max(
                now,
                self._paused_until,
                self._tat_requests - self._burst_s,
                self._tat_tokens - self._burst_s,
            )
            self._tat_requests = max(self._tat_requests, start) + self._request_interval_s
            self._tat_tokens = max(self._tat_tokens, start) + tokens * self._token_interval_s
            if start > now:
                await self._sleep(start - now)
            # A pause that arrived while we waited applies to us too.
            if self._paused_until <= self._clock():
                return

    def pause(self, seconds: float | None) -> None:
        """Hold every dispatch for ``seconds`` (the server's Retry-After, or a default)."""
        wait = self._default_pause_s if seconds is None or seconds <= 0 else seconds
        until = self._clock() + wait
        if until > self._paused_until:
            self._paused_until = until
            self.pauses += 1

    def observe(self, headers: Mapping[str, str]) -> None:
        """Slow down before a 429 when the server says a window is used up."""
        info = parse_rate_limit_headers(headers)
        if info.remaining_requests == 0 and info.reset_requests_s:
            self.pause(info.reset_requests_s)
        if info.remaining_tokens == 0 and info.reset_tokens_s:
            self.pause(info.reset_tokens_s)
