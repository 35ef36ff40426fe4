"""Identical requests answered once: in flight, earlier in this run, or by an earlier run in the folder.

A request is known by the hash of its body (image bytes or URL, rendered prompt,
parameters). The first row with a body is sent; rows with the same body wait
for its answer and copy it. The window is bounded (``DEDUP_WINDOW`` bodies,
~1.5 KB each); the folder's finished rows carry their key (``request_key``) so a
resumed run starts with the newest of them already known.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import anyio
import orjson

from .models import ResultRow

DEDUP_WINDOW = 20_000  # requests remembered; a duplicate further apart is sent again


def canonical_json(body: dict[str, Any]) -> bytes:
    """The body as JSON with its keys sorted: what ``request_key`` hashes, and what is sent (once
    serialized, a body is not serialized again for the POST)."""
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def request_key(payload: bytes) -> str:
    """Identical bodies (same image bytes or URL, same rendered prompt, same parameters) share a
    key: the hash of their ``canonical_json``."""
    return hashlib.blake2b(payload, digest_size=16).hexdigest()


class SharedRequest:
    """One request in flight whose answer rows with the same body wait for.

    The event is made by the first waiter: most requests have none, and an anyio
    Event per request is a measurable share of the per-row CPU.
    """

    __slots__ = ("key", "row", "finished", "_done")

    def __init__(self, key: str) -> None:
        self.key = key
        self.row: ResultRow | None = None
        self.finished = False
        self._done: anyio.Event | None = None

    async def wait(self) -> ResultRow | None:
        if not self.finished:
            if self._done is None:
                self._done = anyio.Event()
            await self._done.wait()
        return self.row

    def finish(self, row: ResultRow | None) -> None:
        self.row, self.finished = row, True
        if self._done is not None:
            self._done.set()


class RequestDedup:
    """The window of known requests: a ``SharedRequest`` while in flight, then only its row."""

    def __init__(self, *, window: int = DEDUP_WINDOW, seed: Iterable[ResultRow] = ()) -> None:
        self._window = window
        self._known: OrderedDict[str, SharedRequest | ResultRow] = OrderedDict()
        for row in seed:
            if row.request_key is not None:
                self._remember(row.request_key, row)

    def __len__(self) -> int:
        return len(self._known)

    def known(self, key: str) -> SharedRequest | ResultRow | None:
        found = self._known.get(key)
        if found is not None:
            self._known.move_to_end(key)
        return found

    def begin(self, key: str) -> SharedRequest:
        shared = SharedRequest(key)
        self._remember(key, shared)
        return shared

    def end(self, shared: SharedRequest, row: ResultRow | None) -> None:
        """The request's answer (None: it was not answered, and the next identical row sends it)."""
        shared.finish(row)
        key = shared.key
        if self._known.get(key) is shared:
            # Once answered, keep only the row: a waiter object per remembered request adds up.
            if row is None:
                del self._known[key]
            else:
                self._known[key] = row

    def _remember(self, key: str, value: SharedRequest | ResultRow) -> None:
        self._known[key] = value
        if len(self._known) > self._window:
            self._known.popitem(last=False)
