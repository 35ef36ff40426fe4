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
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from .errors import JournalError
from .models import RESULT_SCHEMA, ResultRow, rows_to_frame

RESULTS_NAME = "results.parquet"
RUN_META_NAME = "run.json"
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


def _atomic_write_frame(path: Path, frame: pl.DataFrame) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    frame.write_parquet(tmp, compression="zstd", statistics=False)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class Journal:
    """Owns one output folder. Not thread-safe: one writer at a time (the runner's flusher)."""

    def __init__(self, out_dir: Path, *, merge_factor: int = 16) -> None:
        self.out_dir = out_dir
        self.parts_dir = out_dir / "journal"
        self.results_path = out_dir / RESULTS_NAME
        self.meta_path = out_dir / RUN_META_NAME
        self._merge_factor = merge_factor
        try:
            self.parts_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise JournalError(f"{out_dir}: cannot create the output folder ({exc.strerror})") from None
        self._remove_leftovers()
        parts = self._parts()
        self._next_seq = (parts[-1].last + 1) if parts else 1

    # -- files -------------------------------------------------------------

    def _remove_leftovers(self) -> None:
        """Temp files of a killed writer, and parts a finished merge already covers."""
        for tmp in list(self.parts_dir.glob(".*.tmp-*")) + list(self.out_dir.glob(".*.tmp-*")):
            tmp.unlink(missing_ok=True)
        parts = self._scan_parts()
        for part in parts:
            if any(o is not part and o.first <= part.first and part.last <= o.last and o.span > part.span for o in parts):
                part.path.unlink(missing_ok=True)

    def _scan_parts(self) -> list[Part]:
        parts = []
        for path in self.parts_dir.iterdir():
            match = _PART.match(path.name)
            if match:
                parts.append(Part(last=int(match.group(1)), first=int(match.group(2)), path=path))
        return sorted(parts)

    def _parts(self) -> list[Part]:
        return self._scan_parts()

    def _sources(self) -> list[Path]:
        """Oldest first: results.parquet, then parts by the part number they end at."""
        sources = [self.results_path] if self.results_path.exists() else []
        return sources + [p.path for p in self._parts()]

    def _latest(self, paths: list[Path], columns: list[str] | None = None) -> pl.LazyFrame:
        frames = [pl.scan_parquet(p) if columns is None else pl.scan_parquet(p).select(columns) for p in paths]
        if not frames:
            return pl.DataFrame(schema=RESULT_SCHEMA).lazy().select(columns or list(RESULT_SCHEMA))
        return pl.concat(frames, how="vertical").unique(subset="id", keep="last", maintain_order=True)

    # -- writing -----------------------------------------------------------

    def write_rows(self, rows: list[ResultRow]) -> Path | None:
        """Flush one batch as a new part (atomically), then compact if enough parts piled up."""
        if not rows:
            return None
        seq = self._next_seq
        self._next_seq += 1
        path = self.parts_dir / f"p{seq:010d}-{seq:010d}.parquet"
        try:
            _atomic_write_frame(path, rows_to_frame(rows))
            self._compact()
        except OSError as exc:
            raise JournalError(f"{self.out_dir}: cannot write results ({exc.strerror or exc})") from None
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
        merged = self._latest([p.path for p in group]).collect()
        target = self.parts_dir / f"p{last:010d}-{first:010d}.parquet"
        _atomic_write_frame(target, merged)
        for part in group:
            part.path.unlink(missing_ok=True)
        return Part(last=last, first=first, path=target)

    def finalize(self) -> Path:
        """Fold every part into results.parquet: one row per id. Safe to repeat after a crash."""
        sources = self._sources()
        try:
            frame = self._latest(sources).collect() if sources else pl.DataFrame(schema=RESULT_SCHEMA)
            _atomic_write_frame(self.results_path, frame.select(list(RESULT_SCHEMA)))
            for part in self._parts():
                part.path.unlink(missing_ok=True)
        except OSError as exc:
            raise JournalError(f"{self.out_dir}: cannot write {RESULTS_NAME} ({exc.strerror or exc})") from None
        return self.results_path

    # -- reading -----------------------------------------------------------

    def latest_frame(self) -> pl.DataFrame:
        """Everything recorded so far, one row per id (results plus unmerged parts)."""
        sources = self._sources()
        if not sources:
            return pl.DataFrame(schema=RESULT_SCHEMA)
        return self._latest(sources).collect()

    def skip_ids(self, *, retry_errors: bool) -> pl.DataFrame:
        """Ids a resumed run must not send again: ok, filtered, and (unless asked) non-retryable errors."""
        sources = self._sources()
        if not sources:
            return pl.DataFrame({"id": []}, schema={"id": pl.String()})
        try:
            latest = self._latest(sources, ["id", "status", "retryable"])
            done = pl.col("status").is_in(["ok", "filtered"])
            if not retry_errors:
                done = done | ((pl.col("status") == "error") & ~pl.col("retryable").fill_null(True))
            return latest.filter(done).select("id").collect()
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise JournalError(f"{self.out_dir}: the journal cannot be read ({exc})") from None

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
