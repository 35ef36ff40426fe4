"""The online executor: one request's attempts, sent now, paced, budgeted and retried.

For each attempt: stop if the run is stopping, pace through the rate limiter,
reserve the worst-case cost against the budget, send, price the answer, feed
the limiter and the circuit breaker, check a structured answer against its
schema. A run-stopping answer (auth, quota, unknown model), the budget and an
open breaker raise ``StopDispatch`` with the reason; the runner stops the run.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from .breaker import CircuitBreaker
from .budget import Budget
from .client import VisionClient
from .config import Config
from .cost import PriceLookup, cost_with
from .errors import (
    AuthError,
    BudgetExceededError,
    CircuitOpenError,
    ModelNotFoundError,
    PipelineError,
    QuotaError,
    RequestRejectedError,
    WaitTooLongError,
)
from .executor import PreparedRequest, StopDispatch
from .labels import LabelSpec
from .models import Failure, Outcome, Reply, ResultRow, Usage
from .ratelimit import RateLimiter
from .request import prompt_text
from .retry import call_with_retries
from .rows import row_from_outcome, unexpected_error_row
from .tokens import TextCounter, image_tokens, max_image_tokens, request_tokens

log = logging.getLogger("caption")

_FATAL_ERRORS: dict[str, tuple[type[PipelineError], str]] = {
    "auth": (AuthError, "the endpoint refused the API key; check the key in ${env}"),
    "quota": (QuotaError, "the account has no quota or credit left; top it up, then re-run to resume"),
    "model_not_found": (
        ModelNotFoundError,
        "the endpoint does not serve model '{model}'; check request.model and endpoint.base_url",
    ),
    # Every row would be refused alike: stop at once rather than burn the manifest into error rows.
    "request_shape": (
        RequestRejectedError,
        "the endpoint refuses this request's parameters for model '{model}' (not the image); "
        "change the request settings (request.*, request.extra_body) and re-run to resume",
    ),
}
# What reading an answer of an unforeseen shape raises (the parser classifies the shapes it knows).
_UNREADABLE_ANSWER = (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError, RecursionError)
LABEL_ATTEMPTS = 2  # an answer that does not match the schema is asked for once more
_ESTIMATES_KEPT = 4096  # (prompt, image size) estimates remembered; templated prompts vary per row


@dataclass(frozen=True, slots=True)
class RequestEstimate:
    """What a request is counted as before it is sent: prompt and completion tokens (TPM), worst-case cost."""

    prompt_tokens: int
    completion_tokens: int
    max_cost_usd: float


@dataclass(slots=True)
class _RowState:
    """What one row accumulates over its attempts."""

    paid_usd: float | None = None
    invalid_replies: int = 0
    labels: str | None = None
    last: Outcome | None = None  # the latest answer, kept so a paid one outlives a stop
    attempts: int = 0
    answered: bool = False  # a 200 came back: billed, whether or not the model has a price


class OnlineExecutor:
    def __init__(
        self,
        config: Config,
        *,
        client: VisionClient,
        limiter: RateLimiter,
        breaker: CircuitBreaker,
        budget: Budget,
        text: TextCounter,
        labels: LabelSpec | None,
        stopping: Callable[[], bool],
        sleep: Callable[[float], Awaitable[None]],
        rng: random.Random,
        now: Callable[[], datetime],
    ) -> None:
        self.config = config
        self._client = client
        self._limiter = limiter
        self._breaker = breaker
        self._budget = budget
        self.requests = 0  # sent and answered (or failed), whatever the outcome
        self._text = text
        self._labels = labels
        self._stopping = stopping
        self._sleep = sleep
        self._rng = rng
        self._now = now
        self._in_flight = 0
        self._estimates: dict[tuple[str, int | None, int | None], RequestEstimate] = {}
        # The same for every image of unknown size in the run: worked out once, not per row.
        self._worst_image_tokens = max_image_tokens(config.request.model, detail=config.request.detail)
        self._unpriced_warned: set[str] = set()
        self._price_of = PriceLookup(config.pricing)
        self._ocr_model = config.request.extra_body.get("ocr_model")

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def execute(self, request: PreparedRequest) -> ResultRow:
        item, state = request.item, _RowState()
        try:
            est = self._estimate(request)
            outcome, attempts = await self._attempt(request, est, state), 1
            if isinstance(outcome, Failure) and outcome.retryable:
                outcome, attempts = await call_with_retries(
                    lambda attempt: self._attempt(request, est, state),
                    max_attempts=self.config.limits.max_attempts,
                    sleep=self._sleep,
                    rng=self._rng,
                    on_retry=functools.partial(self._log_retry, item.id),
                    first=outcome,
                )
        except StopDispatch as stop:
            if not state.answered or state.last is None:
                raise  # nothing was answered (so nothing billed): the next run sends it
            # Stopped between a paid answer (refused by the label check) and its retry: keep it.
            stop.row = self._row(request, state.last, state.attempts, state)
            raise
        except Exception as exc:  # the per-row boundary: a bug costs its row, not the run
            log.exception("unexpected error on row %s", item.id)
            return unexpected_error_row(
                item,
                exc,
                stage="sending",
                finished_at=self._now(),
                prior_cost_usd=request.prior_cost_usd,
                paid_usd=state.paid_usd,
                answered=state.answered,
            )
        return self._row(request, outcome, attempts, state)

    def _log_retry(self, row_id: str, failure: Failure, attempt: int, wait_s: float) -> None:
        """``-v``: each retry once, with what came back and how long it waits."""
        status = f"HTTP {failure.http_status}" if failure.http_status is not None else "no response"
        log.debug(
            "retry: row %s got %s (%s) on attempt %d of %d; next attempt in %.2f s",
            row_id,
            failure.error_type,
            status,
            attempt,
            self.config.limits.max_attempts,
            wait_s,
        )

    def _row(self, request: PreparedRequest, outcome: Outcome, attempts: int, state: _RowState) -> ResultRow:
        return row_from_outcome(
            request.item,
            outcome,
            attempts=attempts,
            finished_at=self._now(),
            paid_usd=state.paid_usd,
            labels=state.labels,
            request_key=request.key,
            prior_cost_usd=request.prior_cost_usd,
        )

    def _estimate(self, request: PreparedRequest) -> RequestEstimate:
        # Most rows share one prompt and an unknown (or the same) image size: the estimate is
        # remembered per (prompt, size) instead of being worked out again for every row.
        image = request.image
        key = (prompt_text(request.body), image.width, image.height)
        known = self._estimates.get(key)
        if known is not None:
            return known
        config = self.config.request
        text_tokens = self._text.count_for_pacing(key[0], model=config.model)
        image_est = image_tokens(config.model, detail=config.detail, width=image.width, height=image.height)
        # An image of unknown size is charged its worst case: starting high costs a few
        # seconds until answers correct the scale; starting low trips a TPM limit.
        worst_image = image_est if image.width else self._worst_image_tokens
        max_completion = config.max_tokens * (config.n or 1)
        prompt = request_tokens(text_tokens=text_tokens, image_tokens_=worst_image, max_tokens=0)
        worst = Usage(prompt_tokens=prompt, completion_tokens=max_completion)
        est = RequestEstimate(
            prompt_tokens=prompt,
            completion_tokens=max_completion,
            max_cost_usd=self.cost(config.model, worst, warn=False) or 0.0,
        )
        if len(self._estimates) >= _ESTIMATES_KEPT:
            self._estimates.clear()
        self._estimates[key] = est
        return est

    async def _attempt(self, request: PreparedRequest, est: RequestEstimate, state: _RowState) -> Outcome:
        if self._stopping():
            raise StopDispatch
        try:
            grant = await self._limiter.acquire(est.prompt_tokens, est.completion_tokens)
        except WaitTooLongError as exc:  # a server asked for a wait over limits.max_wait_s
            raise StopDispatch(exc) from None
        if self._stopping():
            raise StopDispatch
        if not self._budget.try_reserve(est.max_cost_usd):
            raise StopDispatch(
                BudgetExceededError(
                    f"the budget is reached: {self._budget.describe()} with requests in flight; "
                    "raise --max-cost (limits.max_cost_usd) and re-run to continue"
                )
            )
        # Counted in flight while sent; an answer that cannot be read is that answer's failure.
        self._in_flight += 1
        answered = False
        try:
            outcome = await self._client.complete(request.body, payload=request.payload)
            answered = True
        except _UNREADABLE_ANSWER as exc:
            # A number past what Python holds, a shape the parser did not expect: the server
            # answered, so this is that answer's problem, recorded (and settled) like any bad answer.
            answered = True
            log.debug("unreadable answer", exc_info=True)
            outcome = Failure(
                "invalid_response", f"the answer could not be read ({type(exc).__name__}: {exc})", retryable=False
            )
        finally:
            self._in_flight -= 1
            if not answered:  # cancelled (or a bug) mid-request: nothing is known to be billed
                self._budget.settle(est.max_cost_usd, 0.0)
        paid = self.cost(outcome.completion.model, outcome.completion.usage) if isinstance(outcome, Reply) else None
        self._budget.settle(est.max_cost_usd, paid or 0.0)
        state.paid_usd = (state.paid_usd or 0.0) + paid if paid is not None else state.paid_usd
        state.attempts += 1
        self.requests += 1
        limiter, breaker = self._limiter, self._breaker
        limiter.observe(outcome.headers)
        if isinstance(outcome, Reply):
            state.answered = True
            breaker.record(None)
            limiter.settle(grant, prompt_tokens=outcome.completion.usage.prompt_tokens)
            state.last = self._check_labels(outcome, state)
            return state.last
        breaker.record(outcome)
        if outcome.error_type == "rate_limited":
            try:
                limiter.rate_limited(outcome.retry_after_s)
            except WaitTooLongError as exc:
                raise StopDispatch(exc) from None
        if outcome.fatal is not None:
            cls, hint = _FATAL_ERRORS[outcome.fatal]
            hint = hint.replace("{env}", self.config.endpoint.api_key_env).replace("{model}", self.config.request.model)
            raise StopDispatch(cls(f"{hint} ({outcome.message})"))
        if breaker.refuses_every_row:
            raise StopDispatch(
                RequestRejectedError(
                    f"every row is refused alike: {breaker.describe()} ({outcome.message}); it is about the "
                    "request, the model or the account, not the images: fix that, then re-run with --retry-errors "
                    "(the rows refused so far are recorded as errors)"
                )
            )
        if breaker.looks_down:
            raise StopDispatch(
                CircuitOpenError(
                    f"the endpoint looks down: {breaker.describe()} (last: {outcome.message}). Re-run to resume once it is back."
                )
            )
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
        return Failure(
            "invalid_response",
            why,
            retryable=state.invalid_replies < LABEL_ATTEMPTS,
            http_status=reply.http_status,
            latency_s=reply.latency_s,
        )

    def cost(self, model: str | None, usage: Usage, *, warn: bool = True) -> float | None:
        model = model or self.config.request.model
        cost = cost_with(model, usage, self._price_of, ocr_model=self._ocr_model)
        if cost is None and warn and model not in self._unpriced_warned:
            self._unpriced_warned.add(model)
            log.warning(
                "no price for model '%s': cost_usd stays null (add [pricing.\"%s\"] to the config)", model, model
            )
        return cost
