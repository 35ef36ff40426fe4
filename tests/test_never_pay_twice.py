"""Never pay twice, never lose a paid row: the folder lock, signals, fatal stops, dedup across runs.

Judged on what the simulator answered (its JSONL log, one line per request), not on what
the pipeline believes it did.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import polars as pl
import pytest

from pipeline.errors import AuthError, QuotaError
from pipeline.journal import Journal
from pipeline.simulator import SimConfig, SimulatorApp, SimulatorServer, image_key
from tests.conftest import FAST_CONFIG, remote_rows, run_args, run_cli, start_cli, write_config, write_csv
from tests.test_runner import make_config, run_once

pytestmark = pytest.mark.slow

SLOW_FLUSH = """
[limits]
rpm = 60000
tpm = 100000000
concurrency = 8
max_attempts = 4

[run]
chunk_size = 100000
flush_interval_s = 3600
"""


def _answers(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _wait_for_line(proc: subprocess.Popen[str], needle: str) -> list[str]:
    """Read the process's stderr until a line holds ``needle`` (the CLI logs it before sending)."""
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if needle in line:
            return seen
    raise AssertionError(f"the run ended without logging {needle!r}:\n{''.join(seen)}")


def _results(out: Path) -> pl.DataFrame:
    return Journal.reader(out).latest_frame()


def test_a_second_run_on_a_locked_folder_exits_2_at_once_and_sends_nothing(tmp_path):
    """Two runs on one folder: the second exits 2 while the first still runs, naming the holder's pid and sends nothing;
    the first completes with each id once and no image answered twice."""
    log = tmp_path / "first.jsonl"
    rows = remote_rows(300, prefix="lock")
    manifest = write_csv(tmp_path / "m.csv", rows)
    config = write_config(tmp_path / "c.toml", FAST_CONFIG.replace("concurrency = 16", "concurrency = 4"))
    first_app = SimulatorApp(
        SimConfig(latency_median_s=0.02, latency_p99_s=0.05, accept_any_model=True, log_path=str(log))
    )
    second_app = SimulatorApp(SimConfig(latency_median_s=0.002, accept_any_model=True))
    out = tmp_path / "out"
    with (
        SimulatorServer(first_app, log_level="critical") as first_sim,
        SimulatorServer(second_app, log_level="critical") as second_sim,
    ):
        first = start_cli(run_args(manifest, out, config, first_sim.base_url))
        try:
            _wait_for_line(first, "locked by pid")
            second = run_cli(
                run_args(manifest, out, config, second_sim.base_url),
                timeout_s=30,
            )
            # 'At once' is: it ended while the first run is still working, not after it.
            assert first.poll() is None, "the first run should still be working"
            first_err = first.communicate(timeout=120)[1]
        finally:
            if first.poll() is None:
                first.kill()
        assert second.returncode == 2, second.stderr
        assert f"in use by another caption run (pid {first.pid})" in second.stderr and str(out) in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1, second.stderr  # one line, no traceback
        assert second_app.stats()["requests"] == 0
        assert first.returncode == 0, first_err
    frame = pl.read_parquet(out / "results.parquet")
    assert frame.height == 300 and frame["id"].n_unique() == 300
    answered = [e["image"] for e in _answers(log) if e["status"] == 200]
    assert len(answered) == len(set(answered)) == 300


def test_a_killed_runs_lock_does_not_block_the_next_run(simulator, tmp_path):
    """kill -9 mid-run: the OS drops the lock with the process, so the same command resumes at once."""
    manifest = write_csv(tmp_path / "m.csv", remote_rows(200, prefix="k9"))
    config = write_config(tmp_path / "c.toml", FAST_CONFIG)
    simulator.app.update(latency_median_s=0.05, latency_p99_s=0.1)
    args = run_args(manifest, tmp_path / "out", config, simulator.base_url)
    proc = start_cli(args)
    _wait_for_line(proc, "locked by pid")
    proc.kill()
    proc.wait(timeout=30)
    simulator.app.update(latency_median_s=0.002, latency_p99_s=0.01)
    result = run_cli(args)
    assert result.returncode == 0, result.stderr
    frame = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert frame.height == 200 and frame["id"].n_unique() == 200


def test_a_report_reads_a_locked_folder(simulator, tmp_path):
    """`caption report` is read-only: it works while a run holds the folder."""
    manifest = write_csv(tmp_path / "m.csv", remote_rows(20, prefix="rep"))
    out = tmp_path / "out"
    run_once(make_config(simulator.base_url), manifest, out)
    with Journal(out):
        result = run_cli(["report", str(out), "--json"])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["rows"] == 20


def _signal_scenario(tmp_path: Path, signum: int, *, kill_after_s: float | None):
    """A run with slow answers in flight and nothing flushed yet, sent ``signum`` once 12 answers are in.

    Returns (exit code, stderr, the images answered 200 before the signal, the simulator log, run args).
    """
    log = tmp_path / "sim.jsonl"
    # Every fifth answer is held 3 s: requests are still in flight when the signal comes, so a run
    # that waits for them before flushing is still waiting when the SIGKILL lands.
    rows = [
        {**row, "url": row["url"] + ("?sim=slow" if i % 5 == 4 else "")}
        for i, row in enumerate(remote_rows(60, prefix="sig"))
    ]
    manifest = write_csv(tmp_path / "m.csv", rows)
    config = write_config(tmp_path / "c.toml", SLOW_FLUSH)
    app = SimulatorApp(
        SimConfig(latency_median_s=0.15, latency_p99_s=0.6, accept_any_model=True, log_path=str(log), stall_s=3.0)
    )
    server = SimulatorServer(app, log_level="critical")
    server.__enter__()
    args = run_args(manifest, tmp_path / "out", config, server.base_url)
    proc = start_cli(args)
    try:
        assert app.wait_until(lambda s: s["accepted"] >= 12, timeout_s=60)
        signalled_at = time.time()
        proc.send_signal(signum)
        if kill_after_s is not None:
            try:
                proc.wait(timeout=kill_after_s)
            except subprocess.TimeoutExpired:
                proc.kill()
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = {e["image"] for e in _answers(log) if e["status"] == 200 and e["t"] < signalled_at}
    return proc.returncode, stderr, before, log, args, server


def test_sigterm_then_sigkill_keeps_every_answer_given_before_the_signal(tmp_path):
    """SIGTERM, then SIGKILL 1.5 s later (`timeout -k`, `docker stop` with a short grace): what the server
    answered before the SIGTERM is in the journal, and the resume asks for none of it again."""
    code, stderr, before, log, args, server = _signal_scenario(tmp_path, signal.SIGTERM, kill_after_s=1.5)
    try:
        assert len(before) >= 12
        recorded = _results(tmp_path / "out")
        urls = {image_key(u): i for i, u in zip(recorded["id"], recorded["url"], strict=True)}
        assert before <= set(urls), f"answered before SIGTERM but not recorded: {before - set(urls)}\n{stderr}"
        answered_once = len(_answers(log))
        resumed = run_cli(args)
        assert resumed.returncode == 0, resumed.stderr
        again = {e["image"] for e in _answers(log)[answered_once:]}
        assert not (again & before), f"paid twice: {sorted(again & before)}"
    finally:
        server.__exit__(None, None, None)
    assert pl.read_parquet(tmp_path / "out" / "results.parquet")["id"].n_unique() == 60


def test_sighup_stops_like_ctrl_c_and_nothing_answered_is_sent_again(tmp_path):
    """Closing an ssh session (SIGHUP): exit 130, run.json says stopped, nothing answered is re-sent."""
    code, stderr, before, log, args, server = _signal_scenario(tmp_path, signal.SIGHUP, kill_after_s=None)
    try:
        assert code == 130, stderr
        assert "interrupted by SIGHUP" in stderr
        assert json.loads((tmp_path / "out" / "run.json").read_text())["status"] == "stopped"
        answered = {e["image"] for e in _answers(log) if e["status"] == 200}
        answered_once = len(_answers(log))
        resumed = run_cli(args)
        assert resumed.returncode == 0, resumed.stderr
        again = {e["image"] for e in _answers(log)[answered_once:]}
        assert not (again & answered), f"paid twice: {sorted(again & answered)}"
    finally:
        server.__exit__(None, None, None)


def test_a_second_signal_ends_the_grace_period(tmp_path):
    """Ctrl-C twice: the second stops waiting for requests in flight (a stalled one would hold 10 s)."""
    rows = [{"id": f"st-{i}", "url": f"https://img.example.com/st/{i}.jpg?sim=slow"} for i in range(8)]
    manifest = write_csv(tmp_path / "m.csv", rows)
    config = write_config(tmp_path / "c.toml", SLOW_FLUSH)
    app = SimulatorApp(SimConfig(latency_median_s=0.002, accept_any_model=True, stall_s=30))
    with SimulatorServer(app, log_level="critical") as sim:
        proc = start_cli(run_args(manifest, tmp_path / "out", config, sim.base_url))
        assert app.wait_until(lambda s: s["held"] >= 8, timeout_s=30)
        proc.send_signal(signal.SIGINT)
        lines = _wait_for_line(proc, "request(s) in flight")
        assert "waiting up to 10s for 8 request(s) in flight" in lines[-1]
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
        assert time.monotonic() - started < 5
    assert proc.returncode == 130, stderr


@pytest.mark.parametrize("fatal,error", [("quota", QuotaError), ("auth", AuthError)])
def test_a_fatal_stop_records_the_answers_still_in_flight(tmp_path, fatal, error):
    """A quota or auth stop while 7 slow requests are in flight: their (paid) answers are recorded,
    and the resume sends none of them again."""
    slow = [{"id": f"slow-{i}", "url": f"https://img.example.com/s/{i}.jpg?sim=slow"} for i in range(7)]
    rows = [
        *slow,
        {"id": "fatal", "url": f"https://img.example.com/f.jpg?sim={fatal}x1"},
        *remote_rows(30, prefix="rest"),
    ]
    manifest = write_csv(tmp_path / "m.csv", rows)
    app = SimulatorApp(SimConfig(latency_median_s=0.002, latency_p99_s=0.005, accept_any_model=True, stall_s=0.5))
    out = tmp_path / "out"
    with SimulatorServer(app, log_level="critical") as sim:
        config = make_config(sim.base_url, limits={"concurrency": 8}, run={"part_rows": 1000, "flush_interval_s": 60})
        stopped, frame = run_once(config, manifest, out)
        assert isinstance(stopped, error), stopped
        ok = set(frame.filter(pl.col("status") == "ok")["id"])
        assert {r["id"] for r in slow} <= ok, frame
        totals, frame = run_once(config, manifest, out)
        per_image = app.stats(images=True)["images"]
    assert totals.error == 0 and frame.height == len(rows)
    assert all(per_image[image_key(r["url"])] == 1 for r in slow), per_image


def test_duplicates_of_an_earlier_runs_answers_are_not_sent_again(simulator, tmp_path):
    """50 rows naming 10 images, then 50 more ids naming the same 10 images in the same folder:
    the second run sends nothing and ends with 100 ok rows, the new ones copies (dedup_of)."""
    images = [f"https://img.example.com/d/{i}.jpg" for i in range(10)]
    first = [{"id": f"a{i:03d}", "url": images[i % 10]} for i in range(50)]
    second = first + [{"id": f"b{i:03d}", "url": images[i % 10]} for i in range(50)]
    out = tmp_path / "out"
    config = make_config(simulator.base_url)
    run_once(config, write_csv(tmp_path / "m1.csv", first), out)
    assert simulator.app.stats()["accepted"] == 10
    totals, frame = run_once(config, write_csv(tmp_path / "m2.csv", second), out)
    assert simulator.app.stats()["requests"] == 10, "the second run paid again"
    assert totals.requests == 0 and totals.skipped == 50
    assert frame.height == 100 and (frame["status"] == "ok").all()
    copies = frame.filter(pl.col("id").str.starts_with("b"))
    assert copies["dedup_of"].is_not_null().all() and (copies["cost_usd"] == 0).all()
    by_id = dict(zip(frame["id"], frame["caption"], strict=True))
    assert all(by_id[f"b{i:03d}"] == by_id[f"a{i % 10:03d}"] for i in range(50))


def test_an_estimate_sample_kept_in_the_folder_is_not_paid_again_by_the_run(simulator, tmp_path):
    """`estimate --sample --out DIR` then `run --out DIR`: each image is paid for once over both."""
    rows = [{"id": f"e{i:03d}", "url": f"https://img.example.com/e/{i % 4}.jpg"} for i in range(20)]
    manifest = write_csv(tmp_path / "m.csv", rows)
    config = write_config(tmp_path / "c.toml", FAST_CONFIG)
    common = ["--out", str(tmp_path / "out"), "--config", str(config), "--base-url", simulator.base_url]
    estimate = run_cli(["estimate", str(manifest), "--sample", "8", *common])
    assert estimate.returncode == 0, estimate.stderr
    result = run_cli(["run", str(manifest), *common, "--no-progress"])
    assert result.returncode == 0, result.stderr
    per_image = simulator.app.stats(images=True)["images"]
    assert per_image and all(n == 1 for n in per_image.values()), per_image
    assert pl.read_parquet(tmp_path / "out" / "results.parquet").height == 20


def test_the_folders_spend_counts_every_run(simulator, tmp_path):
    """A row paid for, then re-sent by a resume: run.json's spent_usd_in_folder keeps both payments."""
    schema = '{"type": "object", "properties": {"k": {"type": "integer"}}, "required": ["k"]}'
    rows = [{"id": "x", "url": "https://img.example.com/x.jpg?sim=badjsonx2"}, *remote_rows(3, prefix="sp")]
    manifest = write_csv(tmp_path / "m.csv", rows)
    out = tmp_path / "out"
    config = make_config(
        simulator.base_url,
        request={
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": json.loads(schema)}}
        },
    )
    _, first = run_once(config, manifest, out)
    failed = first.filter(pl.col("id") == "x").row(0, named=True)
    assert failed["status"] == "error" and failed["cost_usd"] > 0  # two paid answers, both refused
    run_once(config, manifest, out, retry_errors=True)
    final = pl.read_parquet(out / "results.parquet")
    redone = final.filter(pl.col("id") == "x").row(0, named=True)
    assert redone["status"] == "ok" and redone["prior_cost_usd"] == pytest.approx(failed["cost_usd"])
    spent = json.loads((out / "run.json").read_text())["last_run"]["spent_usd_in_folder"]
    paid = first["cost_usd"].sum() + redone["cost_usd"]
    assert spent == pytest.approx(paid, abs=1e-6)
    assert Journal.reader(out).spent_usd() == pytest.approx(paid)


def test_deleting_run_json_does_not_skip_the_parameter_check(simulator, tmp_path):
    """A folder with results but no run.json is refused (exit 2) unless --force, not silently resumed."""
    manifest = write_csv(tmp_path / "m.csv", remote_rows(5, prefix="rj"))
    config = write_config(tmp_path / "c.toml", FAST_CONFIG)
    args = run_args(manifest, tmp_path / "out", config, simulator.base_url)
    assert run_cli(args).returncode == 0
    os.unlink(tmp_path / "out" / "run.json")
    refused = run_cli([*args, "--model", "gpt-4o-mini"])
    assert refused.returncode == 2 and "no run.json" in refused.stderr, refused.stderr
    assert run_cli([*args, "--force"]).returncode == 0


def test_the_left_count_is_right_when_rows_collapse(simulator, tmp_path):
    """30 rows naming 3 urls with no id column are 3 ids: a finished run says 0 left, not 27."""
    rows = [{"url": f"https://img.example.com/c/{i % 3}.jpg"} for i in range(30)]
    config = write_config(tmp_path / "c.toml", FAST_CONFIG)
    result = run_cli(run_args(write_csv(tmp_path / "m.csv", rows), tmp_path / "out", config, simulator.base_url))
    assert result.returncode == 0, result.stderr
    assert "3 rows this run" in result.stderr and ", 0 left;" in result.stderr, result.stderr
