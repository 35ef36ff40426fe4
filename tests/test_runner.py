"""The runner end to end against the real simulator on loopback: results, resume, faults, stops."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import anyio
import polars as pl
import pytest

from pipeline.breaker import CircuitBreaker
from pipeline.client import open_http
from pipeline.compose import build_runner
from pipeline.config import Config, build_config
from pipeline.dialects import dialect_for
from pipeline.errors import (
    AuthError,
    CircuitOpenError,
    InterruptedRunError,
    JournalError,
    ManifestError,
    ModelNotFoundError,
    QuotaError,
    ResumeMismatchError,
)
from pipeline.journal import Journal
from pipeline.manifest import chunk_source, inspect_manifest
from pipeline.ratelimit import RateLimiter
from pipeline.run_meta import check_resume
from pipeline.runner import Runner, RunnerDeps
from pipeline.simulator import caption_for
from tests.conftest import remote_rows, write_csv

OPENAI = dialect_for("openai")


async def _no_sleep(_: float) -> None:
    await anyio.sleep(0)


def make_config(base_url: str, **sections) -> Config:
    data = {
        "endpoint": {"base_url": base_url, "timeout_s": 5.0},
        "limits": {"rpm": None, "tpm": None, "concurrency": 8, "max_attempts": 4},
        "run": {"part_rows": 10, "flush_interval_s": 0.2},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return build_config(data)


def run_once(
    config: Config,
    manifest: Path,
    out: Path,
    *,
    retry_errors=False,
    breaker=None,
    api_key=None,
    on_runner=None,
    chunks=None,
    journal=None,
):
    """Run the pipeline once; returns (totals or the stop error, results frame)."""

    async def go():
        async with open_http(
            concurrency=config.limits.concurrency,
            timeout_s=config.endpoint.timeout_s,
            endpoint_url=config.endpoint.base_url,
            environ={},
        ) as http:
            source = chunks or chunk_source(manifest, chunk_size=config.run.part_rows, url_column="url", id_column="id")
            runner = build_runner(
                config,
                http=http,
                journal=journal,
                api_key=api_key,
                chunks=source,
                base_dir=manifest.parent,
                total_rows=inspect_manifest(manifest).rows,
                retry_errors=retry_errors,
                grace_s=5.0,
                sleep=_no_sleep,
                breaker=breaker,
                limiter=RateLimiter(
                    rpm=None, tpm=None, clock=time.monotonic, sleep=anyio.sleep, read_headers=OPENAI.rate_limit_headers
                ),
            )
            if on_runner:
                on_runner(runner)
            try:
                return await runner.run()
            except Exception as exc:  # noqa: BLE001 - the test inspects the stop reason
                return exc

    journal = journal or Journal(out)
    try:
        result = anyio.run(go)
    finally:
        journal.close()  # the run is over: its folder lock goes, as it does when a process ends
    if not (out / "results.parquet").exists():  # a run that could not finalise: what its parts hold
        return result, Journal.reader(out).latest_frame()
    return result, pl.read_parquet(out / "results.parquet")


def test_run_writes_one_row_per_id_with_the_simulators_captions(simulator, tmp_path):
    """Every row ok, with the caption the simulator derives from its image, tokens and cost."""
    manifest = write_csv(tmp_path / "m.csv", remote_rows(45))
    totals, frame = run_once(make_config(simulator.base_url), manifest, tmp_path / "out")
    assert totals.ok == 45 and totals.requests == 45
    assert frame.height == 45 and frame["id"].n_unique() == 45
    urls = dict(zip(frame["id"], frame["url"], strict=True))
    for rid, caption in zip(frame["id"], frame["caption"], strict=True):
        assert caption == caption_for(urls[rid])
    assert (frame["prompt_tokens"] > 0).all() and (frame["cost_usd"] > 0).all()
    assert frame["max_severity"].unique().to_list() == ["safe"]
    assert simulator.app.stats()["accepted"] == 45


def test_resume_skips_finished_rows_and_picks_up_new_ids(simulator, tmp_path):
    """A second run sends nothing for finished ids, and only the new ones added to the manifest."""
    out = tmp_path / "out"
    rows = remote_rows(20)
    run_once(make_config(simulator.base_url), write_csv(tmp_path / "m.csv", rows), out)
    before = simulator.app.stats()["requests"]
    totals, frame = run_once(
        make_config(simulator.base_url), write_csv(tmp_path / "m.csv", rows + remote_rows(5, prefix="new")), out
    )
    assert totals.skipped == 20 and totals.done == 5
    assert simulator.app.stats()["requests"] - before == 5
    assert frame.height == 25


def test_transient_faults_are_retried_and_permanent_ones_recorded_once(simulator, tmp_path):
    """503x2 and reset succeed on retry; an invalid_image_url 400 is one attempt, non-retryable."""
    rows = [
        {"id": "flaky", "url": "https://images.example.com/a.jpg?sim=503x2"},
        {"id": "reset", "url": "https://images.example.com/b.jpg?sim=resetx1"},
        {"id": "cut", "url": "https://images.example.com/c.jpg?sim=truncatedx1"},
        {"id": "badimg", "url": "https://images.example.com/d.jpg?sim=invalid_image_url"},
        {"id": "blocked", "url": "https://images.example.com/e.jpg?sim=filter_prompt"},
        {"id": "cutoff", "url": "https://images.example.com/f.jpg?sim=filter_completion"},
        {"id": "fine", "url": "https://images.example.com/g.jpg"},
    ]
    totals, frame = run_once(make_config(simulator.base_url), write_csv(tmp_path / "m.csv", rows), tmp_path / "out")
    by_id = {r["id"]: r for r in frame.to_dicts()}
    assert by_id["flaky"]["status"] == "ok" and by_id["flaky"]["attempts"] == 3
    assert by_id["reset"]["status"] == "ok" and by_id["reset"]["attempts"] == 2
    assert by_id["cut"]["status"] == "ok" and by_id["cut"]["attempts"] == 2
    bad = by_id["badimg"]
    assert (bad["status"], bad["error_type"], bad["http_status"], bad["retryable"], bad["attempts"]) == (
        "error",
        "bad_request",
        400,
        False,
        1,
    )
    blocked = by_id["blocked"]
    assert (blocked["status"], blocked["error_type"], blocked["flagged"]) == ("filtered", "content_filter", True)
    assert blocked["flagged_categories"] == ["violence"] and blocked["max_severity"] == "medium"
    cutoff = by_id["cutoff"]
    assert (cutoff["status"], cutoff["finish_reason"], cutoff["flagged_categories"]) == (
        "filtered",
        "content_filter",
        ["violence"],
    )
    assert cutoff["max_severity"] == "high" and cutoff["caption"] is None
    assert by_id["fine"]["status"] == "ok"


def test_bad_images_become_error_rows_and_the_run_goes_on(simulator, tmp_path):
    """A missing file, an ftp URL and an empty url are error rows (image_unreadable); the rest is captioned."""
    (tmp_path / "empty.png").write_bytes(b"")
    rows = [
        {"id": "missing", "url": "nope.png"},
        {"id": "ftp", "url": "ftp://host/x.jpg"},
        {"id": "blank", "url": ""},
        {"id": "empty", "url": "empty.png"},
        {"id": "good", "url": "https://images.example.com/ok.jpg"},
    ]
    totals, frame = run_once(make_config(simulator.base_url), write_csv(tmp_path / "m.csv", rows), tmp_path / "out")
    by_id = {r["id"]: r for r in frame.to_dicts()}
    for rid, words in [
        ("missing", "file not found"),
        ("ftp", "unsupported scheme"),
        ("blank", "empty url"),
        ("empty", "0 bytes"),
    ]:
        assert by_id[rid]["status"] == "error" and by_id[rid]["error_type"] == "image_unreadable"
        assert words in by_id[rid]["error_message"] and by_id[rid]["attempts"] == 0
    assert by_id["good"]["status"] == "ok"
    assert simulator.app.stats()["requests"] == 1


@pytest.mark.parametrize(("fault", "error"), [("auth", AuthError), ("quota", QuotaError)])
def test_fatal_answers_stop_the_run_after_at_most_concurrency_requests(simulator, tmp_path, fault, error):
    """401 and insufficient_quota stop the run (exit 3 class) without marking the rest failed."""
    simulator.app.update(fault_rates={fault: 1.0})
    config = make_config(simulator.base_url)
    result, frame = run_once(config, write_csv(tmp_path / "m.csv", remote_rows(200)), tmp_path / "out")
    assert isinstance(result, error) and result.exit_code == 3
    assert simulator.app.stats()["requests"] <= config.limits.concurrency
    assert frame.height == 0


def test_unknown_model_stops_the_run(simulator, tmp_path):
    """404 model_not_found stops the run with a message naming the model."""
    simulator.app.update(accept_any_model=False)
    config = make_config(simulator.base_url, request={"model": "gpt-9-vision"})
    result, _ = run_once(config, write_csv(tmp_path / "m.csv", remote_rows(50)), tmp_path / "out")
    assert isinstance(result, ModelNotFoundError) and "gpt-9-vision" in str(result)
    assert simulator.app.stats()["requests"] <= config.limits.concurrency


def test_circuit_breaker_stops_a_down_endpoint_then_a_rerun_finishes(simulator, tmp_path):
    """Every request 503: the breaker stops long before the manifest is used; once back, a rerun completes."""
    simulator.app.update(down=True)
    config = make_config(simulator.base_url)
    manifest = write_csv(tmp_path / "m.csv", remote_rows(300))
    result, frame = run_once(config, manifest, tmp_path / "out", breaker=CircuitBreaker(window=20, min_attempts=10))
    assert isinstance(result, CircuitOpenError)
    sent = simulator.app.stats()["requests"]
    assert sent < 60
    simulator.app.update(down=False)
    totals, frame = run_once(config, manifest, tmp_path / "out")
    assert frame.height == 300 and (frame["status"] == "ok").all()


def test_interrupt_flushes_what_finished_and_a_rerun_completes(simulator, tmp_path):
    """A stop request mid-run: finished rows are in the journal; a rerun sends only the rest."""
    simulator.app.update(latency_median_s=0.02, latency_p99_s=0.05)
    config = make_config(simulator.base_url)
    manifest = write_csv(tmp_path / "m.csv", remote_rows(400))

    def on_runner(runner):
        """Ask for a stop once 50 rows are done, as the Ctrl-C handler would."""
        original = runner._record

        def record(row):
            original(row)
            if runner.totals.done == 50:
                runner.request_stop(InterruptedRunError("test interrupt"))

        runner._record = record

    result, frame = run_once(config, manifest, tmp_path / "out", on_runner=on_runner)
    assert isinstance(result, InterruptedRunError) and result.exit_code == 130
    first = frame.height
    assert 50 <= first < 400
    sent_before = simulator.app.stats()["requests"]
    totals, frame = run_once(config, manifest, tmp_path / "out")
    assert frame.height == 400 and totals.skipped == first
    assert simulator.app.stats()["requests"] - sent_before == 400 - first


def test_a_stop_while_the_reader_waits_on_a_full_queue_ends_as_the_stop_reason(simulator, tmp_path):
    """Concurrency 1: when the only worker stops, the manifest reader is waiting to hand over a row.
    The run must end with the interrupt (exit 130), not a crash about a closed queue."""
    config = make_config(simulator.base_url, limits={"concurrency": 1})
    manifest = write_csv(tmp_path / "m.csv", remote_rows(40))

    def on_runner(runner):
        original = runner._record

        def record(row):
            original(row)
            if runner.totals.done == 5:  # mid-chunk (chunk_size 10): the reader is blocked on the queue
                runner.request_stop(InterruptedRunError("test interrupt"))

        runner._record = record

    result, frame = run_once(config, manifest, tmp_path / "out", on_runner=on_runner)
    assert isinstance(result, InterruptedRunError), result
    assert frame.height == 5


def test_a_manifest_that_fails_mid_run_stops_after_sending_the_rows_read_before(simulator, tmp_path):
    """The reader raising mid-file (the file changed or the disk failed): the run ends with a
    ManifestError that says how to resume, not a crash, and the 30 rows read before it are saved."""
    manifest = write_csv(tmp_path / "m.csv", remote_rows(50))
    config = make_config(simulator.base_url)
    good = chunk_source(manifest, chunk_size=10, url_column="url", id_column="id")

    def failing_chunks():
        for i, chunk in enumerate(good()):
            if i == 3:
                raise ManifestError(str(manifest), "row 31 cannot be read")
            yield chunk

    result, frame = run_once(config, manifest, tmp_path / "out", chunks=failing_chunks)
    assert isinstance(result, ManifestError) and "row 31" in str(result) and "resume" in str(result)
    assert frame.height == 30 and (frame["status"] == "ok").all()
    totals, frame = run_once(config, manifest, tmp_path / "out")  # the file is readable again
    assert frame.height == 50 and totals.skipped == 30


class _DiskFullAfter(Journal):
    """A journal whose writes start failing, as on a full disk."""

    def __init__(self, out: Path, *, good_writes: int) -> None:
        super().__init__(out)
        self.good_writes = good_writes

    def write_rows(self, rows):
        if self.good_writes <= 0:
            raise JournalError(f"{self.out_dir}: cannot write results (No space left on device)")
        self.good_writes -= 1
        return super().write_rows(rows)


def test_an_unwritable_journal_stops_the_run_with_its_error(simulator, tmp_path):
    """A flush that fails stops dispatching and the run ends with the JournalError (exit 2), not a crash;
    the parts written before the failure are intact and a rerun resumes after them."""
    manifest = write_csv(tmp_path / "m.csv", remote_rows(200))
    config = make_config(simulator.base_url, limits={"concurrency": 4})
    result, _ = run_once(config, manifest, tmp_path / "out", journal=_DiskFullAfter(tmp_path / "out", good_writes=2))
    assert isinstance(result, JournalError) and result.exit_code == 2 and "No space left" in str(result)
    sent = simulator.app.stats()["requests"]
    assert sent < 200
    # Two good writes: at least two chunks of 10 (a flush takes whatever finished by then).
    kept = Journal.reader(tmp_path / "out").latest_frame().height
    assert kept >= 20
    totals, frame = run_once(config, manifest, tmp_path / "out")
    assert frame.height == 200 and totals.skipped == kept


def test_changed_request_parameters_are_refused_unless_forced(simulator, tmp_path):
    """Resuming with another prompt names what changed; --force allows it."""
    out = tmp_path / "out"
    config = make_config(simulator.base_url)
    run_once(config, write_csv(tmp_path / "m.csv", remote_rows(3)), out)
    changed = dataclasses.replace(config, request=dataclasses.replace(config.request, prompt="Other prompt"))
    with pytest.raises(ResumeMismatchError, match="prompt"):
        check_resume(Journal.reader(out), changed, force=False)
    check_resume(Journal.reader(out), changed, force=True)
    check_resume(Journal.reader(out), config, force=False)


def test_rows_taken_for_a_flush_are_written_even_if_the_flush_is_cancelled(tmp_path):
    """The flush loop is cancelled when a run ends; rows it already took from the buffer must still be written."""
    from datetime import UTC, datetime

    from pipeline.models import ResultRow

    journal = Journal(tmp_path)
    config = make_config("http://127.0.0.1:9/v1")
    deps = RunnerDeps(
        client=None,
        dialect=OPENAI,
        journal=journal,  # type: ignore[arg-type]
        limiter=RateLimiter(
            rpm=None, tpm=None, clock=time.monotonic, sleep=anyio.sleep, read_headers=OPENAI.rate_limit_headers
        ),
    )
    runner = Runner(config, deps, chunks=lambda: iter([]), base_dir=tmp_path, total_rows=1)
    runner._buffer.append(ResultRow(id="last", url="u", status="ok", finished_at=datetime.now(UTC)))

    async def go():
        with anyio.CancelScope() as scope:
            scope.cancel()
            await runner._flush()

    anyio.run(go)
    assert journal.latest_frame()["id"].to_list() == ["last"]
