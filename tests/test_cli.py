"""The `caption` command as a user runs it: a subprocess against the simulator on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from pipeline.models import RESULT_SCHEMA
from pipeline.simulator import image_key
from tests.conftest import (
    FAST_CONFIG,
    KEY_ENV,
    ROOT,
    cli_env,
    remote_rows,
    run_args,
    run_cli,
    start_cli,
    write_config,
    write_csv,
)


def _run_args(manifest: Path, out: Path, config: Path, base_url: str, *extra: str) -> list[str]:
    return run_args(manifest, out, config, base_url, *extra)


def test_readme_demo_command_works_offline(tmp_path):
    """`caption run data/manifest.csv ... --simulate` captions the demo manifest with exit 0."""
    result = run_cli(
        [
            "run",
            "data/manifest.csv",
            "--out",
            str(tmp_path / "demo"),
            "--config",
            "configs/demo.toml",
            "--simulate",
            "--rpm",
            "60000",
        ]
    )
    assert result.returncode == 0, result.stderr
    frame = pl.read_parquet(tmp_path / "demo" / "results.parquet")
    assert frame.height == 200 and (frame["status"] == "ok").all()
    assert "finished: 200 rows this run" in result.stderr


def test_results_have_every_spec_column_and_read_back_with_pyarrow(simulator, tmp_path):
    """results.parquet: SPEC's columns and types, one row per id, readable by polars and pyarrow."""
    config = write_config(tmp_path / "c.toml", FAST_CONFIG)
    manifest = write_csv(tmp_path / "m.csv", remote_rows(60))
    result = run_cli(_run_args(manifest, tmp_path / "out", config, simulator.base_url))
    assert result.returncode == 0, result.stderr
    frame = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert frame.schema == pl.Schema(RESULT_SCHEMA)
    assert frame.height == 60 and frame["id"].n_unique() == 60
    table = pq.read_table(tmp_path / "out" / "results.parquet")
    assert table.num_rows == 60 and str(table.schema.field("finished_at").type) == "timestamp[us, tz=UTC]"
    assert str(table.schema.field("http_status").type) == "int32"


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("no_url.csv", "id,image\n1,https://x/1\n", "no 'url' column"),
        ("dupes.csv", "id,url\na,https://x/1\na,https://x/2\n", "id 'a' appears 2 times"),
        ("empty.csv", "", "the file is empty"),
        ("binary.txt", None, "not a text file"),
        ("missing.csv", "MISSING", "file not found"),
    ],
)
def test_malformed_manifests_exit_2_with_one_line_and_send_nothing(simulator, tmp_path, name, content, problem):
    """Exit 2, a single line naming the file and the problem, no request sent, no output written."""
    path = tmp_path / name
    if content is None:
        path.write_bytes(b"\x89\xff\x00\xfe" * 64)
    elif content != "MISSING":
        path.write_text(content)
    config = write_config(tmp_path / "c.toml", FAST_CONFIG)
    result = run_cli(_run_args(path, tmp_path / "out", config, simulator.base_url))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and problem in lines[0]
    assert simulator.app.stats()["requests"] == 0
    assert not (tmp_path / "out" / "results.parquet").exists()


def test_bad_config_and_missing_template_column_exit_2(simulator, tmp_path):
    """A bad config key and a prompt placeholder with no column both exit 2 before sending."""
    manifest = write_csv(tmp_path / "m.csv", remote_rows(3))
    bad = write_config(tmp_path / "bad.toml", "[limits]\nrpm = 'many'\n")
    result = run_cli(_run_args(manifest, tmp_path / "out", bad, simulator.base_url))
    assert result.returncode == 2 and "limits.rpm" in result.stderr and str(bad) in result.stderr
    config = write_config(tmp_path / "c.toml", FAST_CONFIG)
    result = run_cli(_run_args(manifest, tmp_path / "out", config, simulator.base_url, "--prompt", "Describe {mood}"))
    assert result.returncode == 2 and "{mood}" in result.stderr
    assert simulator.app.stats()["requests"] == 0


def test_exit_1_when_some_rows_are_errors(simulator, tmp_path):
    """A finished run with error rows exits 1; the summary says how many."""
    rows = remote_rows(5) + [{"id": "gone", "url": "does-not-exist.png"}]
    config = write_config(tmp_path / "c.toml", FAST_CONFIG)
    result = run_cli(_run_args(write_csv(tmp_path / "m.csv", rows), tmp_path / "out", config, simulator.base_url))
    assert result.returncode == 1 and "error 1" in result.stderr


def test_the_api_key_never_reaches_output_files_or_the_terminal(simulator, tmp_path):
    """With a key in the environment: accepted by the server, absent from every output file and all printed text."""
    key = "sk-live-DO-NOT-LEAK-4242424242"
    simulator.app.update(api_key=key)
    rows = remote_rows(30) + [{"id": "bad", "url": "https://images.example.com/x.jpg?sim=invalid_image_url"}]
    config = write_config(tmp_path / "c.toml", FAST_CONFIG)
    out = tmp_path / "out"
    result = run_cli(
        _run_args(write_csv(tmp_path / "m.csv", rows), out, config, simulator.base_url, "-v"),
        env=cli_env(**{KEY_ENV: key}),
    )
    assert result.returncode == 1, result.stderr
    assert pl.read_parquet(out / "results.parquet").filter(pl.col("status") == "ok").height == 30
    assert key not in result.stdout + result.stderr
    for path in out.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path


def test_a_refused_key_exits_3_and_says_so_without_printing_it(simulator, tmp_path):
    """Wrong key: exit 3 after at most `concurrency` requests; the message names the variable, not the key."""
    simulator.app.update(api_key="the-right-key")
    key = "sk-wrong-key-777777"
    config = write_config(tmp_path / "c.toml", FAST_CONFIG)
    result = run_cli(
        _run_args(write_csv(tmp_path / "m.csv", remote_rows(200)), tmp_path / "out", config, simulator.base_url),
        env=cli_env(**{KEY_ENV: key}),
    )
    assert result.returncode == 3
    assert "refused the API key" in result.stderr and KEY_ENV in result.stderr
    assert key not in result.stderr + result.stdout
    assert simulator.app.stats()["requests"] <= 16


def _flushed_ids(out: Path) -> set[str]:
    ids: set[str] = set()
    for part in (out / "journal").glob("p*.parquet"):
        ids.update(pl.read_parquet(part, columns=["id"])["id"].to_list())
    return ids


def _wait_for_flushes(proc: subprocess.Popen[str], count: int) -> None:
    """Read the run's debug log until it has flushed ``count`` parts (an event, not a sleep)."""
    seen = 0
    for line in proc.stderr:  # type: ignore[union-attr]
        if "flushed" in line:
            seen += 1
            if seen >= count:
                return
    raise AssertionError(f"the run ended before {count} flushes (exit {proc.wait()})")


def test_sigkill_at_three_random_moments_then_resume_sends_no_flushed_row_twice(simulator, tmp_path):
    """kill -9 three times at random flushes, resuming after each: every id once; a row flushed before a kill is never requested after it."""
    import random

    simulator.app.update(latency_median_s=0.02, latency_p99_s=0.06)
    rows = remote_rows(800)
    url_of = {r["id"]: r["url"] for r in rows}
    manifest = write_csv(tmp_path / "m.csv", rows)
    config = write_config(tmp_path / "c.toml", FAST_CONFIG.replace("concurrency = 16", "concurrency = 8"))
    out = tmp_path / "out"
    rng = random.Random(20261123)
    checkpoints: list[tuple[set[str], dict[str, int]]] = []

    def no_request_since_flushed() -> None:
        now = simulator.app.stats(images=True)["images"]
        for flushed, counts in checkpoints:
            again = [i for i in flushed if now[image_key(url_of[i])] != counts[image_key(url_of[i])]]
            assert not again, f"requested again after being flushed: {again[:5]}"

    for _ in range(3):
        proc = start_cli(_run_args(manifest, out, config, simulator.base_url, "-v"))
        try:
            _wait_for_flushes(proc, rng.randint(1, 6))
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        no_request_since_flushed()
        checkpoints.append((_flushed_ids(out), dict(simulator.app.stats(images=True)["images"])))
    result = run_cli(_run_args(manifest, out, config, simulator.base_url))
    assert result.returncode == 0, result.stderr
    no_request_since_flushed()
    frame = pl.read_parquet(out / "results.parquet")
    assert frame.height == 800 and frame["id"].n_unique() == 800 and (frame["status"] == "ok").all()
    per_image = simulator.app.stats(images=True)["images"]
    resent = sum(per_image[image_key(r["url"])] - 1 for r in rows)
    assert resent <= 3 * (8 + 20)  # per kill: at most what was in flight plus one unflushed chunk


def test_sigint_exits_130_keeps_finished_rows_and_a_rerun_completes(simulator, tmp_path):
    """Ctrl-C: stop dispatching, flush, exit 130; the same command then finishes the job."""
    simulator.app.update(latency_median_s=0.02, latency_p99_s=0.06)
    manifest = write_csv(tmp_path / "m.csv", remote_rows(500))
    config = write_config(tmp_path / "c.toml", FAST_CONFIG.replace("concurrency = 16", "concurrency = 8"))
    out = tmp_path / "out"
    proc = start_cli(_run_args(manifest, out, config, simulator.base_url, "-v"))
    _wait_for_flushes(proc, 2)
    flushed_before = _flushed_ids(out)
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=60)
    assert proc.returncode == 130, rest
    assert "interrupted by SIGINT" in rest
    first = pl.read_parquet(out / "results.parquet")
    assert flushed_before <= set(first["id"]) and first.height < 500 and (first["status"] == "ok").all()
    result = run_cli(_run_args(manifest, out, config, simulator.base_url))
    assert result.returncode == 0, result.stderr
    assert pl.read_parquet(out / "results.parquet").height == 500
    assert f"{first.height} already done" in result.stderr


def test_python_dash_m_and_help_work():
    """`python -m pipeline --help` lists the commands; `run --help` shows examples."""
    result = run_cli(["run", "--help"])
    assert result.returncode == 0 and "examples:" in result.stdout and "--max-cost" in result.stdout
    assert (ROOT / "pyproject.toml").exists()
