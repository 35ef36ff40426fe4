"""The runner on virtual time: pacing, retries and backoff measured in seconds that never pass.

The clock and sleep go in through ``compose.build_runner``; the endpoint is an
in-process ``httpx.MockTransport``. A minute of pacing takes well under a second.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import httpx
import polars as pl

from pipeline.client import Http, HttpxPoster
from pipeline.compose import build_runner
from pipeline.fakes import VirtualClock
from pipeline.journal import Journal
from pipeline.models import Item
from tests.test_row_boundary import BASE, completion
from tests.test_runner import make_config


def _run_virtual(config, items, out, answer):
    clock = VirtualClock()
    sent: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(clock.now)
        return answer(len(sent))

    def now() -> datetime:
        return datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=clock.now)

    result = {}

    async def main() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            with Journal(out) as journal:
                runner = build_runner(
                    config,
                    http=Http(client=http, poster=HttpxPoster(http, timeout_s=60)),
                    journal=journal,
                    chunks=lambda: iter([items]),
                    base_dir=out.parent,
                    total_rows=len(items),
                    clock=clock,
                    sleep=clock.sleep,
                    now=now,
                    wall_clock=lambda: 1.7e9 + clock.now,
                )
                result["totals"] = await runner.run()

    started = time.monotonic()
    clock.run(main)
    return result["totals"], sent, time.monotonic() - started


def test_pacing_at_600_rpm_takes_virtual_seconds_not_real_ones(tmp_path):
    """120 requests at rpm 600 are spread over ~12 virtual seconds, evenly, with no burst."""
    items = [Item(id=f"v{i}", url=f"https://img.test/{i}.png") for i in range(120)]
    config = make_config(BASE, limits={"rpm": 600, "tpm": None, "concurrency": 16})
    totals, sent, _ = _run_virtual(config, items, tmp_path / "out", lambda n: httpx.Response(200, json=completion()))
    assert totals.ok == 120
    span = sent[-1] - sent[0]
    assert 11.0 <= span <= 12.5, span
    assert max(b - a for a, b in zip(sent, sent[1:], strict=False)) < 0.5  # evenly paced, no pause
    assert pl.read_parquet(tmp_path / "out" / "results.parquet").height == 120


def test_a_retry_after_is_honoured_on_virtual_time(tmp_path):
    """A 503 asking for 30 s: the retry goes out 30 virtual seconds later, and the row ends ok."""
    items = [Item(id="r", url="https://img.test/r.png")]
    config = make_config(BASE, limits={"rpm": None, "tpm": None, "concurrency": 1})

    def answer(n: int) -> httpx.Response:
        if n == 1:
            return httpx.Response(
                503, json={"error": {"message": "overloaded", "type": "server_error"}}, headers={"retry-after": "30"}
            )
        return httpx.Response(200, json=completion())

    totals, sent, _ = _run_virtual(config, items, tmp_path / "out", answer)
    assert totals.ok == 1 and len(sent) == 2
    assert 29.9 <= sent[1] - sent[0] <= 30.5
