"""The preparation stage: each row's image and request body, made ahead of the dispatch workers.

Rows from the feed are prepared by a few tasks of their own, the image work in the
``ImagePool`` (every core), into a small buffer the dispatch workers take from: a
worker that the rate limiter lets send finds a body ready instead of decoding a
photo first. The buffer and the number of preparations under way are fixed, so
memory does not grow with the manifest.

The per-row boundary for preparation is here: an image that cannot be used becomes
that row's ``image_unreadable`` result (an unforeseen error, its ``internal`` one),
handed on like a prepared row for the workers to record.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio

from .client import VisionClient
from .config import Config
from .dialects import Dialect
from .errors import ImageUnreadableError
from .handoff import Handoff
from .image_pool import ImagePool
from .images import ImageLimits, PreparedImage, inline_bytes, is_remote, prepare_image, remote_url
from .models import Item, ResultRow
from .rows import result_row, unexpected_error_row
from .value_types import value_type

IMAGES_AHEAD = 64  # prepared rows carrying an inlined image that may wait for a worker


@value_type
class PreparedRow:
    """A row ready to send (``body``, ``image``), or already finished (``row``: its image is unusable)."""

    item: Item
    prior_cost_usd: float | None
    body: dict[str, Any] | None = None
    image: PreparedImage | None = None
    row: ResultRow | None = None


class Preparer:
    def __init__(
        self,
        config: Config,
        *,
        client: VisionClient,
        dialect: Dialect,
        pool: ImagePool,
        base_dir: Path,
        now: Callable[[], datetime],
        prior_cost: Callable[[str], float | None],
    ) -> None:
        self.config = config
        self._client = client
        self._build_body = dialect.build_body
        self._pool = pool
        self._base_dir = base_dir
        self._now = now
        self._prior_cost = prior_cost
        images = config.images
        self._links_only = not config.images.inline_remote  # remote images are sent as their URL
        self._limits = ImageLimits(max_bytes=images.max_bytes, max_pixels=images.max_pixels, max_side=images.max_side)
        # Two calls per pool worker keep each busy while the other's result comes back. Downloads
        # (inline_remote) wait on the network, not a core: as many as requests may be in flight.
        self.tasks = (
            config.limits.concurrency if images.inline_remote else min(config.limits.concurrency, 2 * pool.workers)
        )
        # Rows ready ahead: two per request that may be in flight (and per pool worker), so workers
        # coming back together find rows while the preparers refill, instead of waiting on them.
        # A row carrying an inlined image counts for several: at most IMAGES_AHEAD of them wait
        # (about 16 MB of 768 px images), whatever the concurrency.
        self.capacity = 2 * max(pool.workers, config.limits.concurrency)
        self._image_weight = -(-self.capacity // IMAGES_AHEAD)  # rounded up: never more than IMAGES_AHEAD

    def weight(self, prepared: PreparedRow) -> int:
        """What ``prepared`` counts for in the ready queue (``capacity``)."""
        return self._image_weight if prepared.image is not None and prepared.image.inlined else 1

    async def run(self, items: Handoff[Item], ready: Handoff[PreparedRow], *, stopping: anyio.Event) -> None:
        """Prepare every row ``items`` gives (``self.tasks`` consumers of it) into ``ready``,
        which hears once all are handed on.

        Once ``stopping`` is set, preparations under way are abandoned at once: nothing is paid
        for them, and a slow decode or download must not hold up the stop (its grace period is
        for requests in flight).
        """
        try:
            async with anyio.create_task_group() as outer:
                outer.start_soon(_cancel_when_set, stopping, outer.cancel_scope)
                async with anyio.create_task_group() as tg:
                    for _ in range(self.tasks):
                        tg.start_soon(self._prepare_each, items, ready)
                outer.cancel_scope.cancel()
        finally:
            ready.producer_done()

    async def _prepare_each(self, items: Handoff[Item], ready: Handoff[PreparedRow]) -> None:
        try:
            while (item := await items.get()) is not None:
                prepared = await self.prepare_row(item)
                try:
                    await ready.put(prepared, weight=self.weight(prepared))
                except anyio.BrokenResourceError:
                    return  # every worker has stopped (the run is stopping)
        finally:
            items.consumer_done()

    async def prepare_row(self, item: Item) -> PreparedRow:
        """The per-row boundary for preparation: whatever happens ends in this row's ``PreparedRow``."""
        prior = self._prior_cost(item.id)
        try:
            if self._links_only and is_remote(item.url):
                image = PreparedImage(url=remote_url(item.url))  # sent as a link: nothing to wait for
            else:
                image = await self._inlined_image(item)
            body = self._build_body(self.config.request, image_url=image.url, fields=item.fields)
        except ImageUnreadableError as exc:
            row = result_row(
                item,
                finished_at=self._now(),
                prior_cost_usd=prior,
                status="error",
                error_type="image_unreadable",
                error_message=str(exc),
            )
            return PreparedRow(item, prior, row=row)
        except Exception as exc:  # noqa: BLE001 - an unusable image reference fails its row, not the run
            row = unexpected_error_row(item, exc, stage="prepare", finished_at=self._now(), prior_cost_usd=prior)
            return PreparedRow(item, prior, row=row)
        return PreparedRow(item, prior, body=body, image=image)

    async def _inlined_image(self, item: Item) -> PreparedImage:
        """A local file, or a remote image with ``images.inline_remote``, as a data: URL."""
        if is_remote(item.url):
            images = self.config.images
            data = await self._client.fetch_image(
                remote_url(item.url), max_bytes=images.max_bytes, timeout_s=images.download_timeout_s
            )
            return await self._pool.run(inline_bytes, data, limits=self._limits, source=item.url)
        # The path goes to the pool, not the bytes: the worker reads the file itself.
        return await self._pool.run(prepare_image, item.url, base_dir=self._base_dir, limits=self._limits)


async def _cancel_when_set(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
