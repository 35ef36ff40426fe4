"""Orchestrates a run: manifest feed → workers (prepare, dedup, execute) → buffer → journal.

The feed (``feed.py``) reads the manifest ahead and drops ids the journal already
holds; the preparer (``preparer.py``) makes each row's image and body ahead, the
image work in the ``image_pool``; ``concurrency`` workers each take a prepared row
(dedup) and hand it to the executor (``executor.py``; ``dispatch.OnlineExecutor``
paces, sends and retries); a flusher writes finished rows as Parquet parts every
``part_rows`` rows and every ``flush_interval_s``.

What touches the outside (client, clock, sleep, journal, limiter, progress) is
passed in through ``RunnerDeps`` (built by ``compose.build_runner``), so tests
drive it against the simulator or ``httpx.MockTransport`` without patching.

Stopping has one path whatever the reason (a signal, a fatal answer, the budget, an
open breaker, an unwritable journal): dispatch stops at once, what finished is
flushed at once, requests in flight get ``grace_s`` to come back (their answers are
paid for, so they are recorded and flushed as they arrive; ``hurry()`` ends the
wait), then the rest is cancelled and flushed. Rows that did not finish are not
written, so a re-run sends them.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import anyio

from .breaker import CircuitBreaker
from .budget import Budget
from .client import VisionClient
from .config import Config
from .cost import is_priced
from .dedup import DEDUP_WINDOW, RequestDedup, SharedRequest, canonical_json, request_key
from .dialects import Dialect
from .dispatch import OnlineExecutor
from .errors import JournalError, PipelineError
from .executor import Executor, PreparedRequest, StopDispatch
from .feed import MANIFEST_CHUNK_ROWS, ChunkSource, ManifestFeed
from .gc_tuning import fewer_collections
from .handoff import Handoff
from .image_pool import ImagePool, ThreadImagePool
from .journal import Journal
from .labels import label_extender, label_spec
from .models import Item, ResultRow, RunTotals
from .preparer import PreparedRow, Preparer
from .progress import NoProgress, Progress
from .ratelimit import RateLimiter
from .request import prompts_need_tokenizer
from .rows import dedup_copy
from .run_meta import results_metadata, updated_meta
from .tokens import TextCounter

log = logging.getLogger("caption")


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(kw_only=True)
class RunnerDeps:
    """What touches the outside world; production defaults are built by ``compose.build_runner``.

    ``executor``: leave None for the online executor built from client, limiter and breaker;
    another executor (a Batch-API one) is built beside it and shares ``budget``.
    ``dialect``: the provider's wire format, the client's too (the runner builds bodies in it).
    """

    client: VisionClient
    dialect: Dialect
    journal: Journal
    limiter: RateLimiter
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep
    now: Callable[[], datetime] = utc_now
    progress: Progress = field(default_factory=NoProgress)
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    budget: Budget | None = None
    executor: Executor | None = None
    # Masks secrets in every row before it is written (the CLI builds it from the API key).
    scrub: Callable[[ResultRow], ResultRow] | None = None
    # Where images are decoded and resized; closed when the run ends (compose builds a process pool).
    image_pool: ImagePool = field(default_factory=ThreadImagePool)


class Runner:
    def __init__(
        self,
        config: Config,
        deps: RunnerDeps,
        *,
        chunks: ChunkSource,
        base_dir: Path,
        total_rows: int,
        manifest_label: str = "",
        retry_errors: bool = False,
        grace_s: float = 10.0,
    ) -> None:
        self.config = config
        self.deps = deps
        self.chunks = chunks
        self.base_dir = base_dir
        self.manifest_label = manifest_label
        self.retry_errors = retry_errors
        self.grace_s = grace_s
        self.totals = RunTotals(total=total_rows, priced=is_priced(config))
        self._text = TextCounter()
        self._buffer: list[ResultRow] = []
        self._buffer_full = anyio.Event()
        self._stopping = anyio.Event()
        # The same, read as a plain attribute on the per-row path (an Event's is_set is two calls).
        self._stop_requested = False
        self._hurry = anyio.Event()
        self._stop_reason: PipelineError | None = None
        self._labels = label_spec(config.request.response_format)
        self.budget = deps.budget or Budget(max_cost_usd=config.limits.max_cost_usd)
        self._executor: Executor = deps.executor or OnlineExecutor(
            config,
            client=deps.client,
            limiter=deps.limiter,
            breaker=deps.breaker,
            budget=self.budget,
            text=self._text,
            labels=self._labels,
            stopping=lambda: self._stop_requested,
            sleep=deps.sleep,
            rng=deps.rng,
            now=deps.now,
        )
        self._dedup = RequestDedup()
        self._prior_paid: dict[str, float] = {}
        self._preparer = Preparer(
            config,
            client=deps.client,
            dialect=deps.dialect,
            pool=deps.image_pool,
            base_dir=base_dir,
            now=deps.now,
            # Looked up when the row is prepared: _resume_from fills _prior_paid after this.
            prior_cost=lambda row_id: self._prior_paid.get(row_id),
        )

    # -- stopping ------------------------------------------------------------

    def request_stop(self, reason: PipelineError) -> None:
        """Stop dispatching and flush what finished now; the first reason given wins."""
        if self._stop_reason is None:
            self._stop_reason = reason
            # -v only: the reason is printed once, on the run's last line (the CLI's error line).
            log.debug("stopping: %s", reason)
        self._stop_requested = True
        self._stopping.set()
        self._buffer_full.set()

    def hurry(self) -> None:
        """End the grace period now (a second Ctrl-C): requests still in flight are abandoned."""
        self._hurry.set()

    @property
    def stop_reason(self) -> PipelineError | None:
        return self._stop_reason

    @property
    def in_flight(self) -> int:
        return self._executor.in_flight

    async def _watch_stop(self, work: anyio.CancelScope) -> None:
        await self._stopping.wait()
        # Whatever the reason, answers still in flight are paid for: they get the grace period
        # to come back and be recorded (the work scope ends sooner once they all have).
        if self.in_flight:
            log.warning(
                "stopping: waiting up to %gs for %d request(s) in flight, whose answers are paid for "
                "(interrupt again to stop now)",
                self.grace_s,
                self.in_flight,
            )
        with anyio.move_on_after(self.grace_s):
            await self._hurry.wait()
        work.cancel()

    # -- the run ---------------------------------------------------------------

    async def run(self) -> RunTotals:
        with fewer_collections():  # a row's objects live for milliseconds (gc_tuning.py)
            return await self._run()

    async def _run(self) -> RunTotals:
        journal = self.deps.journal
        # Read before run.json says "running": a damaged file found here ends the run untouched.
        feed = ManifestFeed(
            self.chunks,
            skip=journal.skip_ids(retry_errors=self.retry_errors),
            stopping=self._stopping,
            totals=self.totals,
            source=self.manifest_label or "the manifest",
        )
        self._resume_from(journal)
        self._write_meta(status="running")
        # Off the event loop: the first count would otherwise stall every request for the load.
        if prompts_need_tokenizer(self.config.request):
            await anyio.to_thread.run_sync(self._text.preload, self.config.request.model)
        concurrency = self.config.limits.concurrency
        items = Handoff[Item](max(concurrency, MANIFEST_CHUNK_ROWS), consumers=self._preparer.tasks)
        ready = Handoff[PreparedRow](self._preparer.capacity, consumers=concurrency)
        try:
            async with anyio.create_task_group() as outer:
                outer.start_soon(self._flush_loop)
                work = anyio.CancelScope()
                outer.start_soon(self._watch_stop, work)
                with work:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(feed.run, items)
                        tg.start_soon(partial(self._preparer.run, items, ready, stopping=self._stopping))
                        for _ in range(concurrency):
                            tg.start_soon(self._work, ready)
                outer.cancel_scope.cancel()
        finally:  # without waiting for a decode still under way (a stop must end promptly)
            self.deps.image_pool.close()
        # Counted by the executor (a request that stopped the run records no row): read once, here.
        self.totals.requests = self._executor.requests
        if self._stop_reason is None and feed.error is not None:
            self._stop_reason = feed.error
        with anyio.CancelScope(shield=True):
            try:
                await self._flush()
                await anyio.to_thread.run_sync(self._finalize)
            finally:  # a run that ends on an error must not leave run.json saying "running"
                self._write_meta(status="stopped" if self._stop_reason else "finished")
        self.deps.progress.close(self.totals)
        if self._stop_reason is not None:
            raise self._stop_reason
        return self.totals

    def _resume_from(self, journal: Journal) -> None:
        """What earlier runs in this folder left: their spend, and their answers for dedup."""
        spent = journal.spent_usd()
        self.budget.spent_usd = spent
        self.totals.spent_before_usd = spent
        self._prior_paid = journal.paid_for_unfinished()
        if self.config.images.dedup:
            self._dedup = RequestDedup(seed=journal.finished_requests(DEDUP_WINDOW))

    def _finalize(self) -> None:
        journal = self.deps.journal
        problem: JournalError | None = None
        try:
            journal.finalize(
                extend=label_extender(self._labels), metadata=results_metadata(self.config, now=self.deps.now())
            )
        except JournalError as exc:
            problem = exc  # the parts stay, so nothing recorded is lost; the run ends on it, resumable
        if journal.quarantined and problem is None:
            problem = JournalError(
                f"{len(journal.quarantined)} damaged journal part(s) were moved to {journal.quarantine_dir}; "
                "their rows are not in the results: re-run the same command to send them again"
            )
        if problem is None:
            return
        if self._stop_reason is None:
            self._stop_reason = problem
        else:
            log.error("%s", problem)

    async def _work(self, ready: Handoff[PreparedRow]) -> None:
        try:
            while not self._stop_requested:
                prepared = await ready.get()
                if prepared is None or self._stop_requested:
                    return
                row = prepared.row or await self._process(prepared)
                if row is not None:
                    self._record(row)
        finally:
            ready.consumer_done()

    def _record(self, row: ResultRow) -> None:
        if self.deps.scrub is not None:
            row = self.deps.scrub(row)
        self.totals.add(row)
        self._buffer.append(row)
        # While stopping, every answer that still arrives is written at once: a SIGKILL may follow.
        if len(self._buffer) >= self.config.run.part_rows or self._stop_requested:
            self._buffer_full.set()
        self.deps.progress.update(self.totals)

    # -- one row ---------------------------------------------------------------

    async def _process(self, prepared: PreparedRow) -> ResultRow | None:
        """A prepared row sent (or copied from an identical request's answer); None when the run
        stops before it was answered: the next run sends it."""
        item, prior, body, image = prepared.item, prepared.prior_cost_usd, prepared.body, prepared.image
        assert body is not None and image is not None  # a row without them came with its result
        key = shared = payload = None
        if self.config.images.dedup:
            payload = canonical_json(body)
            key = request_key(payload)
            known = self._dedup.known(key)
            if known is not None:
                if isinstance(known, SharedRequest):
                    known = await known.wait()
                if known is None:  # the identical request was not answered (the run is stopping)
                    return None
                return dedup_copy(item, known, finished_at=self.deps.now(), prior_cost_usd=prior)
            shared = self._dedup.begin(key)
        row = None
        try:
            row = await self._executor.execute(
                PreparedRequest(item=item, body=body, image=image, key=key, prior_cost_usd=prior, payload=payload)
            )
        except StopDispatch as stop:
            if stop.reason is not None:
                self.request_stop(stop.reason)
            row = stop.row
        finally:
            if shared is not None:
                self._dedup.end(shared, row)
        return row

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
                    self._buffer[:0] = rows  # kept for the next try: they are paid for
                    raise
                except Exception as exc:  # the flush boundary: whatever failed, paid rows stay
                    self._buffer[:0] = rows
                    raise JournalError(
                        f"{self.deps.journal.out_dir}: cannot write results ({type(exc).__name__}: {exc})"
                    ) from exc
            log.debug("flushed %d rows to %s", len(rows), path.name if path else "-")

    def _write_meta(self, *, status: str) -> None:
        journal = self.deps.journal
        journal.write_meta(
            updated_meta(
                journal.read_meta(),
                config=self.config,
                manifest=self.manifest_label,
                base_dir=self.base_dir,
                status=status,
                now=self.deps.now(),
                totals=self.totals,
                stop_reason=self._stop_reason,
            )
        )
