"""How good is `caption estimate --sample`? Coverage and error over many samples, run by hand.

    python scripts/bench_estimate.py --rows 1000 --sample 50 --seeds 20
    python scripts/bench_estimate.py --rows 1000 --sample 50 --seeds 20 --cached-share 0.63   # prompt caching

Builds a mixed manifest (inlined local images of several sizes, remote URLs of
stated sizes, prompts of varying length), runs it in full against the
simulator for the actual cost, then draws --seeds different samples and
reports how often the 95% interval covered the actual cost and the point
estimate's error. Also reports the formula-only estimate's input-token error.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import polars as pl  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline.simulator import SimConfig, SimulatorApp, SimulatorServer  # noqa: E402

SIZES = [(300, 200), (1024, 768), (2000, 1500), (4000, 3000), (640, 640), (800, 1600), (3000, 1000)]
CONFIG = '[request]\ndetail = "high"\nprompt = "Caption it. Context: {note}"\n[limits]\nrpm = 60000\ntpm = 100000000\nconcurrency = 32\n'


def caption(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, cwd=ROOT, check=False
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--sample", type=int, default=50)
    parser.add_argument("--seeds", type=int, default=20)
    # Answers report this share of each prompt as cached: the estimate must bill it at the cached price.
    parser.add_argument("--cached-share", type=float, default=0.0)
    args = parser.parse_args()
    for probed in (False, True):
        measure(args, probed=probed)


def measure(args: argparse.Namespace, *, probed: bool) -> None:
    """probed=False: remote images of unknown size (example.com); True: served by the simulator and --probe'd."""
    app = SimulatorApp(
        SimConfig(latency_median_s=0.005, latency_p99_s=0.02, accept_any_model=True, cached_share=args.cached_share)
    )
    with tempfile.TemporaryDirectory() as tmp_name, SimulatorServer(app, log_level="critical") as sim:
        tmp = Path(tmp_name)
        (tmp / "images").mkdir()
        local = []
        for i in range(14):
            w, h = SIZES[i % len(SIZES)]
            Image.new("RGB", (w, h), (i * 37 % 256, 90, 160)).save(tmp / "images" / f"i{i}.png")
            local.append(f"images/i{i}.png")
        rng = random.Random(5)
        rows = []
        for i in range(args.rows):
            host = sim.base_url.removesuffix("/v1") + "/images" if probed else "https://images.example.com/s"
            url = local[i % len(local)] if i % 3 == 0 else "{}/{}.png?size={}x{}".format(host, i, *rng.choice(SIZES))
            rows.append({"id": f"s{i:05d}", "url": url, "note": "x" * rng.randint(0, 120)})
        pl.DataFrame(rows).write_csv(tmp / "m.csv")
        (tmp / "c.toml").write_text(CONFIG)
        probe = ["--probe"] if probed else []
        if True:
            formula = json.loads(
                caption("estimate", str(tmp / "m.csv"), "--config", str(tmp / "c.toml"), "--json", *probe).stdout
            )
            caption(
                "run",
                str(tmp / "m.csv"),
                "--out",
                str(tmp / "full"),
                "--config",
                str(tmp / "c.toml"),
                "--base-url",
                sim.base_url,
                "--no-progress",
            )
            full = pl.read_parquet(tmp / "full" / "results.parquet")
            actual = full["cost_usd"].sum()
            covered, errors = 0, []
            for seed in range(args.seeds):
                est = json.loads(
                    caption(
                        "estimate",
                        str(tmp / "m.csv"),
                        "--config",
                        str(tmp / "c.toml"),
                        "--sample",
                        str(args.sample),
                        "--seed",
                        str(seed),
                        "--base-url",
                        sim.base_url,
                        "--json",
                        *probe,
                    ).stdout
                )
                low, high = est["interval_95"]
                covered += low <= actual <= high
                errors.append(abs(est["cost_usd"]["expected"] - actual) / actual)
        local_rows = full.filter(~pl.col("url").str.starts_with("http"))
        print(
            json.dumps(
                {
                    "remote_sizes": "probed" if probed else "unknown",
                    "rows": args.rows,
                    "sample": args.sample,
                    "seeds": args.seeds,
                    "cached_share": args.cached_share,
                    "actual_cost_usd": round(actual, 6),
                    "interval_coverage": covered / args.seeds,
                    "point_error_mean": round(sum(errors) / len(errors), 4),
                    "point_error_max": round(max(errors), 4),
                    "formula_only_expected_cost_usd": formula["cost_usd"]["expected"],
                    "formula_input_tokens": formula["input_tokens"],
                    "actual_input_tokens": int(full["prompt_tokens"].sum()),
                    "inlined_rows": local_rows.height,
                }
            )
        )


if __name__ == "__main__":
    main()
