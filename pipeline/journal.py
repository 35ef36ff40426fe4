"""The Parquet journal: the output doubles as the resume checkpoint.

Layout of an output folder::

    DIR/results.parquet          one row per id, the latest outcome (after a run, or the base of a resumed one)
    DIR/journal/p<last>-<first>[-<writer>].parquet   parts flushed during a run; each covers part numbers
                                 first..last of one writer (no suffix: the default writer)
    DIR/journal/unreadable/      damaged parts moved aside by finalize
    DIR/.lock[-<writer>]         held by the writer for its whole run (folder_lock.py)
    DIR/run.json                 request fingerprint and the run's totals (never the API key)

Every file is written to a temporary name, fsynced and renamed, so a kill at
any moment leaves whole files only. The latest row of an id is the one in the
newest part (``results.parquet`` is oldest), so re-applying a part twice is
harmless: that is what makes every step crash-safe.

Several writers (the shards of a distributed run) can share a folder: each has
an id, names its parts with it, holds its own lock and compacts only its own
parts; one finalize (the default writer's) folds every writer's parts. Part
numbers continue above every part already in the folder, so a later run's rows
are newer than an earlier one's whatever wrote them; shards of one run hold
disjoint ids, so their relative order does not matter.

Parts are compacted as they accumulate (size-tiered, like an LSM tree): when
``merge_factor`` parts of the same span exist they merge into one, so a run of
millions of rows keeps a few dozen files and rewrites each row O(log n) times.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from .done_ids import DoneIds, is_member
from .errors import FolderChangedError, JournalError, UnreadableFileError
from .folder_lock import FolderLock
from .journal_parts import (
    PART_NAME,
    KeptTables,
    Part,
    concat_parts,
    ids_disjoint,
    list_parts,
    part_path,
    quarantine,
    tables_disjoint,
)
from .models import RESULT_ARROW_SCHEMA, RESULT_SCHEMA, ResultRow, conform, recordable, rows_to_table
from .parquet_files import (
    BATCH_ROWS,
    PART_COMPRESSION,
    RESULTS_COMPRESSION,
    atomic_write_bytes,
    atomic_write_table,
    data_problem,
    footer_problem,
    unreadable_message,
    with_metadata,
    write_in_row_groups,
    write_sorted,
)

RESULTS_NAME = "results.parquet"
RUN_META_NAME = "run.json"
Extend = Callable[[pl.DataFrame], pl.DataFrame]
log = logging.getLogger("caption")
_WRITER_ID = re.compile(r"^[a-z0-9]{1,32}$")

QUARANTINE_NAME = "unreadable"


class Journal:
    """Owns one output folder. Not thread-safe: one writer at a time (the runner's flusher).

    A writer holds the folder's lock from construction until ``close()`` (or the end of the
    process), and checks every file it will resume from before anything is sent.
    """

    def __init__(
        self,
        out_dir: Path,
        *,
        merge_factor: int = 16,
        writer: bool = True,
        writer_id: str = "",
        sort_in_memory_rows: int = BATCH_ROWS,
    ) -> None:
        if writer_id and not _WRITER_ID.match(writer_id):
            raise ValueError(f"a writer id is 1-32 lowercase letters and digits, not {writer_id!r}")
        self.out_dir = out_dir
        self.writer_id = writer_id
        self.parts_dir = out_dir / "journal"
        self.results_path = out_dir / RESULTS_NAME
        self.meta_path = out_dir / RUN_META_NAME
        self.quarantine_dir = self.parts_dir / QUARANTINE_NAME
        self._merge_factor = merge_factor
        self._sort_in_memory_rows = sort_in_memory_rows
        # This run's parts, for its finalize (a shard's finalize folds nothing: it keeps none).
        self._kept = KeptTables(limit_rows=0 if writer_id else sort_in_memory_rows)
        self._next_seq = 0
        # The tables of the parts this writer flushed and has not merged yet (at most merge_factor
        # small ones): a merge takes them from here instead of reading back what it just wrote.
        self._unmerged: dict[Path, pa.Table] = {}
        self._loose_parts = 0
        self.quarantined: list[Path] = []  # damaged parts moved aside by finalize
        self._lock = FolderLock(out_dir, writer_id=writer_id)
        if not writer:
            # A reader (a report on a live run) must not tidy: the temp file it would
            # delete may be a part the running writer is about to rename into place.
            return
        try:
            self.parts_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise JournalError(f"{out_dir}: cannot create the output folder ({exc.strerror})") from None
        # Locked before tidying: the temp files tidied away would otherwise be another run's.
        self._lock.acquire()
        self._remove_leftovers()
        self.check_files()
        parts = self._parts()
        self._next_seq = (parts[-1].last + 1) if parts else 1
        # One-flush parts of this writer (a killed run's too): compaction is looked for only once
        # merge_factor of them exist, not after every flush.
        self._loose_parts = sum(1 for part in parts if part.writer == writer_id and part.span == 1)

    @classmethod
    def reader(cls, out_dir: Path) -> Journal:
        """Read a folder without touching it, even while a run is writing it."""
        return cls(out_dir, writer=False)

    def close(self) -> None:
        """Release the folder's lock (a process that ends releases it too)."""
        self._lock.release()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def check_files(self) -> None:
        """Every file a run resumes from has a readable footer and the columns it needs.

        Reading footers is cheap (a few KB a file), and doing it first means a damaged
        file is named before any money is spent, not after the last row at finalize.
        """
        for path in self._sources():
            problem = footer_problem(path)
            if problem is not None and not path.exists():
                raise FolderChangedError(
                    f"{self.out_dir} changed while being read (a run is writing it); read it again"
                )
            if problem is not None:
                raise UnreadableFileError(unreadable_message(path, problem), path=str(path))

    # -- files -------------------------------------------------------------

    def _remove_leftovers(self) -> None:
        """This writer's temp files from a killed run, and its parts a finished merge already covers.

        Only its own: another writer's temp file may be a part it is about to rename into place.
        """
        for tmp in self.parts_dir.glob(".*.tmp-*"):
            match = PART_NAME.match(tmp.name[1:].split(".tmp-")[0])
            if match is None or (match.group(3) or "") == self.writer_id:
                tmp.unlink(missing_ok=True)
        if not self.writer_id:  # results.parquet and run.json are the default writer's
            for tmp in self.out_dir.glob(".*.tmp-*"):
                tmp.unlink(missing_ok=True)
        parts = self._own_parts()
        for part in parts:
            if any(
                o is not part and o.first <= part.first and part.last <= o.last and o.span > part.span for o in parts
            ):
                part.path.unlink(missing_ok=True)

    def _parts(self) -> list[Part]:
        return list_parts(self.parts_dir)

    def _own_parts(self) -> list[Part]:
        return [part for part in self._parts() if part.writer == self.writer_id]

    def _part_path(self, last: int, first: int) -> Path:
        return part_path(self.parts_dir, last=last, first=first, writer_id=self.writer_id)

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
            try:
                source = pq.ParquetFile(path)
                # Files written before a column existed lack it: read what is there, add the rest as nulls.
                present = None if columns is None else [c for c in columns if c in source.schema_arrow.names]
                for batch in source.iter_batches(batch_size=BATCH_ROWS, columns=present):
                    frame = pl.from_arrow(batch)
                    assert isinstance(frame, pl.DataFrame)
                    if present is not None and columns is not None and len(present) < len(columns):
                        frame = frame.with_columns(
                            pl.lit(None, dtype=RESULT_SCHEMA[c]).alias(c) for c in columns if c not in present
                        )
                    frame = frame.filter(~is_member(frame["id"], seen))
                    if frame.height:
                        fresh.append(frame["id"])
                        yield frame
            except FileNotFoundError:
                # Listed a moment ago, gone now: a running writer merged or folded it. Not damage.
                raise FolderChangedError(
                    f"{self.out_dir} changed while being read (a run is writing it); read it again"
                ) from None
            except (OSError, pa.ArrowException, pl.exceptions.PolarsError) as exc:
                raise UnreadableFileError(unreadable_message(path, f"cannot be read ({exc})"), path=str(path)) from None
            if fresh:
                seen = pl.concat([seen, *fresh]).sort()

    def _latest_tables(
        self,
        paths: list[Path],
        *,
        extend: Extend | None = None,
        metadata: dict[str, str] | None = None,
        kept: list[pa.Table] | None = None,
    ) -> tuple[pa.Schema, Iterator[pa.Table]]:
        """The latest rows of ``paths`` as Arrow tables, and their schema; ``extend`` may add
        derived columns (typed labels), ``metadata`` goes in the schema. ``kept``: the same parts'
        tables, newest first, already in memory (used when they share no id)."""

        def shaped(frame: pl.DataFrame) -> pl.DataFrame:
            frame = conform(frame)
            return extend(frame) if extend is not None else frame

        schema = with_metadata(shaped(pl.DataFrame(schema=RESULT_SCHEMA)).to_arrow().schema, metadata)
        if kept and tables_disjoint(kept):
            table = pa.concat_tables(kept)
            if extend is None and table.schema == RESULT_ARROW_SCHEMA:
                return schema, iter([table.cast(schema)])  # written by this version: nothing to shape
            whole = pl.from_arrow(table)
            assert isinstance(whole, pl.DataFrame)
            return schema, iter([shaped(whole).to_arrow().cast(schema)])
        return schema, (shaped(frame).to_arrow().cast(schema) for frame in self._iter_latest(paths))

    # -- writing -----------------------------------------------------------

    def write_rows(self, rows: list[ResultRow]) -> Path | None:
        """Flush one batch as a new part (atomically), then compact if enough parts piled up."""
        if not rows:
            return None
        seq = self._next_seq
        self._next_seq += 1
        path = self._part_path(seq, seq)
        try:
            table = rows_to_table(rows)
        except (pa.ArrowException, OverflowError, UnicodeError, TypeError, ValueError):
            # A value Parquet cannot hold in one row: that row is escaped or becomes an
            # error row; the batch's other (paid) answers are written as they are.
            table = rows_to_table([recordable(row) for row in rows])
        try:
            atomic_write_table(path, table)
        except OSError as exc:
            raise JournalError(f"{self.out_dir}: cannot write results ({exc.strerror or exc})") from None
        self._unmerged[path] = table
        self._kept.add(path, table)
        self._loose_parts += 1
        if self._loose_parts < self._merge_factor:
            return path  # no group of one-flush parts is complete: nothing to list or merge
        try:
            self._compact()
        except (OSError, JournalError, pl.exceptions.PolarsError, pa.ArrowException) as exc:
            # The rows are safe in their part; only tidying failed. Raising would make the
            # caller write them again, and two parts of this run would then share ids.
            log.warning("%s: could not merge journal parts (%s); they stay as they are", self.out_dir, exc)
        return path

    def _compact(self) -> None:
        while True:
            parts = self._own_parts()
            self._loose_parts = sum(1 for part in parts if part.span == 1)
            by_span: dict[int, list[Part]] = {}
            for part in parts:
                by_span.setdefault(part.span, []).append(part)
            ready = next((group for group in by_span.values() if len(group) >= self._merge_factor), None)
            if ready is None:
                return
            self._merge(ready[: self._merge_factor])

    def _merge(self, group: list[Part]) -> Part:
        first, last = group[0].first, group[-1].last
        target = self._part_path(last, first)
        paths = [p.path for p in group]
        # Within a run every id is written once (manifest ids are unique), so parts usually share
        # no id and merge by plain concatenation, a third of the newest-wins merge's cost. Parts
        # of different runs can hold two rows of one id (a retried error): those keep the newest.
        fresh = [t for t in (self._unmerged.get(path, self._kept.get(path)) for path in paths) if t is not None]
        if len(fresh) == len(paths) and tables_disjoint(fresh):
            # All flushed by this writer a moment ago: concatenated from memory, not read back
            # (reading 16 small parts cost 5x writing their merge).
            write_in_row_groups(target, RESULT_ARROW_SCHEMA, fresh, compression=PART_COMPRESSION)
            self._kept.merged(paths, target, pa.concat_tables(fresh))
        else:
            self._kept.forget()  # parts not in memory (an earlier run's): finalize reads the folder
            if ids_disjoint(paths):
                concat_parts(paths, target)
            else:
                schema, tables = self._latest_tables(paths)  # newest wins
                write_in_row_groups(target, schema, tables, compression=PART_COMPRESSION)
        for part in group:
            part.path.unlink(missing_ok=True)
            self._unmerged.pop(part.path, None)
        return Part(last=last, first=first, writer=self.writer_id, path=target)

    def finalize(self, *, extend: Extend | None = None, metadata: dict[str, str] | None = None) -> Path:
        """Fold every part into results.parquet: one row per id, in manifest order (``row``), with
        ``metadata`` as the file's key-value pairs. Safe to repeat after a crash.

        A part found damaged only now (its footer was sound at start) is moved aside with a
        warning, so the folder never fails every later run: its rows count as not done and
        are sent again. A damaged results.parquet is never moved: it holds every earlier row.

        Only the default writer folds: a shard's finalize would race the others' parts (a shard
        that finished leaves its parts for the coordinator's run).
        """
        if self.writer_id:
            return self.results_path
        while True:
            try:
                return self._finalize_once(extend, metadata)
            except UnreadableFileError as exc:
                if Path(exc.path) == self.results_path:
                    raise
                target = quarantine(Path(exc.path), self.quarantine_dir, why=str(exc))
                self.quarantined.append(target)
                log.warning(
                    "%s was damaged and is moved to %s; its rows will be sent again by the next run", exc.path, target
                )

    def _finalize_once(self, extend: Extend | None, metadata: dict[str, str] | None) -> Path:
        parts = self._parts()
        if not parts and self.results_path.exists() and extend is None:
            # Nothing to fold in, so nothing re-read it: check it decodes before a run ends on it.
            problem = data_problem(self.results_path)
            if problem is not None:
                raise UnreadableFileError(unreadable_message(self.results_path, problem), path=str(self.results_path))
            return self.results_path
        try:
            # Folded newest first, put in manifest order (temp names the next writer tidies if killed).
            # A run that wrote every part here and few rows folds them from memory, newest first.
            kept = None if self.results_path.exists() else self._kept.exactly([p.path for p in reversed(parts)])
            schema, tables = self._latest_tables(self._sources(), extend=extend, metadata=metadata, kept=kept)
            write_sorted(
                self.results_path,
                schema,
                tables,
                order_by="row",
                in_memory_rows=self._sort_in_memory_rows,
                compression=RESULTS_COMPRESSION,
                statistics=True,
            )
            for part in parts:
                part.path.unlink(missing_ok=True)
            self._unmerged.clear()
            self._kept = KeptTables(limit_rows=0 if self.writer_id else self._sort_in_memory_rows)
            self._loose_parts = 0
        except UnreadableFileError:
            raise
        except (OSError, pl.exceptions.PolarsError, pa.ArrowException) as exc:
            raise self.explain(exc, doing=f"cannot write {RESULTS_NAME}") from None
        return self.results_path

    def explain(self, exc: Exception, *, doing: str) -> JournalError:
        """The error to raise for ``exc`` met while reading the folder: it names the damaged file
        when one is (decoding every page to find it: only done once something failed)."""
        for path in self._sources():
            problem = data_problem(path)
            if problem is not None:
                return UnreadableFileError(unreadable_message(path, problem), path=str(path))
        return JournalError(f"{self.out_dir}: {doing} ({exc})")

    # -- reading -----------------------------------------------------------

    def scan(self, columns: list[str] | None = None) -> pl.LazyFrame:
        """The latest row per id, lazily when only results.parquet holds rows (a finished run: a
        summary then reads just the columns it needs), else from results plus the parts."""
        if not self._parts():
            if not self.results_path.exists():
                raise JournalError(
                    f"{self.out_dir}: no results here (expected {self.results_path}); "
                    "is this a `caption run --out` folder?"
                )
            frame = pl.scan_parquet(self.results_path)
            present = set(frame.collect_schema().names())
            # A file written before a column existed reads it as nulls.
            frame = frame.with_columns(
                pl.lit(None, dtype=RESULT_SCHEMA[c]).alias(c) for c in RESULT_SCHEMA if c not in present
            )
            return frame if columns is None else frame.select(columns)
        return self.latest_frame().lazy().select(columns or pl.all())

    def count(self, status: str) -> int:
        """How many ids' latest row has ``status``."""
        return int(self.scan(["status"]).filter(pl.col("status") == status).select(pl.len()).collect().item())

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
        """What this folder's rows cost over every run: the latest rows' cost plus what the
        rows they replaced had cost (``prior_cost_usd``), so a re-sent row is not forgotten."""
        total = 0.0
        for frame in self._iter_latest(self._sources(), ["id", "cost_usd", "prior_cost_usd"]):
            total += float(frame["cost_usd"].sum() or 0.0) + float(frame["prior_cost_usd"].sum() or 0.0)
        return total

    def paid_for_unfinished(self) -> dict[str, float]:
        """Ids whose latest row is an error that was paid for: a re-send carries that cost forward."""
        paid: dict[str, float] = {}
        spent = pl.col("cost_usd").fill_null(0.0) + pl.col("prior_cost_usd").fill_null(0.0)
        columns = ["id", "status", "cost_usd", "prior_cost_usd"]
        for frame in self._iter_latest(self._sources(), columns):
            owed = frame.filter((pl.col("status") == "error") & (spent > 0)).select("id", spent.alias("spent"))
            paid.update(zip(owed["id"].to_list(), owed["spent"].to_list(), strict=True))
        return paid

    def finished_requests(self, limit: int) -> list[ResultRow]:
        """The newest ``limit`` finished rows that carry their request's key, oldest first: they
        seed a run's dedup, so a request answered by an earlier run is not paid for again."""
        if limit <= 0:
            return []
        kept: pl.DataFrame | None = None
        answered = pl.col("status").is_in(["ok", "filtered"]) & pl.col("request_key").is_not_null()
        for frame in self._iter_latest(self._sources(), list(RESULT_SCHEMA)):
            found = conform(frame).filter(answered)
            if not found.height:
                continue
            kept = found if kept is None else pl.concat([kept, found])
            if kept.height > 2 * limit:
                kept = kept.sort("finished_at", nulls_last=False).tail(limit)
        if kept is None:
            return []
        kept = kept.sort("finished_at", nulls_last=False).tail(limit)
        return [ResultRow(**row) for row in kept.to_dicts()]

    def part_count(self) -> int:
        return len(self._parts())

    # -- run.json ----------------------------------------------------------

    def read_meta(self) -> dict[str, Any] | None:
        if not self.meta_path.exists():
            return None
        try:
            meta = json.loads(self.meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # ValueError: bad JSON and bad UTF-8 alike
            raise JournalError(
                f"{self.meta_path}: cannot be read ({exc}); restore it, or move it aside and re-run with --force"
            ) from None
        if not isinstance(meta, dict):
            raise JournalError(
                f"{self.meta_path}: holds a JSON {type(meta).__name__}, not an object; restore it, "
                "or move it aside and re-run with --force"
            )
        return meta

    def has_rows(self) -> bool:
        return bool(self._sources())

    def write_meta(self, meta: dict[str, Any]) -> None:
        atomic_write_bytes(self.meta_path, json.dumps(meta, indent=2, sort_keys=True, default=str).encode())
