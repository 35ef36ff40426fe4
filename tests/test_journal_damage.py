"""A damaged output folder is named, never a traceback, never found only after the money is spent,
and never strands the folder: each case ends recoverable."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from pipeline.errors import JournalError, UnreadableFileError
from pipeline.journal import Journal
from pipeline.models import ResultRow
from tests.conftest import FAST_CONFIG, remote_rows, run_args, run_cli, write_config, write_csv


def _rows(ids: range) -> list[ResultRow]:
    return [
        ResultRow(
            id=f"img-{i:04d}",
            url=f"https://images.example.com/img/{i:04d}.jpg",
            status="ok",
            caption=f"caption {i} " * 30,
            cost_usd=0.001,
            attempts=1,
            finished_at=datetime(2026, 1, 1, tzinfo=UTC),
        )
        for i in ids
    ]


def _garble_column(path: Path, column: str) -> None:
    """Overwrite bytes inside one column's data pages: the footer and the other columns stay readable."""
    meta = pq.ParquetFile(path).metadata
    names = [meta.schema.column(i).name for i in range(meta.num_columns)]
    chunk = meta.row_group(0).column(names.index(column))
    data = bytearray(path.read_bytes())
    start = chunk.data_page_offset + 40
    data[start : start + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))


def _garble_footer(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-40:-8] = b"\x00" * 32
    path.write_bytes(bytes(data))


@pytest.fixture
def folder(tmp_path, simulator):
    """A manifest of 60 rows, a config, and the CLI arguments to run it against the simulator."""
    manifest = write_csv(tmp_path / "m.csv", remote_rows(60))
    config = write_config(tmp_path / "c.toml", FAST_CONFIG)
    out = tmp_path / "out"
    args = run_args(manifest, out, config, simulator.base_url)
    return out, args


def _resume(args: list[str]) -> list[str]:
    """Parts made by the test have no run.json beside them: --force skips only the parameter check."""
    return [*args, "--force"]


def _one_line_error(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("caption: error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    return errors[0]


def test_a_part_with_a_broken_footer_is_named_before_anything_is_sent(folder, simulator):
    out, args = folder
    with Journal(out) as journal:
        journal.write_rows(_rows(range(20)))
    part = next((out / "journal").glob("p*.parquet"))
    _garble_footer(part)
    args = _resume(args)
    result = run_cli(args)
    assert result.returncode == 2
    line = _one_line_error(result.stderr)
    assert str(part) in line and "Move it aside" in line
    assert simulator.app.stats()["requests"] == 0
    shutil.move(part, out / "aside.parquet")  # what the message says to do
    result = run_cli(args)
    assert result.returncode == 0, result.stderr
    assert pl.read_parquet(out / "results.parquet")["id"].n_unique() == 60


def test_a_part_damaged_mid_file_is_named_before_anything_is_sent(folder, simulator):
    """Damage inside a part's pages (its footer is sound): the run's start reads every row it may
    answer duplicates from, so the part is named (one line) before any request."""
    out, args = folder
    with Journal(out) as journal:
        journal.write_rows(_rows(range(20)))
    part = next((out / "journal").glob("p*.parquet"))
    _garble_column(part, "caption")
    result = run_cli(_resume(args))
    assert result.returncode == 2 and str(part) in _one_line_error(result.stderr)
    assert simulator.app.stats()["requests"] == 0


def test_a_part_damaged_where_the_start_does_not_read_is_moved_aside_at_finalize(folder, simulator, tmp_path):
    """With dedup off the start reads only the key columns, so damage in the captions shows at finalize:
    the part is moved aside with a warning naming it, the run ends resumable (exit 2, not 0), and the
    next run sends the part's rows again and completes."""
    out, args = folder
    config = write_config(tmp_path / "nodedup.toml", FAST_CONFIG + "\n[images]\ndedup = false\n")
    args = _resume([*args[:5], str(config), *args[6:]])
    with Journal(out) as journal:
        journal.write_rows(_rows(range(20)))
    part = next((out / "journal").glob("p*.parquet"))
    _garble_column(part, "caption")
    result = run_cli(args)
    assert result.returncode == 2, result.stderr
    assert f"{part} was damaged and is moved to" in result.stderr
    assert "re-run the same command" in _one_line_error(result.stderr)
    assert simulator.app.stats()["requests"] == 40  # only the rows the part did not hold
    assert (out / "journal" / "unreadable" / part.name).exists()
    result = run_cli(args)
    assert result.returncode == 0, result.stderr
    assert simulator.app.stats()["requests"] == 60
    assert pl.read_parquet(out / "results.parquet")["id"].n_unique() == 60


@pytest.mark.parametrize("where", ["footer", "captions"])
def test_a_damaged_results_file_is_named_by_run_and_report(folder, simulator, where):
    """results.parquet damaged (its footer, or inside its caption pages): the run and the reports that
    read the damaged part each exit 2 with one line naming it; none says all is well."""
    out, args = folder
    assert run_cli(args).returncode == 0
    html = ["report", str(out), "--html", str(out.parent / "r.html")]
    if where == "footer":
        _garble_footer(out / "results.parquet")
        commands = [args, ["report", str(out)], html]
    else:  # the summary does not read captions; the run's end check and the gallery do
        _garble_column(out / "results.parquet", "caption")
        commands = [args, html]
    for command in commands:
        result = run_cli(command)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert str(out / "results.parquet") in _one_line_error(result.stderr)


def test_report_names_a_damaged_part(folder):
    out, _ = folder
    with Journal(out) as journal:
        journal.write_rows(_rows(range(10)))
        journal.write_rows(_rows(range(10, 20)))
    part = sorted((out / "journal").glob("p*.parquet"))[-1]
    _garble_column(part, "caption")
    result = run_cli(["report", str(out)])
    assert result.returncode == 2 and str(part) in _one_line_error(result.stderr)


@pytest.mark.parametrize("content", [b"\xff\xfe not utf-8", b"[1, 2]", b'"a string"', b"{not json"])
def test_a_run_json_that_is_not_a_json_object_is_refused(folder, simulator, content):
    out, args = folder
    out.mkdir()
    (out / "run.json").write_bytes(content)
    result = run_cli(args)
    assert result.returncode == 2
    line = _one_line_error(result.stderr)
    assert "run.json" in line and "--force" in line
    assert simulator.app.stats()["requests"] == 0


def test_the_journal_api_names_the_file():
    """UnreadableFileError carries the path, so callers (finalize, report) can act on the one file."""
    assert issubclass(UnreadableFileError, JournalError)
    err = UnreadableFileError("x: broken", path="/a/b.parquet")
    assert err.path == "/a/b.parquet" and err.exit_code == 2


def test_run_json_round_trips(tmp_path):
    with Journal(tmp_path) as journal:
        journal.write_meta({"a": 1})
        assert journal.read_meta() == {"a": 1}
    assert json.loads((tmp_path / "run.json").read_text()) == {"a": 1}
