"""PURE: the circuit breaker: stop an overnight run when the endpoint looks down, or refuses every row alike.

Two ways to open, each ending the run (exit 3, resumable) instead of burning the
manifest into error rows:

- **The endpoint looks down.** It watches the last ``window`` attempts. Only
  failures that say nothing about the row itself count (5xx, timeouts,
  connection errors, unusable 200s); a 400 for a bad image means the endpoint is
  up, and so does any 4xx, a retryable one included. Once at least ``min_attempts`` have been seen and ``threshold`` of the
  window failed, it opens.
- **The same refusal, whatever the image.** A 400 is normally about its row. But
  when ``same_error_rows`` rows in a row are refused with the *same* words (ids
  and numbers aside) and nothing is answered in between, the refusal is about the
  request or the account — a gateway's unknown model, a budget message, a
  parameter no dialect knows — and every other row would be refused alike. A
  refusal about the row names the row (its URL, its size) and so differs.
"""

from __future__ import annotations

import re
from collections import deque

from .models import Failure

ENDPOINT_FAILURES = frozenset({"server_error", "timeout", "connection", "invalid_response"})
# Final per-row refusals that may really be about the request; filters are verdicts on the row.
_MAYBE_THE_REQUEST = frozenset({"bad_request"})
SAME_ERROR_ROWS = 10

# Ids (request ids, key hashes, trace ids) and amounts (a gateway's running spend) vary between
# otherwise identical refusals. Whole numbers are kept: token counts and pixel sizes are the row's.
_ID = re.compile(r"\b(?=[A-Za-z0-9_-]*\d)(?=[A-Za-z0-9_-]*[A-Za-z])[A-Za-z0-9_-]{8,}\b")
_AMOUNT = re.compile(r"\d+\.\d+")
# A URL or path names the row's image: kept whole, so refusals that name their row differ.
_URL = re.compile(r"\b(?:https?|file|s3|gs)://\S+|(?<![\w.])/[\w./-]+\.\w+")


def refusal_signature(failure: Failure) -> str | None:
    """What makes two refusals 'the same': status, type and words with ids and amounts blanked.
    ``None`` for failures that cannot say anything about the request."""
    if failure.retryable or failure.fatal is not None or failure.error_type not in _MAYBE_THE_REQUEST:
        return None
    message, words, start = failure.message, [], 0
    for url in _URL.finditer(message):
        words += [_blank(message[start : url.start()]), url.group()]
        start = url.end()
    words.append(_blank(message[start:]))
    return f"{failure.http_status} {failure.error_type} {''.join(words)}"


def _blank(text: str) -> str:
    return _AMOUNT.sub("#", _ID.sub("<id>", text))


def _answered_4xx(failure: Failure) -> bool:
    """A 4xx is the endpoint answering: its own download of the row's image timing out (400
    "Timeout while downloading") is a slow image host, not an endpoint that is down. Counted as
    down, a block of such rows would stop every resume before they are recorded."""
    return failure.http_status is not None and 400 <= failure.http_status < 500


class CircuitBreaker:
    def __init__(
        self,
        *,
        window: int = 50,
        threshold: float = 0.8,
        min_attempts: int = 20,
        same_error_rows: int = SAME_ERROR_ROWS,
    ) -> None:
        self._recent: deque[bool] = deque(maxlen=window)
        self._failures = 0
        self._threshold = threshold
        self._min_attempts = min_attempts
        self._same_error_rows = same_error_rows
        self._streak_signature: str | None = None
        self._streak = 0

    def record(self, outcome: Failure | None) -> None:
        """Record one attempt: ``None`` for an answer, else its failure."""
        failed = outcome is not None and outcome.error_type in ENDPOINT_FAILURES and not _answered_4xx(outcome)
        if len(self._recent) == self._recent.maxlen and self._recent[0]:
            self._failures -= 1
        self._recent.append(failed)
        self._failures += failed
        self._record_refusal(outcome)

    def _record_refusal(self, outcome: Failure | None) -> None:
        if outcome is None:  # an answer: the refusals so far were about their rows
            self._streak_signature, self._streak = None, 0
            return
        signature = refusal_signature(outcome)
        if signature is None:  # retries and endpoint trouble neither break nor extend a streak
            return
        if signature == self._streak_signature:
            self._streak += 1
        else:
            self._streak_signature, self._streak = signature, 1

    @property
    def is_open(self) -> bool:
        return self.looks_down or self.refuses_every_row

    @property
    def looks_down(self) -> bool:
        seen = len(self._recent)
        return seen >= self._min_attempts and self._failures >= self._threshold * seen

    @property
    def refuses_every_row(self) -> bool:
        return self._streak >= self._same_error_rows

    def describe(self) -> str:
        if self.refuses_every_row:
            return f"the same refusal on {self._streak} rows in a row, with no answer between"
        return f"{self._failures} of the last {len(self._recent)} requests failed"
