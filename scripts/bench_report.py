"""`caption report` on a large results file: wall time and peak memory, run by hand.

    python scripts/bench_report.py --rows 1000000

Writes a synthetic results.parquet with realistic columns (captions of ~120
characters, Azure filter JSON of ~400, a mix of statuses, eight hours of
finished_at), then times `caption report DIR --json` (and `--html`) in a child
process and reads the child's peak RSS. Target: under 10 s and 1 GiB.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import polars as pl  # noqa: E402

from pipeline.models import RESULT_SCHEMA  # noqa: E402

FILTER_JSON = json.dumps(
    {
        "prompt": [
            {
                "prompt_index": 0,
                "content_filter_results": {
                    c: {"filtered": False, "severity": "safe"} for c in ("hate", "self_harm", "sexual", "violence")
                },
            }
        ],
        "choices": [{c: {"filtered": False, "severity": "safe"} for c in ("hate", "self_harm", "sexual", "violence")}],
    }
)


def synthesize(path: Path, rows: int) -> None:
    start = datetime(2026, 11, 23, 0, 0, tzinfo=UTC)
    idx = pl.int_range(0, rows, eager=True)
    frame = pl.DataFrame({"i": idx}).with_columns(
        pl.format("row-{}", pl.col("i")).alias("id"),
        pl.format("https://images.example.com/big/{}.jpg", pl.col("i")).alias("url"),
        pl.when(pl.col("i") % 50 == 0)
        .then(pl.lit("error"))
        .when(pl.col("i") % 97 == 0)
        .then(pl.lit("filtered"))
        .otherwise(pl.lit("ok"))
        .alias("status"),
        pl.format(
            "A photograph of item {} ({}) standing near a window with soft light and {} objects around it.",
            pl.col("i"),
            (pl.col("i") * 2654435761 % 4294967296).cast(pl.String),
            (pl.col("i") * 40503 % 977),
        ).alias("caption"),
        pl.lit("gpt-4o-2024-08-06").alias("model"),
        pl.lit("stop").alias("finish_reason"),
        (800 + pl.col("i") % 400).alias("prompt_tokens"),
        (20 + pl.col("i") % 40).alias("completion_tokens"),
        (820 + pl.col("i") % 400 + pl.col("i") % 40).alias("total_tokens"),
        pl.lit(0).alias("cached_tokens"),
        pl.lit(0).alias("reasoning_tokens"),
        ((800 + pl.col("i") % 400) * 2.5e-6 + (20 + pl.col("i") % 40) * 1e-5).alias("cost_usd"),
        (pl.col("i") % 97 == 0).alias("flagged"),
        pl.when(pl.col("i") % 97 == 0)
        .then(pl.lit(["violence"]))
        .otherwise(pl.lit([], dtype=pl.List(pl.String)))
        .alias("flagged_categories"),
        pl.lit("safe").alias("max_severity"),
        pl.lit(FILTER_JSON).alias("filter_results"),
        pl.when(pl.col("i") % 50 == 0).then(pl.lit("server_error")).otherwise(None).alias("error_type"),
        pl.when(pl.col("i") % 50 == 0).then(pl.lit("HTTP 503 overloaded")).otherwise(None).alias("error_message"),
        pl.lit(200).alias("http_status"),
        (pl.col("i") % 50 == 0).alias("retryable"),
        pl.lit(1).alias("attempts"),
        (0.5 + (pl.col("i") * 7919 % 1000) / 250).alias("latency_s"),
        pl.format("chatcmpl-{}{}", (pl.col("i") * 2654435761 % 4294967296), pl.col("i")).alias("response_id"),
        (pl.lit(start) + pl.duration(milliseconds=pl.col("i") * 28)).alias("finished_at"),
    )
    # Columns added to the schema since (request_key, labels, ...): null, as older files read them.
    frame = frame.with_columns(
        pl.lit(None, dtype=dtype).alias(name) for name, dtype in RESULT_SCHEMA.items() if name not in frame.columns
    )
    frame.select(list(RESULT_SCHEMA)).cast(RESULT_SCHEMA).write_parquet(path)


def timed(args: list[str]) -> dict:
    """Wall time and the child's own peak RSS (GNU time's %M), one child per measurement."""
    t0 = time.perf_counter()
    result = subprocess.run(
        ["/usr/bin/time", "-f", "%M", sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, cwd=ROOT
    )
    wall = time.perf_counter() - t0
    peak_kb = int(result.stderr.strip().splitlines()[-1])
    return {"exit": result.returncode, "wall_s": round(wall, 2), "peak_rss_mb": round(peak_kb / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        out.mkdir()
        synthesize(out / "results.parquet", args.rows)
        size_mb = (out / "results.parquet").stat().st_size / 2**20
        json_run = timed(["report", str(out), "--json"])
        html_run = timed(["report", str(out), "--html", str(Path(tmp) / "r.html")])
        print(
            json.dumps(
                {"rows": args.rows, "results_mb": round(size_mb, 1), "report_json": json_run, "report_html": html_run}
            )
        )


if __name__ == "__main__":
    main()
