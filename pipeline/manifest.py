"""Reading manifests in chunks: CSV, TSV, JSONL, Parquet, plain text lists, folders.

Two passes, neither holding the manifest whole:
- ``inspect_manifest`` checks the file can be read, has the url column, is not
  empty and repeats no id; it counts rows. Nothing is sent before it passes.
  Ids are checked as 8-byte hashes (sorted, then compared to their neighbours),
  so 6 million rows need ~50 MB, not a set of strings.
- ``iter_chunks`` streams ``Item`` lists of ``chunk_size`` rows.

Every format is read by a pull-based reader (the csv module, pyarrow's
``iter_batches``, line by line): polars' ``collect_batches`` reads far ahead of
a slow consumer (342 MB resident after 3,000 of 6 million rows were taken),
and the pipeline consumes at request speed.

An id column is optional; a missing or empty id is derived from a stable hash
of the url, so a re-run derives the same ids. Rows without an id that repeat
an earlier url are the same image and collapse into one id; a derived id that
equals a given one is refused like a repeated given id.

Every text format may start with a UTF-8 byte-order mark (spreadsheets write one).
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import os
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

import orjson
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

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
    """Stable across runs, machines and Python versions (unlike ``hash``).

    surrogatepass: a file name that is not valid UTF-8 reaches here with surrogates
    (os.fsdecode); it still needs an id, not an exception that ends the run.
    """
    return hashlib.sha1(url.encode("utf-8", "surrogatepass")).hexdigest()[:16]


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
    # Rows with distinct ids: what a run works through (rows repeating a url without an id are one).
    ids: int = 0


def inspect_manifest(path: Path, *, url_column: str = "url", id_column: str = "id") -> ManifestInfo:
    """Refuse a manifest that cannot be run, before anything is sent."""
    if not path.exists():
        raise ManifestError(str(path), "file not found")
    fmt = detect_format(path)
    if fmt != "folder" and not os.access(path, os.R_OK):
        raise ManifestError(str(path), "cannot be read (permission denied)")
    if fmt in ("csv", "tsv", "parquet") and path.stat().st_size == 0:
        raise ManifestError(str(path), "the file is empty")
    columns = _columns(path, fmt, url_column=url_column)
    rows = derived = 0
    given_hashes = array("q")
    url_hashes = array("q")  # of rows without an id: a repeated url collapses into one derived id
    for records in _iter_records(path, fmt, url_column=url_column, chunk_size=65536):
        for record in records:
            rows += 1
            if fmt == "jsonl" and url_column not in record:
                raise ManifestError(
                    str(path), f"row {rows} has no '{url_column}' field{_suggestion(url_column, record)}"
                )
            given = record.get(id_column)
            if given in (None, ""):
                derived += 1
                url_hashes.append(hash(record_url(record, url_column=url_column)))
            else:
                given_hashes.append(hash(str(given)))
    if rows == 0:
        raise ManifestError(str(path), "the manifest has no rows")
    hashes = _as_series(given_hashes)
    if len(hashes) and derived:
        # Derived ids repeat legitimately (the same url twice is one image), but one equal to a
        # given id would give two rows one result. Only a manifest mixing both pays this pass.
        hashes = pl.concat([hashes, _derived_hashes(path, fmt, url_column=url_column, id_column=id_column).unique()])
    if _has_duplicates(hashes):
        _raise_duplicate(path, fmt, url_column=url_column, id_column=id_column, hashes=hashes)
    ids = len(given_hashes) + (_as_series(url_hashes).n_unique() if url_hashes else 0)
    return ManifestInfo(path=path, format=fmt, rows=rows, columns=columns, has_id_column=bool(given_hashes), ids=ids)


def _derived_hashes(path: Path, fmt: Format, *, url_column: str, id_column: str) -> pl.Series:
    hashes = array("q")
    for records in _iter_records(path, fmt, url_column=url_column, chunk_size=65536):
        for record in records:
            item_id, given = record_id(record, url_column=url_column, id_column=id_column)
            if not given:
                hashes.append(hash(item_id))
    return _as_series(hashes)


def record_id(record: dict[str, Any], *, url_column: str, id_column: str) -> tuple[str, bool]:
    """The row's id and whether the manifest gave it (else it is derived from the url)."""
    given = record.get(id_column)
    if given not in (None, ""):
        return str(given), True
    return derive_id(record_url(record, url_column=url_column)), False


def record_url(record: dict[str, Any], *, url_column: str) -> str:
    url = record.get(url_column)
    return "" if url is None else str(url).strip()


def _columns(path: Path, fmt: Format, *, url_column: str) -> tuple[str, ...]:
    if fmt in ("text", "folder"):
        return (url_column,)
    if fmt == "jsonl":
        first = next(_iter_records(path, fmt, url_column=url_column, chunk_size=1), [])
        return tuple(first[0]) if first else ()
    if fmt == "parquet":
        try:
            columns = tuple(pq.ParquetFile(path).schema_arrow.names)
        except (pa.ArrowException, OSError) as exc:
            raise ManifestError(str(path), f"cannot be read as Parquet ({_first_line(exc)})") from None
    else:
        with _open_text(path) as fh:
            reader = csv.reader(fh, delimiter=_DELIMITERS[fmt], strict=True)
            try:
                columns = tuple(next(reader, []))
            except csv.Error as exc:
                raise ManifestError(str(path), _csv_problem(exc, fmt, start=1, line=reader.line_num)) from None
            except UnicodeDecodeError as exc:
                raise ManifestError(str(path), f"cannot be read as {fmt.upper()} ({_first_line(exc)})") from None
    if url_column not in columns:
        raise ManifestError(
            str(path),
            f"no '{url_column}' column (columns: {', '.join(columns) or 'none'}){_suggestion(url_column, columns)}",
        )
    return columns


# Names people give an image column; the first one present is suggested when 'url' is missing.
_LIKELY_URL_COLUMNS = (
    "image_url",
    "img_url",
    "image",
    "img",
    "url",
    "uri",
    "link",
    "src",
    "image_path",
    "img_path",
    "path",
    "filepath",
    "file_path",
    "file",
    "filename",
    "file_name",
)


def _suggestion(url_column: str, columns: Any) -> str:
    """'; did you mean ...' naming the likeliest image column, or '' when none looks like one."""
    names = [str(c) for c in columns]
    by_lower = {n.lower(): n for n in names}
    likely = next((by_lower[n] for n in _LIKELY_URL_COLUMNS if n in by_lower), None)
    close = difflib.get_close_matches(url_column, names, n=1, cutoff=0.6)
    guess = close[0] if close else likely
    if guess is None:
        return ""
    return f"; did you mean '{guess}'? Set manifest.url_column = \"{guess}\" in the config (or --url-column {guess})"


def _as_series(hashes: array[int]) -> pl.Series:
    """The hashes as an Int64 series, without a copy through Python ints."""
    if not hashes:
        return pl.Series([], dtype=pl.Int64)
    series = pl.from_arrow(pa.Array.from_buffers(pa.int64(), len(hashes), [None, pa.py_buffer(hashes)]))
    assert isinstance(series, pl.Series)  # an Arrow array (not a table) comes back as a Series
    return series


def _has_duplicates(hashes: pl.Series) -> bool:
    if len(hashes) < 2:
        return False
    values = hashes.sort()
    return bool((values.slice(1) == values.slice(0, len(values) - 1)).any())


def _raise_duplicate(path: Path, fmt: Format, *, url_column: str, id_column: str, hashes: pl.Series) -> None:
    """Second pass, only over ids whose hash repeats: name the first id that really repeats, and its rows."""
    suspects = set(hashes.filter(hashes.is_duplicated()).unique().to_list())
    seen: dict[str, _IdUse] = {}
    row = 0
    for records in _iter_records(path, fmt, url_column=url_column, chunk_size=65536):
        for record in records:
            row += 1
            item_id, given = record_id(record, url_column=url_column, id_column=id_column)
            if hash(item_id) in suspects:
                _note_id_use(seen, item_id, _IdUse(row=row, given=given, url=record_url(record, url_column=url_column)))
    repeated = [(k, use) for k, use in seen.items() if use.given_count > 1 or use.clash is not None]
    if repeated:
        key, use = repeated[0]
        raise ManifestError(str(path), use.problem(key))


@dataclass(slots=True)
class _IdUse:
    """Where an id was first seen, how often it was given, and the first given/derived clash."""

    row: int
    given: bool
    url: str
    given_count: int = 0
    clash: tuple[int, int, str] | None = None  # (row with the given id, row whose url derives it, that url)

    def problem(self, key: str) -> str:
        if self.clash is None:
            return f"id '{key}' appears {self.given_count} times (ids must be unique)"
        given_row, derived_row, url = self.clash
        shown = url if len(url) <= 80 else f"{url[:77]}..."
        return (
            f"id '{key}' of row {given_row} is also the id derived from the url of row {derived_row} "
            f"({shown}); give row {derived_row} an id of its own or change row {given_row}'s (ids must be unique)"
        )


def _note_id_use(seen: dict[str, _IdUse], item_id: str, use: _IdUse) -> None:
    first = seen.setdefault(item_id, use)
    if use.given:
        first.given_count += 1
    if first.clash is None and first.given != use.given:
        given, derived = (first, use) if first.given else (use, first)
        first.clash = (given.row, derived.row, derived.url)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


_DELIMITERS = {"csv": ",", "tsv": "\t"}
# A folder record's path relative to the folder; read only from folder records (see iter_chunks).
_FOLDER_PATH = "\0path"
_BOM = "\ufeff".encode()


def _open_text(path: Path) -> TextIO:
    try:
        return path.open("r", encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise ManifestError(str(path), f"cannot be read ({exc.strerror})") from None


def _iter_records(path: Path, fmt: Format, *, url_column: str, chunk_size: int) -> Iterator[list[dict[str, Any]]]:
    """Every format as lists of dict records, pulled one chunk at a time."""
    if fmt == "folder":
        for files in _iter_folder(path, chunk_size=chunk_size):
            # The path relative to the folder rides along under a key no manifest column can have.
            yield [{url_column: str(p.resolve()), _FOLDER_PATH: p.relative_to(path).as_posix()} for p in files]
    elif fmt == "text":
        for lines in _iter_raw_lines(path, chunk_size=chunk_size):
            yield [{url_column: line} for line in lines]
    elif fmt == "jsonl":
        batch: list[dict[str, Any]] = []
        for _, record in _iter_jsonl_records(path):
            batch.append(record)
            if len(batch) >= chunk_size:
                yield batch
                batch = []
        if batch:
            yield batch
    elif fmt == "parquet":
        try:
            for table in pq.ParquetFile(path).iter_batches(batch_size=chunk_size):
                yield table.to_pylist()
        except (pa.ArrowException, OSError) as exc:
            raise ManifestError(str(path), f"cannot be read as Parquet ({_first_line(exc)})") from None
    else:
        yield from _iter_delimited(path, fmt, chunk_size=chunk_size)


def _iter_delimited(path: Path, fmt: Format, *, chunk_size: int) -> Iterator[list[dict[str, Any]]]:
    # Inlined data: URLs in a cell can exceed the csv module's 128 KiB default.
    csv.field_size_limit(2**31 - 1)
    with _open_text(path) as fh:
        # strict: an unclosed quote is an error at the end of the file, not one huge last cell
        # that silently swallows every row after it.
        reader = csv.reader(fh, delimiter=_DELIMITERS[fmt], strict=True)
        start = 1  # the line the next record starts on: where an unclosed quote opened
        try:
            header = next(reader, None)
            if header is None:
                return
            width = len(header)
            batch: list[dict[str, Any]] = []
            start = reader.line_num + 1
            for values in reader:
                if values and len(values) != width:
                    raise ManifestError(
                        str(path), f"line {reader.line_num} has {len(values)} fields, the header has {width}"
                    )
                if values:
                    batch.append(dict(zip(header, values, strict=True)))
                if len(batch) >= chunk_size:
                    yield batch
                    batch = []
                start = reader.line_num + 1
            if batch:
                yield batch
        except csv.Error as exc:
            raise ManifestError(str(path), _csv_problem(exc, fmt, start=start, line=reader.line_num)) from None
        except UnicodeDecodeError as exc:
            raise ManifestError(str(path), f"cannot be read as {fmt.upper()} ({_first_line(exc)})") from None


def _csv_problem(exc: csv.Error, fmt: Format, *, start: int, line: int) -> str:
    if "unexpected end of data" in str(exc):
        return (
            f'line {start} opens a quoted field that is never closed (a stray " swallows every '
            "row after it); close or remove the quote"
        )
    return f"line {line} cannot be read as {fmt.upper()} ({_first_line(exc)})"


def _iter_jsonl_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        with path.open("rb") as fh:
            for lineno, line in enumerate(fh, start=1):
                if lineno == 1:
                    line = line.removeprefix(_BOM)
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


def _iter_folder(path: Path, *, chunk_size: int) -> Iterator[list[Path]]:
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    for start in range(0, len(files), chunk_size):
        yield files[start : start + chunk_size]


def _iter_raw_lines(path: Path, *, chunk_size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    try:
        with path.open("r", encoding="utf-8-sig") as fh:
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
    records: list[dict[str, Any]],
    *,
    first_row: int,
    folder: bool,
    url_column: str,
    id_column: str,
    seen_derived: set[str],
) -> list[Item]:
    items = []
    for row, record in enumerate(records, start=first_row):
        url = record_url(record, url_column=url_column)
        item_id, given = record_id(record, url_column=url_column, id_column=id_column)
        if not given:
            if item_id in seen_derived:
                continue
            seen_derived.add(item_id)
        path = record.pop(_FOLDER_PATH) if folder else None
        fields = {k: v for k, v in record.items() if k not in (url_column, id_column)}
        items.append(Item(id=item_id, url=url, fields=fields, row=row, path=path))
    return items


def base_dir(path: Path) -> Path:
    """Where relative image paths in a manifest are resolved: the manifest's folder (or the folder itself)."""
    return path if path.is_dir() else path.parent


def chunk_source(path: Path, *, chunk_size: int, url_column: str, id_column: str) -> Callable[[], Iterator[list[Item]]]:
    """A re-startable stream of chunks, as the runner takes it."""
    return lambda: iter_chunks(path, chunk_size=chunk_size, url_column=url_column, id_column=id_column)


def iter_chunks(
    path: Path, *, chunk_size: int = 256, url_column: str = "url", id_column: str = "id"
) -> Iterator[list[Item]]:
    """Stream the manifest as lists of at most ``chunk_size`` items."""
    # Derived ids only: a given id is unique by inspect_manifest.
    seen_derived: set[str] = set()
    first_row = 0
    fmt = detect_format(path)
    for records in _iter_records(path, fmt, url_column=url_column, chunk_size=chunk_size):
        yield _items_from_records(
            records,
            first_row=first_row,
            folder=fmt == "folder",
            url_column=url_column,
            id_column=id_column,
            seen_derived=seen_derived,
        )
        first_row += len(records)
