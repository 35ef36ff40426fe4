"""Defects found reviewing 30581ec..84d1b1a (issues 13 and 14). Each test fails on that main."""

from __future__ import annotations

import json

import polars as pl

from pipeline.cli import main
from pipeline.journal import Journal
from pipeline.report import report
from tests.conftest import FAST_CONFIG, remote_rows, run_args, write_config, write_csv


def test_report_throughput_of_an_older_folder_counts_only_timed_rows(simulator, tmp_path):
    """A folder whose run.json predates active_s (an older folder), resumed once: the report divides
    every row in the folder (all runs) by only the resumed run's working time, so throughput is inflated."""
    config = write_config(tmp_path / "c.toml", FAST_CONFIG)
    out = tmp_path / "out"
    first = write_csv(tmp_path / "m1.csv", remote_rows(60))
    assert main(run_args(first, out, config, simulator.base_url)) == 0
    meta = json.loads((out / "run.json").read_text())
    for key in ("active_s", "run_started_at", "rows_in_manifest"):  # as the branch point wrote it
        meta.pop(key, None)
    (out / "run.json").write_text(json.dumps(meta))
    second = write_csv(tmp_path / "m2.csv", remote_rows(70))
    assert main(run_args(second, out, config, simulator.base_url)) == 0
    summary = report(out)
    timed_rows = 10  # only the resumed run's rows were done in the time active_s counts
    tp = summary["throughput"]
    assert tp["rows_per_s"] * tp["active_s"] <= timed_rows * 1.5, tp


def test_estimate_html_into_a_missing_folder_is_refused_before_anything_is_paid(tmp_path):
    """--html naming a folder that does not exist: the sample is sent (and paid) for every model, then
    write_text raises FileNotFoundError (a traceback) and the estimate table is never printed.
    It should be refused up front (exit 2, nothing sent) like the other --html/--models mistakes."""
    from tests.conftest import run_cli

    manifest = write_csv(tmp_path / "m.csv", remote_rows(20))
    config = write_config(tmp_path / "c.toml", FAST_CONFIG)
    page = tmp_path / "no-such-folder" / "compare.html"
    argv = ["estimate", str(manifest), "--config", str(config), "--models", "gpt-4o,gpt-4o-mini", "--sample", "3"]
    result = run_cli([*argv, "--simulate", "--html", str(page)])
    assert "Traceback" not in result.stderr, result.stderr[-400:]
    assert result.returncode == 2
    assert "requests" not in result.stdout  # nothing sent


def test_estimate_sample_kept_in_an_unfinished_run_folder_does_not_mark_it_finished(simulator, tmp_path):
    """`caption estimate --sample N --out DIR` on a run folder that is not done (here: stopped by its
    budget) rewrites run.json as status finished with rows_in_manifest = N, so `caption report` says
    "finished: 18 of 5 rows done", rows_left 0, and `export` drops its "unfinished" note."""
    from tests.conftest import run_cli

    config = write_config(tmp_path / "c.toml", FAST_CONFIG.replace("concurrency = 16", "concurrency = 1"))
    out = tmp_path / "out"
    manifest = write_csv(tmp_path / "m.csv", remote_rows(40))
    assert run_cli(run_args(manifest, out, config, simulator.base_url, "--max-cost", "0.008")).returncode == 3
    before = json.loads(run_cli(["report", str(out), "--json"]).stdout)
    assert before["state"] == "stopped" and before["rows_left"] > 0
    estimate = ["estimate", str(manifest), "--config", str(config), "--base-url", simulator.base_url]
    assert run_cli([*estimate, "--sample", "3", "--out", str(out)]).returncode == 0
    after = json.loads(run_cli(["report", str(out), "--json"]).stdout)
    assert after["state"] != "finished", after["run"]["headline"]
    assert after["rows_left"] == 40 - after["settled_rows"], after["run"]["headline"]


def test_throughput_after_a_killed_run_keeps_the_killed_runs_working_time(tmp_path):
    """A run killed (kill -9) after 20 s with 20 rows, resumed an hour later for 10 s and 20 rows: 40 rows
    over 30 s of work. The resumed run's start overwrites run_started_at, so the killed run's 20 s are
    lost: 40 rows over 10 s (4 rows/s) is reported."""
    from datetime import timedelta

    from tests.test_report_state import T0, _meta, _rows

    later = T0 + timedelta(hours=1)
    with Journal(tmp_path) as journal:
        _meta(journal, status="running", now=T0)
        journal.write_rows(_rows(range(20), start=T0 + timedelta(seconds=1)))  # last row at T0+20 s
        # killed: no end state written
        _meta(journal, status="running", now=later)
        journal.write_rows(_rows(range(20, 40), start=later))
        _meta(journal, status="finished", now=later + timedelta(seconds=10))
    tp = report(tmp_path)["throughput"]
    assert tp["active_s"] >= 29.0, tp


def test_a_block_of_images_on_a_slow_host_does_not_stop_every_resume(tmp_path):
    """The provider's "Timeout while downloading the image" 400 is now a retryable ``timeout``, which the
    breaker counts as the endpoint being down. 40 rows in a row on a slow image host (the rest fine):
    the run stops with "the endpoint looks down" (exit 3) before recording them, and every re-run
    sends the same rows first and stops again: the manifest can never be finished."""
    from tests.conftest import cli_env, run_cli
    from tests.hostile_server import HostileServer, completion, json_answer

    timeout_400 = json_answer(
        400,
        {
            "error": {
                "message": "Timeout while downloading the image.",
                "type": "invalid_request_error",
                "param": "url",
                "code": "invalid_image_url",
            }
        },
    )
    answers = {f"{i:04d}": timeout_400 if i < 40 else json_answer(200, completion()) for i in range(200)}
    config = write_config(
        tmp_path / "c.toml",
        FAST_CONFIG.replace("max_attempts = 4", "max_attempts = 2")
        + '\n[endpoint]\nprovider = "generic"\napi_key_env = "K"\n',
    )
    manifest = write_csv(tmp_path / "m.csv", remote_rows(200))
    out = tmp_path / "out"
    with HostileServer() as server:
        server.answers = answers
        codes = [
            run_cli(run_args(manifest, out, config, server.base_url), env=cli_env(K="sk-test")).returncode
            for _ in range(2)
        ]
    ok = (
        pl.read_parquet(out / "results.parquet").filter(pl.col("status") == "ok").height
        if (out / "results.parquet").exists()
        else 0
    )
    assert ok == 160 and codes[-1] == 1, (codes, ok)


def test_estimate_models_one_unknown_model_does_not_throw_away_the_paid_samples(simulator, tmp_path):
    """--models gpt-4o,gpt-4o-minii (a typo): gpt-4o's sample is sent and paid, then the second model's
    404 aborts the whole command (exit 3) and nothing of gpt-4o's estimate is printed or kept."""
    from tests.conftest import run_cli

    simulator.app.update(accept_any_model=False)
    manifest = write_csv(tmp_path / "m.csv", remote_rows(20))
    config = write_config(tmp_path / "c.toml", FAST_CONFIG)
    argv = ["estimate", str(manifest), "--config", str(config), "--base-url", simulator.base_url]
    result = run_cli([*argv, "--models", "gpt-4o,gpt-4o-minii", "--sample", "3"])
    assert "gpt-4o-minii" in result.stderr
    assert "gpt-4o " in result.stdout, (result.returncode, result.stdout, result.stderr[-300:])
