"""The image pool and the preparation stage: every core, ahead of dispatch, and stops that never hang."""

from __future__ import annotations

import io
import os
import select
import signal
import time
from pathlib import Path

import anyio
import httpx
import pytest
from PIL import Image

from pipeline.client import Http, HttpxPoster
from pipeline.compose import build_runner
from pipeline.errors import ImageUnreadableError, InterruptedRunError
from pipeline.image_pool import ProcessImagePool, ThreadImagePool
from pipeline.images import ImageLimits, prepare_image
from pipeline.journal import Journal
from pipeline.models import Item
from pipeline.simulator import SimConfig, SimulatorApp, SimulatorServer
from tests.conftest import run_args, start_cli, write_config, write_csv
from tests.test_row_boundary import Endpoint
from tests.test_runner import make_config

BASE = "http://chat.test/v1"


def _jpeg(path: Path, size=(1200, 900), seed: int = 0) -> Path:
    Image.effect_noise(size, 40 + seed).convert("RGB").save(path, format="JPEG", quality=90)
    return path


class StuckPool:
    """An in-process pool whose decodes never finish until cancelled: a stop must not wait for them."""

    def __init__(self, *, stuck_after: int) -> None:
        self.workers = 2
        self.started = 0
        self.closed = False
        self.busy = anyio.Event()  # set once a decode hangs
        self._inner = ThreadImagePool(2)
        self._stuck_after = stuck_after

    async def run(self, fn, /, *args, **kwargs):
        self.started += 1
        if self.started > self._stuck_after:
            self.busy.set()
            await anyio.sleep_forever()
        return await self._inner.run(fn, *args, **kwargs)

    def close(self) -> None:
        self.closed = True


def _runner(config, items, out: Path, pool, endpoint: Endpoint, http, journal):
    return build_runner(
        config,
        http=Http(client=http, poster=HttpxPoster(http, timeout_s=5)),
        journal=journal,
        chunks=lambda: iter([items]),
        base_dir=out.parent,
        total_rows=len(items),
        grace_s=30,
        image_pool=pool,
    )


def test_a_stop_ends_the_run_at_once_while_the_pool_is_decoding(tmp_path):
    """Decodes hang in the pool; a stop (as Ctrl-C / SIGTERM give) ends the run at once anyway (not
    after the 30 s grace, which is for requests in flight), the rows answered before it are written,
    and the run closes the pool."""
    for i in range(3):
        _jpeg(tmp_path / f"{i}.jpg", size=(64, 48), seed=i)
    items = [Item(id=f"r{i}", url=f"{i % 3}.jpg") for i in range(30)]
    pool, endpoint = StuckPool(stuck_after=3), Endpoint()
    config = make_config(BASE, limits={"concurrency": 4}, images={"dedup": False})
    journal = Journal(tmp_path / "out")

    async def go():
        async with httpx.AsyncClient(transport=httpx.MockTransport(endpoint)) as http:
            runner = _runner(config, items, tmp_path / "out", pool, endpoint, http, journal)
            answered, record = anyio.Event(), runner._record

            def recorded(row):  # as test_runner's interrupt test: know when the 3 answers are in
                record(row)
                if runner.totals.done == 3:
                    answered.set()

            runner._record = recorded
            async with anyio.create_task_group() as tg:

                async def stop_when_stuck() -> None:
                    await pool.busy.wait()
                    await answered.wait()
                    runner.request_stop(InterruptedRunError("test interrupt"))

                tg.start_soon(stop_when_stuck)
                with anyio.fail_after(10):  # a hang guard, not a timing
                    with pytest.raises(InterruptedRunError):
                        await runner.run()

    try:
        anyio.run(go)
    finally:
        journal.close()
    frame = Journal.reader(tmp_path / "out").latest_frame()
    assert pool.closed and frame.height == len(endpoint.posts) == 3
    assert set(frame["status"]) == {"ok"}


def test_a_failing_image_in_a_process_pool_is_its_rows_image_unreadable(tmp_path):
    """Through real worker processes: the good image is sent (resized), the cut one is its row's
    image_unreadable error (the exception crossed the process boundary), and the run goes on."""
    whole = _jpeg(tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    items = [Item(id="good", url="whole.jpg"), Item(id="cut", url="cut.jpg")]
    endpoint = Endpoint()
    config = make_config(BASE, images={"max_side": 300})
    pool = ProcessImagePool(1)
    journal = Journal(tmp_path / "out")

    async def go():
        async with httpx.AsyncClient(transport=httpx.MockTransport(endpoint)) as http:
            return await _runner(config, items, tmp_path / "out", pool, endpoint, http, journal).run()

    try:
        totals = anyio.run(go)
    finally:
        journal.close()
    rows = {r["id"]: r for r in Journal.reader(tmp_path / "out").latest_frame().to_dicts()}
    assert totals.ok == 1 and rows["good"]["status"] == "ok"
    assert rows["cut"]["error_type"] == "image_unreadable" and "broken or truncated" in rows["cut"]["error_message"]
    sent = endpoint.posts[0]["messages"][-1]["content"][-1]["image_url"]["url"]
    with Image.open(io.BytesIO(__import__("base64").b64decode(sent.split(",", 1)[1]))) as im:
        assert im.size == (300, 225)
    assert pool._executor is None  # closed by the run


def test_a_process_pool_call_cancelled_mid_work_returns_and_closes_without_waiting():
    """A call still running in a worker (30 s) is abandoned on cancel; close() ends the worker rather
    than waiting for it; the pool starts anew on the next call."""
    pool = ProcessImagePool(1)

    async def go():
        with anyio.fail_after(20):  # a hang guard: waiting for the call would take 30 s
            with anyio.move_on_after(0.5):
                await pool.run(time.sleep, 30)
            executor = pool._executor
            processes = list(executor._processes.values())
            pool.close()
            for process in processes:
                process.join(10)
                assert not process.is_alive()
            with pytest.raises(ImageUnreadableError, match="file not found"):
                await pool.run(prepare_image, "missing.jpg", base_dir=Path("/nonexistent"), limits=ImageLimits())
            pool.close()

    anyio.run(go)


def _tree(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        found.add(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except FileNotFoundError:
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False


def _wait_for_exit(pids: set[int], *, timeout_s: float) -> None:
    """Wait until each process has exited (a zombie counts): a pidfd becomes readable when its
    process exits, which is how an orphan's end is observed without polling its state."""
    poller, fds = select.poll(), []
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:  # gone already
            continue
        fds.append(fd)
        poller.register(fd, select.POLLIN)
    try:
        deadline = time.monotonic() + timeout_s
        pending = set(fds)
        while pending and (left := deadline - time.monotonic()) > 0:
            for fd, _ in poller.poll(left * 1000):
                pending.discard(fd)
                poller.unregister(fd)
    finally:
        for fd in fds:
            os.close(fd)


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs Linux /proc")
def test_sigterm_ends_a_cli_run_promptly_with_its_image_workers(tmp_path):
    """`caption run` over photos, SIGTERM while the pool is decoding: the run ends (exit 143 path, the
    answers so far written) and leaves no image worker process behind."""
    paths = [_jpeg(tmp_path / f"p{i}.jpg", size=(2400, 1800), seed=i) for i in range(3)]
    manifest = write_csv(tmp_path / "m.csv", [{"id": f"r{i}", "url": paths[i % 3].name} for i in range(200)])
    config = write_config(tmp_path / "c.toml", "[images]\nmax_side = 512\ndedup = false\nworkers = 2\n")
    app = SimulatorApp(SimConfig(latency_median_s=0.01, latency_p99_s=0.02, accept_any_model=True))
    with SimulatorServer(app, log_level="critical") as server:
        proc = start_cli(run_args(manifest, tmp_path / "out", config, server.base_url, "--rpm", "none"))
        try:
            assert app.wait_until(lambda s: s["accepted"] >= 3, timeout_s=60)
            tree = _tree(proc.pid) - {proc.pid}
            assert tree, "the image workers should be running"
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=30)  # a hang guard
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode != 0 and "Traceback" not in stderr, stderr
    _wait_for_exit(tree, timeout_s=10)
    assert not any(_alive(p) for p in tree), stderr
    assert app.stats()["accepted"] < 200


def test_images_workers_defaults_to_the_cores_and_refuses_nonsense():
    """[images] workers: unset is one process per core; 0, negative or not a number is a one-line config error."""
    from pipeline.config import build_config
    from pipeline.errors import ConfigError
    from pipeline.image_pool import default_workers

    assert build_config({}).images.workers is None
    assert ProcessImagePool(None).workers == default_workers() == len(os.sched_getaffinity(0))
    assert ProcessImagePool(3).workers == 3
    for bad in (0, -2, "four", 1.5):
        with pytest.raises(ConfigError, match="images.workers"):
            build_config({"images": {"workers": bad}})


def test_the_tpm_estimate_counts_the_image_at_the_size_it_is_sent(tmp_path):
    """A 1600x1200 photo sent at max_side 256 is paced (TPM) as a 256x192 image, not its file's size."""
    from pipeline.dialects import dialect_for
    from pipeline.ratelimit import RateLimiter
    from pipeline.tokens import image_tokens

    class RecordingLimiter(RateLimiter):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.prompt_tokens: list[int] = []

        async def acquire(self, prompt_tokens, completion_tokens=0):
            self.prompt_tokens.append(prompt_tokens)
            return await super().acquire(prompt_tokens, completion_tokens)

    _jpeg(tmp_path / "photo.jpg", size=(1600, 1200))
    model = "gpt-4.1-mini"  # a patch-rule model: the image's size sets its tokens
    limiter = RecordingLimiter(
        rpm=None, tpm=10_000_000, clock=time.monotonic, sleep=anyio.sleep,
        read_headers=dialect_for("openai").rate_limit_headers,
    )  # fmt: skip
    config = make_config(BASE, images={"max_side": 256}, request={"model": model})
    journal, endpoint = Journal(tmp_path / "out"), Endpoint()

    async def go():
        async with httpx.AsyncClient(transport=httpx.MockTransport(endpoint)) as http:
            runner = build_runner(
                config,
                http=Http(client=http, poster=HttpxPoster(http, timeout_s=5)),
                journal=journal,
                chunks=lambda: iter([[Item(id="p", url="photo.jpg")]]),
                base_dir=tmp_path,
                total_rows=1,
                limiter=limiter,
                image_pool=ThreadImagePool(1),
            )
            return await runner.run()

    try:
        anyio.run(go)
    finally:
        journal.close()
    sent, full = image_tokens(model, width=256, height=192), image_tokens(model, width=1600, height=1200)
    assert sent < full
    (counted,) = limiter.prompt_tokens
    assert sent < counted < full, (counted, sent, full)
