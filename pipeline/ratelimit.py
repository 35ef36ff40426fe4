"""Pacing for rpm and tpm, and the run-wide pause the server can ask for.

Pacing is GCRA (a virtual-scheduling token bucket): each grant pushes a
"theoretical arrival time" by 60/rpm seconds (and by tokens * 60/tpm). That
spreads requests evenly: providers check limits over 1-10 s windows, so a burst
at the top of a minute gets 429s even under the per-minute total. ``burst_s``
of credit is off by default because any credit lets a sliding 60 s window see
more than rpm requests (rpm + burst_s * rpm / 60).

The server's word wins: a 429 (or ``remaining-requests: 0``) pauses every
dispatch until its Retry-After / reset time, not only the request that got it.

A wait longer than ``max_wait_s`` (a daily quota used up, a hostile ``inf``)
is not waited for: ``rate_limited`` and the next ``acquire`` raise
``WaitTooLongError`` and the run stops, resumable. Nothing a server reports
moves the schedule far ahead: a request's token charge is clamped to the TPM
limit and a usage correction to one minute's worth.

Which headers say what is the provider dialect's business (``read_headers``,
``Dialect.rate_limit_headers``); this module reads values: ``parse_duration_s``
the reset formats seen in the wild (OpenAI's Go durations ``20ms``, ``1s``,
``6m0s``, Azure's integer seconds, ``-1`` = unknown), ``header_count`` the counts.
Header numbers that are not finite (``nan``) or not plausible counts are ignored.
"""

from __future__ import annotations

import logging
import math
import re
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime

import anyio

from .errors import WaitTooLongError
from .value_types import value_type

log = logging.getLogger("caption")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

_SAFETY = 1.001
_GO_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_GO_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
# Counts in limit/remaining headers above this are not counts (and float → int stops being exact).
_MAX_HEADER_COUNT = 2**53


def parse_duration_s(raw: str | None) -> float | None:
    if raw is None:
        return None
    raw = raw.strip()
    try:
        value = float(raw)
    except ValueError:
        pass
    else:
        # inf stays: the longest wait there is, which max_wait_s then refuses.
        return None if math.isnan(value) or value < 0 else value
    parts = _GO_PART.findall(raw)
    if not parts or "".join(n + u for n, u in parts) != raw:
        return None
    return sum(float(n) * _GO_UNITS[u] for n, u in parts)


@value_type
class RateLimitHeaders:
    """What a response said about the limits, whatever the provider named the headers.

    Defined here, the consumer's side: each dialect reads its own header names into it.
    """

    limit_requests: int | None = None
    limit_tokens: int | None = None
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests_s: float | None = None
    reset_tokens_s: float | None = None


def header_count(headers: Mapping[str, str], name: str) -> int | None:
    """A limit/remaining count from header ``name``: None when absent or not a plausible count."""
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    if not 0 <= value <= _MAX_HEADER_COUNT:  # also nan, inf and 1e400
        return None
    return int(value)


HeaderReader = Callable[[Mapping[str, str]], RateLimitHeaders]


@value_type
class Grant:
    """What one dispatch was counted as, so the answer's usage can correct it."""

    estimated_prompt_tokens: int  # before scaling: what the scale is learned against
    charged_prompt_tokens: float
    completion_tokens: int


class RateLimiter:
    """Grants dispatch slots no faster than rpm / tpm allow; all waits go through ``sleep``.

    - Limits: as configured; else learned from the limit headers (``read_headers``)
      (only when their reset is within a minute: a day-scale reset means the
      header describes a daily limit); else, after a 429, the rate observed in
      the last ``window_s`` seconds.
    - AIMD: a 429 multiplies the rate by ``decrease`` (once per congestion
      event) and pauses every dispatch for the server's wait; each success adds
      ``increase`` back, up to the full rate.
    - Token estimates are scaled by what answers report (an image of unknown
      size is assumed 1024x1024); each answer also settles its own charge.
    """

    def __init__(
        self,
        *,
        rpm: int | None,
        tpm: int | None,
        clock: Clock,
        sleep: Sleep,
        read_headers: HeaderReader,
        burst_s: float = 0.0,
        default_pause_s: float = 1.0,
        decrease: float = 0.7,
        increase: float = 0.01,
        min_factor: float = 0.1,
        window_s: float = 10.0,
        probe_wait_s: float = 10.0,
        horizon_s: float = 1.0,
        max_wait_s: float = 300.0,
        wall_clock: Clock | None = None,
    ) -> None:
        self._configured = (rpm, tpm)
        self._learned: list[int | None] = [None, None]
        self._clock = clock
        self._sleep = sleep
        self._read_headers = read_headers
        self._burst_s = burst_s
        self._default_pause_s = default_pause_s
        self._decrease, self._increase, self._min_factor = decrease, increase, min_factor
        self.factor = 1.0
        self._last_decrease = -1e18
        now = clock()
        self._tat_requests = now
        self._tat_tokens = now
        self._paused_until = now
        self._recent: deque[float] = deque()
        self._window_s = window_s
        self._prompt_scale = 1.0
        self._answered = False
        self._probing = False
        self._probe_answered: anyio.Event | None = None  # made by the first request that waits
        self._probe_wait_s = probe_wait_s
        self._horizon_s = horizon_s
        self._max_wait_s = max_wait_s
        self._wall_clock = wall_clock  # only to say when a stopped run may resume
        self._pause_source = "the server"
        self.pauses = 0
        self.decreases = 0

    # -- the limits in force -------------------------------------------------------

    @property
    def rpm(self) -> int | None:
        return self._configured[0] or self._learned[0]

    @property
    def tpm(self) -> int | None:
        return self._configured[1] or self._learned[1]

    @property
    def paused_until(self) -> float:
        return self._paused_until

    def _interval(self, limit: int | None, size: float = 1.0) -> float:
        """Seconds of the limit one request of ``size`` uses up.

        Paced at exactly the limit, a sliding 60 s window still catches one
        request more than fits (n requests span only n - 1 gaps): 71 requests of
        1,420 tokens in 59.6 s against a tpm of 100,000. So the pace leaves one
        request's worth of room, plus a hair against float drift.
        """
        if not limit:
            return 0.0
        # A request larger than the whole limit (max_tokens of 10^9) still waits at most a
        # window or two, not size/limit minutes: the server refuses it or counts it, either way once.
        size = min(size, limit)
        room = max(limit * 0.5, limit - size) * self.factor
        return size * 60.0 / room * _SAFETY

    # -- dispatch ----------------------------------------------------------------

    async def acquire(self, prompt_tokens: int, completion_tokens: int = 0) -> Grant:
        """Wait until one request may be sent, count it as sent, and say what it was counted as."""
        if not self._answered:  # an await, even of a coroutine that returns at once, costs per row
            await self._wait_for_probe()
        while True:
            now = self._clock()
            if self._paused_until - now > self._max_wait_s:
                raise self._too_long(self._paused_until - now, self._pause_source)
            start = max(now, self._paused_until, self._tat_requests - self._burst_s, self._tat_tokens - self._burst_s)
            if start - now > self._horizon_s:
                # Too far ahead to book now: come back nearer the time and book with what is
                # known then (the scale learned meanwhile), instead of locking in a stale charge.
                await self._sleep(start - now - self._horizon_s / 2)
                continue
            prompt = prompt_tokens * self._prompt_scale
            self._tat_requests = max(self._tat_requests, start) + self._interval(self.rpm)
            self._tat_tokens = max(self._tat_tokens, start) + self._interval(self.tpm, prompt + completion_tokens)
            if start > now:
                await self._sleep(start - now)
            # A pause that arrived while we waited applies to us too.
            if self._paused_until <= self._clock():
                self._note_dispatch(self._clock())
                return Grant(prompt_tokens, prompt, completion_tokens)

    async def _wait_for_probe(self) -> None:
        """With no limit known, the first request goes alone and the rest wait (a while) for its headers:
        a whole concurrency's worth at once would trip a per-second limit before anything is learned."""
        if self._answered or self.rpm is not None or self.tpm is not None:
            return
        if not self._probing:
            self._probing = True
            return
        if self._probe_answered is None:
            self._probe_answered = anyio.Event()
        answered = self._probe_answered
        # Woken by the answer itself (at zero latency a 50 ms poll held everyone back longer than
        # the probe took), or after probe_wait_s on the limiter's own clock if it never comes back.
        async with anyio.create_task_group() as waiting:

            async def give_up() -> None:
                await self._sleep(self._probe_wait_s)
                waiting.cancel_scope.cancel()

            waiting.start_soon(give_up)
            await answered.wait()
            waiting.cancel_scope.cancel()

    def _heard_back(self) -> None:
        self._answered = True
        if self._probe_answered is not None:
            self._probe_answered.set()

    def _note_dispatch(self, now: float) -> None:
        self._recent.append(now)
        while self._recent and self._recent[0] < now - self._window_s:
            self._recent.popleft()

    # -- feedback ----------------------------------------------------------------

    def settle(self, grant: Grant, *, prompt_tokens: int | None) -> None:
        """An answer came back: learn how far off the prompt estimate was, and correct this request's charge."""
        if not self._answered:
            self._heard_back()
        self.factor = min(1.0, self.factor + self._increase)
        if not prompt_tokens or grant.estimated_prompt_tokens <= 0:
            return
        # Learned against the raw estimate: dividing the charge by today's scale would
        # feed the scale back into itself while many requests are in flight.
        ratio = min(4.0, max(0.25, prompt_tokens / grant.estimated_prompt_tokens))
        self._prompt_scale = 0.9 * self._prompt_scale + 0.1 * ratio
        # Only ever later: slots already handed to waiting workers stay where they are, so
        # moving the schedule earlier (a refund) would give new requests overlapping slots
        # and bunch them past a sliding window. An over-estimate is corrected by the scale.
        missing = prompt_tokens - grant.charged_prompt_tokens
        if self.tpm:
            # One minute's worth at most: a usage of 2^63 must not push the schedule 10^12 s ahead.
            missing = min(missing, self.tpm)
        if missing > 0:
            size = grant.charged_prompt_tokens + grant.completion_tokens
            self._tat_tokens += missing * self._interval(self.tpm, size) / max(1.0, size)

    def rate_limited(self, retry_after_s: float | None) -> None:
        """A 429: pause everyone for the server's wait and slow down, once per congestion event.

        Raises ``WaitTooLongError`` when the wait is over ``max_wait_s``: the request that
        got it must not sit out the wait either.
        """
        if not self._answered:
            self._heard_back()
        now = self._clock()
        if self.rpm is None and self.tpm is None and self._recent:
            # No limit known at all: the rate that just tripped the server is the ceiling,
            # measured over the time actually observed (a young run has not filled the window).
            span_s = max(1.0, now - self._recent[0])
            self._learned[0] = max(1, int(len(self._recent) * 60.0 / span_s))
        if now - self._last_decrease > max(1.0, retry_after_s or 0.0):
            self.factor = max(self._min_factor, self.factor * self._decrease)
            self._last_decrease = now
            self.decreases += 1
        self.pause(retry_after_s, source="a 429's Retry-After or its 'try again in' message")
        if retry_after_s is not None and retry_after_s > self._max_wait_s:
            raise self._too_long(retry_after_s, self._pause_source)

    def pause(self, seconds: float | None, *, source: str = "the server") -> None:
        """Hold every dispatch for ``seconds`` (the server's Retry-After, or a default).

        Never raises: an answer that asked for the pause is still recorded; the next
        ``acquire`` refuses a pause over ``max_wait_s``.
        """
        wait = self._default_pause_s if seconds is None or seconds <= 0 else seconds
        now = self._clock()
        until = now + wait
        if until > self._paused_until:
            if now >= self._paused_until:  # a new pause, not one extended: said once (-v)
                log.debug("rate limit: pausing every request for %.2f s (%s)", wait, source)
            self._paused_until = until
            self._pause_source = source
            self.pauses += 1

    def _too_long(self, wait_s: float, source: str) -> WaitTooLongError:
        resume_after = None
        if self._wall_clock is not None and math.isfinite(wait_s):
            try:
                resume_after = datetime.fromtimestamp(self._wall_clock() + wait_s, UTC).strftime("%Y-%m-%d %H:%M UTC")
            except (OverflowError, ValueError, OSError):  # past the year 9999
                resume_after = None
        return WaitTooLongError(wait_s=wait_s, max_wait_s=self._max_wait_s, source=source, resume_after=resume_after)

    def observe(self, headers: Mapping[str, str]) -> None:
        """Learn limits the config left open, and slow down before a 429 when a window is used up."""
        if not self._answered:
            self._heard_back()
        if not headers:
            return
        info = self._read_headers(headers)
        if info.limit_requests and (info.reset_requests_s is None or info.reset_requests_s <= 60):
            self._learned[0] = info.limit_requests
        if info.limit_tokens and (info.reset_tokens_s is None or info.reset_tokens_s <= 60):
            self._learned[1] = info.limit_tokens
        if info.remaining_requests == 0 and info.reset_requests_s:
            self.pause(info.reset_requests_s, source="x-ratelimit-reset-requests with remaining-requests 0")
        if info.remaining_tokens == 0 and info.reset_tokens_s:
            self.pause(info.reset_tokens_s, source="x-ratelimit-reset-tokens with remaining-tokens 0")
