"""One bad row never ends a night: each crash trigger becomes that row's error and the run goes on.

Over ``httpx.MockTransport`` (chat and downloads in-process), so each test can hand the
pipeline exactly the hostile input or answer it is about.
"""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

import anyio
import httpx
import polars as pl
import pytest
from PIL import Image

from pipeline.client import Http, HttpxPoster
from pipeline.compose import build_runner
from pipeline.errors import JournalError, ManifestError
from pipeline.journal import Journal
from pipeline.manifest import chunk_source
from pipeline.models import Item, ResultRow
from tests.test_runner import make_config

BASE = "http://chat.test/v1"


def _png(shade: int = 30) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, shade % 256, 30)).save(buf, "PNG")
    return buf.getvalue()


def completion(caption: str = "a red square", usage: dict | None = None) -> dict:
    return {
        "id": "chatcmpl-t",
        "object": "chat.completion",
        "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": caption}}],
        "usage": usage or {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110},
    }


class Endpoint:
    """Answers chat POSTs (``answer(body) -> response``) and image downloads; counts the chat POSTs."""

    def __init__(self, answer=None) -> None:
        self.answer = answer or (lambda body: httpx.Response(200, json=completion()))
        self.posts: list[dict] = []
        self.requests: list[httpx.Request] = []  # the chat POSTs as sent: URL, headers

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/chat/completions"):
            body = json.loads(request.content)
            self.posts.append(body)
            self.requests.append(request)
            return self.answer(body)
        if request.url.path.startswith("/to-data"):
            return httpx.Response(
                302, headers={"location": "data:image/png;base64," + base64.b64encode(_png()).decode()}
            )
        # A different picture per path: identical downloads would be answered once (dedup).
        return httpx.Response(200, content=_png(sum(request.url.path.encode())), headers={"content-type": "image/png"})


def run(
    config,
    items_or_manifest,
    out: Path,
    endpoint: Endpoint,
    *,
    journal=None,
    base_dir: Path | None = None,
    api_key=None,
):
    """One run over the mock transport; returns (totals or the stop error, the rows recorded)."""
    if isinstance(items_or_manifest, Path):
        chunks = chunk_source(items_or_manifest, chunk_size=config.run.part_rows, url_column="url", id_column="id")
        total, base = 0, items_or_manifest if items_or_manifest.is_dir() else items_or_manifest.parent
    else:
        items = list(items_or_manifest)
        chunks, total, base = (lambda: iter([items])), len(items), out.parent

    async def go():
        async with httpx.AsyncClient(transport=httpx.MockTransport(endpoint)) as http:
            runner = build_runner(
                config,
                http=Http(client=http, poster=HttpxPoster(http, timeout_s=5)),
                journal=journal,
                chunks=chunks,
                base_dir=base_dir or base,
                total_rows=total,
                grace_s=2,
                api_key=api_key,
            )
            try:
                return await runner.run()
            except Exception as exc:  # noqa: BLE001 - the test inspects the stop reason
                return exc

    journal = journal or Journal(out)
    try:
        result = anyio.run(go)
    finally:
        journal.close()
    return result, Journal.reader(out).latest_frame()


def _config(**sections):
    return make_config(BASE, **sections)


def _by_id(frame: pl.DataFrame) -> dict[str, dict]:
    return {r["id"]: r for r in frame.to_dicts()}


GOOD = [Item(id=f"good-{i}", url=f"https://img.test/{i}.png") for i in range(5)]


@pytest.mark.parametrize(
    "url,why,status",
    [
        ("https://img.test/to-data.png", "redirected to a data: URL", "error"),
        ("http://[::1", "an unclosed IPv6 host", "error"),
        # httpx sends the credentials to the image host as Basic auth: a usable download.
        ("https://user:pass@img.test/creds.png", "credentials in the URL", "ok"),
    ],
)
def test_a_hostile_download_url_fails_its_row_only(tmp_path, url, why, status):
    """inline_remote: a download that cannot be made is the row's `image_unreadable`, never a crash."""
    endpoint = Endpoint()
    totals, frame = run(
        _config(images={"inline_remote": True}), [Item(id="bad", url=url), *GOOD], tmp_path / "out", endpoint
    )
    rows = _by_id(frame)
    assert not isinstance(totals, Exception), totals
    assert all(rows[i.id]["status"] == "ok" for i in GOOD), why
    bad = rows["bad"]
    assert bad["status"] == status, bad
    if status == "error":
        assert bad["error_type"] == "image_unreadable" and "InvalidURL" in bad["error_message"], bad
    assert len(endpoint.posts) == 5 + (status == "ok")


def test_a_nul_byte_in_a_local_path_fails_its_row_only(tmp_path):
    (tmp_path / "ok.png").write_bytes(_png())
    items = [Item(id="nul", url="bad\x00name.png"), Item(id="fine", url="ok.png")]
    endpoint = Endpoint()
    totals, frame = run(_config(), items, tmp_path / "out", endpoint, base_dir=tmp_path)
    rows = _by_id(frame)
    assert rows["fine"]["status"] == "ok"
    assert rows["nul"]["status"] == "error" and rows["nul"]["error_type"] == "image_unreadable"
    assert "null byte" in rows["nul"]["error_message"]
    assert len(endpoint.posts) == 1


@pytest.mark.skipif(os.name != "posix", reason="file names as raw bytes are a POSIX thing")
def test_a_file_name_that_is_not_utf8_in_a_folder_manifest(tmp_path):
    """A folder holding a file whose name is not valid UTF-8: the row is captioned and recorded
    (its url escaped), the flush does not fail, the other rows are kept."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "plain.png").write_bytes(_png())
    with open(os.path.join(os.fsencode(folder), b"caf\xe9.png"), "wb") as fh:
        fh.write(_png())
    endpoint = Endpoint()
    totals, frame = run(_config(), folder, tmp_path / "out", endpoint)
    assert not isinstance(totals, Exception), totals
    assert frame.height == 2 and (frame["status"] == "ok").all(), frame
    assert any("caf\\xe9.png" in url for url in frame["url"]), frame["url"].to_list()
    assert (tmp_path / "out" / "results.parquet").exists()


def test_a_row_parquet_cannot_hold_does_not_lose_its_batch(tmp_path):
    """A flushed batch holding a number past int64 and text that is not UTF-8: the other rows are
    written as they are, the bad number's row becomes an error that says why, the text is escaped."""
    from datetime import UTC, datetime

    def row(i: int, **values) -> ResultRow:
        values = {"url": f"https://img.test/{i}.png", **values}
        return ResultRow(
            id=f"r{i}",
            status="ok",
            caption=f"c{i}",
            cost_usd=0.01,
            attempts=1,
            finished_at=datetime(2026, 1, 1, tzinfo=UTC),
            **values,
        )

    rows = [row(0), row(1, prompt_tokens=2**64), row(2, url="caf\udce9.png"), row(3)]
    with Journal(tmp_path) as journal:
        journal.write_rows(rows)
        frame = journal.latest_frame()
    by_id = _by_id(frame)
    assert by_id["r0"]["caption"] == "c0" and by_id["r3"]["status"] == "ok"
    assert by_id["r1"]["status"] == "error" and by_id["r1"]["error_type"] == "invalid_response"
    assert "prompt_tokens" in by_id["r1"]["error_message"] and by_id["r1"]["cost_usd"] == 0.01
    assert by_id["r1"]["retryable"] is False  # paid for: a resume must not pay again
    assert by_id["r2"]["status"] == "ok" and by_id["r2"]["url"] == "caf\\xe9.png"


def test_an_answer_the_parser_chokes_on_is_that_rows_error(tmp_path):
    """Whatever the parser raises on (here: filter results nested 300 deep) is the answer's
    `invalid_response`, counted as a request, not an 'internal error' retried by every resume."""

    def nested(depth: int) -> dict:
        node: dict = {"filtered": False, "severity": "safe"}
        for _ in range(depth):
            node = {"hate": node}
        return node

    def answer(body):
        if "hostile" not in json.dumps(body):
            return httpx.Response(200, json=completion())
        reply = completion()
        reply["choices"][0]["content_filter_results"] = nested(3000)
        return httpx.Response(200, content=json.dumps(reply).encode(), headers={"content-type": "application/json"})

    items = [*GOOD, Item(id="deep", url="https://img.test/hostile.png")]
    totals, frame = run(_config(), items, tmp_path / "out", Endpoint(answer))
    rows = _by_id(frame)
    assert all(rows[i.id]["status"] == "ok" for i in GOOD)
    deep = rows["deep"]
    assert (deep["status"], deep["error_type"], deep["attempts"], deep["retryable"]) == (
        "error",
        "invalid_response",
        1,
        False,
    ), deep
    assert totals.requests == 6


def test_a_manifest_reader_failing_mid_run_ends_the_run_cleanly(tmp_path):
    """An unexpected error inside the manifest reader: the rows read before it are sent and kept,
    and the run ends with a ManifestError (exit 2) that says how to resume."""

    def chunks():
        yield GOOD[:3]
        raise RuntimeError("decoder exploded")

    config = _config()

    async def go(journal):
        async with httpx.AsyncClient(transport=httpx.MockTransport(Endpoint())) as http:
            runner = build_runner(
                config,
                http=Http(client=http, poster=HttpxPoster(http, timeout_s=5)),
                journal=journal,
                chunks=chunks,
                base_dir=tmp_path,
                total_rows=5,
                manifest_label="m.csv",
            )
            with pytest.raises(ManifestError, match="RuntimeError: decoder exploded.*re-run"):
                await runner.run()

    with Journal(tmp_path / "out") as journal:
        anyio.run(go, journal)
    assert sorted(pl.read_parquet(tmp_path / "out" / "results.parquet")["id"]) == ["good-0", "good-1", "good-2"]


class _FlakyJournal(Journal):
    """A journal whose first write fails with something other than a JournalError."""

    failures = 1

    def write_rows(self, rows: list[ResultRow]):
        if self.failures:
            self.failures -= 1
            raise RuntimeError("the disk controller hiccuped")
        return super().write_rows(rows)


def test_a_flush_that_fails_keeps_its_rows(tmp_path):
    """A flush that raises keeps its rows: the final flush writes them; nothing paid is lost."""
    out = tmp_path / "out"
    items = [Item(id=f"f{i}", url=f"https://img.test/f{i}.png") for i in range(30)]
    endpoint = Endpoint()
    result, frame = run(_config(run={"part_rows": 10}), items, out, endpoint, journal=_FlakyJournal(out))
    assert isinstance(result, JournalError) and "hiccuped" in str(result)
    answered = len(endpoint.posts)
    assert frame.height == answered, f"{answered} answers paid for, {frame.height} recorded"
