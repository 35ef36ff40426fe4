"""What the simulator saw: counts by status and fault, requests per image, the accepted timeline,
tokens charged, requests held, and the JSONL request log (one line per request).

Shared by the server thread (which records) and tests or benchmarks (which read it, or block on
it with ``wait_until``: a condition variable, never a sleep loop).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TextIO

import orjson


class Ledger:
    def __init__(self, *, clock: Callable[[], float], log_path: str | None) -> None:
        self.lock = threading.Condition()  # also guards the app's limiter and ids
        self._clock = clock
        self._started = clock()
        self._by_status: Counter[str] = Counter()
        self._by_fault: Counter[str] = Counter()
        self._per_image: Counter[str] = Counter()
        self._timeline: list[float] = []
        self._requests = 0
        self._held = 0
        self._prompt_tokens = 0
        self._charged_tokens = 0  # what the TPM limit counted for accepted requests: prompt + max_tokens
        self._log: TextIO | None = open(log_path, "a", buffering=1) if log_path else None

    def stats(self, *, images: bool = False, timeline: bool = False) -> dict[str, Any]:
        with self.lock:
            out: dict[str, Any] = {
                "requests": self._requests,
                "held": self._held,
                "by_status": dict(self._by_status),
                "by_fault": dict(self._by_fault),
                "accepted": self._by_status.get("200", 0),
                "prompt_tokens": self._prompt_tokens,
                "charged_tokens": self._charged_tokens,
                "uptime_s": self._clock() - self._started,
            }
            if images:
                out["images"] = dict(self._per_image)
            if timeline:
                out["timeline"] = list(self._timeline)
            return out

    def seen(self, key: str) -> int:
        with self.lock:
            return self._per_image[key]

    def wait_until(self, predicate: Callable[[dict[str, Any]], bool], timeout_s: float) -> bool:
        """Block the calling thread until ``predicate(stats)`` holds (True) or the timeout (False)."""
        deadline = time.monotonic() + timeout_s
        with self.lock:
            while not predicate(self.stats(images=True)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.lock.wait(remaining)
            return True

    def holding(self, delta: int) -> None:
        """Count requests held by the 'slow' rule, so a test can wait until they are all in flight."""
        with self.lock:
            self._held += delta
            self.lock.notify_all()

    def record(
        self,
        status: int,
        *,
        key: str | None,
        fault: str | None,
        tokens: int = 0,
        extras: tuple[tuple[str, Any], ...] = (),
        charged: int = 0,
        admitted_at: float | None = None,
    ) -> None:
        with self.lock:
            self._requests += 1
            self._by_status[str(status)] += 1
            if fault:
                self._by_fault[fault] += 1
            if key is not None:
                self._per_image[key] += 1
            if status == 200:
                # When the limiter admitted it, not when it was answered: latency would blur the rate.
                self._timeline.append((admitted_at if admitted_at is not None else self._clock()) - self._started)
                self._prompt_tokens += tokens
                self._charged_tokens += charged
            self.lock.notify_all()
        if self._log is not None:
            entry = {
                "t": round(time.time(), 4),
                "status": status,
                "image": key,
                "fault": fault,
                "prompt_tokens": tokens,
            }
            self._log.write(orjson.dumps({**entry, **dict(extras)}).decode() + "\n")

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
