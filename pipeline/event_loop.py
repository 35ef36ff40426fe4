"""The event loop a run goes on: uvloop where it is installed, asyncio's own otherwise.

uvloop (libuv under asyncio's API, a dependency on Linux and macOS) schedules
callbacks and moves socket bytes in C: at zero latency it takes 8% of the
pipeline's instructions per request away (``scripts/bench_throughput.py overhead``,
README "Overhead"). Windows, and anyone who sets ``CAPTION_EVENT_LOOP=asyncio``
(to rule the loop out when chasing a problem), get the standard loop.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import anyio

T = TypeVar("T")


def backend_options(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """anyio's asyncio backend options: uvloop unless unavailable or turned off."""
    if environ.get("CAPTION_EVENT_LOOP", "").strip().lower() == "asyncio":
        return {}
    try:
        import uvloop  # noqa: F401 - imported to know it works, not only that it is installed
    except ImportError:
        return {}
    return {"use_uvloop": True}


def run(func: Callable[..., Awaitable[T]], *args: Any) -> T:
    """``anyio.run`` on the loop ``backend_options`` picks."""
    return anyio.run(func, *args, backend_options=backend_options())
