"""results.parquet as a file people keep: key-value metadata, manifest order (``row``), ``path`` for folders,
and folders written before those columns existed still resuming and folding."""

from __future__ import annotations

import dataclasses
import json
import random
from datetime import UTC, datetime

import polars as pl
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline import __version__
from pipeline.cli import main
from pipeline.journal import Journal
from pipeline.manifest import iter_chunks
from pipeline.models import Item, ResultRow
from pipeline.parquet_files import order_rows
from pipeline.rows import dedup_copy
from tests.conftest import FAST_CONFIG, remote_rows, run_args, write_config, write_csv


def _run(manifest, out, tmp_path, base_url, *extra: str) -> int:
    config = write_config(tmp_path / "c.toml", FAST_CONFIG)
    return main(run_args(manifest, out, config, base_url, *extra))


def _row(i: int, *, row: int | None) -> ResultRow:
    return ResultRow(
        id=f"id{i}", url=f"https://x/{i}", status="ok", caption=f"c{i}", row=row, finished_at=datetime.now(UTC)
    )


def test_results_carry_key_value_metadata_readable_by_pyarrow_and_polars(simulator, tmp_path):
    """model, prompt, fingerprint, version and created are in the footer; run.json's fingerprint matches."""
    manifest = write_csv(tmp_path / "m.csv", remote_rows(5))
    out = tmp_path / "out"
    assert _run(manifest, out, tmp_path, simulator.base_url, "--prompt", "Tags, please.") == 0
    arrow = {k.decode(): v.decode() for k, v in pq.read_schema(out / "results.parquet").metadata.items()}
    polars_meta = pl.read_parquet_metadata(out / "results.parquet")
    run_json = json.loads((out / "run.json").read_text())
    assert arrow["model"] == "gpt-4o" and arrow["prompt"] == "Tags, please." and arrow["version"] == __version__
    assert arrow["fingerprint"] == run_json["fingerprint"]
    assert datetime.fromisoformat(arrow["created"]).tzinfo is not None
    assert {k: polars_meta[k] for k in ("model", "prompt", "fingerprint")} == {
        k: arrow[k] for k in ("model", "prompt", "fingerprint")
    }


def test_results_come_in_manifest_order_with_a_row_column(simulator, tmp_path):
    """Rows finish in any order; results.parquet lists them as the manifest does, row = 0-based manifest row."""
    rows = remote_rows(60)
    random.Random(3).shuffle(rows)  # ids out of lexical order, so no other sort passes for this one
    manifest = write_csv(tmp_path / "m.csv", rows)
    out = tmp_path / "out"
    simulator.app.update(latency_median_s=0.01, latency_p99_s=0.05)
    assert _run(manifest, out, tmp_path, simulator.base_url) == 0
    frame = pl.read_parquet(out / "results.parquet")
    assert frame["id"].to_list() == [r["id"] for r in rows]
    assert frame["row"].to_list() == list(range(60))


@pytest.mark.parametrize("in_memory", [1000, 5], ids=["sorted-in-memory", "written-then-ordered"])
def test_finalize_sorts_parts_written_out_of_order(tmp_path, in_memory):
    """Parts flushed in completion order (newest rows first) fold into row order, whether the
    folder is sorted in memory or, past ``sort_in_memory_rows``, written first and ordered after."""
    journal = Journal(tmp_path, merge_factor=100, sort_in_memory_rows=in_memory)
    order = list(range(30))
    random.Random(1).shuffle(order)
    for start in range(0, 30, 7):
        journal.write_rows([_row(i, row=i) for i in order[start : start + 7]])
    journal.finalize(metadata={"model": "m"})
    file = pq.ParquetFile(tmp_path / "results.parquet")
    assert file.read(columns=["row"]).column(0).to_pylist() == list(range(30))
    assert file.schema_arrow.metadata[b"model"] == b"m"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "journal", "results.parquet"]


@pytest.mark.parametrize("in_memory", [1000, 3], ids=["sorted-in-memory", "written-then-ordered"])
def test_finalize_keeps_the_newest_row_of_an_id_and_puts_rows_without_a_row_number_last(tmp_path, in_memory):
    """A later run's row replaces the earlier one (results.parquet, then parts); null rows go last in fold order."""
    with Journal(tmp_path, sort_in_memory_rows=in_memory) as journal:
        journal.write_rows([_row(i, row=i) for i in (4, 2, 0)])
        journal.finalize()
    with Journal(tmp_path, sort_in_memory_rows=in_memory) as journal:
        journal.write_rows([_row(7, row=None), dataclasses.replace(_row(2, row=2), caption="newer")])
        journal.write_rows([_row(3, row=3), _row(8, row=None), _row(1, row=1)])
        journal.finalize()
    frame = pl.read_parquet(tmp_path / "results.parquet")
    assert frame["row"].to_list() == [0, 1, 2, 3, 4, None, None]
    assert frame["caption"].to_list()[:5] == ["c0", "c1", "newer", "c3", "c4"]
    assert frame["id"].to_list()[5:] == ["id8", "id7"]  # the newest part is folded first


def test_order_rows_reads_across_row_groups_and_puts_nulls_last(tmp_path):
    """Many small row groups in random order, nulls among them: sorted by row, ties and nulls in file order."""
    keys = [None, *range(200), None]
    random.Random(7).shuffle(keys)
    frame = pl.DataFrame({"row": keys, "at": list(range(len(keys)))}, schema={"row": pl.Int64, "at": pl.Int64})
    source, target = tmp_path / "unsorted.parquet", tmp_path / "sorted.parquet"
    pq.write_table(frame.to_arrow(), source, row_group_size=16)
    order_rows(source, target, column="row", compression="zstd")
    got = pl.read_parquet(target)
    assert got["row"].to_list() == [*range(200), None, None]
    nulls_at = got.filter(pl.col("row").is_null())["at"].to_list()
    assert nulls_at == sorted(nulls_at) and not source.exists()


def test_folder_manifest_rows_carry_their_path_relative_to_the_folder(tmp_path):
    """A folder's images: path is the file name under the folder (POSIX), row the sorted listing's index."""
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for name in ("b.png", "sub/a.png", "a.png"):
        Image.new("RGB", (8, 8)).save(folder / name)
    items = [item for chunk in iter_chunks(folder, chunk_size=2) for item in chunk]
    assert [(i.row, i.path) for i in items] == [(0, "a.png"), (1, "b.png"), (2, "sub/a.png")]
    assert all(i.url == str((folder / i.path).resolve()) for i in items if i.path)


def test_a_dedup_copy_keeps_its_own_row_and_path():
    """The copy of an identical image's answer is listed at its own manifest row, not the original's."""
    original = _row(1, row=0)
    copy = dedup_copy(
        Item("id2", "https://x/2", row=5, path="p.jpg"), original, finished_at=datetime.now(UTC), prior_cost_usd=None
    )
    assert (copy.row, copy.path, copy.dedup_of) == (5, "p.jpg", "id1")


def test_an_older_folder_without_row_and_path_resumes_and_folds_quietly(simulator, tmp_path, capsys):
    """results.parquet from before the columns: the resumed run sends only the new ids, folds them in with their
    rows, keeps the old rows (row null, listed after), and says nothing of missing columns."""
    rows = remote_rows(8)
    manifest = write_csv(tmp_path / "m.csv", rows[:5])
    out = tmp_path / "out"
    assert _run(manifest, out, tmp_path, simulator.base_url) == 0
    old = pl.read_parquet(out / "results.parquet").drop("row", "path")
    old.write_parquet(out / "results.parquet")
    write_csv(manifest, rows)
    capsys.readouterr()
    assert _run(manifest, out, tmp_path, simulator.base_url) == 0
    frame = pl.read_parquet(out / "results.parquet")
    assert frame["id"].to_list() == [r["id"] for r in rows[5:]] + [r["id"] for r in rows[:5]]
    assert frame["row"].to_list() == [5, 6, 7, None, None, None, None, None]
    assert simulator.app.stats()["requests"] == 8
    err = capsys.readouterr().err.lower()
    assert "warning" not in err and "column" not in err and "traceback" not in err
    # --force folding under another prompt rewrites the same mix without complaint.
    assert _run(manifest, out, tmp_path, simulator.base_url, "--prompt", "Other.", "--force") == 0
    assert pl.read_parquet(out / "results.parquet").height == 8


def test_parts_from_before_the_columns_fold_with_nulls_after_the_rows_that_have_them(tmp_path):
    """A killed older run's part (no row, no path) and a newer part fold into one file: old rows last."""
    journal = Journal(tmp_path)
    journal.write_rows([_row(i, row=None) for i in range(3)])
    old_part = next((tmp_path / "journal").glob("*.parquet"))
    pq.write_table(pq.read_table(old_part).drop_columns(["row", "path"]), old_part)
    journal.write_rows([_row(i, row=i - 3) for i in range(3, 6)])
    journal.finalize()
    frame = pl.read_parquet(tmp_path / "results.parquet")
    assert frame["id"].to_list() == ["id3", "id4", "id5", "id0", "id1", "id2"]
    assert frame["row"].to_list() == [0, 1, 2, None, None, None] and frame["path"].null_count() == 6


FIXED = datetime(2026, 12, 2, tzinfo=UTC)


def _fold(folder, *, reopen: bool) -> pl.DataFrame:
    """Rows flushed in three parts (two merged), some without a row number, then finalized by
    the same journal (from memory) or by a new one (read back from the files)."""
    journal = Journal(folder, merge_factor=2)
    order = [5, None, 2, 7, 0, None, 3, 1, 6, 4]
    for start in (0, 4, 8):
        journal.write_rows(
            [
                dataclasses.replace(_row(i, row=r), finished_at=FIXED)
                for i, r in enumerate(order)
                if start <= i < start + 4
            ]
        )
    if reopen:
        journal.close()
        journal = Journal(folder, merge_factor=2)
    journal.finalize(metadata={"model": "m"})
    journal.close()
    return pl.read_parquet(folder / "results.parquet")


def test_a_small_run_folded_from_memory_matches_its_parts_read_back(tmp_path):
    """Finalize takes a small run's own parts from memory: same rows, order and nulls-last order as from disk."""
    from_memory, from_disk = _fold(tmp_path / "memory", reopen=False), _fold(tmp_path / "disk", reopen=True)
    assert from_memory.equals(from_disk)
    assert from_memory["row"].to_list() == [0, 1, 2, 3, 4, 5, 6, 7, None, None]
    assert from_memory["id"].to_list()[-2:] == ["id1", "id5"]  # fold order: newest part first, each in its order


def test_a_small_run_does_not_read_its_own_parts_back(tmp_path):
    """The parts on disk are not what finalize reads for this run's rows: one damaged after it was
    written costs nothing (read back, it would be moved aside and its rows sent again)."""
    journal = Journal(tmp_path, merge_factor=100)
    journal.write_rows([_row(i, row=i) for i in range(3)])
    journal.write_rows([_row(i, row=i) for i in range(3, 6)])
    (part,) = [p for p in (tmp_path / "journal").glob("p*.parquet") if p.name.startswith("p0000000002")]
    part.write_bytes(b"PAR1 damaged")
    journal.finalize()
    assert journal.quarantined == []
    assert pl.read_parquet(tmp_path / "results.parquet")["id"].to_list() == [f"id{i}" for i in range(6)]


def test_repeating_columns_are_dictionary_encoded_and_distinct_ones_are_not(tmp_path):
    """A dictionary for ids or captions is built and dropped for nothing; status and the like keep one."""
    journal = Journal(tmp_path)
    journal.write_rows([_row(i, row=i) for i in range(50)])
    journal.finalize()
    meta = pq.ParquetFile(tmp_path / "results.parquet").metadata
    encodings = {meta.schema.column(i).path: meta.row_group(0).column(i).encodings for i in range(meta.num_columns)}
    assert any("DICTIONARY" in e for e in encodings["status"]), encodings["status"]
    assert any("DICTIONARY" in e for e in encodings["flagged_categories.list.element"]), encodings
    assert not any("DICTIONARY" in e for e in encodings["id"]), encodings["id"]
    assert not any("DICTIONARY" in e for e in encodings["caption"]), encodings["caption"]


def test_merges_of_merged_parts_keep_a_small_run_in_memory(tmp_path):
    """With merge_factor 2, four flushes merge twice over; the run is still folded from memory
    (its one remaining part, damaged on disk, is not read)."""
    journal = Journal(tmp_path, merge_factor=2)
    for start in range(0, 8, 2):
        journal.write_rows([_row(i, row=i) for i in range(start, start + 2)])
    (part,) = (tmp_path / "journal").glob("p*.parquet")
    assert part.name.startswith("p0000000004-0000000001")
    part.write_bytes(b"PAR1 damaged")
    journal.finalize()
    assert journal.quarantined == []
    assert pl.read_parquet(tmp_path / "results.parquet")["row"].to_list() == list(range(8))
