"""How long `caption export` takes on a finished folder of N rows (remote images, so txt names files by id):

    .venv/bin/python scripts/bench_export.py --rows 50000

Prints seconds and rows/s per format and peak memory of this process. Run by hand; no assertions.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.export import ExportOptions, export_folder
from pipeline.journal import Journal
from scripts.bench_finalize import build


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=50_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "run"
        build(folder, rows=args.rows, case="near", jitter=128)
        with Journal(folder) as journal:
            journal.finalize()
        for fmt in ("txt", "jsonl", "csv"):
            started = time.perf_counter()
            report = export_folder(folder, ExportOptions(format=fmt, to=Path(tmp) / fmt))  # type: ignore[arg-type]
            elapsed = time.perf_counter() - started
            print(f"{fmt:5s} {args.rows} rows: {elapsed:.2f}s ({args.rows / elapsed:,.0f} rows/s); {report.lines()[0]}")
    print(f"peak memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
