"""The journal's part files: their names (``p<last>-<first>[-<writer>].parquet``), listing, and
whether a group of them shares no id (then they merge by plain concatenation)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

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
