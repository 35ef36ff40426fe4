"""``caption export``: a run folder's ok rows in the shapes training tools read.

- ``txt``: one caption file per image, ``photo.jpg`` → ``photo.txt`` (kohya, OneTrainer,
  SimpleTuner, TagGUI), beside the image or under ``--to`` mirroring the folder; an image
  known only by a URL is named by its id.
- ``jsonl`` / ``csv``: the ok rows, every column (``results.jsonl`` / ``results.csv``).
- ``webdataset``: tar shards of ``key.<ext>`` + ``key.txt`` for local images.

Only ``ok`` rows are exported; errors and filtered rows are counted as left out. Nothing is
overwritten without ``force``: every target is worked out first and the first existing one
is named. Names come from ``export_names`` (ids and paths are untrusted); a caption file is
also refused when its folder resolves outside ``--to`` (a symlink inside it) or it is itself a
symlink (opened with ``O_NOFOLLOW``).

Reads a folder with ``Journal.reader``, so a stopped or still-running run exports what is
ok so far (and says it is unfinished). ``--to`` naming a file, or a write that fails (disk full,
no permission), is a one-line ``ExportError`` naming the path, never a traceback. With ``force``
a WebDataset export also removes the folder's other ``shard-NNNNNN.tar`` files, so a loader
globbing ``shard-*.tar`` reads only this export.
"""

from __future__ import annotations

import errno
import io
import json
import os
import tarfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal
from urllib.parse import unquote, urlparse

import polars as pl

from .errors import ExportError
from .export_names import (
    caption_name,
    caption_text,
    id_caption_name,
    is_shard_name,
    safe_relative,
    shard_name,
    webdataset_key,
)
from .images import is_data_url, is_remote
from .journal import Journal
from .labels import label_extender, label_spec
from .manifest import IMAGE_SUFFIXES
from .models import RESULT_SCHEMA
from .report import reading

ExportFormat = Literal["txt", "jsonl", "csv", "webdataset"]
FORMATS: tuple[ExportFormat, ...] = ("txt", "jsonl", "csv", "webdataset")

REMOTE_NEEDS_TO = "remote image (give --to to write its caption there, named by id)"
REMOTE_NOT_PACKED = "remote image (a shard holds local images only)"
IMAGE_MISSING = "image file not found"
NOT_AN_IMAGE_NAME = "image file name has no image suffix"
NAME_TAKEN = "same caption file name as an earlier, different image"
SAME_IMAGE = "same image file as an earlier row (captioned once, by the first)"
OUTSIDE_TO = "a symlink on the way would write it elsewhere"


@dataclass(frozen=True, kw_only=True)
class ExportOptions:
    format: ExportFormat
    to: Path | None = None
    field: str = "caption"
    force: bool = False
    shard_size: int = 1000


@dataclass(kw_only=True)
class ExportReport:
    """What an export wrote and what it left out, and why."""

    written: int = 0
    noun: str = "files"
    where: str = ""
    samples: int | None = None
    left_out: dict[str, int] = field(default_factory=dict)
    skipped: Counter[str] = field(default_factory=Counter)
    unfinished: str | None = None
    removed: int = 0  # an earlier export's shards beyond this one's (--force)

    def lines(self) -> list[str]:
        head = f"wrote {self.written} {self.noun} {self.where}"
        if self.samples is not None:
            head += f" ({self.samples} image + caption samples)"
        if self.removed:
            head += f"; removed {self.removed} older {'shard' if self.removed == 1 else 'shards'} beyond these"
        lines = [head]
        if self.left_out:
            counts = ", ".join(f"{status} {n}" for status, n in sorted(self.left_out.items()))
            lines.append(f"left out {_rows(sum(self.left_out.values()))} not ok ({counts})")
        if self.skipped:
            reasons = "; ".join(f"{n} {why}" for why, n in self.skipped.most_common())
            lines.append(f"skipped {self.skipped.total()}: {reasons}")
        if self.unfinished is not None:
            lines.append(
                f"note: the run is unfinished (run.json says {self.unfinished}): this is what is ok so far; "
                "re-run the same `caption run` to finish it"
            )
        return lines


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


@dataclass(frozen=True, slots=True)
class _Folder:
    rows: pl.DataFrame  # ok rows, manifest order
    left_out: dict[str, int]
    base_dir: Path
    unfinished: str | None


def export_folder(out_dir: Path, options: ExportOptions) -> ExportReport:
    if not out_dir.is_dir():
        raise ExportError(f"{out_dir}: not a folder; give the --out folder of a `caption run`")
    if options.shard_size < 1:
        raise ExportError(f"--shard-size must be at least 1, not {options.shard_size}")
    default_to = {"txt": None, "webdataset": out_dir / "webdataset"}.get(options.format, out_dir)
    _check_folder(options.to or default_to)
    # A caption file or shard needs a few columns; reading only those keeps a million-row folder small.
    columns = None if options.format in ("jsonl", "csv") else ["id", "url", "path", "status", "row", options.field]
    folder = reading(out_dir, lambda: _read(out_dir, field=options.field, columns=columns))
    if options.format == "txt":
        report = _export_txt(folder, options)
    elif options.format == "webdataset":
        report = _export_webdataset(folder, options, default_to=out_dir / "webdataset")
    else:
        report = _export_table(folder, options, default_to=out_dir)
    report.left_out = folder.left_out
    report.unfinished = folder.unfinished
    return report


def _check_folder(to: Path | None) -> None:
    """Refuse a ``--to`` that is, or lies under, a file (a typo) before anything is read or written."""
    if to is None:
        return
    existing = to
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == to else f"cannot be made: {existing} is a file"
        raise ExportError(f"--to {to}: {where}, not a folder; give the folder to write into")


def _columns(*names: str) -> list[str]:
    """``names`` without repeats: ``--field`` may name a column the export reads anyway (id, url, path),
    and polars refuses a selection that names one twice."""
    return list(dict.fromkeys(names))


def _reason(exc: OSError) -> str:
    # polars' own OSErrors carry no strerror, only "No such file or directory (os error 2): PATH".
    return exc.strerror or str(exc).split(" (os error", 1)[0]


@contextmanager
def _writing(path: Path) -> Iterator[None]:
    """An OSError while writing ``path`` (disk full, no permission, a file where a folder goes) as a
    one-line error naming the file, not a traceback. Files written before it stay: the message says so."""
    try:
        yield
    except OSError as exc:
        # os.replace names the target second; a temp file's name would mean nothing to the user.
        where = exc.filename2 or exc.filename
        name = path if where is None or ".tmp-" in os.fsdecode(where) else where
        raise ExportError(
            f"{os.fsdecode(name)}: cannot be written ({_reason(exc)}); "
            "files written before it are kept: fix this and re-run with --force"
        ) from None


def _read(out_dir: Path, *, field: str, columns: list[str] | None) -> _Folder:
    journal = Journal.reader(out_dir)
    meta = journal.read_meta() or {}
    rows = journal.scan()
    request = meta.get("request") if isinstance(meta.get("request"), dict) else {}
    extend = label_extender(label_spec(request.get("response_format"))) if request else None
    if extend is not None and journal.part_count():
        # An unfinished folder's label columns are made at finalize: make them here.
        rows = extend(rows.collect()).lazy()
    names = rows.collect_schema().names()
    if field not in names:
        choices = ["caption", "labels", *(c for c in names if c not in RESULT_SCHEMA)]
        raise ExportError(f"--field {field}: {out_dir} has no such column (choose from: {', '.join(choices)})")
    frame = (rows if columns is None else rows.select(_columns(*columns))).collect()
    statuses = frame.get_column("status").value_counts()
    left_out = {s: int(n) for s, n in statuses.iter_rows() if s != "ok"}
    status = meta.get("status")
    unfinished = None
    if status != "finished" or journal.part_count():
        unfinished = str(status) if status else "nothing (no run.json)"
    base = meta.get("base_dir")
    return _Folder(
        rows=frame.filter(pl.col("status") == "ok").sort("row", nulls_last=True, maintain_order=True),
        left_out=left_out,
        base_dir=Path(base) if isinstance(base, str) else out_dir,
        unfinished=unfinished,
    )


def _local_image(url: str | None, base_dir: Path) -> Path | None:
    """The file a row's image is, or None for a remote or data: URL."""
    if not url or is_remote(url) or is_data_url(url):
        return None
    parsed = urlparse(url)
    if parsed.scheme == "file":
        path = Path(unquote(parsed.path))
    elif parsed.scheme and len(parsed.scheme) > 1:
        return None
    else:
        path = Path(url)
    return path if path.is_absolute() else base_dir / path


def _relative_caption(row: dict[str, Any], image: Path | None, base_dir: Path) -> PurePosixPath:
    """Where a caption goes under --to: the image's place in the manifest folder, else its id."""
    relative: PurePosixPath | None = None
    if isinstance(row.get("path"), str):
        relative = safe_relative(row["path"])
    elif image is not None:
        try:
            relative = safe_relative(image.resolve().relative_to(base_dir.resolve()).as_posix())
        except ValueError:  # not under the manifest's folder
            relative = None
    return caption_name(relative) if relative is not None else id_caption_name(str(row["id"]))


def _inside(folder: Path, root: Path, checked: dict[Path, bool]) -> bool:
    """``folder`` is, or would be made, inside ``root`` (resolved): its nearest existing folder resolves
    there. Checked before any folder is made, so a symlink inside --to cannot have one made elsewhere."""
    if folder not in checked:
        existing = folder
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        checked[folder] = existing.resolve().is_relative_to(root)
    return checked[folder]


def _write_caption(target: Path, text: str) -> bool:
    """Write ``text`` to ``target`` unless it is a symlink (O_NOFOLLOW: writing would follow it).
    Any other OSError is the caller's (``_writing``)."""
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return False
        raise
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text + "\n")
    return True


def _refuse_existing(targets: list[Path], *, force: bool) -> None:
    if force:
        return
    existing = [t for t in targets if t.exists()]
    if existing:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise ExportError(f"{existing[0]} already exists{more}; add --force to overwrite")


def _export_txt(folder: _Folder, options: ExportOptions) -> ExportReport:
    report = ExportReport(noun="caption files", where=f"under {options.to}" if options.to else "beside their images")
    planned: dict[Path, str] = {}
    sources: dict[Path, Path] = {}  # the local image each planned caption file is for
    for row in folder.rows.select(_columns("id", "url", "path", options.field)).iter_rows(named=True):
        text = caption_text(row[options.field])
        image = _local_image(row["url"], folder.base_dir)
        if text is None:
            report.skipped[f"no {options.field}"] += 1
            continue
        if options.to is not None:
            target = options.to / _relative_caption(row, image, folder.base_dir)
        elif image is None:
            report.skipped[REMOTE_NEEDS_TO] += 1
            continue
        elif not image.is_file():
            report.skipped[IMAGE_MISSING] += 1
            continue
        else:
            target = image.with_name(caption_name(PurePosixPath(image.name)).name)
        if target in planned:
            report.skipped[SAME_IMAGE if image is not None and sources.get(target) == image else NAME_TAKEN] += 1
            continue
        if target == image:
            report.skipped[NAME_TAKEN] += 1
            continue
        planned[target] = text
        if image is not None:
            sources[target] = image
    _refuse_existing(list(planned), force=options.force)
    checked: dict[Path, bool] = {}
    if options.to is not None:
        with _writing(options.to):
            options.to.mkdir(parents=True, exist_ok=True)
        root = options.to.resolve()
    for target, text in planned.items():
        with _writing(target):
            if options.to is not None:
                if not _inside(target.parent, root, checked):
                    report.skipped[OUTSIDE_TO] += 1
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
            if _write_caption(target, text):
                report.written += 1
            else:
                report.skipped[OUTSIDE_TO] += 1
    return report


def _export_table(folder: _Folder, options: ExportOptions, *, default_to: Path) -> ExportReport:
    to = options.to or default_to
    target = to / f"results.{options.format}"
    _refuse_existing([target], force=options.force)
    frame = folder.rows.with_columns(
        pl.col(pl.Datetime).dt.to_string("%Y-%m-%dT%H:%M:%S%.6f%:z"),
    )
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    with _writing(target), _temp_removed_on_error(tmp):
        to.mkdir(parents=True, exist_ok=True)
        if options.format == "jsonl":
            frame.write_ndjson(tmp)
        else:
            frame.with_columns(
                pl.col(pl.List, pl.Struct, pl.Array).map_batches(_as_json, return_dtype=pl.String)
            ).write_csv(tmp)
        os.replace(tmp, target)
    return ExportReport(written=frame.height, noun="rows", where=f"to {target}")


@contextmanager
def _temp_removed_on_error(tmp: Path) -> Iterator[None]:
    """A write that fails leaves no half-written temp file behind."""
    try:
        yield
    except BaseException:
        with suppress(OSError):  # best effort: the error being raised is the one to report
            tmp.unlink(missing_ok=True)
        raise


def _as_json(series: pl.Series) -> pl.Series:
    """A nested column as JSON text, the one lossless shape for a CSV cell."""
    values = [None if v is None else json.dumps(v, ensure_ascii=False) for v in series.to_list()]
    return pl.Series(series.name, values, dtype=pl.String())


def _export_webdataset(folder: _Folder, options: ExportOptions, *, default_to: Path) -> ExportReport:
    to = options.to or default_to
    report = ExportReport(noun="shards", where=f"to {to}")
    samples: list[tuple[str, str, Path, str]] = []
    for row in folder.rows.select(_columns("id", "url", options.field)).iter_rows(named=True):
        text = caption_text(row[options.field])
        image = _local_image(row["url"], folder.base_dir)
        if text is None:
            report.skipped[f"no {options.field}"] += 1
        elif image is None:
            report.skipped[REMOTE_NOT_PACKED] += 1
        elif image.suffix.lower() not in IMAGE_SUFFIXES:
            report.skipped[NOT_AN_IMAGE_NAME] += 1
        elif not image.is_file():
            report.skipped[IMAGE_MISSING] += 1
        else:
            samples.append((webdataset_key(str(row["id"])), image.suffix.lower().lstrip("."), image, text))
    batches = [samples[i : i + options.shard_size] for i in range(0, len(samples), options.shard_size)]
    shards = [to / shard_name(i) for i in range(len(batches))]
    # An earlier export's shards beyond these would be read with them by a loader globbing shard-*.tar.
    older = _other_shards(to, keep=set(shards))
    _refuse_existing(shards + older, force=options.force)
    with _writing(to):
        to.mkdir(parents=True, exist_ok=True)
    for shard, batch in zip(shards, batches, strict=True):
        with _writing(shard):
            report.samples = (report.samples or 0) + _write_shard(shard, batch, report.skipped)
        report.written += 1
    report.samples = report.samples or 0
    # Removed only once this export's shards are all in place: a failed write leaves the old set whole.
    for shard in older:
        with _writing(shard):
            shard.unlink(missing_ok=True)
        report.removed += 1
    return report


def _other_shards(to: Path, *, keep: set[Path]) -> list[Path]:
    """The files in ``to`` named as this export names its shards, other than ``keep``; nothing else
    (a user's own ``shard-a.tar`` or ``.tar.gz``) is touched."""
    if not to.is_dir():
        return []
    return sorted(p for p in to.iterdir() if is_shard_name(p.name) and p not in keep and not p.is_dir())


def _write_shard(shard: Path, batch: list[tuple[str, str, Path, str]], skipped: Counter[str]) -> int:
    """One tar, written under a temp name and renamed: a reader never sees half a shard."""
    tmp = shard.with_name(f".{shard.name}.tmp-{os.getpid()}")
    packed = 0
    with _temp_removed_on_error(tmp):
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for key, ext, image, text in batch:
                try:
                    data = image.read_bytes()
                except OSError:  # gone or unreadable since it was listed
                    skipped[IMAGE_MISSING] += 1
                    continue
                _add(tar, f"{key}.{ext}", data)
                _add(tar, f"{key}.txt", text.encode("utf-8"))
                packed += 1
        os.replace(tmp, shard)
    return packed


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))
