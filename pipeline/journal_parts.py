"""The journal's part files: their names (``p<last>-<first>[-<writer>].parquet``), listing,
whether a group of them shares no id (then they merge by plain concatenation), the tables of a
small run's parts kept for its finalize, and moving a damaged part aside."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import JournalError
from .models import RESULT_ARROW_SCHEMA, conform
from .parquet_files import BATCH_ROWS, IN_MEMORY_BYTES, PART_COMPRESSION, fsync_dir, write_in_row_groups

PART_NAME = re.compile(r"^p(\d{10})-(\d{10})(?:-([a-z0-9]{1,32}))?\.parquet$")


@dataclass(frozen=True, slots=True, order=True)
class Part:
    last: int
    first: int
    writer: str
    path: Path

    @property
    def span(self) -> int:
        return self.last - self.first + 1


def part_path(parts_dir: Path, *, last: int, first: int, writer_id: str) -> Path:
    suffix = f"-{writer_id}" if writer_id else ""
    return parts_dir / f"p{last:010d}-{first:010d}{suffix}.parquet"


def list_parts(parts_dir: Path) -> list[Part]:
    """Every part in ``parts_dir``, oldest (lowest last part number) first."""
    if not parts_dir.is_dir():
        return []
    parts = []
    for path in parts_dir.iterdir():
        match = PART_NAME.match(path.name)
        if match:
            parts.append(
                Part(last=int(match.group(1)), first=int(match.group(2)), writer=match.group(3) or "", path=path)
            )
    return sorted(parts)


def ids_disjoint(paths: list[Path]) -> bool:
    """No id appears twice across these parts (each part already holds an id at most once)."""
    # ParquetFile.read, not read_table: a third of the cost on small parts (no dataset set-up).
    return tables_disjoint([pq.ParquetFile(path).read(columns=["id"]) for path in paths])


def tables_disjoint(tables: list[pa.Table]) -> bool:
    """No id appears twice across these tables (each already holds an id at most once)."""
    ids = pl.concat([pl.Series("id", table.column("id")) for table in tables])
    return ids.n_unique() == len(ids)


def concat_parts(paths: list[Path], target: Path) -> None:
    """Parts whose ids are known to be disjoint, as one file ``target``."""

    def as_table(batch: pa.RecordBatch) -> pa.Table:
        table = pa.Table.from_batches([batch])
        if table.schema == RESULT_ARROW_SCHEMA:
            return table
        # Parts written by an older version may use other string or list types, or lack
        # columns added since.
        frame = pl.from_arrow(table)
        assert isinstance(frame, pl.DataFrame)
        return conform(frame).to_arrow().cast(RESULT_ARROW_SCHEMA)

    tables = (as_table(batch) for path in paths for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS))
    write_in_row_groups(target, RESULT_ARROW_SCHEMA, tables, compression=PART_COMPRESSION)


class KeptTables:
    """The tables of the parts one writer wrote in this run, kept while they add up to at most
    ``limit_rows`` rows and IN_MEMORY_BYTES: finalize then folds them from memory instead of
    reading its parts back (20,000 rows: ~130 of the ~220 ms it took), and a merge of merged parts
    takes them from here too. A merge's table shares its parts' buffers."""

    def __init__(self, *, limit_rows: int) -> None:
        self._tables: dict[Path, pa.Table] | None = {} if limit_rows > 0 else None
        self._rows = self._bytes = 0
        self._limit_rows = limit_rows

    def add(self, path: Path, table: pa.Table) -> None:
        if self._tables is None:
            return
        self._rows += table.num_rows
        self._bytes += table.nbytes
        if self._rows > self._limit_rows or self._bytes > IN_MEMORY_BYTES:
            self.forget()  # too many to hold: finalize reads the parts
        else:
            self._tables[path] = table

    def get(self, path: Path) -> pa.Table | None:
        return None if self._tables is None else self._tables.get(path)

    def merged(self, paths: list[Path], target: Path, table: pa.Table) -> None:
        if self._tables is None or any(path not in self._tables for path in paths):
            self.forget()
            return
        for path in paths:
            del self._tables[path]
        self._tables[target] = table

    def forget(self) -> None:
        self._tables = None

    def exactly(self, paths: list[Path]) -> list[pa.Table] | None:
        """The tables of ``paths``, in that order, when they are exactly the parts kept; else None."""
        if self._tables is None or len(paths) != len(self._tables) or any(p not in self._tables for p in paths):
            return None
        return [self._tables[path] for path in paths]


def quarantine(path: Path, into: Path, *, why: str) -> Path:
    """Move the damaged ``path`` into the folder ``into``; returns where it went."""
    into.mkdir(exist_ok=True)
    # Part numbers restart after each finalize: a name already set aside gets a suffix, so an
    # earlier damaged part (the only copy of its rows for anyone salvaging them) is kept.
    target = into / path.name
    n = 1
    while target.exists():
        target = into / f"{path.stem}.{n}{path.suffix}"
        n += 1
    try:
        os.replace(path, target)
    except OSError as exc:
        raise JournalError(f"{why}; moving it aside also failed ({exc.strerror})") from None
    fsync_dir(path.parent)
    return target
