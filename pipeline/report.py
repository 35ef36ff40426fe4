"""What a run did: the summary (`caption report --json`) and its table; the HTML page is ``report_html``.

Aggregates are lazy polars queries over only the columns they need, so a
results file of a million rows is summarised in seconds and a few hundred MB.
``run_state`` (PURE) says whether the run finished, stopped (and why) or is still
running, and how many of the manifest's rows a re-run would still send, from
``run.json`` and whether a live process holds the folder's lock.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import polars as pl
import pyarrow as pa

from .cost import format_usd
from .errors import FolderChangedError
from .folder_lock import any_held
from .journal import Journal
from .providers import endpoint_host
from .run_meta import session_s

T = TypeVar("T")
# A report on a live run can list a part the run merges away before it is read: read again.
_READ_ATTEMPTS = 5
_SUMMARY_COLUMNS = [
    "id",
    "status",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "latency_s",
    "flagged_categories",
    "error_type",
    "finished_at",
    "attempts",
    "dedup_of",
    "retryable",
]
# What stopped a run, as a person says it. run.json keeps the error's class name, not its text:
# a stop reason can quote the server's message, and run.json holds no server text.
STOP_WHY = {
    "InterruptedRunError": "interrupted",
    "BudgetExceededError": "the budget was reached",
    "AuthError": "the endpoint refused the API key",
    "QuotaError": "no quota or credit left",
    "ModelNotFoundError": "the endpoint does not serve the model",
    "RequestRejectedError": "the endpoint refused the request's parameters",
    "CircuitOpenError": "the endpoint looked down",
    "WaitTooLongError": "the server asked for a wait longer than limits.max_wait_s",
    "JournalError": "the results could not be written",
    "ManifestError": "the manifest could not be read to the end",
}
KILLED = "ended without closing (killed or crashed)"


def load_results(out_dir: Path, columns: list[str] | None = None) -> pl.LazyFrame:
    """The latest row per id: results.parquet, plus any parts a running or killed run left."""
    return Journal.reader(out_dir).scan(columns)


def summarise(frame: pl.LazyFrame) -> dict[str, Any]:
    """PURE (given a frame): counts, tokens, cost, latency percentiles, throughput, flags and errors."""
    totals = (
        frame.select(
            pl.len().alias("rows"),
            pl.col("prompt_tokens").sum().alias("prompt_tokens"),
            pl.col("completion_tokens").sum().alias("completion_tokens"),
            pl.col("cost_usd").sum().alias("cost_usd"),
            pl.col("attempts").sum().alias("requests"),
            pl.col("dedup_of").is_not_null().sum().alias("dedup_saved"),
            pl.col("latency_s").quantile(0.5, "linear").alias("p50"),
            pl.col("latency_s").quantile(0.9, "linear").alias("p90"),
            pl.col("latency_s").quantile(0.99, "linear").alias("p99"),
            pl.col("finished_at").min().alias("first"),
            pl.col("finished_at").max().alias("last"),
            pl.col("status").is_in(["ok", "filtered"]).sum().alias("answered"),
            ((pl.col("status") == "error") & ~pl.col("retryable").fill_null(True)).sum().alias("not_retried"),
            (pl.col("cost_usd").is_null() & pl.col("prompt_tokens").is_not_null()).sum().alias("unpriced"),
        )
        .collect()
        .row(0, named=True)
    )
    by_status = _counts(frame, "status")
    errors = _counts(frame.filter(pl.col("status") == "error"), "error_type")
    flagged = _counts(frame.select(pl.col("flagged_categories").explode()).drop_nulls(), "flagged_categories")
    span_s = (totals["last"] - totals["first"]).total_seconds() if totals["first"] and totals["last"] else 0.0
    bucket_s = timeline_bucket_s(span_s)
    timeline = (
        frame.drop_nulls("finished_at")
        .group_by(pl.col("finished_at").dt.truncate(f"{bucket_s}s").alias("t"))
        .agg(pl.len().alias("rows"), pl.col("latency_s").median().alias("latency_p50_s"))
        .sort("t")
        .collect()
    )

    def rounded(value: float | None, digits: int = 3) -> float | None:
        return None if value is None else round(value, digits)

    return {
        "rows": totals["rows"],
        "by_status": by_status,
        "requests": totals["requests"] or 0,
        "dedup_saved_requests": totals["dedup_saved"] or 0,
        "prompt_tokens": totals["prompt_tokens"] or 0,
        "completion_tokens": totals["completion_tokens"] or 0,
        "cost_usd": round(totals["cost_usd"] or 0.0, 6),
        # Answered rows the pricing table had no price for: their cost reads "unpriced", not $0.
        "unpriced_rows": totals["unpriced"] or 0,
        # Rows a re-run skips: answered, or errors not retried without --retry-errors.
        "settled_rows": (totals["answered"] or 0) + (totals["not_retried"] or 0),
        "errors_not_retried": totals["not_retried"] or 0,
        "latency_s": {"p50": rounded(totals["p50"]), "p90": rounded(totals["p90"]), "p99": rounded(totals["p99"])},
        "throughput": {
            "first_finished_at": _iso(totals["first"]),
            "last_finished_at": _iso(totals["last"]),
            "rows_per_s": round(totals["rows"] / span_s, 3) if span_s > 0 else None,
            "bucket_s": bucket_s,
            "timeline": [
                {"t": _iso(t), "rows": n, "latency_p50_s": rounded(lat)} for t, n, lat in timeline.iter_rows()
            ],
        },
        "flagged_categories": flagged,
        "errors": errors,
    }


_BUCKETS_S = (1, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400)


def timeline_bucket_s(span_s: float, *, max_buckets: int = 120) -> int:
    """The finest bucket that shows the run in at most ``max_buckets`` bars."""
    return next((b for b in _BUCKETS_S if span_s / b <= max_buckets), _BUCKETS_S[-1])


def _counts(frame: pl.LazyFrame, column: str) -> dict[str, int]:
    counted = frame.group_by(column).agg(pl.len().alias("n")).sort(["n", column], descending=[True, False]).collect()
    return {str(key): n for key, n in counted.iter_rows() if key is not None}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def cost_text(summary: dict[str, Any]) -> str:
    """The report's cost: "unpriced" when no answered row had a price, a note when some had none."""
    if summary["unpriced_rows"] and not summary["cost_usd"]:
        return format_usd(None)
    note = f" ({summary['unpriced_rows']:,} answered rows unpriced)" if summary["unpriced_rows"] else ""
    return format_usd(summary["cost_usd"]) + note


def format_table(summary: dict[str, Any]) -> str:
    lat = summary["latency_s"]
    lines = []
    run = summary.get("run")
    if run is not None:
        lines += [run["headline"], ""]
        config = run["config"]
        if config["model"] is not None:  # a folder without run.json does not say
            lines.append(f"model         {config['model']} at {config['endpoint_host']}")
            lines.append(f"prompt        {config['prompt']}")
    active = summary["throughput"].get("active_s")
    lines += [
        f"rows          {summary['rows']:,}",
        "status        " + ", ".join(f"{k} {v:,}" for k, v in summary["by_status"].items()),
        f"requests      {summary['requests']:,} ({summary['dedup_saved_requests']:,} saved by dedup)",
        f"tokens        {summary['prompt_tokens']:,} prompt + {summary['completion_tokens']:,} completion",
        f"cost          {cost_text(summary)}",
        f"latency       p50 {lat['p50']} s, p90 {lat['p90']} s, p99 {lat['p99']} s",
        f"throughput    {summary['throughput']['rows_per_s']} rows/s"
        + (f" over {active:,.1f} s of running time" if active else ""),
    ]
    if summary["flagged_categories"]:
        lines.append("flagged       " + ", ".join(f"{k} {v:,}" for k, v in summary["flagged_categories"].items()))
    if summary["errors"]:
        lines.append("errors        " + ", ".join(f"{k} {v:,}" for k, v in summary["errors"].items()))
    return "\n".join(lines)


def run_state(summary: dict[str, Any], meta: dict[str, Any] | None, *, live: bool) -> dict[str, Any]:
    """PURE: finished / stopped (why) / running, N of M rows, what a re-run would do, the run's config."""
    meta = meta or {}
    last_run = meta.get("last_run") or {}
    status = meta.get("status")
    why = None
    if live:
        state = "running"
    elif status == "finished":
        state = "finished"
    elif status == "stopped":
        state, stopped_by = "stopped", last_run.get("stopped_by")
        why = STOP_WHY.get(stopped_by or "", stopped_by or "unknown")
    else:  # "running" with nobody holding the lock, or a folder without run.json
        state, why = "stopped", KILLED if status == "running" else "no run.json says how the run ended"
    total = meta.get("rows_in_manifest", last_run.get("rows_in_manifest"))
    settled = summary["settled_rows"]
    left = max(0, total - settled) if isinstance(total, int) else None
    of = f"{settled:,} of {total:,} rows done" if isinstance(total, int) else f"{settled:,} rows done"
    headline = f"{state}" + (f" ({why})" if why else "") + f": {of}"
    if left:
        headline += f", {left:,} left"
        if state != "running":
            headline += ": re-run the same command to resume"
    if summary["errors_not_retried"]:
        headline += (
            f"; {summary['errors_not_retried']:,} error rows are not retried: "
            "re-run with --retry-errors to send them again"
        )
    request = meta.get("request") or {}
    return {
        "state": state,
        "stop_reason": why,
        "rows_in_manifest": total,
        "rows_left": left,
        "headline": headline,
        "config": {
            "model": request.get("model"),
            "prompt": request.get("prompt"),
            "endpoint_host": endpoint_host(meta["base_url"]) if meta.get("base_url") else None,
        },
    }


def _at(raw: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(raw) if isinstance(raw, str) else None
    except ValueError:  # a hand-edited run.json: that time is unknown, not a crash
        return None


def working_time(
    frame: pl.LazyFrame, summary: dict[str, Any], meta: dict[str, Any] | None, *, state: str, now: datetime
) -> tuple[float, int] | None:
    """The seconds runs spent working in this folder (gaps between runs left out) and the rows done in
    that time; None if unknown (a folder from before working time was recorded)."""
    if not meta or not any(k in meta for k in ("active_s", "run_started_at", "unclosed_starts")):
        return None
    active = float(meta.get("active_s") or 0.0)
    if "run_started_at" in meta:  # a run going on, or one killed before it could add its time
        last = summary["throughput"]["last_finished_at"]
        until = now if state == "running" or last is None else datetime.fromisoformat(last)
        active += session_s(meta, until)
    # Runs killed before a later run started: each worked from its start to its last row.
    starts = sorted(t for t in (_at(x) for x in meta.get("unclosed_starts") or []) if t is not None)
    current = _at(meta.get("run_started_at"))
    ends = [*starts[1:], current]
    for start, end in zip(starts, ends[: len(starts)], strict=True):
        window = pl.col("finished_at") >= start
        if end is not None:
            window &= pl.col("finished_at") < end
        last_row = frame.filter(window).select(pl.col("finished_at").max()).collect().item()
        if last_row is not None:
            active += max(0.0, (last_row - start).total_seconds())
    since = _at(meta.get("timed_since"))
    if since is None:
        return active, summary["rows"]
    rows = frame.filter(pl.col("finished_at") >= since).select(pl.len()).collect().item()
    return active, int(rows)


def report(out_dir: Path, *, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> dict[str, Any]:
    """The summary with the run's state (``state``, ``rows_left``, ...) and active-time throughput."""

    def read() -> dict[str, Any]:
        folder = Journal.reader(out_dir)
        meta = folder.read_meta()
        live = any_held(out_dir)
        frame = load_results(out_dir, _SUMMARY_COLUMNS)
        summary = summarise(frame)
        run = run_state(summary, meta, live=live)
        summary.update(state=run["state"], rows_left=run["rows_left"], run=run)
        worked = working_time(frame, summary, meta, state=run["state"], now=now())
        if worked is not None:
            active, rows = worked
            summary["throughput"]["active_s"] = round(active, 3)
            summary["throughput"]["rows_per_s"] = round(rows / active, 3) if active > 0 else None
        return summary

    return reading(out_dir, read)


def error_rows(out_dir: Path) -> tuple[int, dict[str, int]]:
    """Error rows in the folder, and those a re-run skips unless ``--retry-errors`` (by error type)."""

    def read() -> tuple[int, dict[str, int]]:
        frame = load_results(out_dir, ["status", "error_type", "retryable"]).filter(pl.col("status") == "error")
        errors = int(frame.select(pl.len()).collect().item())
        return errors, _counts(frame.filter(~pl.col("retryable").fill_null(True)), "error_type")

    return reading(out_dir, read)


def reading(out_dir: Path, read: Callable[[], T]) -> T:
    """``read()`` with a damaged file of the folder named in a one-line error, not a traceback."""
    for attempt in range(_READ_ATTEMPTS):
        folder = Journal.reader(out_dir)
        try:
            folder.check_files()
            return read()
        except FolderChangedError:
            if attempt == _READ_ATTEMPTS - 1:
                raise
        except FileNotFoundError:  # listed, then merged away by the live run before it was read
            if attempt == _READ_ATTEMPTS - 1:
                raise FolderChangedError(f"{out_dir} keeps changing while being read; try again") from None
        except (pl.exceptions.PolarsError, pa.ArrowException, OSError) as exc:
            raise folder.explain(exc, doing="cannot read the results") from None
    raise AssertionError("unreachable")


def to_json(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=2)
