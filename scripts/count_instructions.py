"""CPU instructions per request, pipeline against the plain aiohttp loop: a figure that does not move
with the machine's load (run by hand; needs valgrind).

    python scripts/count_instructions.py --concurrency 64 --rows 5000

Timing ratios on a shared 2-core machine move by +-15% from run to run. Instructions do not: each
side runs under ``valgrind --tool=callgrind`` against the zero-latency simulator (its own process,
not traced), once with 1,000 requests and once with ``--rows``; the difference divided by the extra
requests leaves start-up and finalising out. It counts the client's user-space instructions only
(not the kernel's, not cache misses), so it is a proxy for the overhead mode's ratio, not the ratio.
Each side takes a few minutes; the two sides run in parallel.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE_ROWS = 1000


def one_side(what: str, rows: int, concurrency: int) -> None:
    """Inside valgrind: one plain loop or one pipeline run against a fresh simulator."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_throughput as bench

    sim = bench.SimulatorProcess("--latency-median", "0", "--latency-p99", "0", "--any-model")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            manifest = bench.write_manifest(Path(tmp) / "m.csv", rows)
            if what == "loop":
                bench.run_aiohttp_loop(sim.base_url, manifest, concurrency=concurrency)
            else:
                bench.run_pipeline(sim.base_url, manifest, concurrency=concurrency)
    finally:
        sim.stop()


def traced(what: str, rows: int, concurrency: int, out_dir: Path) -> subprocess.Popen[str]:
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out_dir / f'{what}-{rows}.callgrind'}",
        sys.executable,
        __file__,
        "--side",
        what,
        "--rows",
        str(rows),
        "--concurrency",
        str(concurrency),
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)


def instructions(process: subprocess.Popen[str]) -> int:
    _, err = process.communicate()
    match = re.search(r"Collected : (\d+)", err)
    if process.returncode != 0 or match is None:
        raise SystemExit(f"valgrind run failed (exit {process.returncode}):\n{err[-2000:]}")
    return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--side", choices=["loop", "pipeline"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        one_side(args.side, args.rows, args.concurrency)
        return
    if args.rows <= BASE_ROWS:
        raise SystemExit(f"--rows must be more than {BASE_ROWS}")
    counts: dict[str, list[int]] = {"loop": [], "pipeline": []}
    with tempfile.TemporaryDirectory() as tmp:
        for rows in (BASE_ROWS, args.rows):
            running = {what: traced(what, rows, args.concurrency, Path(tmp)) for what in counts}
            for what, process in running.items():
                counts[what].append(instructions(process))
    per_request = {what: (c[1] - c[0]) / (args.rows - BASE_ROWS) for what, c in counts.items()}
    print(
        f"concurrency {args.concurrency}: instructions per request, pipeline {per_request['pipeline']:,.0f}, "
        f"plain aiohttp loop {per_request['loop']:,.0f}; loop / pipeline = "
        f"{per_request['loop'] / per_request['pipeline']:.3f}"
    )


if __name__ == "__main__":
    main()
