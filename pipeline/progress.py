"""Showing a run's progress: a tqdm bar on a terminal, a periodic log line otherwise."""

from __future__ import annotations

import logging
import sys
import time
from typing import Protocol, TextIO

from tqdm import tqdm

from .models import RunTotals

log = logging.getLogger("caption")


class Progress(Protocol):
    def update(self, totals: RunTotals) -> None: ...
    def close(self, totals: RunTotals) -> None: ...


def _counts(t: RunTotals) -> str:
    # Spend is the folder's (every run's), the one figure the budget and the summary use too.
    todo = max(0, t.total - t.skipped)
    projected = f" (~${t.spent_before_usd + t.cost_usd / t.done * todo:.2f} at the end)" if t.done else ""
    return (
        f"ok={t.ok} err={t.error} filt={t.filtered} flagged={t.flagged} "
        f"tok={t.prompt_tokens + t.completion_tokens} ${t.folder_spent_usd:.4f}{projected}"
    )


class BarProgress:
    """done/total, rate and ETA from tqdm; the outcome counts, tokens and cost as its postfix."""

    def __init__(
        self, *, total: int, initial: int = 0, stream: TextIO = sys.stderr, min_interval_s: float = 0.2
    ) -> None:
        self._bar = tqdm(total=total, initial=initial, unit="img", file=stream, dynamic_ncols=True, smoothing=0.05)
        self._shown = initial
        self._last = 0.0
        self._min_interval_s = min_interval_s

    def update(self, totals: RunTotals) -> None:
        now = time.monotonic()
        if now - self._last < self._min_interval_s:
            return
        self._last = now
        self._redraw(totals)

    def _redraw(self, totals: RunTotals) -> None:
        position = totals.skipped + totals.done
        self._bar.update(position - self._shown)
        self._shown = position
        self._bar.set_postfix_str(_counts(totals), refresh=True)

    def close(self, totals: RunTotals) -> None:
        self._redraw(totals)
        self._bar.close()


class LogProgress:
    """One summary line every ``interval_s`` seconds, for logs and non-TTY runs."""

    def __init__(self, *, total: int, interval_s: float = 30.0) -> None:
        self._total = total
        self._interval_s = interval_s
        self._started = time.monotonic()
        self._last = self._started

    def update(self, totals: RunTotals) -> None:
        now = time.monotonic()
        if now - self._last >= self._interval_s:
            self._last = now
            self._emit(totals, now)

    def _emit(self, totals: RunTotals, now: float) -> None:
        elapsed = max(1e-9, now - self._started)
        log.info(
            "progress %d/%d (%.1f rows/s) %s",
            totals.skipped + totals.done,
            self._total,
            totals.done / elapsed,
            _counts(totals),
        )

    def close(self, totals: RunTotals) -> None:
        self._emit(totals, time.monotonic())


class NoProgress:
    def update(self, totals: RunTotals) -> None:
        pass

    def close(self, totals: RunTotals) -> None:
        pass
