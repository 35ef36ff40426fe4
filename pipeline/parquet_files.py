"""Parquet files written so that a kill at any moment leaves whole files only, and checked before use.

Every file is written to a temporary name, fsynced, renamed, and its folder fsynced.
``footer_problem`` is the cheap check (footer and key columns), ``data_problem``
the full one (every page decoded).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

BATCH_ROWS = 65_536
# Parts are temporary, so they favour speed: lz4 writes a 256-row part in half zstd's time
# (zstd's per-column set-up dominates small files). results.parquet, the file users keep, is zstd.
PART_COMPRESSION = "lz4"
RESULTS_COMPRESSION = "zstd"
# Result columns nearly all distinct (ids, URLs, captions, times) are written without a
# dictionary: pyarrow builds one for every column by default, and for these it was built only to
# be dropped. 20,000 rows wrote in 37 ms instead of 55 (zstd), into a file 27% smaller; a part in
# lz4, 25 instead of 44. Every other column (status, model, filter verdict, token counts, typed
# labels) keeps one.
DISTINCT_COLUMNS = frozenset(
    {"id", "url", "caption", "captions", "response_id", "request_key", "finished_at", "latency_s", "path", "row"}
)
# What finalize and a run's kept parts hold in memory at most (a caption can be long): past it, they stream.
IN_MEMORY_BYTES = 256 * 1024 * 1024


def _dictionary_columns(schema: pa.Schema) -> list[str]:
    """Parquet column paths to dictionary-encode: a list column's values sit at ``name.list.element``."""
    paths: list[str] = []
    for field in schema:
        if field.name in DISTINCT_COLUMNS:
            continue
        if pa.types.is_list(field.type) or pa.types.is_large_list(field.type):
            paths += [f"{field.name}.list.element", f"{field.name}.list.item"]  # compliant and legacy names
        else:
            paths.append(field.name)
    return paths


def fsync_dir(folder: Path) -> None:
    """A rename is durable only once its directory is: without this a power cut after the
    rename can bring back the old name (a part lost, or merged parts resurrected)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not every platform opens directories (Windows); the rename itself is atomic
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; nothing more can be done there
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _fsync_and_rename(tmp: Path, path: Path) -> None:
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_table(path: Path, table: pa.Table) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(
        table,
        tmp,
        compression=PART_COMPRESSION,
        write_statistics=False,
        use_dictionary=_dictionary_columns(table.schema),
    )
    _fsync_and_rename(tmp, path)


def write_in_row_groups(
    target: Path, schema: pa.Schema, tables: Iterable[pa.Table], *, compression: str, statistics: bool = False
) -> None:
    """Write ``tables`` to ``target`` atomically, in row groups of up to BATCH_ROWS rows: one row
    group per 256-row source part made a merge spend most of its time setting up compression."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    pending: list[pa.Table] = []
    pending_rows = 0
    with pq.ParquetWriter(
        tmp,
        schema,
        compression=compression,
        write_statistics=statistics,
        use_dictionary=_dictionary_columns(schema),
    ) as writer:
        for table in tables:
            pending.append(table)
            pending_rows += table.num_rows
            if pending_rows >= BATCH_ROWS:
                writer.write_table(pa.concat_tables(pending))
                pending, pending_rows = [], 0
        if pending:
            writer.write_table(pa.concat_tables(pending))
    _fsync_and_rename(tmp, target)


REQUIRED_COLUMNS = {"id": pa.string(), "status": pa.string()}


def footer_problem(path: Path) -> str | None:
    """Why ``path`` cannot serve as a journal file, or None when its footer and key columns are sound."""
    try:
        schema = pq.read_schema(path)
        # polars reads the footer too (reports, the exit status) and is stricter than pyarrow.
        pl.read_parquet_schema(path)
    except (OSError, pa.ArrowException, pl.exceptions.PolarsError) as exc:
        return f"not a readable Parquet file ({exc})"
    for name, kind in REQUIRED_COLUMNS.items():
        index = schema.get_field_index(name)
        if index < 0:
            return f"has no '{name}' column"
        if not (
            pa.types.is_string(schema.field(index).type)
            or pa.types.is_large_string(schema.field(index).type)
            or pa.types.is_string_view(schema.field(index).type)
        ):
            return f"column '{name}' is {schema.field(index).type}, not {kind}"
    return None


def data_problem(path: Path) -> str | None:
    """Why the data of ``path`` cannot be read in full, or None (decodes every page: not cheap)."""
    try:
        for _ in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS):
            pass
    except (OSError, pa.ArrowException, ValueError) as exc:
        return f"its data cannot be read ({exc})"
    return None


def unreadable_message(path: Path, problem: str, *, results_name: str = "results.parquet") -> str:
    """One line naming the damaged file and what to do; results.parquet is never to be moved lightly."""
    problem = " ".join(problem.split())  # Arrow's and thrift's messages span lines; this is one
    if path.name == results_name:
        return (
            f"{path}: {problem}. Restore it from a backup, or move it aside to start the folder "
            "afresh (every row in it would be sent again)"
        )
    return f"{path}: {problem}. Move it aside (out of {path.parent}) and re-run: the rows in it will be sent again"


def with_metadata(schema: pa.Schema, metadata: dict[str, str] | None) -> pa.Schema:
    """``schema`` carrying ``metadata`` as Parquet key-value pairs (beside what Arrow keeps there)."""
    if not metadata:
        return schema
    return schema.with_metadata({**(schema.metadata or {}), **{k.encode(): v.encode() for k, v in metadata.items()}})


def write_sorted(
    target: Path,
    schema: pa.Schema,
    tables: Iterable[pa.Table],
    *,
    order_by: str,
    in_memory_rows: int,
    compression: str,
    statistics: bool = False,
) -> None:
    """``tables`` written to ``target`` atomically, their rows sorted by ``order_by`` (``sort_order``).

    Up to ``in_memory_rows`` rows (and IN_MEMORY_BYTES) are sorted in memory and written once; more are written as
    they come, then ordered by a second pass that holds only the sort key (``order_rows``).
    """
    tables = iter(tables)
    held: list[pa.Table] = []
    held_rows = held_bytes = 0
    for table in tables:
        held.append(table)
        held_rows += table.num_rows
        held_bytes += table.nbytes
        if held_rows > in_memory_rows or held_bytes > IN_MEMORY_BYTES:
            break
    else:
        whole = pa.concat_tables(held) if held else schema.empty_table()
        order = sort_order(pl.Series(order_by, whole.column(order_by))).to_arrow()
        write_in_row_groups(target, schema, [whole.take(order)], compression=compression, statistics=statistics)
        return
    unsorted = target.with_name(f".{target.name}.unsorted.tmp-{os.getpid()}")

    def handed_on() -> Iterator[pa.Table]:
        while held:  # each held table let go of once written
            yield held.pop(0)
        yield from tables

    write_in_row_groups(unsorted, schema, handed_on(), compression=compression, statistics=statistics)
    order_rows(unsorted, target, column=order_by, compression=compression)


def sort_order(keys: pl.Series) -> pl.Series:
    """The positions that put ``keys`` in order: nulls last, equal keys in their first order."""
    return (
        pl.DataFrame({"key": keys, "at": pl.int_range(len(keys), eager=True, dtype=pl.Int64)})
        .sort(["key", "at"], nulls_last=True)
        .get_column("at")
    )


def order_rows(source: Path, target: Path, *, column: str, compression: str) -> None:
    """``source`` with its rows sorted by ``column`` (nulls last, ties kept in file order), as
    ``target``, atomically; ``source`` is consumed (renamed when already in order, else removed).

    Only the sort key is held whole (8 bytes a row). Each output block reads just the row
    groups its rows sit in: a run's rows arrive nearly in manifest order (completion order),
    and a resumed folder is a few such sorted runs, so a block touches a few row groups.
    """
    file = pq.ParquetFile(source)
    keys = pl.from_arrow(file.read(columns=[column]).column(0))
    assert isinstance(keys, pl.Series)
    if keys.is_sorted(nulls_last=True):
        os.replace(source, target)
        fsync_dir(target.parent)
        return
    n = len(keys)
    order = sort_order(keys)
    sizes = [file.metadata.row_group(g).num_rows for g in range(file.num_row_groups)]
    starts = pl.Series([0, *sizes]).cum_sum().head(len(sizes))
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    # Consecutive blocks mostly need the same row groups: keep the last block's decoded.
    cache: dict[int, pa.Table] = {}
    schema = file.schema_arrow
    with pq.ParquetWriter(
        tmp, schema, compression=compression, write_statistics=True, use_dictionary=_dictionary_columns(schema)
    ) as writer:
        for begin in range(0, n, BATCH_ROWS):
            at = order.slice(begin, BATCH_ROWS)
            group = starts.search_sorted(at, side="right") - 1
            needed = group.unique().sort().to_list()
            tables = [cache[g] if g in cache else file.read_row_group(g) for g in needed]
            cache = dict(zip(needed, tables, strict=True))
            # Where each needed group starts in the concatenation of just those groups.
            base = dict(zip(needed, pl.Series([0, *(t.num_rows for t in tables)]).cum_sum().to_list(), strict=False))
            local = at - starts.gather(group) + group.replace_strict(base, return_dtype=pl.Int64)
            writer.write_table(pa.concat_tables(tables).take(local.to_arrow()))
    _fsync_and_rename(tmp, target)
    source.unlink(missing_ok=True)
