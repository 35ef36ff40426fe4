"""Throughput benchmark: the pipeline against the simulator, run by hand (never in the test suite).

    python scripts/bench_throughput.py overhead --rows 4000 --concurrency 64 512

overhead: a zero-latency simulator with no limits, in its own process (so its
CPU is not charged to the client). For each concurrency it runs the whole
pipeline (manifest → requests → parsing → Parquet journal) and a plain aiohttp
request loop against the same server, and prints requests/s, the pipeline's
rate as a ratio of the plain loop's, and client CPU per request.

Everything is on 127.0.0.1; every loop is bounded by --rows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class SimulatorProcess:
    """`caption simulate --port 0` in a subprocess; the port is read from its first line."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline", "simulate", "--port", "0", *args],
                                     stderr=subprocess.PIPE, text=True, cwd=ROOT)
        line = self.proc.stderr.readline()
        match = re.search(r"listening on (http://\S+)", line)
        if not match:
            self.stop()
            raise RuntimeError(f"the simulator did not start: {line!r}")
        self.base_url = match.group(1)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def write_manifest(path: Path, rows: int) -> Path:
    with open(path, "w") as fh:
        fh.write("id,url\n")
        for i in range(rows):
            fh.write(f"r{i:07d},https://images.example.com/bench/{i:07d}.jpg\n")
    return path


def run_pipeline(base_url: str, manifest: Path, *, concurrency: int, rpm: int | None = None, tpm: int | None = None,
                 extra: dict | None = None, transport: str = "aiohttp") -> dict:
    import anyio
    import httpx

    from pipeline.client import VisionClient, make_http_client
    from pipeline.config import build_config
    from pipeline.journal import Journal
    from pipeline.manifest import chunk_source, inspect_manifest
    from pipeline.ratelimit import RateLimiter
    from pipeline.runner import Runner, RunnerDeps

    data = {"endpoint": {"base_url": base_url, "timeout_s": 60},
            "limits": {"rpm": rpm, "tpm": tpm, "concurrency": concurrency},
            "run": {"chunk_size": 256, "flush_interval_s": 5}}
    for section, values in (extra or {}).items():
        data.setdefault(section, {}).update(values)
    config = build_config(data)
    out = Path(tempfile.mkdtemp(prefix="caption-bench-"))

    async def go():
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        http_transport = httpx.AsyncHTTPTransport(limits=limits) if transport == "httpx" else None
        async with make_http_client(concurrency=concurrency, timeout_s=60, transport=http_transport) as http:
            client = VisionClient(http, base_url=base_url, api_key=None, timeout_s=60)
            limiter = RateLimiter(rpm=rpm, tpm=tpm, clock=time.monotonic, sleep=anyio.sleep)
            deps = RunnerDeps(client=client, journal=Journal(out), limiter=limiter)
            chunks = chunk_source(manifest, chunk_size=256, url_column="url", id_column="id")
            runner = Runner(config, deps, chunks=chunks, base_dir=manifest.parent, total_rows=inspect_manifest(manifest).rows)
            return await runner.run()

    cpu0, t0 = cpu_s(), time.perf_counter()
    totals = anyio.run(go)
    wall, cpu = time.perf_counter() - t0, cpu_s() - cpu0
    shutil.rmtree(out, ignore_errors=True)
    return {"requests": totals.requests, "ok": totals.ok, "wall_s": wall, "cpu_s": cpu,
            "rps": totals.requests / wall, "cpu_ms_per_request": cpu / max(1, totals.requests) * 1000}


def run_aiohttp_loop(base_url: str, rows: int, *, concurrency: int) -> dict:
    """The reference: N POSTs with a bounded number in flight, reading each JSON reply, nothing else."""
    import aiohttp

    body = json.dumps({"model": "gpt-4o", "max_tokens": 300, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "Describe this image in one sentence."},
        {"type": "image_url", "image_url": {"url": "https://images.example.com/bench/0.jpg", "detail": "auto"}}]}]})

    async def go() -> int:
        done = 0
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(rows):
            queue.put_nowait(i)
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            async def worker() -> None:
                nonlocal done
                while not queue.empty():
                    queue.get_nowait()
                    async with session.post(base_url + "/chat/completions", data=body,
                                            headers={"Content-Type": "application/json"}) as resp:
                        await resp.json()
                        done += 1
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done

    cpu0, t0 = cpu_s(), time.perf_counter()
    done = asyncio.run(go())
    wall, cpu = time.perf_counter() - t0, cpu_s() - cpu0
    return {"requests": done, "wall_s": wall, "rps": done / wall, "cpu_ms_per_request": cpu / max(1, done) * 1000}


def overhead(args: argparse.Namespace) -> None:
    sim = SimulatorProcess("--latency-median", "0", "--latency-p99", "0", "--any-model")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            manifest = write_manifest(Path(tmp) / "m.csv", args.rows)
            for concurrency in args.concurrency:
                plain = run_aiohttp_loop(sim.base_url, args.rows, concurrency=concurrency)
                ours = run_pipeline(sim.base_url, manifest, concurrency=concurrency, transport=args.transport)
                print(json.dumps({
                    "mode": "overhead", "transport": args.transport, "rows": args.rows, "concurrency": concurrency,
                    "pipeline_rps": round(ours["rps"], 1), "aiohttp_loop_rps": round(plain["rps"], 1),
                    "ratio_to_aiohttp_loop": round(ours["rps"] / plain["rps"], 3),
                    "pipeline_cpu_ms_per_request": round(ours["cpu_ms_per_request"], 3),
                    "aiohttp_loop_cpu_ms_per_request": round(plain["cpu_ms_per_request"], 3),
                    "ok": ours["ok"],
                }), flush=True)
    finally:
        sim.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    o = sub.add_parser("overhead", help="zero-latency simulator, no limits: pipeline vs a plain aiohttp loop")
    o.add_argument("--rows", type=int, default=4000)
    o.add_argument("--concurrency", type=int, nargs="+", default=[64, 512])
    o.add_argument("--transport", choices=["aiohttp", "httpx"], default="aiohttp",
                   help="httpx's API over aiohttp (the default, httpx-aiohttp) or httpx's own transport")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONHASHSEED", "0")
    {"overhead": overhead}[args.mode](args)


if __name__ == "__main__":
    main()
