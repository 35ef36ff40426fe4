"""``run.json``: what made an output folder (request fingerprint, manifest, endpoint) and the last run's totals.

PURE apart from ``check_resume``, which reads it through the journal. The API key
is never in it.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from . import __version__
from .config import Config
from .errors import PipelineError, ResumeMismatchError
from .journal import Journal
from .models import RunTotals


def check_resume(journal: Journal, config: Config, *, force: bool) -> None:
    """Refuse to continue a folder made with other request parameters (unless forced)."""
    meta = journal.read_meta()
    if force:
        return
    if meta is None:
        if journal.has_rows():
            raise ResumeMismatchError(
                f"{journal.out_dir} holds results but no {journal.meta_path.name}, so the request parameters they "
                "were made with cannot be checked. Use --force to continue with the current parameters, "
                "or another --out folder."
            )
        return
    if meta.get("fingerprint") == config.request_fingerprint():
        return
    before = meta.get("request", {})
    now = config.request_identity()
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    details = "; ".join(f"{k}: {before.get(k)!r} → {now.get(k)!r}" for k in changed[:5])
    raise ResumeMismatchError(
        f"{journal.out_dir} holds results made with other request parameters ({details or 'fingerprint differs'}). "
        "Use another --out folder, or --force to continue with the new parameters."
    )


def updated_meta(
    previous: dict[str, Any] | None,
    *,
    config: Config,
    manifest: str,
    base_dir: Path,
    status: str,
    now: datetime,
    totals: RunTotals,
    stop_reason: PipelineError | None,
) -> dict[str, Any]:
    """``run.json`` after a run started (``status="running"``) or ended (``"finished"``, ``"stopped"``)."""
    meta: dict[str, Any] = dict(previous) if previous else {"created_at": now.isoformat()}
    meta.update(
        fingerprint=config.request_fingerprint(),
        request=config.request_identity(),
        manifest=manifest,
        base_dir=str(base_dir.resolve()),
        base_url=config.endpoint.base_url,
        status=status,
        updated_at=now.isoformat(),
        # Known from the start, so a report on a running (or killed) run can say "N of M left".
        rows_in_manifest=totals.total,
    )
    if status == "running":
        if "run_started_at" in meta:
            # The last run never ended (killed): its start is kept, so the report can count its working
            # time up to its last row instead of losing it.
            meta.setdefault("unclosed_starts", []).append(meta["run_started_at"])
        elif "active_s" not in meta:
            # The first timed run here: rows of older runs (no working time recorded) are left out of
            # the throughput, not divided by this run's time.
            meta["timed_since"] = now.isoformat()
        meta["run_started_at"] = now.isoformat()
    else:
        # Time between runs is not working time: the report's throughput divides by this sum.
        meta["active_s"] = round(float(meta.get("active_s") or 0.0) + session_s(meta, now), 3)
        meta.pop("run_started_at", None)  # counted: a later run's end must not count it again
        meta["last_run"] = {
            "rows_in_manifest": totals.total,
            "skipped": totals.skipped,
            "done": totals.done,
            "ok": totals.ok,
            "filtered": totals.filtered,
            "error": totals.error,
            "requests": totals.requests,
            "prompt_tokens": totals.prompt_tokens,
            "completion_tokens": totals.completion_tokens,
            "cost_usd": round(totals.cost_usd, 6),
            "stopped_by": type(stop_reason).__name__ if stop_reason else None,
            "spent_usd_in_folder": round(totals.folder_spent_usd, 6),
        }
    return meta


# run.json's stop reason for a folder only `caption estimate --sample` wrote: the report reads it as the why.
SAMPLE_ONLY = "only an estimate's sample was sent: `caption run` with this --out sends the rest"


def sample_meta(previous: dict[str, Any] | None, written: dict[str, Any], *, rows_in_manifest: int) -> dict[str, Any]:
    """PURE: ``run.json`` after an estimate's sample was kept in a run folder.

    The sample went through the runner, which wrote ``written`` as if the sample were the
    manifest (status finished, rows_in_manifest = the sample size). A folder that had a
    run.json keeps what it said about its run (status, rows, last run, manifest); the
    sample's working time (``active_s``) and request identity stay. A new folder records the
    manifest's real row count and a stopped status, so a report says how much is left.
    """
    meta = dict(written)
    if previous:
        for key in ("status", "rows_in_manifest", "last_run", "manifest", "base_dir"):
            if key in previous:
                meta[key] = previous[key]
            else:
                meta.pop(key, None)
        return meta
    meta.update(status="stopped", rows_in_manifest=rows_in_manifest)
    last_run = dict(meta.get("last_run") or {})
    # A sample that itself stopped (a refused model, the budget) says so; else the sample is why.
    stopped_by = last_run.get("stopped_by") or SAMPLE_ONLY
    meta["last_run"] = last_run | {"rows_in_manifest": rows_in_manifest, "stopped_by": stopped_by}
    return meta


def session_s(meta: dict[str, Any], until: datetime) -> float:
    """Seconds from the current run's start (``run_started_at``) to ``until``; 0 when unknown."""
    started = meta.get("run_started_at")
    if not isinstance(started, str):
        return 0.0
    try:
        return max(0.0, (until - datetime.fromisoformat(started)).total_seconds())
    except (ValueError, TypeError):  # a hand-edited or naive timestamp: no session time, not a crash
        return 0.0


def results_metadata(config: Config, *, now: datetime) -> dict[str, str]:
    """The key-value pairs results.parquet carries, so the file alone says what made it
    (``pq.read_schema(path).metadata``, ``pl.read_parquet_metadata(path)``)."""
    request = config.request
    metadata = {
        "model": request.model,
        "prompt": request.prompt,
        "fingerprint": config.request_fingerprint(),
        "version": __version__,
        "created": now.isoformat(),
        "request": json.dumps(config.request_identity(), sort_keys=True, default=str),
    }
    if request.system:
        metadata["system"] = request.system
    return metadata
