"""The manifest feed: rows read ahead in a thread, ids already done skipped, handed to the preparers.

The rows of a manifest that fails mid-run still go out; the failure is kept in
``error`` for the run to end with.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from .done_ids import DoneIds
from .errors import ManifestError
from .handoff import Handoff
from .models import Item, RunTotals

ChunkSource = Callable[[], Iterator[list[Item]]]
MANIFEST_CHUNK_ROWS = 256  # rows per manifest chunk (not the journal's part_rows)
_CHUNKS_PER_READ = 8  # manifest chunks read per trip to a thread
_READS_AHEAD = 2  # such reads kept ahead of the workers


def take_rows(chunks: Iterator[list[Item]], n: int, source: str) -> tuple[list[Item], ManifestError | None]:
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
    except Exception as exc:  # noqa: BLE001 - a reader bug must end the run cleanly, keeping what was read
        return rows, ManifestError(source, f"reading failed mid-run ({type(exc).__name__}: {exc})")
    return rows, None


class ManifestFeed:
    def __init__(
        self, chunks: ChunkSource, *, skip: DoneIds, stopping: anyio.Event, totals: RunTotals, source: str
    ) -> None:
        self._chunks = chunks
        self._skip = skip
        self._stopping = stopping
        self._totals = totals
        self._source = source
        self.error: ManifestError | None = None

    async def run(self, items: Handoff[Item]) -> None:
        """Hand the manifest's rows on, skipping ids already done; ``items`` hears when it is done."""
        blocks_send, blocks_recv = anyio.create_memory_object_stream[list[Item]](_READS_AHEAD)
        # The reader is cancelled before its queue closes: closing first would fail its pending send.
        try:
            with blocks_recv:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._read_blocks, blocks_send)
                    async for block in blocks_recv:
                        if not await self._hand_over_block(items, block):
                            break
                    tg.cancel_scope.cancel()
        finally:
            items.producer_done()

    async def _read_blocks(self, send: MemoryObjectSendStream[list[Item]]) -> None:
        # Read ahead, several chunks per trip to a thread: a trip costs an event-loop turn plus
        # GIL waits (~50 ms at concurrency 512), so one chunk per trip, read only after the last
        # was handed out, left workers idle: 19 of 20 rows were waited for.
        chunks = self._chunks()
        async with send:
            while not self._stopping.is_set():
                block, error = await anyio.to_thread.run_sync(take_rows, chunks, _CHUNKS_PER_READ, self._source)
                if block:
                    await send.send(block)
                if error is not None:
                    # Not a stop: the rows already read still go out; the run ends with this error.
                    self.error = ManifestError(
                        error.path,
                        f"{error.problem}; the rows before it were sent. "
                        "Fix the manifest and re-run the same command to resume",
                    )
                    return
                if not block:
                    return

    async def _hand_over_block(self, items: Handoff[Item], block: list[Item]) -> bool:
        """False once the run is stopping and no more rows should go out."""
        done = self._skip.among([item.id for item in block])
        for item in block:
            if item.id in done:
                self._totals.skipped += 1
                continue
            if self._stopping.is_set():
                return False
            try:
                await items.put(item)
            except anyio.BrokenResourceError:
                return False  # every preparer has stopped (the run is stopping)
        return True
