"""Found in review: each failed before its fix.

- a paid answer of an unpriced model outlives a stop (paid means answered, not priced);
- a run continued with --force under another label schema still folds its folder;
- quarantined parts never overwrite each other;
- only the default writer folds a folder shards share;
- a file merged away while a report reads the folder is not called damaged.
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime
from pathlib import Path

import anyio
import orjson
import polars as pl
import pytest

from pipeline.breaker import CircuitBreaker
from pipeline.budget import Budget
from pipeline.config import build_config
from pipeline.dialects import dialect_for
from pipeline.dispatch import OnlineExecutor
from pipeline.errors import FolderChangedError
from pipeline.executor import PreparedRequest, StopDispatch
from pipeline.images import PreparedImage
from pipeline.journal import Journal
from pipeline.labels import label_spec
from pipeline.models import Item, Reply, ResultRow
from pipeline.ratelimit import RateLimiter
from pipeline.tokens import TextCounter
from tests.conftest import FAST_CONFIG, remote_rows, run_args, run_cli, write_config, write_csv
from tests.test_journal_damage import _garble_column

OPENAI = dialect_for("openai")
SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "l",
        "schema": {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}},
    },
}


class _NotJsonClient:
    async def complete(self, body, *, payload=None):
        raw = orjson.dumps(
            {
                "id": "r1",
                "model": body["model"],
                "choices": [
                    {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "not json"}}
                ],
                "usage": {"prompt_tokens": 100, "completion_tokens": 5, "total_tokens": 105},
            }
        )
        return Reply(completion=OPENAI.parse_completion(raw), http_status=200, latency_s=0.1, headers={})


@pytest.mark.parametrize("model", ["gpt-4o", "my-unpriced-model"])
def test_an_answer_refused_by_the_label_check_is_kept_when_the_run_stops_priced_or_not(model):
    """The answer came back (billed), failed the schema, and the run stopped before its retry:
    the row is kept for both a priced and an unpriced model, so no resume pays again."""
    config = build_config(
        {
            "endpoint": {"base_url": "http://127.0.0.1:9"},
            "request": {"model": model, "response_format": SCHEMA},
            "limits": {"rpm": None, "tpm": None},
        }
    )
    stopping = [False]

    async def sleep(_: float) -> None:  # the retry's backoff: the run is told to stop meanwhile
        stopping[0] = True

    executor = OnlineExecutor(
        config,
        client=_NotJsonClient(),
        breaker=CircuitBreaker(),
        budget=Budget(max_cost_usd=None),
        limiter=RateLimiter(
            rpm=None, tpm=None, clock=time.monotonic, sleep=sleep, read_headers=OPENAI.rate_limit_headers
        ),
        text=TextCounter(),
        labels=label_spec(SCHEMA),
        stopping=lambda: stopping[0],
        sleep=sleep,
        rng=random.Random(0),
        now=lambda: datetime.now(UTC),
    )
    request = PreparedRequest(
        item=Item(id="x", url="https://e/x.jpg"),
        image=PreparedImage(url="https://e/x.jpg"),
        body=OPENAI.build_body(config.request, image_url="https://e/x.jpg", fields={}),
        key=None,
        prior_cost_usd=None,
    )

    async def go() -> StopDispatch:
        with pytest.raises(StopDispatch) as stop:
            await executor.execute(request)
        return stop.value

    stop = anyio.run(go)
    assert stop.row is not None and stop.row.status == "error" and stop.row.attempts == 1


def _labels(kind: str) -> str:
    return (
        f'\n[request.response_format]\ntype = "json_schema"\njson_schema = {{ name = "l", schema = {{ '
        f'type = "object", required = ["subject"], properties = {{ subject = {{ type = "{kind}" }} }} }} }}\n'
    )


def test_force_with_another_label_schema_still_folds_the_folder(simulator, tmp_path):
    """Run 1 labels `subject` as a string; run 2 (--force) says integer: the fold used to fail on every
    run after, run.json left 'running'. Now the old values that do not type are null, exit 0."""
    out = tmp_path / "out"
    first = write_config(tmp_path / "c1.toml", FAST_CONFIG + _labels("string"))
    second = write_config(tmp_path / "c2.toml", FAST_CONFIG + _labels("integer"))
    assert (
        run_cli(run_args(write_csv(tmp_path / "m1.csv", remote_rows(10)), out, first, simulator.base_url)).returncode
        == 0
    )
    manifest = write_csv(tmp_path / "m2.csv", remote_rows(20))
    result = run_cli(run_args(manifest, out, second, simulator.base_url, "--force"))
    assert result.returncode == 0, result.stderr
    frame = pl.read_parquet(out / "results.parquet")
    assert frame.height == 20 and frame.schema["subject"] == pl.Int64
    assert not list((out / "journal").glob("p*.parquet"))


def _row(i: int) -> ResultRow:
    return ResultRow(
        id=f"q{i}",
        url=f"https://x/{i}",
        status="ok",
        caption="c " * 50,
        attempts=1,
        finished_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


def test_a_second_quarantine_keeps_the_first_damaged_part(tmp_path):
    for run in range(2):
        with Journal(tmp_path) as journal:
            journal.write_rows([_row(run * 10 + i) for i in range(5)])
        _garble_column(next((tmp_path / "journal").glob("p*.parquet")), "caption")
        # Found by the next run's finalize (the writing run folds its own rows from memory).
        with Journal(tmp_path) as journal:
            journal.finalize()
    assert len(list((tmp_path / "journal" / "unreadable").iterdir())) == 2


def test_only_the_default_writer_folds_a_shared_folder(tmp_path):
    with Journal(tmp_path, writer_id="s1") as shard:
        shard.write_rows([_row(1)])
        shard.finalize()  # a shard leaves its parts for the coordinator
    assert not (tmp_path / "results.parquet").exists() and list((tmp_path / "journal").glob("p*-s1.parquet"))
    with Journal(tmp_path) as coordinator:
        coordinator.finalize()
    assert pl.read_parquet(tmp_path / "results.parquet")["id"].to_list() == ["q1"]


def test_a_part_gone_between_listing_and_reading_is_a_changed_folder_not_damage(tmp_path):
    with Journal(tmp_path) as journal:
        journal.write_rows([_row(1)])
    reader = Journal.reader(tmp_path)
    sources = reader._sources()  # listed ...
    for path in sources:
        Path(path).unlink()  # ... then merged away by a live run
    with pytest.raises(FolderChangedError):
        list(reader._iter_latest(sources))
