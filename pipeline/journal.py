"""The Parquet journal: the output doubles as the resume checkpoint.

Layout of an output folder::

    DIR/results.parquet          one row per id, the latest outcome (after a run, or the base of a resumed one)
    DIR/journal/p<last>-<first>.parquet   parts flushed during a run; each covers part numbers first..last
    DIR/run.json                 request fingerprint and the run's totals (never the API key)

Every file is written to a temporary name, fsynced and renamed, so a kill at
any moment leaves whole files only. The latest row of an id is the one in the
newest part (``results.parquet`` is oldest), so re-applying a part twice is
harmless: that is what makes every step crash-safe.

Parts are compacted as they accumulate (size-tiered, like an LSM tree): when
``merge_factor`` parts of the same span exist they merge into one, so a run of
millions of rows keeps a few dozen files and rewrites each row O(log n) times.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import JournalError
from .models import RESULT_ARROW_SCHEMA, RESULT_SCHEMA, ResultRow, conform, rows_to_table

RESULTS_NAME = "results.parquet"
RUN_META_NAME = "run.json"
_BATCH_ROWS = 65_536
# Parts are temporary, so they favour speed: lz4 writes a 256-row part in half zstd's time
# (zstd's per-column set-up dominates small files). results.parquet, the file users keep, is zstd.
_PART_COMPRESSION = "lz4"
_RESULTS_COMPRESSION = "zstd"
Extend = Callable[[pl.DataFrame], pl.DataFrame]
log = logging.getLogger("caption")
_PART = re.compile(r"^p(\d{10})-(\d{10})\.parquet$")


@dataclass(frozen=True, slots=True, order=True)
class Part:
    last: int
    first: int
    path: Path

    @property
    def span(self) -> int:
        return self.last - self.first + 1


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _fsync_and_rename(tmp: Path, path: Path) -> None:
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _atomic_write_table(path: Path, table: pa.Table) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp, compression=_PART_COMPRESSION, write_statistics=False)
    _fsync_and_rename(tmp, path)


def _write_in_row_groups(target: Path, schema: pa.Schema, tables: Iterable[pa.Table], *, compression: str,
                         statistics: bool = False) -> None:
    """Write ``tables`` to ``target`` atomically, in row groups of up to _BATCH_ROWS rows: one row
    group per 256-row source part made a merge spend most of its time setting up compression."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    pending: list[pa.Table] = []
    pending_rows = 0
    with pq.ParquetWriter(tmp, schema, compression=compression, write_statistics=statistics) as writer:
        for table in tables:
            pending.append(table)
            pending_rows += table.num_rows
            if pending_rows >= _BATCH_ROWS:
                writer.write_table(pa.concat_tables(pending))
                pending, pending_rows = [], 0
        if pending:
            writer.write_table(pa.concat_tables(pending))
    _fsync_and_rename(tmp, target)


def _ids_disjoint(paths: list[Path]) -> bool:
    """No id appears twice across these parts (each part already holds an id at most once)."""
    ids = pl.concat([pl.Series("id", pq.read_table(path, columns=["id"])["id"]) for path in paths])
    return ids.n_unique() == len(ids)


def _is_member(candidates: pl.Series, sorted_ids: pl.Series) -> pl.Series:
    """Vectorised binary search: which ``candidates`` are in the sorted ``sorted_ids``."""
    if not len(sorted_ids) or not len(candidates):
        return pl.Series([False] * len(candidates), dtype=pl.Boolean())
    positions = sorted_ids.search_sorted(candidates, side="left").clip(0, len(sorted_ids) - 1)
    return (sorted_ids.gather(positions) == candidates).fill_null(False)


@dataclass(frozen=True, slots=True)
class DoneIds:
    """Ids a resumed run skips, sorted so a chunk is checked by binary search.

    A semi-join against millions of ids rebuilt its hash table per 256-row chunk
    (240 ms each: 90 minutes for a 6M-row resume); ``search_sorted`` takes 0.35 ms.
    """

    ids: pl.Series

    def __len__(self) -> int:
        return len(self.ids)

    def among(self, candidates: list[str]) -> set[str]:
        wanted = pl.Series("id", candidates, dtype=pl.String())
        return set(wanted.filter(_is_member(wanted, self.ids)).to_list())


class Journal:
    """Owns one output folder. Not thread-safe: one writer at a time (the runner's flusher)."""

    def __init__(self, out_dir: Path, *, merge_factor: int = 16, writer: bool = True) -> None:
        self.out_dir = out_dir
        self.parts_dir = out_dir / "journal"
        self.results_path = out_dir / RESULTS_NAME
        self.meta_path = out_dir / RUN_META_NAME
        self._merge_factor = merge_factor
        self._next_seq = 0
        if not writer:
            # A reader (a report on a live run) must not tidy: the temp file it would
            # delete may be a part the running writer is about to rename into place.
            return
        try:
            self.parts_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise JournalError(f"{out_dir}: cannot create the output folder ({exc.strerror})") from None
        self._remove_leftovers()
        parts = self._parts()
        self._next_seq = (parts[-1].last + 1) if parts else 1

    @classmethod
    def reader(cls, out_dir: Path) -> Journal:
        """Read a folder without touching it, even while a run is writing it."""
        return cls(out_dir, writer=False)

    # -- files -------------------------------------------------------------

    def _remove_leftovers(self) -> None:
        """Temp files of a killed writer, and parts a finished merge already covers."""
        for tmp in list(self.parts_dir.glob(".*.tmp-*")) + list(self.out_dir.glob(".*.tmp-*")):
            tmp.unlink(missing_ok=True)
        parts = self._parts()
        for part in parts:
            if any(o is not part and o.first <= part.first and part.last <= o.last and o.span > part.span for o in parts):
                part.path.unlink(missing_ok=True)

    def _parts(self) -> list[Part]:
        if not self.parts_dir.is_dir():
            return []
        parts = []
        for path in self.parts_dir.iterdir():
            match = _PART.match(path.name)
            if match:
                parts.append(Part(last=int(match.group(1)), first=int(match.group(2)), path=path))
        return sorted(parts)

    def _sources(self) -> list[Path]:
        """Oldest first: results.parquet, then parts by the part number they end at."""
        sources = [self.results_path] if self.results_path.exists() else []
        return sources + [p.path for p in self._parts()]

    def _iter_latest(self, paths: list[Path], columns: list[str] | None = None) -> Iterator[pl.DataFrame]:
        """One row per id, newest source first, in batches: memory is one batch plus the ids seen.

        An id's row is taken from the newest source that has it; each source holds
        an id at most once (a run sends an id once, merges are already unique).
        polars' own unique/semi-join needed 800 MB for a million rows; this ~250.
        """
        seen = pl.Series("id", [], dtype=pl.String())
        for path in reversed(paths):
            fresh: list[pl.Series] = []
            for batch in pq.ParquetFile(path).iter_batches(batch_size=_BATCH_ROWS, columns=columns):
                frame = pl.from_arrow(batch)
                assert isinstance(frame, pl.DataFrame)
                frame = frame.filter(~_is_member(frame["id"], seen))
                if frame.height:
                    fresh.append(frame["id"])
                    yield frame
            if fresh:
                seen = pl.concat([seen, *fresh]).sort()

    def _write_latest(self, paths: list[Path], target: Path, *, extend: Extend | None = None,
                      compression: str = _PART_COMPRESSION, statistics: bool = False) -> None:
        """Write the latest rows to ``target`` atomically; ``extend`` may add derived columns (typed labels)."""
        def shaped(frame: pl.DataFrame) -> pl.DataFrame:
            frame = conform(frame)
            return extend(frame) if extend is not None else frame

        schema = shaped(pl.DataFrame(schema=RESULT_SCHEMA)).to_arrow().schema
        tables = (shaped(frame).to_arrow().cast(schema) for frame in self._iter_latest(paths))
        _write_in_row_groups(target, schema, tables, compression=compression, statistics=statistics)

    # -- writing -----------------------------------------------------------

    def write_rows(self, rows: list[ResultRow]) -> Path | None:
        """Flush one batch as a new part (atomically), then compact if enough parts piled up."""
        if not rows:
            return None
        seq = self._next_seq
        self._next_seq += 1
        path = self.parts_dir / f"p{seq:010d}-{seq:010d}.parquet"
        try:
            _atomic_write_table(path, rows_to_table(rows))
        except OSError as exc:
            raise JournalError(f"{self.out_dir}: cannot write results ({exc.strerror or exc})") from None
        try:
            self._compact()
        except OSError as exc:
            # The rows are safe in their part; only tidying failed. Raising would make the
            # caller write them again, and two parts of this run would then share ids.
            log.warning("%s: could not merge journal parts (%s); they stay as they are", self.out_dir, exc)
        return path

    def _compact(self) -> None:
        while True:
            parts = self._parts()
            by_span: dict[int, list[Part]] = {}
            for part in parts:
                by_span.setdefault(part.span, []).append(part)
            ready = next((group for group in by_span.values() if len(group) >= self._merge_factor), None)
            if ready is None:
                return
            self._merge(ready[: self._merge_factor])

    def _merge(self, group: list[Part]) -> Part:
        first, last = group[0].first, group[-1].last
        target = self.parts_dir / f"p{last:010d}-{first:010d}.parquet"
        paths = [p.path for p in group]
        # Within a run every id is written once (manifest ids are unique), so parts usually share
        # no id and merge by plain concatenation, a third of the newest-wins merge's cost. Parts
        # of different runs can hold two rows of one id (a retried error): those keep the newest.
        if _ids_disjoint(paths):
            self._concat(paths, target)
        else:
            self._write_latest(paths, target)
        for part in group:
            part.path.unlink(missing_ok=True)
        return Part(last=last, first=first, path=target)

    def _concat(self, paths: list[Path], target: Path) -> None:
        """Parts whose ids are known to be disjoint, as one file."""
        def as_table(batch: pa.RecordBatch) -> pa.Table:
            table = pa.Table.from_batches([batch])
            # Parts written by an older version may use other string or list types.
            return table if table.schema == RESULT_ARROW_SCHEMA else table.cast(RESULT_ARROW_SCHEMA)

        tables = (as_table(batch) for path in paths for batch in pq.ParquetFile(path).iter_batches(batch_size=_BATCH_ROWS))
        _write_in_row_groups(target, RESULT_ARROW_SCHEMA, tables, compression=_PART_COMPRESSION)

    def finalize(self, *, extend: Extend | None = None) -> Path:
        """Fold every part into results.parquet: one row per id. Safe to repeat after a crash."""
        parts = self._parts()
        if not parts and self.results_path.exists() and extend is None:
            return self.results_path
        try:
            self._write_latest(self._sources(), self.results_path, extend=extend, compression=_RESULTS_COMPRESSION,
                               statistics=True)
            for part in parts:
                part.path.unlink(missing_ok=True)
        except (OSError, pl.exceptions.PolarsError, pa.ArrowException) as exc:
            raise JournalError(f"{self.out_dir}: cannot write {RESULTS_NAME} ({exc})") from None
        return self.results_path

    # -- reading -----------------------------------------------------------

    def latest_frame(self) -> pl.DataFrame:
        """Everything recorded so far, one row per id (results plus unmerged parts), in SPEC's columns."""
        frames = [conform(f) for f in self._iter_latest(self._sources())]
        return pl.concat(frames) if frames else pl.DataFrame(schema=RESULT_SCHEMA)

    def skip_ids(self, *, retry_errors: bool) -> DoneIds:
        """Ids a resumed run must not send again: ok, filtered, and (unless asked) non-retryable errors."""
        done = pl.col("status").is_in(["ok", "filtered"])
        if not retry_errors:
            done = done | ((pl.col("status") == "error") & ~pl.col("retryable").fill_null(True))
        try:
            ids = [f.filter(done)["id"] for f in self._iter_latest(self._sources(), ["id", "status", "retryable"])]
        except (pl.exceptions.PolarsError, pa.ArrowException, OSError) as exc:
            raise JournalError(f"{self.out_dir}: the journal cannot be read ({exc})") from None
        return DoneIds(pl.concat(ids).sort() if ids else pl.Series("id", [], dtype=pl.String()))

    def spent_usd(self) -> float:
        """What the rows recorded in this folder cost (their latest outcomes)."""
        return float(sum(f["cost_usd"].sum() or 0.0 for f in self._iter_latest(self._sources(), ["id", "cost_usd"])))

    def part_count(self) -> int:
        return len(self._parts())

    # -- run.json ----------------------------------------------------------

    def read_meta(self) -> dict[str, Any] | None:
        if not self.meta_path.exists():
            return None
        try:
            return json.loads(self.meta_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise JournalError(f"{self.meta_path}: cannot be read ({exc})") from None

    def write_meta(self, meta: dict[str, Any]) -> None:
        _atomic_write_bytes(self.meta_path, json.dumps(meta, indent=2, sort_keys=True, default=str).encode())
