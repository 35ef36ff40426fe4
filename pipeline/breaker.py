"""The circuit breaker: stop an overnight run when the endpoint looks down.

It watches the last ``window`` attempts. Only failures that say nothing about
the row itself count against the endpoint (5xx, timeouts, connection errors,
unusable 200s); a 400 for a bad image means the endpoint is up. Once at least
``min_attempts`` have been seen and ``threshold`` of the window failed, it opens
and the run stops (exit 3, resumable) instead of burning the manifest into
error rows.
"""

from __future__ import annotations

from collections import deque

ENDPOINT_FAILURES = frozenset({"server_error", "timeout", "connection", "invalid_response"})


class CircuitBreaker:
    def __init__(self, *, window: int = 50, threshold: float = 0.8, min_attempts: int = 20) -> None:
        self._recent: deque[bool] = deque(maxlen=window)
        self._failures = 0
        self._threshold = threshold
        self._min_attempts = min_attempts

    def record(self, error_type: str | None) -> None:
        """Record one attempt: ``None`` for a success, else its error type."""
        failed = error_type in ENDPOINT_FAILURES
        if len(self._recent) == self._recent.maxlen and self._recent[0]:
            self._failures -= 1
        self._recent.append(failed)
        self._failures += failed

    @property
    def is_open(self) -> bool:
        seen = len(self._recent)
        return seen >= self._min_attempts and self._failures >= self._threshold * seen

    def describe(self) -> str:
        return f"{self._failures} of the last {len(self._recent)} requests failed"
