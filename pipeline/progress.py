"""Showing a run's progress: a bar on a terminal (drawn through tqdm), a periodic log line otherwise.

Rate and ETA count this run's rows only: rows an earlier run finished (``totals.skipped``)
move the position, never the speed, so a resumed run does not claim the speed of
rows it did not send. The line is laid out for the terminal's width (``status_line``,
pure): position, outcome counts, the money spent and the money projected always stay;
rate and ETA, then the extras, then the bar give way on a narrow terminal.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from collections.abc import Callable
from typing import Protocol, TextIO

from tqdm import tqdm

from .cost import format_usd
from .models import RunTotals

log = logging.getLogger("caption")

_MIN_BAR = 10  # narrower than this a bar says nothing; it is left out
_EIGHTHS = " ▏▎▍▌▋▊▉"


class Progress(Protocol):
    def update(self, totals: RunTotals) -> None: ...
    def close(self, totals: RunTotals) -> None: ...


def rate_rows_per_s(totals: RunTotals, elapsed_s: float) -> float | None:
    """This run's rows per second (rows skipped as already done are not speed); None before any."""
    return totals.done / elapsed_s if totals.done and elapsed_s > 0 else None


def rows_left(totals: RunTotals) -> int:
    return max(0, totals.total - totals.skipped - totals.done)


def projected_usd(totals: RunTotals) -> float | None:
    """The folder's spend when this run ends, at this run's cost per row so far; None before any row."""
    if not totals.done:
        return None
    return totals.folder_spent_usd + totals.cost_usd / totals.done * rows_left(totals)


def _clock_text(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _money(totals: RunTotals, usd: float | None) -> str:
    return format_usd(usd if totals.priced else None)


def _cost_text(totals: RunTotals) -> str:
    if not totals.priced:
        return "unpriced"
    projected = projected_usd(totals)
    end = f" (~{format_usd(projected)} end)" if projected is not None else ""
    return f"{format_usd(totals.folder_spent_usd)}{end}"


def status_line(totals: RunTotals, *, elapsed_s: float, width: int) -> str:
    """PURE: the progress line for a terminal ``width`` columns wide.

    Kept whatever the width: done/total, ok/err/flagged, $ so far and projected $.
    Given way, in this order, when the line does not fit with a bar of ``_MIN_BAR``:
    tokens and the filtered count, the bar, the percentage, rate and ETA.
    """
    position = totals.skipped + totals.done
    rate = rate_rows_per_s(totals, elapsed_s)
    eta = _clock_text(rows_left(totals) / rate) if rate else "?"
    speed = f"{rate:.1f} rows/s" if rate is not None and rate >= 1 else f"{rate or 0:.2f} rows/s"
    tok = f"tok {totals.prompt_tokens + totals.completion_tokens:,}"
    filt = f"filt {totals.filtered}" if totals.filtered else ""
    rate_eta = f"{speed} ETA {eta}"
    counts = f"{position}/{totals.total} ok {totals.ok} err {totals.error} flg {totals.flagged}"

    def compose(*, bar: bool, pct: bool, rate: bool, extras: bool) -> str:
        spare = width - 1  # one column spare: a full last column wraps on some terminals
        tail = [counts, filt if extras else "", _cost_text(totals), rate_eta if rate else "", tok if extras else ""]
        text = " ".join(p for p in [pct_text if pct else "", *tail] if p)
        bar_width = spare - len(text) - 1
        if not bar or bar_width < _MIN_BAR:
            return text
        return " ".join(p for p in [pct_text if pct else "", _bar(position, totals.total, bar_width), *tail] if p)

    pct_text = f"{100 * position / totals.total:3.0f}%" if totals.total else ""
    # Most to least: everything; without tokens and the filtered count; then without the
    # bar (rate and ETA matter more); then without the percentage; then the essentials alone.
    for bar, pct, rate, extras in (
        (True, True, True, True),
        (True, True, True, False),
        (False, True, True, False),
        (False, False, True, False),
    ):
        line = compose(bar=bar, pct=pct, rate=rate, extras=extras)
        if len(line) < width and (not bar or "|" in line):
            return line
    return compose(bar=False, pct=False, rate=False, extras=False)


def _bar(position: int, total: int, width: int) -> str:
    if width < _MIN_BAR or total <= 0:
        return ""
    inner = width - 2
    eighths = int(min(1.0, position / total) * inner * 8)
    full, part = divmod(eighths, 8)
    partial = _EIGHTHS[part] if full < inner else ""
    return "|" + ("█" * full + partial).ljust(inner) + "|"


def _terminal_columns() -> int:
    return shutil.get_terminal_size((100, 24)).columns


class BarProgress:
    """The status line redrawn in place (tqdm draws it), at most every ``min_interval_s``."""

    def __init__(
        self,
        *,
        total: int,
        stream: TextIO = sys.stderr,
        min_interval_s: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
        columns: Callable[[], int] = _terminal_columns,
    ) -> None:
        # tqdm only draws: the line (rate included) is ours, so its own rate, which would count
        # an initial offset as speed, is never shown.
        self._bar = tqdm(total=total, file=stream, bar_format="{desc}", dynamic_ncols=False, ncols=10_000)
        self._clock = clock
        self._columns = columns
        self._started = clock()
        self._last: float | None = None
        self._min_interval_s = min_interval_s

    def update(self, totals: RunTotals) -> None:
        now = self._clock()
        if self._last is not None and now - self._last < self._min_interval_s:
            return
        self._last = now
        self._redraw(totals, now)

    def _redraw(self, totals: RunTotals, now: float) -> None:
        line = status_line(totals, elapsed_s=now - self._started, width=self._columns())
        self._bar.set_description_str(line, refresh=True)

    def close(self, totals: RunTotals) -> None:
        self._redraw(totals, self._clock())
        self._bar.close()


class LogProgress:
    """One summary line every ``interval_s`` seconds, for logs and non-TTY runs."""

    def __init__(self, *, total: int, interval_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._total = total
        self._interval_s = interval_s
        self._clock = clock
        self._started = clock()
        self._last = self._started

    def update(self, totals: RunTotals) -> None:
        now = self._clock()
        if now - self._last >= self._interval_s:
            self._last = now
            self._emit(totals, now)

    def _emit(self, totals: RunTotals, now: float) -> None:
        rate = rate_rows_per_s(totals, now - self._started)
        eta = _clock_text(rows_left(totals) / rate) if rate else "?"
        projected = projected_usd(totals) if totals.priced else None
        log.info(
            "progress %d/%d (%.1f rows/s this run, ETA %s) ok=%d err=%d filt=%d flagged=%d tok=%d %s%s",
            totals.skipped + totals.done,
            self._total,
            rate or 0.0,
            eta,
            totals.ok,
            totals.error,
            totals.filtered,
            totals.flagged,
            totals.prompt_tokens + totals.completion_tokens,
            _money(totals, totals.folder_spent_usd),
            f" (~{format_usd(projected)} at the end)" if projected is not None else "",
        )

    def close(self, totals: RunTotals) -> None:
        self._emit(totals, self._clock())


class NoProgress:
    def update(self, totals: RunTotals) -> None:
        pass

    def close(self, totals: RunTotals) -> None:
        pass
