"""The progress line: this run's rate after a resume, and what stays visible on a narrow terminal."""

from __future__ import annotations

import io
import logging
import re

import pytest

from pipeline.fakes import FakeClock
from pipeline.models import RunTotals
from pipeline.progress import BarProgress, LogProgress, status_line


def _last_line(stream: io.StringIO) -> str:
    return re.split(r"[\r\n]", stream.getvalue().rstrip("\n"))[-1].rstrip()


def _resumed(**counts: int) -> RunTotals:
    """200 rows, 150 finished by an earlier run that spent $0.30."""
    return RunTotals(total=200, skipped=150, spent_before_usd=0.30, **counts)


def test_rate_and_eta_after_a_resume_count_only_this_runs_rows():
    """150 rows done before, 20 sent in 10 s now: 2.0 rows/s and 0:15 for the 30 left, not 17 rows/s."""
    clock, stream = FakeClock(), io.StringIO()
    bar = BarProgress(total=200, stream=stream, clock=clock, columns=lambda: 120)
    bar.update(_resumed())
    clock.now += 10
    bar.update(_resumed(done=20, ok=20, prompt_tokens=2000, completion_tokens=200))
    line = _last_line(stream)
    assert "170/200" in line and "2.0 rows/s" in line and "ETA 0:15" in line, line
    assert "17.0 rows/s" not in line


def test_eighty_columns_keep_counts_spend_and_projection():
    """At 80 columns: done/total, ok/err/flagged, $ so far and the projected $ all fit on one line."""
    clock, stream = FakeClock(), io.StringIO()
    bar = BarProgress(total=200, stream=stream, clock=clock, columns=lambda: 80)
    clock.now += 10
    totals = _resumed(
        done=20, ok=17, error=2, filtered=1, flagged=1, prompt_tokens=20_000, completion_tokens=3000, cost_usd=0.04
    )
    bar.close(totals)
    line = _last_line(stream)
    assert len(line) < 80, line
    # $0.30 before + $0.04 now; 30 rows left at $0.002 a row: ~$0.40 at the end.
    for shown in ("170/200", "ok 17", "err 2", "flg 1", "$0.3400", "(~$0.4000 end)"):
        assert shown in line, (shown, line)


def test_a_hundred_columns_keep_a_real_bar():
    """At 100 columns the bar has room (ten columns or more), beside every figure."""
    totals = _resumed(done=20, ok=20, prompt_tokens=2000, completion_tokens=200, cost_usd=0.04)
    line = status_line(totals, elapsed_s=10, width=100)
    bar = re.search(r"\|([^|]*)\|", line)
    assert bar is not None and len(bar.group(1)) >= 8 and len(line) < 100, line
    assert "rows/s" in line and "(~$" in line


def test_huge_counts_at_eighty_columns_still_show_the_money():
    """Seven-digit counts: the extras and the bar give way, the $ figures do not."""
    totals = RunTotals(
        total=2_000_000, skipped=1_100_000, done=200_000, ok=180_000, error=20_000, flagged=1000, cost_usd=123.45
    )
    line = status_line(totals, elapsed_s=10_000, width=80)
    assert len(line) < 80 and "1300000/2000000" in line and "$123.45" in line and "(~$" in line, line


@pytest.mark.parametrize("width", [80, 120])
def test_an_unpriced_model_reads_unpriced_not_zero_dollars(width):
    """No price for the model: the line says "unpriced" instead of $0.0000."""
    totals = RunTotals(total=10, done=5, ok=5, prompt_tokens=500, completion_tokens=50, priced=False)
    line = status_line(totals, elapsed_s=1, width=width)
    assert "unpriced" in line and "$" not in line, line


def test_the_log_line_counts_this_runs_rate(caplog):
    """Without a terminal, the periodic log line's rate and ETA ignore the rows skipped as done."""
    clock = FakeClock()
    progress = LogProgress(total=200, interval_s=30, clock=clock)
    clock.now += 40
    with caplog.at_level(logging.INFO, logger="caption"):
        progress.update(_resumed(done=20, ok=20, cost_usd=0.04))
    assert "170/200 (0.5 rows/s this run, ETA 1:00)" in caplog.text
    assert "$0.3400 (~$0.4000 at the end)" in caplog.text
