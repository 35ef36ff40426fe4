"""PURE: result rows from what happened to a manifest row (an answer, a failure, a copy).

Every column a row gets is set here, so a new column is added in one place (and
in ``models.RESULT_SCHEMA``).
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from .images import shorten_data_url
from .models import Failure, Item, Outcome, ResultRow


def result_row(item: Item, *, finished_at: datetime, prior_cost_usd: float | None = None, **values: Any) -> ResultRow:
    return ResultRow(
        id=item.id,
        url=shorten_data_url(item.url),
        row=item.row,
        path=item.path,
        finished_at=finished_at,
        prior_cost_usd=prior_cost_usd,
        **values,
    )


def unexpected_error_row(
    item: Item,
    exc: Exception,
    *,
    stage: str,
    finished_at: datetime,
    prior_cost_usd: float | None = None,
    paid_usd: float | None = None,
    answered: bool = False,
) -> ResultRow:
    """An exception nobody foresaw, as this row's error, classified by where it happened.

    Preparing the image: the image or its reference is unusable (``image_unreadable``,
    not retried: the same input fails the same way). Anywhere else it is a bug of ours
    (``internal``): retried by the next run unless an answer already came back (and was billed,
    priced or not).
    """
    reason = f"{type(exc).__name__}: {exc}"
    if stage == "prepare":
        return result_row(
            item,
            finished_at=finished_at,
            prior_cost_usd=prior_cost_usd,
            status="error",
            error_type="image_unreadable",
            error_message=f"the image cannot be used ({reason})",
        )
    return result_row(
        item,
        finished_at=finished_at,
        prior_cost_usd=prior_cost_usd,
        status="error",
        error_type="internal",
        cost_usd=paid_usd,
        retryable=not answered,
        error_message=f"internal error while {stage} ({reason}); please report it",
    )


def row_from_outcome(
    item: Item,
    outcome: Outcome,
    *,
    attempts: int,
    finished_at: datetime,
    paid_usd: float | None,
    labels: str | None,
    request_key: str | None,
    prior_cost_usd: float | None,
) -> ResultRow:
    if isinstance(outcome, Failure):
        filters = outcome.filters
        return result_row(
            item,
            finished_at=finished_at,
            prior_cost_usd=prior_cost_usd,
            attempts=attempts,
            latency_s=outcome.latency_s,
            http_status=outcome.http_status,
            cost_usd=paid_usd,
            status="filtered" if outcome.error_type == "content_filter" else "error",
            error_type=outcome.error_type,
            error_message=outcome.message,
            retryable=outcome.retryable,
            flagged=bool(filters and filters.flagged),
            flagged_categories=list(filters.categories) if filters else [],
            max_severity=filters.max_severity if filters else None,
            filter_results=filters.raw_json if filters else None,
            # A filtered answer is final: an identical request would be filtered again.
            request_key=request_key if outcome.error_type == "content_filter" else None,
        )
    # The answered row, the common case, is built in one call: this runs once per row.
    c = outcome.completion
    cut = c.finish_reason == "content_filter"
    usage, filters = c.usage, c.filters
    return ResultRow(
        id=item.id,
        url=shorten_data_url(item.url),
        row=item.row,
        path=item.path,
        finished_at=finished_at,
        prior_cost_usd=prior_cost_usd,
        attempts=attempts,
        latency_s=outcome.latency_s,
        http_status=outcome.http_status,
        cost_usd=paid_usd,
        status="filtered" if cut else "ok",
        caption=c.caption,
        model=c.model,
        finish_reason=c.finish_reason,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        cached_tokens=usage.cached_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        flagged=filters.flagged,
        flagged_categories=list(filters.categories),
        max_severity=filters.max_severity,
        filter_results=filters.raw_json,
        error_type="content_filter" if cut else None,
        error_message="the completion was cut by the content filter" if cut else c.refusal,
        response_id=c.response_id,
        captions=[t or "" for t in c.captions] if len(c.captions) > 1 else None,
        labels=labels,
        request_key=request_key,
    )


def dedup_copy(item: Item, original: ResultRow, *, finished_at: datetime, prior_cost_usd: float | None) -> ResultRow:
    """The answer of an identical request, for another id: nothing was sent for it, nothing is billed."""
    return dataclasses.replace(
        original,
        id=item.id,
        url=shorten_data_url(item.url),
        row=item.row,
        path=item.path,
        prompt_tokens=0,
        completion_tokens=0,
        total_tokens=0,
        cached_tokens=None,
        reasoning_tokens=None,
        cost_usd=0.0,
        attempts=0,
        latency_s=None,
        dedup_of=original.dedup_of or original.id,
        finished_at=finished_at,
        prior_cost_usd=prior_cost_usd,
    )
