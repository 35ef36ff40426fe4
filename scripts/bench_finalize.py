"""What putting results.parquet in manifest order costs at finalize: time and peak memory.

Builds a folder of journal parts (256 rows each) in completion order, then times
finalize in a fresh process per case and reports the ratio to folding alone (the
finalize before rows were ordered):

    .venv/bin/python scripts/bench_finalize.py --rows 200000 --repeat 3

Cases: ``near`` (completion order: manifest order with a jitter of ``--jitter`` rows,
as concurrent workers give), ``shuffled`` (the worst case: every output block reads
every row group), ``sorted`` (parts flushed in manifest order; the fold still reads the
newest part first, so the file is ordered block by block, not a rename). Run by hand; no
assertions.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.journal import Journal
from pipeline.models import ResultRow
from pipeline.parquet_files import write_in_row_groups

FILTERS = json.dumps({"prompt": [{"content_filter_results": {k: {"filtered": False} for k in "abcd"}}]})


def build(folder: Path, *, rows: int, case: str, jitter: int) -> None:
    order = list(range(rows))
    rng = random.Random(0)
    if case == "shuffled":
        rng.shuffle(order)
    elif case == "near":
        order.sort(key=lambda i: i + rng.uniform(0, jitter))
    now = datetime.now(UTC)
    journal = Journal(folder)
    for start in range(0, rows, 256):
        journal.write_rows(
            [
                ResultRow(
                    id=f"img-{i:09d}",
                    url=f"https://images.example.com/{i}.jpg",
                    status="ok",
                    caption=f"A photo of thing number {i} on a table near a window.",
                    prompt_tokens=300,
                    completion_tokens=20,
                    filter_results=FILTERS,
                    finished_at=now,
                    row=i,
                )
                for i in order[start : start + 256]
            ]
        )
    journal.close()


def measure(folder: Path, *, fold_only: bool) -> None:
    journal = Journal(folder)
    started = time.perf_counter()
    if fold_only:
        schema, tables = journal._latest_tables(journal._sources())
        write_in_row_groups(folder / "folded.parquet", schema, tables, compression="zstd", statistics=True)
    else:
        journal.finalize()
    elapsed = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": round(elapsed, 3), "peak_mb": round(peak_mb)}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--jitter", type=int, default=128, help="rows out of place in completion order")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--measure", choices=["fold", "finalize"])
    parser.add_argument("--folder", type=Path)
    args = parser.parse_args()
    if args.measure:
        measure(args.folder, fold_only=args.measure == "fold")
        return
    for case in ("sorted", "near", "shuffled"):
        results: dict[str, dict[str, float]] = {}
        with tempfile.TemporaryDirectory() as tmp:
            built = Path(tmp) / "built"
            build(built, rows=args.rows, case=case, jitter=args.jitter)
            for kind in ("fold", "finalize"):
                runs = []
                for attempt in range(args.repeat):  # the machine is shared: the fastest of a few
                    folder = Path(tmp) / f"{kind}{attempt}"
                    shutil.copytree(built, folder)
                    out = subprocess.run(
                        [sys.executable, __file__, "--measure", kind, "--folder", str(folder)],
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    runs.append(json.loads(out.stdout))
                    shutil.rmtree(folder)
                results[kind] = {
                    "seconds": min(r["seconds"] for r in runs),
                    "peak_mb": min(r["peak_mb"] for r in runs),
                }
        fold, final = results["fold"], results["finalize"]
        print(
            f"{case:9s} {args.rows} rows: fold {fold['seconds']:.2f}s {fold['peak_mb']} MB; "
            f"finalize (fold + order) {final['seconds']:.2f}s {final['peak_mb']} MB; "
            f"time x{final['seconds'] / fold['seconds']:.2f}, memory x{final['peak_mb'] / fold['peak_mb']:.2f}"
        )


if __name__ == "__main__":
    main()
