"""Reading manifests in chunks: CSV, TSV, JSONL, Parquet, plain text lists, folders.

Two passes, neither holding the manifest whole:
- ``inspect_manifest`` checks the file can be read, has the url column, is not
  empty and repeats no id; it counts rows. Nothing is sent before it passes.
- ``iter_chunks`` streams ``Item`` lists of ``chunk_size`` rows.

An id column is optional; a missing or empty id is derived from a stable hash
of the url, so a re-run derives the same ids. Rows without an id that repeat
an earlier url are the same image and collapse into one id.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson
import polars as pl

from .errors import ManifestError
from .models import Item

Format = Literal["csv", "tsv", "jsonl", "parquet", "text", "folder"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"}
_SUFFIX_FORMATS: dict[str, Format] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}


def derive_id(url: str) -> str:
    """Stable across runs, machines and Python versions (unlike ``hash``)."""
    return hashlib.sha1(url.encode("utf-8")).hexdigest()[:16]


def detect_format(path: Path) -> Format:
    if path.is_dir():
        return "folder"
    return _SUFFIX_FORMATS.get(path.suffix.lower(), "text")


@dataclass(frozen=True, slots=True)
class ManifestInfo:
    path: Path
    format: Format
    rows: int
    columns: tuple[str, ...]
    has_id_column: bool


def inspect_manifest(path: Path, *, url_column: str = "url", id_column: str = "id") -> ManifestInfo:
    """Refuse a manifest that cannot be run, before anything is sent."""
    if not path.exists():
        raise ManifestError(str(path), "file not found")
    fmt = detect_format(path)
    if fmt != "folder" and not os.access(path, os.R_OK):
        raise ManifestError(str(path), "cannot be read (permission denied)")
    if fmt in ("text", "folder"):
        rows = sum(len(chunk) for chunk in _iter_raw_lines(path, fmt, chunk_size=65536))
        columns: tuple[str, ...] = (url_column,)
        has_id = False
    elif fmt == "jsonl":
        rows, columns, has_id = _inspect_jsonl(path, url_column=url_column, id_column=id_column)
    else:
        rows, columns, has_id = _inspect_tabular(path, fmt, url_column=url_column, id_column=id_column)
    if rows == 0:
        raise ManifestError(str(path), "the manifest has no rows")
    return ManifestInfo(path=path, format=fmt, rows=rows, columns=columns, has_id_column=has_id)


def _scan(path: Path, fmt: Format) -> pl.LazyFrame:
    if fmt == "parquet":
        return pl.scan_parquet(path)
    separator = "\t" if fmt == "tsv" else ","
    # Every column as text: a manifest's ids must not turn into integers or dates.
    return pl.scan_csv(path, separator=separator, infer_schema=False)


def _inspect_tabular(path: Path, fmt: Format, *, url_column: str, id_column: str) -> tuple[int, tuple[str, ...], bool]:
    if path.stat().st_size == 0:
        raise ManifestError(str(path), "the file is empty")
    try:
        lf = _scan(path, fmt)
        columns = tuple(lf.collect_schema().names())
        if url_column not in columns:
            raise ManifestError(str(path), f"no '{url_column}' column (columns: {', '.join(columns) or 'none'})")
        rows = lf.select(pl.len()).collect().item()
        has_id = id_column in columns
        if has_id:
            dupes = (
                lf.select(pl.col(id_column).cast(pl.String))
                .filter(pl.col(id_column).is_not_null() & (pl.col(id_column) != ""))
                .group_by(id_column)
                .len()
                .filter(pl.col("len") > 1)
                .head(3)
                .collect()
            )
            if dupes.height:
                first = dupes.row(0)
                raise ManifestError(
                    str(path), f"id '{first[0]}' appears {first[1]} times (ids must be unique)"
                )
    except ManifestError:
        raise
    except (pl.exceptions.PolarsError, OSError, UnicodeDecodeError) as exc:
        raise ManifestError(str(path), f"cannot be read as {fmt.upper()} ({_first_line(exc)})") from None
    return rows, columns, has_id


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _iter_jsonl_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        with path.open("rb") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError:
                    raise ManifestError(str(path), f"line {lineno} is not valid JSON") from None
                if not isinstance(record, dict):
                    raise ManifestError(str(path), f"line {lineno} is not a JSON object")
                yield lineno, record
    except OSError as exc:
        raise ManifestError(str(path), f"cannot be read ({exc.strerror})") from None


def _inspect_jsonl(path: Path, *, url_column: str, id_column: str) -> tuple[int, tuple[str, ...], bool]:
    rows = 0
    columns: dict[str, None] = {}
    seen_ids: set[str] = set()
    for lineno, record in _iter_jsonl_records(path):
        rows += 1
        columns.update(dict.fromkeys(record))
        if url_column not in record:
            raise ManifestError(str(path), f"line {lineno} has no '{url_column}' field")
        given = record.get(id_column)
        if given not in (None, ""):
            key = str(given)
            if key in seen_ids:
                raise ManifestError(str(path), f"id '{key}' appears more than once (line {lineno}; ids must be unique)")
            seen_ids.add(key)
    return rows, tuple(columns), bool(seen_ids)


def _iter_raw_lines(path: Path, fmt: Format, *, chunk_size: int) -> Iterator[list[str]]:
    if fmt == "folder":
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        for start in range(0, len(files), chunk_size):
            yield [str(p.resolve()) for p in files[start : start + chunk_size]]
        return
    chunk: list[str] = []
    try:
        with path.open("r", encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                chunk.append(line)
                if len(chunk) >= chunk_size:
                    yield chunk
                    chunk = []
    except UnicodeDecodeError:
        raise ManifestError(str(path), "is not a text file (not UTF-8); expected one image per line") from None
    except OSError as exc:
        raise ManifestError(str(path), f"cannot be read ({exc.strerror})") from None
    if chunk:
        yield chunk


def _items_from_records(
    records: list[dict[str, Any]], *, url_column: str, id_column: str, seen_derived: set[str]
) -> list[Item]:
    items = []
    for record in records:
        url = record.get(url_column)
        url = "" if url is None else str(url).strip()
        given = record.get(id_column)
        if given not in (None, ""):
            item_id = str(given)
        else:
            item_id = derive_id(url)
            if item_id in seen_derived:
                continue
            seen_derived.add(item_id)
        fields = {k: v for k, v in record.items() if k not in (url_column, id_column)}
        items.append(Item(id=item_id, url=url, fields=fields))
    return items


def iter_chunks(
    path: Path, *, chunk_size: int = 256, url_column: str = "url", id_column: str = "id"
) -> Iterator[list[Item]]:
    """Stream the manifest as lists of at most ``chunk_size`` items."""
    fmt = detect_format(path)
    # Derived ids only: a given id is unique by inspect_manifest.
    seen_derived: set[str] = set()

    def emit(records: list[dict[str, Any]]) -> list[Item]:
        return _items_from_records(records, url_column=url_column, id_column=id_column, seen_derived=seen_derived)

    if fmt in ("text", "folder"):
        for lines in _iter_raw_lines(path, fmt, chunk_size=chunk_size):
            yield emit([{url_column: line} for line in lines])
    elif fmt == "jsonl":
        batch: list[dict[str, Any]] = []
        for _, record in _iter_jsonl_records(path):
            batch.append(record)
            if len(batch) >= chunk_size:
                yield emit(batch)
                batch = []
        if batch:
            yield emit(batch)
    else:
        try:
            for frame in _scan(path, fmt).collect_batches(chunk_size=chunk_size):
                yield emit(frame.to_dicts())
        except pl.exceptions.PolarsError as exc:
            raise ManifestError(str(path), f"cannot be read as {fmt.upper()} ({_first_line(exc)})") from None
