"""Hints where a user gets stuck: --retry-errors named, download timeouts retried, -v retries and pauses, one stop line."""

from __future__ import annotations

import polars as pl

from tests.conftest import FAST_CONFIG, remote_rows, run_args, run_cli, write_config, write_csv


def test_a_provider_download_timeout_is_retried_and_v_logs_each_retry_and_pause(simulator, tmp_path):
    """'Timeout while downloading' once, then an answer: the row ends ok after 2 attempts; -v says so, once each."""
    rows = remote_rows(5) + [
        {"id": "slow-host", "url": "https://images.example.com/t.jpg?sim=image_timeoutx1"},
        {"id": "busy", "url": "https://images.example.com/b.jpg?sim=503x1"},
        {"id": "limited", "url": "https://images.example.com/l.jpg?sim=429x1"},
    ]
    config = write_config(tmp_path / "c.toml", FAST_CONFIG)
    out = tmp_path / "out"
    result = run_cli(run_args(write_csv(tmp_path / "m.csv", rows), out, config, simulator.base_url, "-v"))
    assert result.returncode == 0, result.stderr
    frame = pl.read_parquet(out / "results.parquet")
    slow = frame.filter(pl.col("id") == "slow-host").row(0, named=True)
    assert slow["status"] == "ok" and slow["attempts"] == 2
    log = result.stderr
    assert log.count("retry: row slow-host got timeout (HTTP 400) on attempt 1 of 4; next attempt in ") == 1, log
    assert log.count("retry: row busy got server_error (HTTP 503) on attempt 1 of 4; next attempt in ") == 1, log
    assert log.count("retry: row limited got rate_limited (HTTP 429)") == 1, log
    assert log.count("rate limit: pausing every request for") == 1, log


def test_rerunning_with_only_non_retryable_errors_left_names_retry_errors(simulator, tmp_path):
    """The run and its re-run both say which errors are not retried and name --retry-errors; with it, they are sent."""
    rows = remote_rows(4) + [{"id": "bad", "url": "https://images.example.com/x.jpg?sim=invalid_image_url"}]
    manifest = write_csv(tmp_path / "m.csv", rows)
    config = write_config(tmp_path / "c.toml", FAST_CONFIG)
    out = tmp_path / "out"
    hint = "1 rows ended in errors that are not retried (bad_request 1): re-run with --retry-errors to send them again"
    first = run_cli(run_args(manifest, out, config, simulator.base_url))
    assert first.returncode == 1 and hint in first.stderr, first.stderr
    again = run_cli(run_args(manifest, out, config, simulator.base_url))
    assert again.returncode == 1 and hint in again.stderr, again.stderr
    assert "0 rows this run (ok 0, filtered 0, error 0, flagged 0), 4 already done, 1 errors not retried, 0 left" in (
        again.stderr
    )
    retried = run_cli(run_args(manifest, out, config, simulator.base_url, "--retry-errors"))
    assert "--retry-errors to send" not in retried.stderr and "1 rows this run" in retried.stderr, retried.stderr


def test_a_stop_prints_its_reason_once(simulator, tmp_path):
    """Stopped by the budget: the reason is on the last line only, not also in a log line before it."""
    config = write_config(tmp_path / "c.toml", FAST_CONFIG.replace("concurrency = 16", "concurrency = 1"))
    manifest = write_csv(tmp_path / "m.csv", remote_rows(40))
    result = run_cli(run_args(manifest, tmp_path / "out", config, simulator.base_url, "--max-cost", "0.008"))
    assert result.returncode == 3
    assert result.stderr.count("the budget is reached") == 1, result.stderr
    assert result.stderr.rstrip().splitlines()[-1].startswith("caption: error: the budget is reached"), result.stderr
