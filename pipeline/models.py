"""Row and result types shared by every layer, and the Parquet schema of the output."""

from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import polars as pl
import pyarrow as pa

from .value_types import value_type

Status = Literal["ok", "filtered", "error"]
ErrorType = Literal[
    "rate_limited",
    "server_error",
    "timeout",
    "connection",
    "bad_request",
    "image_unreadable",
    "invalid_response",
    "content_filter",
    "auth",
    "quota",
    "model_not_found",
    "internal",
]
Severity = Literal["safe", "low", "medium", "high"]
SEVERITY_ORDER: dict[str, int] = {"safe": 0, "low": 1, "medium": 2, "high": 3}


@value_type
class Item:
    """One manifest row: its id, the image as given, and the row's other columns."""

    id: str
    url: str
    fields: dict[str, Any] = field(default_factory=dict)
    # The manifest's 0-based row number (results come back in this order) and, for a folder
    # manifest, the image's path relative to the folder; None when the item did not come from one.
    row: int | None = None
    path: str | None = None


@value_type
class Usage:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None


@value_type
class FilterVerdict:
    """What the provider's content filter said about the prompt and the choices."""

    flagged: bool = False
    categories: tuple[str, ...] = ()
    max_severity: Severity | None = None
    raw_json: str | None = None


@value_type
class Completion:
    """A parsed 200 response."""

    caption: str | None
    model: str | None
    finish_reason: str | None
    usage: Usage
    filters: FilterVerdict
    response_id: str | None
    refusal: str | None = None
    captions: tuple[str | None, ...] = ()


@dataclass(slots=True)
class ResultRow:
    """One line of results.parquet; field order is the column order."""

    id: str
    url: str
    status: Status
    caption: str | None = None
    model: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    cost_usd: float | None = None
    flagged: bool = False
    flagged_categories: list[str] = field(default_factory=list)
    max_severity: str | None = None
    filter_results: str | None = None
    error_type: ErrorType | None = None
    error_message: str | None = None
    http_status: int | None = None
    retryable: bool = False
    attempts: int = 0
    latency_s: float | None = None
    response_id: str | None = None
    finished_at: datetime | None = None
    captions: list[str] | None = None
    labels: str | None = None
    dedup_of: str | None = None
    request_key: str | None = None
    prior_cost_usd: float | None = None
    row: int | None = None
    path: str | None = None


RESULT_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String(),
    "url": pl.String(),
    "status": pl.String(),
    "caption": pl.String(),
    "model": pl.String(),
    "finish_reason": pl.String(),
    "prompt_tokens": pl.Int64(),
    "completion_tokens": pl.Int64(),
    "total_tokens": pl.Int64(),
    "cached_tokens": pl.Int64(),
    "reasoning_tokens": pl.Int64(),
    "cost_usd": pl.Float64(),
    "flagged": pl.Boolean(),
    "flagged_categories": pl.List(pl.String()),
    "max_severity": pl.String(),
    "filter_results": pl.String(),
    "error_type": pl.String(),
    "error_message": pl.String(),
    "http_status": pl.Int32(),
    "retryable": pl.Boolean(),
    "attempts": pl.Int32(),
    "latency_s": pl.Float64(),
    "response_id": pl.String(),
    "finished_at": pl.Datetime("us", "UTC"),
    # Added to SPEC's columns: every choice's text when n > 1; the validated JSON
    # answer for a response_format schema; the id whose request answered a
    # duplicate image (a copy costs nothing).
    "captions": pl.List(pl.String()),
    "labels": pl.String(),
    "dedup_of": pl.String(),
    # The hash of the request body (image, rendered prompt, parameters): a later run in the
    # same folder answers an identical request from this row instead of paying again.
    "request_key": pl.String(),
    # What earlier runs paid for this id (the error rows this row replaced): the folder's
    # spend is cost_usd + prior_cost_usd summed, however often a row was re-sent.
    "prior_cost_usd": pl.Float64(),
    # The manifest's 0-based row number: results.parquet is sorted by it (null in rows written
    # before the column existed: those sort last). For a folder manifest, the image's path
    # relative to the folder (POSIX separators); null for other manifests.
    "row": pl.Int64(),
    "path": pl.String(),
}

assert list(RESULT_SCHEMA) == [f.name for f in dataclasses.fields(ResultRow)]


def conform(frame: pl.DataFrame) -> pl.DataFrame:
    """SPEC's columns in order with their types; columns a file predates are added as nulls."""
    missing = [
        pl.lit(None, dtype=dtype).alias(name) for name, dtype in RESULT_SCHEMA.items() if name not in frame.columns
    ]
    return frame.with_columns(missing).select(list(RESULT_SCHEMA)).cast(pl.Schema(RESULT_SCHEMA))


RESULT_ARROW_SCHEMA: pa.Schema = pl.DataFrame(schema=RESULT_SCHEMA).to_arrow().schema


_ROW_VALUES = operator.attrgetter(*RESULT_SCHEMA)


def rows_to_table(rows: list[ResultRow]) -> pa.Table:
    """Column-wise into Arrow: ~0.6 ms per 256 rows, where polars' constructor takes 2.1 ms, all
    of it holding the GIL that the event loop needs (the journal writes from a thread). Each
    row's values come out in one attrgetter call and are transposed by zip (a third of the
    cost of a getattr per cell)."""
    if not rows:
        return RESULT_ARROW_SCHEMA.empty_table()
    columns = map(list, zip(*map(_ROW_VALUES, rows), strict=True))
    return pa.Table.from_pydict(dict(zip(RESULT_SCHEMA, columns, strict=True)), schema=RESULT_ARROW_SCHEMA)


_INT64_MAX = 2**63 - 1
_INT32_MAX = 2**31 - 1


def recordable(row: ResultRow) -> ResultRow:
    """``row`` made safe to write: text that is not valid UTF-8 escaped (``\\xNN``), and a row
    holding a number Parquet cannot (an integer past int64 from a server) turned into an
    error row that says so.

    The last line of the per-row boundary, used when a batch fails to convert: one such
    value must cost that row at most, never the flush that carries a batch of paid answers.
    """
    texts: dict[str, Any] = {
        f.name: _text(v) for f in dataclasses.fields(row) if isinstance(v := getattr(row, f.name), str)
    }
    row = dataclasses.replace(
        row,
        **texts,
        flagged_categories=[_text(c) for c in row.flagged_categories],
        captions=None if row.captions is None else [_text(c) for c in row.captions],
    )
    problem = _out_of_range(row)
    if problem is None:
        return row
    return dataclasses.replace(
        row,
        status="error",
        caption=None,
        captions=None,
        labels=None,
        prompt_tokens=None,
        completion_tokens=None,
        total_tokens=None,
        cached_tokens=None,
        reasoning_tokens=None,
        error_type="invalid_response",
        error_message=f"the answer could not be recorded: {problem}",
        retryable=False,
        http_status=row.http_status if row.http_status is None or 0 <= row.http_status <= _INT32_MAX else None,
        attempts=min(max(row.attempts, 0), _INT32_MAX),
    )


def _out_of_range(row: ResultRow) -> str | None:
    for f in dataclasses.fields(row):
        value = getattr(row, f.name)
        if isinstance(value, int) and not isinstance(value, bool):
            limit = _INT32_MAX if f.name in ("http_status", "attempts") else _INT64_MAX
            if not -limit - 1 <= value <= limit:
                return f"{f.name} {value} is outside the range a Parquet column holds"
    return None


def _text(value: str) -> str:
    """``value`` itself when it encodes as UTF-8, else with what does not escaped."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        pass
    try:  # a file name read with surrogateescape: give back its raw bytes, escaped
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = value.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")


def rows_to_frame(rows: list[ResultRow]) -> pl.DataFrame:
    frame = pl.from_arrow(rows_to_table(rows))
    assert isinstance(frame, pl.DataFrame)
    return frame


FatalKind = Literal["auth", "quota", "model_not_found", "request_shape"]


@value_type
class Reply:
    """One attempt that got a usable 200."""

    completion: Completion
    http_status: int
    latency_s: float
    headers: dict[str, str] = field(default_factory=dict)


@value_type
class Failure:
    """One attempt that did not: what happened, and what to do about it."""

    error_type: ErrorType
    message: str
    retryable: bool
    http_status: int | None = None
    latency_s: float | None = None
    retry_after_s: float | None = None
    fatal: FatalKind | None = None
    filters: FilterVerdict | None = None
    headers: dict[str, str] = field(default_factory=dict)


Outcome = Reply | Failure


@dataclass(slots=True)
class RunTotals:
    """Counters of one run, for the progress display and the closing summary."""

    total: int = 0
    skipped: int = 0
    done: int = 0
    ok: int = 0
    filtered: int = 0
    error: int = 0
    flagged: int = 0
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    # What earlier runs in the same folder spent: the folder's spend is one figure everywhere.
    spent_before_usd: float = 0.0
    # False when the pricing table has no price for the model: costs then read "unpriced", not $0.
    priced: bool = True
    # Error rows of this run a re-run skips unless --retry-errors.
    errors_not_retried: int = 0

    @property
    def folder_spent_usd(self) -> float:
        return self.spent_before_usd + self.cost_usd

    def add(self, row: ResultRow) -> None:
        self.done += 1
        setattr(self, row.status, getattr(self, row.status) + 1)
        self.flagged += row.flagged
        self.errors_not_retried += row.status == "error" and row.retryable is False
        self.prompt_tokens += row.prompt_tokens or 0
        self.completion_tokens += row.completion_tokens or 0
        self.cost_usd += row.cost_usd or 0.0
