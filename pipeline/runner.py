"""Wires the pipeline: manifest → workers (pace, send, retry) → journal.

One task reads the manifest ahead in blocks of chunks (in a thread) and drops
ids the journal already holds; ``concurrency`` workers each prepare an image,
build the body, pace through the rate limiter and send with retries; a flusher
writes the finished rows as Parquet parts every ``chunk_size`` rows and every
``flush_interval_s``.

The client, clock, sleep, journal and progress display are passed in, so tests
drive it against the simulator or ``httpx.MockTransport`` without patching.

Stopping: a fatal answer (auth, quota, unknown model) or an open circuit breaker
cancels in-flight work at once; Ctrl-C and the budget stop dispatching and give
in-flight requests ``grace_s`` to finish. Either way what finished is flushed,
and rows that did not finish are simply not written, so a re-run sends them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import logging
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import orjson
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .breaker import CircuitBreaker
from .budget import Budget
from .client import VisionClient
from .config import Config
from .cost import row_cost_usd
from .errors import (
    AuthError,
    BudgetExceededError,
    CircuitOpenError,
    ImageUnreadableError,
    InterruptedRunError,
    JournalError,
    ManifestError,
    ModelNotFoundError,
    PipelineError,
    QuotaError,
    ResumeMismatchError,
)
from .images import ImageLimits, PreparedImage, inline_bytes, is_remote, prepare_image, remote_url, shorten_data_url
from .journal import DoneIds, Journal
from .labels import label_extender, label_spec
from .models import Failure, Item, Outcome, Reply, ResultRow, RunTotals, Usage
from .progress import NoProgress, Progress
from .ratelimit import RateLimiter
from .request import build_body, prompt_text
from .retry import call_with_retries
from .tokens import TextCounter, image_tokens, max_image_tokens, request_tokens

log = logging.getLogger("caption")

_FATAL_ERRORS: dict[str, tuple[type[PipelineError], str]] = {
    "auth": (AuthError, "the endpoint refused the API key (401/403); check the key in ${env}"),
    "quota": (QuotaError, "the account has no quota or credit left; top it up, then re-run to resume"),
    "model_not_found": (ModelNotFoundError, "the endpoint does not serve model '{model}'; check request.model and endpoint.base_url"),
}


DEDUP_WINDOW = 20_000  # requests remembered for dedup (~1.5 KB each); a duplicate further apart is sent again
LABEL_ATTEMPTS = 2  # an answer that does not match the schema is asked for once more
_CHUNKS_PER_READ = 8  # manifest chunks read per trip to a thread
_READS_AHEAD = 2  # such reads kept ahead of the workers
_ESTIMATES_KEPT = 4096  # (prompt, image size) estimates remembered; templated prompts vary per row


@dataclass(slots=True)
class _RowState:
    """What one row accumulates over its attempts."""

    paid_usd: float | None = None
    invalid_replies: int = 0
    labels: str | None = None


@dataclass(slots=True)
class _SharedRequest:
    """One request in flight whose answer rows with the same body wait for (dedup).

    The event is made by the first waiter: most requests have none, and an
    anyio Event per request is a measurable share of the per-row CPU.
    """

    row: ResultRow | None = None
    finished: bool = False
    _done: anyio.Event | None = None

    async def wait(self) -> ResultRow | None:
        if not self.finished:
            if self._done is None:
                self._done = anyio.Event()
            await self._done.wait()
        return self.row

    def finish(self, row: ResultRow | None) -> None:
        self.row, self.finished = row, True
        if self._done is not None:
            self._done.set()


def _request_key(body: dict[str, Any]) -> bytes:
    """Identical bodies (same image bytes or URL, same rendered prompt, same parameters) get one answer."""
    return hashlib.blake2b(orjson.dumps(body, option=orjson.OPT_SORT_KEYS), digest_size=16).digest()


def _dedup_copy(item: Item, original: ResultRow, *, finished_at: datetime) -> ResultRow:
    """The answer of an identical request, for another id: nothing was sent for it, nothing is billed."""
    return dataclasses.replace(
        original, id=item.id, url=shorten_data_url(item.url), prompt_tokens=0, completion_tokens=0, total_tokens=0,
        cached_tokens=None, reasoning_tokens=None, cost_usd=0.0, attempts=0, latency_s=None, dedup_of=original.id,
        finished_at=finished_at,
    )


def _take_rows(chunks: Iterator[list[Item]], n: int, source: str) -> tuple[list[Item], ManifestError | None]:
    """The rows of the next ``n`` chunks (fewer at the end; none when the manifest is done), and
    the error that stopped reading early, if any: the rows read before it still go out."""
    rows: list[Item] = []
    try:
        for chunk in itertools.islice(chunks, n):
            rows.extend(chunk)
    except ManifestError as exc:
        return rows, exc
    except OSError as exc:
        return rows, ManifestError(source, f"reading failed mid-run ({exc})")
    return rows, None


class _StopDispatch(Exception):
    """Raised inside a worker when the run is stopping; the row is left for the next run."""


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(kw_only=True)
class RunnerDeps:
    """What touches the outside world; production defaults are built in cli.py."""

    client: VisionClient
    journal: Journal
    limiter: RateLimiter
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep
    now: Callable[[], datetime] = utc_now
    progress: Progress = field(default_factory=NoProgress)
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)


def check_resume(journal: Journal, config: Config, *, force: bool) -> None:
    """Refuse to continue a folder made with other request parameters (unless forced)."""
    meta = journal.read_meta()
    if not meta or force or meta.get("fingerprint") == config.request_fingerprint():
        return
    before = meta.get("request", {})
    now = config.request_identity()
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    details = "; ".join(f"{k}: {before.get(k)!r} → {now.get(k)!r}" for k in changed[:5])
    raise ResumeMismatchError(
        f"{journal.out_dir} holds results made with other request parameters ({details or 'fingerprint differs'}). "
        "Use another --out folder, or --force to continue with the new parameters."
    )


ChunkSource = Callable[[], Iterator[list[Item]]]


@dataclass(frozen=True, slots=True)
class RequestEstimate:
    """What a request is counted as before it is sent: prompt and completion tokens (TPM), worst-case cost."""

    prompt_tokens: int
    completion_tokens: int
    max_cost_usd: float


class Runner:
    def __init__(self, config: Config, deps: RunnerDeps, *, chunks: ChunkSource, base_dir: Path, total_rows: int,
                 manifest_label: str = "", retry_errors: bool = False, grace_s: float = 10.0) -> None:
        self.config = config
        self.deps = deps
        self.chunks = chunks
        self.base_dir = base_dir
        self.manifest_label = manifest_label
        self.retry_errors = retry_errors
        self.grace_s = grace_s
        self.totals = RunTotals(total=total_rows)
        self._limits = ImageLimits(max_bytes=config.images.max_bytes, max_pixels=config.images.max_pixels,
                                   max_side=config.images.max_side)
        self._text = TextCounter()
        self._estimates: dict[tuple[str, int | None, int | None], RequestEstimate] = {}
        # The same for every image of unknown size in the run: worked out once, not per row.
        self._worst_image_tokens = max_image_tokens(config.request.model, detail=config.request.detail)
        self._buffer: list[ResultRow] = []
        self._buffer_full = anyio.Event()
        self._stopping = anyio.Event()
        self._stop_reason: PipelineError | None = None
        self._manifest_error: ManifestError | None = None
        self._unpriced_warned: set[str] = set()
        self.budget = Budget(max_cost_usd=config.limits.max_cost_usd)
        self._labels = label_spec(config.request.response_format)
        self._shared: OrderedDict[bytes, _SharedRequest | ResultRow] = OrderedDict()

    # -- stopping ------------------------------------------------------------

    def request_stop(self, reason: PipelineError) -> None:
        """Stop dispatching; the first reason given wins."""
        if self._stop_reason is None:
            self._stop_reason = reason
            log.warning("stopping: %s", reason)
        self._stopping.set()

    @property
    def stop_reason(self) -> PipelineError | None:
        return self._stop_reason

    async def _watch_stop(self, work: anyio.CancelScope) -> None:
        await self._stopping.wait()
        # Ctrl-C and the budget let in-flight requests finish (they are paid for); a fatal
        # answer, an open breaker or an unwritable journal cancel them at once.
        if isinstance(self._stop_reason, (InterruptedRunError, BudgetExceededError)) or self._stop_reason is None:
            await anyio.sleep(self.grace_s)
        work.cancel()

    # -- the run ---------------------------------------------------------------

    async def run(self) -> RunTotals:
        journal = self.deps.journal
        self._write_meta(status="running")
        skip = journal.skip_ids(retry_errors=self.retry_errors)
        # Off the event loop: the first count would otherwise stall every request for the load.
        await anyio.to_thread.run_sync(self._text.preload, self.config.request.model)
        self.budget.spent_usd = journal.spent_usd()
        items_send, items_recv = anyio.create_memory_object_stream[Item](self.config.limits.concurrency)
        async with anyio.create_task_group() as outer:
            outer.start_soon(self._flush_loop)
            work = anyio.CancelScope()
            outer.start_soon(self._watch_stop, work)
            with work:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._produce, items_send, skip)
                    for _ in range(self.config.limits.concurrency):
                        tg.start_soon(self._work, items_recv.clone())
                    items_recv.close()
            outer.cancel_scope.cancel()
        if self._stop_reason is None and self._manifest_error is not None:
            self._stop_reason = self._manifest_error
        with anyio.CancelScope(shield=True):
            await self._flush()
            await anyio.to_thread.run_sync(lambda: journal.finalize(extend=label_extender(self._labels)))
            self._write_meta(status="stopped" if self._stop_reason else "finished")
        self.deps.progress.close(self.totals)
        if self._stop_reason is not None:
            raise self._stop_reason
        return self.totals

    async def _produce(self, send: MemoryObjectSendStream[Item], skip: DoneIds) -> None:
        """Hand the manifest's rows to the workers, skipping ids already done."""
        blocks_send, blocks_recv = anyio.create_memory_object_stream[list[Item]](_READS_AHEAD)
        # The reader is cancelled before its queue closes: closing first would fail its pending send.
        with blocks_recv:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._read_blocks, blocks_send)
                async with send:
                    async for block in blocks_recv:
                        if not await self._hand_over_block(send, block, skip):
                            break
                tg.cancel_scope.cancel()

    async def _read_blocks(self, send: MemoryObjectSendStream[list[Item]]) -> None:
        # Read ahead, several chunks per trip to a thread: a trip costs an event-loop turn plus
        # GIL waits (~50 ms at concurrency 512), so one chunk per trip, read only after the last
        # was handed out, left workers idle: 19 of 20 rows were waited for.
        chunks = self.chunks()
        source = self.manifest_label or "the manifest"
        async with send:
            while not self._stopping.is_set():
                block, error = await anyio.to_thread.run_sync(_take_rows, chunks, _CHUNKS_PER_READ, source)
                if block:
                    await send.send(block)
                if error is not None:
                    # Not a stop: the rows already read still go out; the run ends with this error.
                    self._manifest_error = ManifestError(
                        error.path, f"{error.problem}; the rows before it were sent. "
                        "Fix the manifest and re-run the same command to resume")
                    return
                if not block:
                    return

    async def _hand_over_block(self, send: MemoryObjectSendStream[Item], block: list[Item], skip: DoneIds) -> bool:
        """False once the run is stopping and no more rows should go out."""
        done = skip.among([item.id for item in block])
        for item in block:
            if item.id in done:
                self.totals.skipped += 1
                continue
            if self._stopping.is_set():
                return False
            try:
                await self._hand_over(send, item)
            except anyio.BrokenResourceError:
                return False  # every worker has stopped (the run is stopping)
        return True

    @staticmethod
    async def _hand_over(send: MemoryObjectSendStream[Item], item: Item) -> None:
        # nowait first: anyio's send and receive checkpoint and build waiter objects on
        # every call, ~10% of the per-row CPU; only a full buffer needs to wait.
        try:
            send.send_nowait(item)
        except anyio.WouldBlock:
            await send.send(item)

    @staticmethod
    async def _next_item(receive: MemoryObjectReceiveStream[Item]) -> Item | None:
        """The next row to work on, or None when the producer is done."""
        try:
            return receive.receive_nowait()
        except anyio.WouldBlock:
            pass
        except anyio.EndOfStream:
            return None
        try:
            return await receive.receive()
        except anyio.EndOfStream:
            return None

    async def _work(self, receive: MemoryObjectReceiveStream[Item]) -> None:
        async with receive:
            while not self._stopping.is_set():
                item = await self._next_item(receive)
                if item is None or self._stopping.is_set():
                    return
                row = await self._process(item)
                if row is not None:
                    self._record(row)

    def _record(self, row: ResultRow) -> None:
        self.totals.add(row)
        self._buffer.append(row)
        if len(self._buffer) >= self.config.run.chunk_size:
            self._buffer_full.set()
        self.deps.progress.update(self.totals)

    # -- one row ---------------------------------------------------------------

    async def _process(self, item: Item) -> ResultRow | None:
        """The per-row boundary: whatever happens to this row ends as its result row."""
        try:
            image = await self._prepare(item)
        except ImageUnreadableError as exc:
            return self._row(item, status="error", error_type="image_unreadable", error_message=str(exc))
        body = build_body(self.config.request, image_url=image.url, fields=item.fields)
        if not self.config.images.dedup:
            return await self._send(item, body, image)
        key = _request_key(body)
        known = self._shared.get(key)
        if known is not None:
            self._shared.move_to_end(key)
            if isinstance(known, _SharedRequest):
                known = await known.wait()
            return None if known is None else _dedup_copy(item, known, finished_at=self.deps.now())
        shared = self._shared[key] = _SharedRequest()
        if len(self._shared) > DEDUP_WINDOW:
            self._shared.popitem(last=False)
        row = None
        try:
            row = await self._send(item, body, image)
        finally:
            shared.finish(row)
            # Once answered, keep only the row: a waiter object per remembered request adds up.
            if key in self._shared:
                if shared.row is None:
                    del self._shared[key]
                else:
                    self._shared[key] = shared.row
        return shared.row

    async def _send(self, item: Item, body: dict[str, Any], image: PreparedImage) -> ResultRow | None:
        est = self._estimate(body, image)
        state = _RowState()
        try:
            outcome, attempts = await call_with_retries(
                lambda attempt: self._attempt(body, est, state), max_attempts=self.config.limits.max_attempts,
                sleep=self.deps.sleep, rng=self.deps.rng,
            )
        except _StopDispatch:
            return None
        except Exception as exc:  # noqa: BLE001 - the per-row boundary: a bug must not kill the run
            log.exception("unexpected error on row %s", item.id)
            return self._row(item, status="error", error_type="invalid_response",
                             error_message=f"internal error: {type(exc).__name__}: {exc}", retryable=True)
        return self._row_from_outcome(item, outcome, attempts, state)

    async def _prepare(self, item: Item) -> PreparedImage:
        if is_remote(item.url):
            if not self.config.images.inline_remote:
                return PreparedImage(url=remote_url(item.url))
            data = await self.deps.client.fetch_image(remote_url(item.url), max_bytes=self.config.images.max_bytes,
                                                      timeout_s=self.config.images.download_timeout_s)
            return await anyio.to_thread.run_sync(lambda: inline_bytes(data, limits=self._limits, source=item.url))
        return await anyio.to_thread.run_sync(
            lambda: prepare_image(item.url, base_dir=self.base_dir, limits=self._limits))

    def _estimate(self, body: dict[str, Any], image: PreparedImage) -> RequestEstimate:
        # Most rows share one prompt and an unknown (or the same) image size: the estimate is
        # remembered per (prompt, size) instead of being worked out again for every row.
        key = (prompt_text(body), image.width, image.height)
        known = self._estimates.get(key)
        if known is not None:
            return known
        request = self.config.request
        text_tokens = self._text.count(key[0], model=request.model)
        image_est = image_tokens(request.model, detail=request.detail, width=image.width, height=image.height)
        # An image of unknown size is charged its worst case: starting high costs a few
        # seconds until answers correct the scale; starting low trips a TPM limit.
        worst_image = image_est if image.width else self._worst_image_tokens
        max_completion = request.max_tokens * (request.n or 1)
        prompt = request_tokens(text_tokens=text_tokens, image_tokens_=worst_image, max_tokens=0)
        worst = Usage(prompt_tokens=prompt, completion_tokens=max_completion)
        est = RequestEstimate(prompt_tokens=prompt, completion_tokens=max_completion,
                              max_cost_usd=self._cost(request.model, worst, warn=False) or 0.0)
        if len(self._estimates) >= _ESTIMATES_KEPT:
            self._estimates.clear()
        self._estimates[key] = est
        return est

    async def _attempt(self, body: dict[str, Any], est: RequestEstimate, state: _RowState) -> Outcome:
        if self._stopping.is_set():
            raise _StopDispatch
        grant = await self.deps.limiter.acquire(est.prompt_tokens, est.completion_tokens)
        if self._stopping.is_set():
            raise _StopDispatch
        if not self.budget.try_reserve(est.max_cost_usd):
            self.request_stop(BudgetExceededError(
                f"the budget is reached: {self.budget.describe()} with requests in flight; "
                "raise --max-cost (limits.max_cost_usd) and re-run to continue"))
            raise _StopDispatch
        try:
            outcome = await self.deps.client.complete(body)
        except BaseException:  # cancelled mid-request: nothing is known to be billed
            self.budget.settle(est.max_cost_usd, 0.0)
            raise
        paid = self._cost(outcome.completion.model, outcome.completion.usage) if isinstance(outcome, Reply) else None
        self.budget.settle(est.max_cost_usd, paid or 0.0)
        state.paid_usd = (state.paid_usd or 0.0) + paid if paid is not None else state.paid_usd
        self.totals.requests += 1
        limiter, breaker = self.deps.limiter, self.deps.breaker
        limiter.observe(outcome.headers)
        if isinstance(outcome, Reply):
            breaker.record(None)
            limiter.settle(grant, prompt_tokens=outcome.completion.usage.prompt_tokens)
            return self._check_labels(outcome, state)
        breaker.record(outcome.error_type)
        if outcome.error_type == "rate_limited":
            limiter.rate_limited(outcome.retry_after_s)
        if outcome.fatal is not None:
            cls, hint = _FATAL_ERRORS[outcome.fatal]
            hint = hint.replace("{env}", self.config.endpoint.api_key_env).replace("{model}", self.config.request.model)
            self.request_stop(cls(f"{hint} ({outcome.message})"))
            raise _StopDispatch
        if breaker.is_open:
            self.request_stop(CircuitOpenError(
                f"the endpoint looks down: {breaker.describe()} (last: {outcome.message}). Re-run to resume once it is back."))
            raise _StopDispatch
        return outcome

    def _check_labels(self, reply: Reply, state: _RowState) -> Outcome:
        """With a response_format schema, an answer that does not match it is retried once, then an error."""
        if self._labels is None or reply.completion.finish_reason == "content_filter":
            return reply
        labels, why = self._labels.check(reply.completion.caption)
        if why is None:
            state.labels = labels
            return reply
        state.invalid_replies += 1
        return Failure("invalid_response", why, retryable=state.invalid_replies < LABEL_ATTEMPTS,
                       http_status=reply.http_status, latency_s=reply.latency_s)

    def _row(self, item: Item, **values: Any) -> ResultRow:
        return ResultRow(id=item.id, url=shorten_data_url(item.url), finished_at=self.deps.now(), **values)

    def _row_from_outcome(self, item: Item, outcome: Outcome, attempts: int, state: _RowState) -> ResultRow:
        if isinstance(outcome, Failure):
            filters = outcome.filters
            return self._row(
                item, status="filtered" if outcome.error_type == "content_filter" else "error",
                error_type=outcome.error_type, error_message=outcome.message, http_status=outcome.http_status,
                retryable=outcome.retryable, attempts=attempts, latency_s=outcome.latency_s, cost_usd=state.paid_usd,
                flagged=bool(filters and filters.flagged), flagged_categories=list(filters.categories) if filters else [],
                max_severity=filters.max_severity if filters else None, filter_results=filters.raw_json if filters else None,
            )
        c = outcome.completion
        cut = c.finish_reason == "content_filter"
        return self._row(
            item, status="filtered" if cut else "ok", caption=c.caption, model=c.model, finish_reason=c.finish_reason,
            prompt_tokens=c.usage.prompt_tokens, completion_tokens=c.usage.completion_tokens,
            total_tokens=c.usage.total_tokens, cached_tokens=c.usage.cached_tokens,
            reasoning_tokens=c.usage.reasoning_tokens, cost_usd=state.paid_usd,
            flagged=c.filters.flagged, flagged_categories=list(c.filters.categories),
            max_severity=c.filters.max_severity, filter_results=c.filters.raw_json,
            error_type="content_filter" if cut else None,
            error_message="the completion was cut by the content filter" if cut else c.refusal,
            http_status=outcome.http_status, attempts=attempts, latency_s=outcome.latency_s, response_id=c.response_id,
            captions=[t or "" for t in c.captions] if len(c.captions) > 1 else None, labels=state.labels,
        )

    def _cost(self, model: str | None, usage: Usage, *, warn: bool = True) -> float | None:
        model = model or self.config.request.model
        cost = row_cost_usd(model, usage, self.config.pricing, ocr_model=self.config.request.extra_body.get("ocr_model"))
        if cost is None and warn and model not in self._unpriced_warned:
            self._unpriced_warned.add(model)
            log.warning("no price for model '%s': cost_usd stays null (add [pricing.\"%s\"] to the config)", model, model)
        return cost

    # -- flushing ----------------------------------------------------------------

    async def _flush_loop(self) -> None:
        while True:
            with anyio.move_on_after(self.config.run.flush_interval_s):
                await self._buffer_full.wait()
            try:
                await self._flush()
            except JournalError as exc:
                self.request_stop(exc)  # the final flush tries once more, then raises it
                return

    async def _flush(self) -> None:
        rows, self._buffer = self._buffer, []
        self._buffer_full = anyio.Event()
        if rows:
            # Shielded: the rows have left the buffer, so a cancellation arriving now (the run
            # ending, the flush loop being cancelled) would otherwise drop them unwritten.
            with anyio.CancelScope(shield=True):
                try:
                    path = await anyio.to_thread.run_sync(self.deps.journal.write_rows, rows)
                except JournalError:
                    self._buffer[:0] = rows
                    raise
            log.debug("flushed %d rows to %s", len(rows), path.name if path else "-")

    def _write_meta(self, *, status: str) -> None:
        journal = self.deps.journal
        meta = journal.read_meta() or {"created_at": self.deps.now().isoformat()}
        meta.update(
            fingerprint=self.config.request_fingerprint(),
            request=self.config.request_identity(),
            manifest=self.manifest_label,
            base_dir=str(self.base_dir.resolve()),
            base_url=self.config.endpoint.base_url,
            status=status,
            updated_at=self.deps.now().isoformat(),
        )
        if status != "running":
            meta["last_run"] = {
                "rows_in_manifest": self.totals.total, "skipped": self.totals.skipped, "done": self.totals.done,
                "ok": self.totals.ok, "filtered": self.totals.filtered, "error": self.totals.error,
                "requests": self.totals.requests, "prompt_tokens": self.totals.prompt_tokens,
                "completion_tokens": self.totals.completion_tokens, "cost_usd": round(self.totals.cost_usd, 6),
                "stopped_by": type(self._stop_reason).__name__ if self._stop_reason else None,
                "spent_usd_in_folder": round(self.budget.spent_usd, 6),
            }
        journal.write_meta(meta)

