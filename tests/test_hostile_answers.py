"""`caption run` against a server that answers badly on purpose (tests/hostile_server.py):
no leaked key, no hang, no crash, bounded memory."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import psutil
import pytest

from tests.conftest import KEY_ENV, ROOT, cli_env, run_cli, write_config
from tests.conftest import run_args as cli_run_args
from tests.hostile_server import (
    KEY_OFFSET,
    WAIT_A_DAY,
    WRONG_SHAPES,
    HostileServer,
    completion,
    echo_key_in_200_error,
    echo_key_in_401,
    echo_key_in_text_500,
    huge_body,
    json_answer,
    usage_of,
)

KEY = "sk-hostile-7Qm2VxK9pL4nR8tW3yZ6bC1dF5gH0jAe"

CONFIG = """
[limits]
rpm = 60000
tpm = 100000000
concurrency = 8
max_attempts = 2

[run]
chunk_size = 4
flush_interval_s = 0.2
"""


@pytest.fixture
def server() -> Iterator[HostileServer]:
    with HostileServer() as hostile:
        yield hostile


def manifest(path: Path, markers: list[str]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "url"])
        for i, marker in enumerate(markers):
            writer.writerow([f"{marker}-{i}", f"https://img.test/{marker}.jpg?row={i}"])  # distinct: no dedup
    return path


def run_args(tmp_path: Path, server: HostileServer, markers: list[str], *extra: str) -> list[str]:
    config = write_config(tmp_path / "c.toml", CONFIG)
    return cli_run_args(manifest(tmp_path / "m.csv", markers), tmp_path / "out", config, server.base_url, *extra)


def results(tmp_path: Path) -> pl.DataFrame:
    return pl.read_parquet(tmp_path / "out" / "results.parquet")


def assert_key_nowhere(key: str, texts: list[str], folder: Path) -> None:
    """Not the key as given, not stripped, not its first 10 characters (what a cut at 200 leaves)."""
    forms = {key, key.strip(), key.strip()[:10]}
    for text in texts:
        for form in forms:
            assert form not in text
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        for form in forms:
            assert form.encode() not in data, path
        if path.suffix == ".parquet":  # compressed on disk: read the columns back as text too
            rows = json.dumps(pl.read_parquet(path).to_dicts(), default=str)
            for form in forms:
                assert form not in rows, path


@pytest.mark.parametrize(
    ("answer", "key"),
    [
        (echo_key_in_200_error, KEY),
        (echo_key_in_text_500, KEY),
        (echo_key_in_401, KEY),
        (echo_key_in_200_error, KEY + "  "),  # trailing whitespace: sent stripped, so echoed stripped
        (echo_key_in_text_500, " " + KEY + "\r"),  # a CRLF .env file
    ],
    ids=["200-error-body", "500-text-key-at-190", "401-json", "trailing-space-key", "crlf-key"],
)
def test_an_echoed_key_reaches_no_file_no_terminal_and_no_report(server, tmp_path, answer, key):
    """The key the server echoes (raw and stripped) is nowhere under --out, on stdout/stderr or in the report."""
    server.answers = {"echo": answer}
    result = run_cli(run_args(tmp_path, server, ["echo"] * 6, "-v"), env=cli_env(**{KEY_ENV: key}))
    assert result.returncode in (1, 3), result.stderr
    assert server.requests >= 1
    frame = results(tmp_path)
    assert frame.height >= 1 or result.returncode == 3
    report = run_cli(["report", str(tmp_path / "out"), "--html", str(tmp_path / "out" / "report.html"), "--json"])
    assert report.returncode == 0, report.stderr
    assert_key_nowhere(key, [result.stdout, result.stderr, report.stdout, report.stderr], tmp_path / "out")
    assert "Traceback" not in result.stderr


def test_the_500_key_is_masked_before_the_body_is_cut(server, tmp_path):
    """The non-JSON 500 row says `***` where the key began, not the key's first characters."""
    server.answers = {"echo": echo_key_in_text_500}
    result = run_cli(run_args(tmp_path, server, ["echo"]), env=cli_env(**{KEY_ENV: KEY}))
    assert result.returncode == 1, result.stderr
    (message,) = results(tmp_path)["error_message"].to_list()
    assert "***" in message and KEY[:8] not in message and len(message) <= KEY_OFFSET + 20


@pytest.mark.parametrize("form", sorted(WAIT_A_DAY))
def test_a_429_asking_for_a_day_stops_the_run_within_seconds(server, tmp_path, form):
    """Retry-After: 86400, a requests reset of 24h with none remaining, "try again in 99999999s":
    exit 3 within seconds, resumable, and the message quotes the wait and how to go on."""
    server.answers = {"wait": WAIT_A_DAY[form]}
    started = time.monotonic()
    result = run_cli(run_args(tmp_path, server, ["wait"] * 12), timeout_s=60)
    elapsed = time.monotonic() - started
    assert result.returncode == 3, result.stderr
    assert elapsed < 20
    wait = "99999999 s" if form == "message" else "86400 s"
    (line,) = [ln for ln in result.stderr.splitlines() if ln.startswith("caption: error:")]
    assert wait in line and "limits.max_wait_s" in line and "re-run the same command after" in line
    meta = json.loads((tmp_path / "out" / "run.json").read_text())
    assert meta["status"] == "stopped" and meta["last_run"]["stopped_by"] == "WaitTooLongError"


def test_absurd_usage_is_invalid_response_and_the_run_finishes(server, tmp_path):
    """usage of 2^64, 2^63-1 and -5: those rows invalid_response with null usage and cost; the others ok."""
    server.answers = {"big": usage_of(2**64), "max": usage_of(2**63 - 1), "neg": usage_of(-5), "fine": usage_of(100)}
    result = run_cli(run_args(tmp_path, server, ["big", "max", "neg", "fine"] * 3), timeout_s=60)
    assert result.returncode == 1, result.stderr
    frame = results(tmp_path).sort("id")
    bad = frame.filter(~pl.col("id").str.starts_with("fine"))
    assert bad.height == 9 and (bad["error_type"] == "invalid_response").all()
    assert bad["prompt_tokens"].is_null().all() and bad["cost_usd"].is_null().all()
    assert bad["error_message"].str.contains("usage.prompt_tokens").all()
    fine = frame.filter(pl.col("id").str.starts_with("fine"))
    assert (fine["status"] == "ok").all() and (fine["cost_usd"] >= 0).all()
    assert "Traceback" not in result.stderr


def test_deep_nesting_and_wrong_types_are_classified_rows_without_tracebacks(server, tmp_path):
    """Filters nested 300 deep, non-string text parts, content as a dict or an int: invalid_response naming the
    field, one request each, not retried; inf/nan/1e400 in rate-limit headers are ignored (the row is ok)."""
    server.answers = dict(WRONG_SHAPES)
    result = run_cli(run_args(tmp_path, server, sorted(WRONG_SHAPES)), timeout_s=60)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    rows = {r["id"].rsplit("-", 1)[0]: r for r in results(tmp_path).to_dicts()}
    expected = {
        "deep_filter": "content_filter_results",
        "text_not_string": "choices[0].message.content[0].text",
        "content_dict": "choices[0].message.content is dict",
        "content_int": "choices[0].message.content is int",
    }
    for marker, field in expected.items():
        row = rows[marker]
        assert (row["status"], row["error_type"]) == ("error", "invalid_response"), row
        assert field in row["error_message"] and "internal error" not in row["error_message"]
        assert row["attempts"] == 1 and row["retryable"] is False and row["caption"] is None
    assert rows["inf_headers"]["status"] == "ok"


def _peak_rss_mb(proc: subprocess.Popen[str]) -> float:
    """The child's high-water RSS, sampled with psutil (and Linux's VmHWM) until it exits."""
    peak = 0
    child = psutil.Process(proc.pid)
    status = Path(f"/proc/{proc.pid}/status")
    while True:
        try:
            peak = max(peak, child.memory_info().rss)
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) * 1024)
        except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
            pass
        try:
            proc.wait(timeout=0.02)  # the sampling interval; returns once the run is over
            return peak / 2**20
        except subprocess.TimeoutExpired:
            continue


@pytest.mark.slow
def test_200_mb_bodies_at_concurrency_8_stay_under_600_mb(server, tmp_path):
    """Bodies of 200 MB (chunked, and with a Content-Length) are cut at endpoint.max_response_bytes:
    peak RSS of the `caption run` process under 600 MB, each row invalid_response."""
    size = 200 * 2**20
    server.answers = {"chunked": huge_body(size, declare_length=False), "sized": huge_body(size, declare_length=True)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", *run_args(tmp_path, server, ["chunked", "sized"] * 4)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
        cwd=ROOT,
    )
    stderr_lines: list[str] = []
    reader = threading.Thread(target=lambda: stderr_lines.extend(proc.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        peak_mb = _peak_rss_mb(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    stderr = "".join(stderr_lines)
    print(f"peak RSS of `caption run` with 8 x 200 MB bodies at concurrency 8: {peak_mb:.0f} MB")
    assert proc.returncode == 1, stderr
    assert peak_mb < 600
    frame = results(tmp_path)
    assert frame.height == 8 and (frame["error_type"] == "invalid_response").all()
    assert frame["error_message"].str.contains("max_response_bytes").all()
    assert (frame["attempts"] == 1).all()


def test_a_200_error_object_is_invalid_response_and_its_message_is_masked(server, tmp_path):
    """A 200 carrying {"error": ...} is invalid_response; the message is kept, the key masked at the source."""
    server.answers = {"echo": echo_key_in_200_error, "ok": json_answer(200, completion())}
    result = run_cli(run_args(tmp_path, server, ["echo", "ok"]), env=cli_env(**{KEY_ENV: KEY}))
    assert result.returncode == 1, result.stderr
    rows = {r["id"]: r for r in results(tmp_path).to_dicts()}
    assert rows["echo-0"]["error_type"] == "invalid_response"
    assert "upstream refused the request (Authorization: Bearer ***)" in rows["echo-0"]["error_message"]
    assert rows["ok-1"]["status"] == "ok"


def test_a_key_with_a_line_break_inside_is_refused_before_sending(server, tmp_path):
    """CR/LF inside the key cannot go in a header: exit 2 naming the variable, nothing sent, the key not printed."""
    server.answers = {"echo": echo_key_in_200_error}
    broken = KEY[:12] + "\r\n" + KEY[12:]
    result = run_cli(run_args(tmp_path, server, ["echo"] * 3), env=cli_env(**{KEY_ENV: broken}))
    assert result.returncode == 2 and KEY_ENV in result.stderr and "line break" in result.stderr
    assert server.requests == 0 and KEY[:12] not in result.stderr and "Traceback" not in result.stderr
