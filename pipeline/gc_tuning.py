"""The cyclic garbage collector, tuned for the length of a run.

A row allocates a few hundred container objects (bodies, parsed answers, rows,
coroutine frames) that live for milliseconds. At Python's default young-generation
threshold (700 allocations) the collector ran every two or three rows, and each
pass also visited whatever had just been promoted: 5% of the instructions and a
larger share of the time at zero latency (``scripts/bench_throughput.py overhead``).
During a run the threshold is raised so it runs ~30x less often; cycles are still
collected, and the young generation holds a few MB more at most.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

RUN_GEN0_THRESHOLD = 20_000


@contextmanager
def fewer_collections(gen0: int = RUN_GEN0_THRESHOLD) -> Iterator[None]:
    """The young-generation threshold at least ``gen0`` inside the block, as it was after."""
    before = gc.get_threshold()
    if before[0] == 0:  # automatic collection is off: leave it off
        yield
        return
    gc.set_threshold(max(before[0], gen0), *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)
