"""The queue between a run's stages (feed → preparers → workers), cheap per row.

anyio's memory streams hand each item straight to a waiting task and wake it, and
a full stream wakes its producer for every item taken. With more workers than rows
ready (concurrency 512) every row cost a task switch, a checkpoint and an Event on
each side: a sixth of the run's CPU at zero latency. Here a producer that finds the
queue full sleeps until it has drained to half, then refills it in one turn, and a
consumer waits only when it is empty; the usual cost is a deque append and popleft.

Items have a weight (1 unless said): the capacity bounds their sum, so rows that
carry an inlined image can count for their size while plain rows count 1.

Ending: ``producer_done`` from each producer; once all have, consumers get None when
the queue is empty. ``consumer_done`` from each consumer; once all have, ``put``
raises ``anyio.BrokenResourceError`` (nobody will take the item: the run is stopping).
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

import anyio
import anyio.lowlevel

T = TypeVar("T")
_PUTS_PER_YIELD = 64  # puts that did not have to wait, between two turns given to other tasks


class Handoff(Generic[T]):
    def __init__(self, capacity: int, *, producers: int = 1, consumers: int = 1) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        self.capacity = capacity
        self._low_water = capacity // 2
        self._items: deque[tuple[T, int]] = deque()
        self._load = 0  # the sum of the queued items' weights
        self._producers = producers
        self._consumers = consumers
        self._getters: deque[anyio.Event] = deque()
        self._room: anyio.Event | None = None
        self._puts_since_yield = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def load(self) -> int:
        return self._load

    async def put(self, item: T, *, weight: int = 1) -> None:
        """Queue ``item``; waits while the queue is full (an item heavier than the whole
        capacity goes in once the queue is empty)."""
        while self._load and self._load + weight > self.capacity:
            if not self._consumers:
                raise anyio.BrokenResourceError
            if self._room is None:
                self._room = anyio.Event()
            await self._room.wait()
        if not self._consumers:
            raise anyio.BrokenResourceError
        self._items.append((item, weight))
        self._load += weight
        if self._getters:
            self._getters.popleft().set()
        self._puts_since_yield += 1
        if self._puts_since_yield >= _PUTS_PER_YIELD:
            # A producer refilling half the queue in one turn (1,024 rows at concurrency 512) would
            # otherwise hold the event loop, and put off its own cancellation, for ~10 ms.
            self._puts_since_yield = 0
            await anyio.lowlevel.checkpoint()

    async def get(self) -> T | None:
        """The next item; None once the queue is empty and every producer is done."""
        while not self._items:
            if not self._producers:
                return None
            woken = anyio.Event()
            self._getters.append(woken)
            try:
                await woken.wait()
            except anyio.get_cancelled_exc_class():  # the only way out of a wait that did not end it
                if woken.is_set():
                    self._wake_getter()  # the wake-up meant for this task goes to the next one
                else:
                    self._getters.remove(woken)
                raise
        item, weight = self._items.popleft()
        self._load -= weight
        if self._room is not None and self._load <= self._low_water:
            self._room.set()
            self._room = None
        return item

    def producer_done(self) -> None:
        self._producers -= 1
        if not self._producers:
            while self._getters:
                self._wake_getter()

    def consumer_done(self) -> None:
        self._consumers -= 1
        if not self._consumers and self._room is not None:
            self._room.set()  # producers waiting for room find nobody left and stop
            self._room = None

    def _wake_getter(self) -> None:
        if self._getters:
            self._getters.popleft().set()
