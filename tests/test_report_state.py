"""`caption report` says whether a run finished, stopped (why) or is running, N of M, and counts only working time."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pipeline.config import load_config
from pipeline.journal import Journal
from pipeline.models import ResultRow, RunTotals
from pipeline.report import report
from pipeline.run_meta import updated_meta
from tests.conftest import FAST_CONFIG, remote_rows, run_args, run_cli, write_config, write_csv

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _rows(ids: range, *, start: datetime, status: str = "ok", retryable: bool | None = None) -> list[ResultRow]:
    return [
        ResultRow(
            id=f"r{i:03d}",
            url="https://images.example.com/x.jpg",
            status=status,  # type: ignore[arg-type]
            error_type="bad_request" if status == "error" else None,
            retryable=retryable,
            latency_s=0.1,
            finished_at=start + timedelta(seconds=n),
        )
        for n, i in enumerate(ids)
    ]


def _meta(journal: Journal, *, status: str, now: datetime, total: int = 200, stopped_by: Exception | None = None):
    """run.json as a run writes it: "running" at its start, then its end state."""
    meta = updated_meta(
        journal.read_meta(),
        config=load_config(None),
        manifest="m.csv",
        base_dir=Path("."),
        status=status,
        now=now,
        totals=RunTotals(total=total),
        stop_reason=stopped_by,  # type: ignore[arg-type]
    )
    journal.write_meta(meta)


def test_a_run_stopped_by_its_budget_says_so_with_n_of_m(simulator, tmp_path):
    """Stopped by --max-cost: the table and --json say stopped, why, N of M done and how to resume."""
    config = write_config(tmp_path / "c.toml", FAST_CONFIG.replace("concurrency = 16", "concurrency = 1"))
    out = tmp_path / "out"
    manifest = write_csv(tmp_path / "m.csv", remote_rows(40))
    result = run_cli(run_args(manifest, out, config, simulator.base_url, "--max-cost", "0.008"))
    assert result.returncode == 3, result.stderr
    summary = json.loads(run_cli(["report", str(out), "--json"]).stdout)
    assert summary["state"] == "stopped" and summary["run"]["stop_reason"] == "the budget was reached"
    assert 0 < summary["rows"] < 40 and summary["rows_left"] == 40 - summary["rows"]
    table = run_cli(["report", str(out)]).stdout
    headline = (
        f"stopped (the budget was reached): {summary['rows']} of 40 rows done, {summary['rows_left']} left: "
        "re-run the same command to resume"
    )
    assert table.splitlines()[0] == headline, table
    assert "model         gpt-4o at 127.0.0.1:" in table


def test_a_running_run_says_running_with_n_of_m(tmp_path):
    """A run holding the folder's lock: state running, 30 of 200 rows done, 170 left (no resume advice)."""
    with Journal(tmp_path) as journal:  # the writer's lock, as a live run holds it
        _meta(journal, status="running", now=T0)
        journal.write_rows(_rows(range(30), start=T0))
        summary = json.loads(run_cli(["report", str(tmp_path), "--json"]).stdout)
        table = run_cli(["report", str(tmp_path)]).stdout
    assert summary["state"] == "running" and summary["rows_left"] == 170
    assert table.splitlines()[0] == "running: 30 of 200 rows done, 170 left"


def test_a_killed_run_reads_stopped_not_running(tmp_path):
    """run.json still says running but no process holds the lock: stopped, ended without closing."""
    with Journal(tmp_path) as journal:
        _meta(journal, status="running", now=T0)
        journal.write_rows(_rows(range(110), start=T0))
    summary = report(tmp_path)
    assert summary["state"] == "stopped" and summary["rows_left"] == 90
    assert summary["run"]["headline"] == (
        "stopped (ended without closing (killed or crashed)): 110 of 200 rows done, 90 left: "
        "re-run the same command to resume"
    )


def test_errors_not_retried_are_named_with_retry_errors(tmp_path):
    """A finished run whose non-retryable errors are all that is left: the report names --retry-errors."""
    with Journal(tmp_path) as journal:
        _meta(journal, status="running", now=T0, total=10)
        journal.write_rows(_rows(range(7), start=T0) + _rows(range(7, 10), start=T0, status="error", retryable=False))
        _meta(journal, status="finished", now=T0 + timedelta(seconds=10), total=10)
    summary = report(tmp_path)
    assert summary["state"] == "finished" and summary["rows_left"] == 0
    assert summary["run"]["headline"] == (
        "finished: 10 of 10 rows done; 3 error rows are not retried: re-run with --retry-errors to send them again"
    )


def test_throughput_of_a_resumed_run_leaves_out_the_gap_between_runs(tmp_path):
    """Two 10 s runs an hour apart, 20 rows each: 40 rows over 20 s of work (2 rows/s), not over 3610 s."""
    later = T0 + timedelta(hours=1)
    with Journal(tmp_path) as journal:
        _meta(journal, status="running", now=T0)
        journal.write_rows(_rows(range(20), start=T0))
        _meta(journal, status="stopped", now=T0 + timedelta(seconds=10), stopped_by=KeyboardInterrupt())
        _meta(journal, status="running", now=later)
        journal.write_rows(_rows(range(20, 40), start=later))
        _meta(journal, status="finished", now=later + timedelta(seconds=10))
    summary = report(tmp_path)
    assert summary["throughput"]["active_s"] == 20.0
    assert summary["throughput"]["rows_per_s"] == 2.0


def test_a_live_runs_throughput_counts_its_time_until_now(tmp_path):
    """While a run goes on, its working time runs to now: 30 rows 15 s after its start is 2 rows/s."""
    with Journal(tmp_path) as journal:
        _meta(journal, status="running", now=T0)
        journal.write_rows(_rows(range(30), start=T0))
        summary = report(tmp_path, now=lambda: T0 + timedelta(seconds=15))
    assert summary["state"] == "running" and summary["throughput"]["rows_per_s"] == 2.0
