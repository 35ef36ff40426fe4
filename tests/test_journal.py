"""The Parquet journal: atomic parts, bounded part count, one row per id, resume state, crash leftovers."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import FolderLockedError
from pipeline.journal import Journal
from pipeline.models import RESULT_SCHEMA, ResultRow


def row(i: int, status: str = "ok", *, retryable: bool = False, caption: str | None = None) -> ResultRow:
    return ResultRow(
        id=f"id{i}",
        url=f"https://x/{i}",
        status=status,
        caption=caption or f"c{i}",
        retryable=retryable,
        attempts=1,
        finished_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


def test_finalize_keeps_the_latest_row_per_id_with_the_spec_schema(tmp_path):
    """Later parts win; results.parquet has one row per id and SPEC's column types."""
    journal = Journal(tmp_path)
    journal.write_rows([row(1, "error", retryable=True), row(2)])
    journal.write_rows([row(1, caption="second")])
    journal.finalize()
    frame = pl.read_parquet(tmp_path / "results.parquet")
    assert frame.schema == pl.Schema(RESULT_SCHEMA)
    assert sorted(frame["id"]) == ["id1", "id2"]
    assert frame.filter(pl.col("id") == "id1")["caption"].item() == "second"
    assert journal.part_count() == 0


def test_part_count_stays_bounded_on_long_runs(tmp_path):
    """Compaction keeps a few dozen files however many flushes happen."""
    journal = Journal(tmp_path, merge_factor=4)
    for i in range(100):
        journal.write_rows([row(i)])
    assert journal.part_count() <= 3 * 4
    assert journal.latest_frame().height == 100


def test_skip_ids_follows_the_resume_rules(tmp_path):
    """ok and filtered are skipped; non-retryable errors skipped unless retry_errors; retryable ones retried."""
    journal = Journal(tmp_path)
    journal.write_rows([row(1), row(2, "filtered"), row(3, "error", retryable=False), row(4, "error", retryable=True)])
    assert sorted(journal.skip_ids(retry_errors=False).ids) == ["id1", "id2", "id3"]
    assert sorted(journal.skip_ids(retry_errors=True).ids) == ["id1", "id2"]
    done = journal.skip_ids(retry_errors=False)
    assert done.among(["id0", "id1", "id3", "id4", "zzz"]) == {"id1", "id3"}
    assert len(done) == 3


def test_leftovers_of_a_killed_merge_and_temp_files_are_cleaned(tmp_path):
    """A merged part beside the parts it replaced (kill before delete) and temp files are tidied on open."""
    journal = Journal(tmp_path, merge_factor=2)
    journal.write_rows([row(1)])
    saved = tmp_path / "saved.parquet"
    shutil.copy(next((tmp_path / "journal").iterdir()), saved)
    journal.write_rows([row(2)])  # merges p1 and p2 into p2-1
    shutil.copy(saved, tmp_path / "journal" / "p0000000001-0000000001.parquet")
    (tmp_path / "journal" / ".p0000000003-0000000003.parquet.tmp-99").write_bytes(b"partial")
    journal.close()  # as a killed run's lock is gone
    reopened = Journal(tmp_path, merge_factor=2)
    names = sorted(p.name for p in (tmp_path / "journal").iterdir())
    assert names == ["p0000000002-0000000001.parquet"]
    assert reopened.latest_frame().height == 2


def test_meta_round_trip(tmp_path):
    """run.json is written atomically and read back."""
    journal = Journal(tmp_path)
    assert journal.read_meta() is None
    journal.write_meta({"fingerprint": "abc"})
    assert journal.read_meta() == {"fingerprint": "abc"}


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(st.integers(0, 15), st.sampled_from(["ok", "error", "filtered"])), max_size=6), max_size=12
    ),
    st.integers(2, 4),
)
def test_round_trip_latest_wins_whatever_the_flush_pattern(tmp_path_factory, batches, merge_factor):
    """For any sequence of flushes and merges, each id's final row is the last one written."""
    out = tmp_path_factory.mktemp("j")
    journal = Journal(out, merge_factor=merge_factor)
    expected: dict[str, str] = {}
    for n, batch in enumerate(batches):
        rows = []
        for i, status in batch:
            r = row(i, status, caption=f"b{n}-{i}")
            rows = [x for x in rows if x.id != r.id] + [r]
            expected[r.id] = r.caption
        journal.write_rows(rows)
    journal.finalize()
    frame = pl.read_parquet(out / "results.parquet") if expected else pl.DataFrame(schema=RESULT_SCHEMA)
    assert dict(zip(frame["id"], frame["caption"], strict=True)) == expected


def test_done_ids_lookup_is_exact_at_both_ends():
    """among() finds ids before the first, after the last, and between sorted neighbours exactly."""
    from pipeline.done_ids import DoneIds

    done = DoneIds(pl.Series("id", ["b", "d", "f"]).sort())
    assert done.among(["a", "b", "c", "d", "e", "f", "g"]) == {"b", "d", "f"}
    assert DoneIds(pl.Series("id", [], dtype=pl.String())).among(["a"]) == set()


def test_merging_parts_of_one_run_keeps_every_value_and_a_later_run_still_wins(tmp_path):
    """Parts with disjoint ids merge by concatenation: every column survives as written. When a later
    run (a new writer) writes an id again, the merge that meets both rows keeps the later one."""

    def rich(i: int, caption: str) -> ResultRow:
        return ResultRow(
            id=f"id{i:02d}",
            url=f"https://x/{i}",
            status="ok",
            caption=caption,
            model="gpt-4o",
            prompt_tokens=800 + i,
            cost_usd=0.001 * i,
            flagged=i % 2 == 0,
            flagged_categories=["hate"] * (i % 2),
            max_severity="low",
            http_status=200,
            attempts=1,
            latency_s=0.5,
            captions=["a", "b"],
            labels='{"k": 1}',
            finished_at=datetime(2026, 1, 1, 0, 0, i, tzinfo=UTC),
        )

    first_run = Journal(tmp_path, merge_factor=4)
    written = [rich(i, f"c{i}") for i in range(12)]
    for k in range(4):
        first_run.write_rows(written[k * 3 : (k + 1) * 3])
    assert first_run.part_count() == 1  # four parts merged into one
    merged = first_run.latest_frame().sort("id")
    assert merged.to_dicts() == conform_rows(written).sort("id").to_dicts()

    other = tmp_path / "other"
    with Journal(other, merge_factor=2) as earlier_run:
        earlier_run.write_rows([rich(5, "old"), rich(6, "c6")])
    second_run = Journal(other, merge_factor=2)
    second_run.write_rows([rich(5, "again")])  # the two one-flush parts merge: two rows of id05 meet
    assert second_run.part_count() == 1
    frame = second_run.latest_frame()
    assert frame.height == 2 and frame.filter(pl.col("id") == "id05")["caption"].item() == "again"


def conform_rows(rows: list[ResultRow]) -> pl.DataFrame:
    from pipeline.models import rows_to_frame

    return rows_to_frame(rows)


def test_writers_share_a_folder_each_compacting_its_own_parts(tmp_path):
    """Two shard writers in one folder: own locks, parts named by writer, each merges only its own;
    the default writer's finalize folds both, each id once."""
    with (
        Journal(tmp_path, merge_factor=2, writer_id="s1") as s1,
        Journal(tmp_path, merge_factor=2, writer_id="s2") as s2,
    ):
        for k in range(4):  # interleaved, as concurrent shards write
            s1.write_rows([row(k)])
            s2.write_rows([row(100 + k)])
        names = sorted(p.name for p in (tmp_path / "journal").glob("p*.parquet"))
        assert all(n.endswith(("-s1.parquet", "-s2.parquet")) for n in names), names
        assert {n.rsplit("-", 1)[1] for n in names} == {"s1.parquet", "s2.parquet"}
        assert len(names) == 2  # each writer's four parts merged into one of its own
        with pytest.raises(FolderLockedError):
            Journal(tmp_path, writer_id="s1")  # one run per writer
    with Journal(tmp_path) as coordinator:
        coordinator.finalize()
    frame = pl.read_parquet(tmp_path / "results.parquet")
    assert sorted(frame["id"]) == sorted([f"id{k}" for k in range(4)] + [f"id{100 + k}" for k in range(4)])


def test_a_writer_leaves_other_writers_temp_files_alone(tmp_path):
    """Opening a writer tidies its own leftovers only: another's temp file may be about to be renamed."""
    (tmp_path / "journal").mkdir()
    mine = tmp_path / "journal" / ".p0000000001-0000000001-s1.parquet.tmp-7"
    theirs = tmp_path / "journal" / ".p0000000001-0000000001-s2.parquet.tmp-8"
    for path in (mine, theirs):
        path.write_bytes(b"partial")
    with Journal(tmp_path, writer_id="s1"):
        pass
    assert not mine.exists() and theirs.exists()


def test_parts_of_an_earlier_run_with_other_ids_merge_from_disk_with_this_runs(tmp_path):
    """A killed run's one-flush part is not in this writer's memory: the merge reads it back, sees
    its ids differ, concatenates, and every row of both is there once."""
    with Journal(tmp_path, merge_factor=2) as killed:
        killed.write_rows([ResultRow(id="a", url="u", status="ok", caption="from before")])
    resumed = Journal(tmp_path, merge_factor=2)
    resumed.write_rows([ResultRow(id="b", url="u", status="ok", caption="this run")])
    assert resumed.part_count() == 1
    frame = resumed.latest_frame().sort("id")
    assert frame["id"].to_list() == ["a", "b"] and frame["caption"].to_list() == ["from before", "this run"]
    resumed.close()
