"""Clocks for tests and benchmarks: time that moves only when the code under test sleeps.

Production code never imports this module; it is in the package so every test
tier (and anyone embedding the runner) can drive the limiter, the retry loop and
the runner on virtual time through ``compose.build_runner(clock=..., sleep=...)``.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Awaitable, Callable

import anyio


async def _until_idle() -> None:
    """Return once no other task can run: all are waiting on an event, I/O, a thread or a sleep.

    anyio's ``wait_all_tasks_blocked`` polls every 0.1 s of real time while any task is
    runnable, which made each virtual step cost a tenth of a second; asyncio's ready queue
    says the same thing at once. (A private attribute, acceptable in a test fake; other
    loops fall back to anyio's poll.)
    """
    loop = asyncio.get_running_loop()
    ready = getattr(loop, "_ready", None)
    if ready is None:
        await anyio.wait_all_tasks_blocked()
        return
    await asyncio.sleep(0)
    while ready:
        await asyncio.sleep(0)


class FakeClock:
    """Time that moves only when someone sleeps (one sleeper at a time)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)
        await anyio.sleep(0)  # a real sleep lets other tasks run; so must this one


class VirtualClock:
    """Virtual time for many concurrent sleepers: when every task is blocked, jump to the earliest wake-up."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._seq = 0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await anyio.sleep(0)
            return
        event = anyio.Event()
        self._seq += 1
        heapq.heappush(self._sleepers, (self.now + seconds, self._seq, event))
        await event.wait()

    def run(self, main: Callable[[], Awaitable[object]]) -> None:
        """Run ``main`` to completion on virtual time (inside a fresh event loop)."""

        async def drive() -> None:
            done = anyio.Event()

            async def wrapped() -> None:
                await main()
                done.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(wrapped)
                while not done.is_set():
                    await _until_idle()
                    if done.is_set() or not self._sleepers:
                        continue
                    wake, _, event = heapq.heappop(self._sleepers)
                    self.now = max(self.now, wake)
                    event.set()

        anyio.run(drive)
