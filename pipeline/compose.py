"""The one composition root: a runner wired with production parts, each replaceable by keyword.

The CLI, the tests and the benchmarks all build their runner here, so what runs in
production is what they exercise; a test swaps the clock, sleep, limiter or
breaker by passing it, never by patching.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path

import anyio

from .breaker import CircuitBreaker
from .client import Http, VisionClient
from .config import Config
from .dialects import Dialect, dialect_for
from .executor import Executor
from .feed import ChunkSource
from .image_pool import ImagePool, ProcessImagePool
from .journal import Journal
from .progress import NoProgress, Progress
from .ratelimit import RateLimiter
from .runner import Runner, RunnerDeps, utc_now
from .secrets import Scrubber


def build_runner(
    config: Config,
    *,
    http: Http,
    journal: Journal,
    chunks: ChunkSource,
    base_dir: Path,
    total_rows: int,
    api_key: str | None = None,
    manifest_label: str = "",
    retry_errors: bool = False,
    progress: Progress | None = None,
    grace_s: float = 10.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    now: Callable[[], datetime] = utc_now,
    rng: random.Random | None = None,
    wall_clock: Callable[[], float] = time.time,
    limiter: RateLimiter | None = None,
    breaker: CircuitBreaker | None = None,
    executor: Executor | None = None,
    scrubber: Scrubber | None = None,
    dialect: Dialect | None = None,
    image_pool: ImagePool | None = None,
) -> Runner:
    """``scrubber`` masks the key in every message and row (built from ``api_key`` when not given).

    ``dialect``: the provider's wire format, for the client, the bodies and the limiter's
    headers alike; OpenAI's unless given (no config key selects one yet). A ``limiter``
    passed in reads headers as it was built to (``read_headers``).

    ``image_pool``: where images are decoded and resized; ``images.workers`` processes unless
    given (tests pass a ``ThreadImagePool``: in-process, nothing to pickle). The run closes it.
    """
    scrubber = scrubber or Scrubber([api_key])
    endpoint = config.endpoint
    dialect = dialect or dialect_for(endpoint.provider)
    query = {**endpoint.query, **({"api-version": endpoint.api_version} if endpoint.api_version else {})}
    client = VisionClient(
        http.client,
        poster=http.poster,
        dialect=dialect,
        base_url=config.endpoint.base_url,
        api_key=api_key,
        query=query,
        headers=endpoint.headers,
        timeout_s=config.endpoint.timeout_s,
        max_response_bytes=config.endpoint.max_response_bytes,
        scrubber=scrubber,
    )
    limiter = limiter or RateLimiter(
        rpm=config.limits.rpm,
        tpm=config.limits.tpm,
        clock=clock,
        sleep=sleep,
        read_headers=dialect.rate_limit_headers,
        max_wait_s=config.limits.max_wait_s,
        wall_clock=wall_clock,
    )
    deps = RunnerDeps(
        client=client,
        dialect=dialect,
        journal=journal,
        limiter=limiter,
        sleep=sleep,
        now=now,
        progress=progress or NoProgress(),
        rng=rng or random.Random(0),
        breaker=breaker or CircuitBreaker(),
        executor=executor,
        scrub=scrubber.row if scrubber.active else None,
        image_pool=image_pool or ProcessImagePool(config.images.workers),
    )
    return Runner(
        config,
        deps,
        chunks=chunks,
        base_dir=base_dir,
        total_rows=total_rows,
        manifest_label=manifest_label,
        retry_errors=retry_errors,
        grace_s=grace_s,
    )
