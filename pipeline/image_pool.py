"""Where image preparation runs: worker processes on every core, or threads in this process.

Decoding, resizing and encoding a photo is tens of milliseconds of CPU; the event loop
must not do it, and one core cannot keep up with the rates providers allow.
``ProcessImagePool`` (production) runs it in ``workers`` processes, started lazily
and without the parent's threads (``forkserver``); ``ThreadImagePool`` runs it in
threads of this process (tests, and anything that cannot pickle its arguments).

Bounded by its callers: the preparer keeps a fixed number of calls outstanding, so
the queue, and the decoded images in it, do not grow with the manifest. A call that
is cancelled (the run stopping) returns at once; ``close`` ends the workers without
waiting for a decode in progress.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from typing import Any, Protocol, TypeVar

import anyio

from .errors import ImageUnreadableError

T = TypeVar("T")


def default_workers() -> int:
    """The cores this process may run on (a container's CPU set, not the host's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class ImagePool(Protocol):
    @property
    def workers(self) -> int: ...

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` off the event loop; its exception is raised here."""
        ...

    def close(self) -> None:
        """Stop the workers (a pool may be used again after: it starts anew)."""
        ...


class ThreadImagePool:
    """In-process: Pillow releases the GIL while it decodes, resizes and encodes."""

    def __init__(self, workers: int | None = None) -> None:
        self._workers = workers or default_workers()
        self._limiter: anyio.CapacityLimiter | None = None

    @property
    def workers(self) -> int:
        return self._workers

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        if self._limiter is None:  # made inside the event loop that uses it
            self._limiter = anyio.CapacityLimiter(self._workers)
        # abandon_on_cancel: a stop does not wait for a decode to finish; its result is dropped.
        return await anyio.to_thread.run_sync(
            partial(fn, *args, **kwargs), limiter=self._limiter, abandon_on_cancel=True
        )

    def close(self) -> None:
        self._limiter = None


def _ignore_interrupts() -> None:
    # Ctrl-C reaches the whole process group: the run's own stop path ends the workers
    # (close); a KeyboardInterrupt traceback from each of them would only be noise.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class ProcessImagePool:
    """``workers`` processes; the arguments and results cross by pickle (paths in, base64 out)."""

    def __init__(self, workers: int | None = None) -> None:
        self._workers = workers or default_workers()
        self._executor: ProcessPoolExecutor | None = None

    @property
    def workers(self) -> int:
        return self._workers

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            # forkserver: a fork of this process would copy its threads' locks mid-use (the
            # manifest reader, the simulator); spawn would re-import __main__ in every worker.
            context = multiprocessing.get_context("forkserver")
            self._executor = ProcessPoolExecutor(self._workers, mp_context=context, initializer=_ignore_interrupts)
        return self._executor

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        future = self._pool().submit(fn, *args, **kwargs)
        try:
            # Cancelling the wrapper cancels the submitted call if it has not started yet.
            return await asyncio.wrap_future(future)
        except BrokenProcessPool:
            # A worker died (a decoder crash, the OOM killer): this image's row fails, and the
            # next image gets a fresh pool instead of every later row failing the same way.
            self.close()
            raise ImageUnreadableError(
                "the image worker process died while preparing this image (a decoder crash or out of memory)"
            ) from None

    def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        # Not waiting: a 12 MP decode in progress would hold a stop up. The workers are ended
        # instead of being joined at interpreter exit, which would wait for their current call.
        processes = list((getattr(executor, "_processes", None) or {}).values())
        executor.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()
