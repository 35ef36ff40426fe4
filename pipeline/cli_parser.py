"""The ``caption`` command line: its subcommands, options and config overrides (argparse)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .config import override_flags, parse_override

RUN_EPILOG = """examples:
  caption run data/manifest.csv --out runs/demo --config configs/demo.toml --simulate
  caption run images.jsonl --out runs/night1 --model gpt-4o-mini --rpm 3000 --tpm 2000000
  caption run folder/ --out runs/labels --config configs/labels.toml --max-cost 25
Re-running the same command on the same --out resumes: finished rows are never sent again."""


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("config overrides (any config key, by its name)")
    for flag, dotted in sorted(override_flags().items()):
        group.add_argument(f"--{flag}", dest=f"override__{flag}", metavar="VALUE", help=dotted)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="caption", description="Batch image captioning against OpenAI-compatible vision endpoints."
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=0, help="debug log output (each flush, each stop)")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="caption a manifest (resumable)",
        epilog=RUN_EPILOG,
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("manifest", type=Path, help="CSV, TSV, JSONL, Parquet, a text list of images, or a folder")
    run.add_argument("--out", type=Path, required=True, help="output folder (results.parquet, journal/, run.json)")
    run.add_argument("--config", type=Path, help="TOML config (defaults fill what it leaves out)")
    run.add_argument(
        "--simulate", action="store_true", help="start the local simulator and run against it (no key, no network)"
    )
    run.add_argument(
        "--retry-errors", action="store_true", help="also retry rows whose earlier error was not retryable"
    )
    run.add_argument("--force", action="store_true", help="resume even though the request parameters changed")
    run.add_argument("--no-progress", action="store_true", help="no progress bar; a periodic log line instead")
    _add_overrides(run)

    est = sub.add_parser(
        "estimate",
        help="tokens, cost and duration before a run",
        parents=[common],
        epilog="examples:\n  caption estimate images.csv --config configs/default.toml\n"
        "  caption estimate images.csv --sample 50 --out runs/night1   # the sampled rows are not paid for again\n"
        "  caption estimate urls.txt --probe --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    est.add_argument("manifest", type=Path)
    est.add_argument("--config", type=Path)
    est.add_argument(
        "--sample", type=int, default=0, metavar="N", help="send N random rows and extrapolate with a 95%% interval"
    )
    est.add_argument(
        "--out", type=Path, help="keep the sampled results in this run folder (the full run then skips them)"
    )
    est.add_argument(
        "--probe", action="store_true", help="read the first bytes of remote images for their size (bounded)"
    )
    est.add_argument("--output-tokens", type=int, metavar="N", help="expected completion tokens per answer")
    est.add_argument("--seed", type=int, default=0, help="seed of the random sample")
    est.add_argument("--json", action="store_true", help="print one JSON object")
    est.add_argument("--simulate", action="store_true", help="sample against the local simulator")
    est.add_argument("--force", action="store_true", help="use --out even though its request parameters differ")
    _add_overrides(est)

    rep = sub.add_parser(
        "report",
        help="what a run did: counts, tokens, cost, latency, flags, errors; an HTML page",
        parents=[common],
        epilog="examples:\n  caption report runs/night1\n"
        "  caption report runs/night1 --html night1.html\n  caption report runs/night1 --json\n"
        "  caption report runs/night1 --html night1.html --remote-thumbnails   # remote images load in the page",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rep.add_argument("out", type=Path, metavar="DIR", help="a `caption run --out` folder (finished or not)")
    rep.add_argument("--json", action="store_true", help="print one JSON object")
    rep.add_argument("--html", type=Path, metavar="FILE", help="also write a self-contained HTML page with a gallery")
    rep.add_argument("--gallery", type=int, default=1000, metavar="N", help="at most N cards in the HTML gallery")
    rep.add_argument(
        "--remote-thumbnails",
        action="store_true",
        help="show remote images in the HTML gallery as lazy <img> tags (the page then loads them from their hosts)",
    )

    exp = sub.add_parser(
        "export",
        help="a run's ok rows as caption .txt files, JSONL, CSV or WebDataset shards",
        parents=[common],
        epilog="examples:\n  caption export runs/night1 --format txt            # photo.jpg -> photo.txt beside it\n"
        "  caption export runs/night1 --format txt --to captions/ --field tags\n"
        "  caption export runs/night1 --format webdataset --to shards/ --shard-size 1000\n"
        "  caption export runs/night1 --format jsonl --to exports/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    exp.add_argument("out", type=Path, metavar="DIR", help="a `caption run --out` folder (finished or not)")
    exp.add_argument("--format", required=True, choices=["txt", "jsonl", "csv", "webdataset"])
    exp.add_argument(
        "--to",
        type=Path,
        metavar="FOLDER",
        help="where to write (default: txt beside each image, jsonl/csv in DIR, webdataset in DIR/webdataset)",
    )
    exp.add_argument(
        "--field",
        default="caption",
        metavar="COLUMN",
        help="text from this column: caption (default) or a label column",
    )
    exp.add_argument(
        "--shard-size", type=int, default=1000, metavar="N", help="samples per WebDataset shard (default: 1000)"
    )
    exp.add_argument("--force", action="store_true", help="overwrite files an earlier export wrote")

    sim = sub.add_parser(
        "simulate",
        help="serve a local OpenAI-compatible vision endpoint",
        parents=[common],
        epilog="example: caption simulate --port 8000 --rpm 600 --latency-median 1.5 --fault 503=0.02",
    )
    sim.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed on start)")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--latency-median", type=float, default=0.5, help="seconds")
    sim.add_argument("--latency-p99", type=float, default=2.0, help="seconds")
    sim.add_argument("--rpm", type=int)
    sim.add_argument("--tpm", type=int)
    sim.add_argument("--burst-window", type=float, default=1.0, help="seconds of the short-window burst cap")
    sim.add_argument("--burst-factor", type=float, default=2.0)
    sim.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="KIND=RATE",
        help="inject a fault at a rate, e.g. 503=0.02 (kinds: 500 502 503 429 reset stall truncated "
        "nonjson nochoices invalid_image_url image_timeout filter_completion filter_prompt quota auth)",
    )
    sim.add_argument("--stall", type=float, default=30.0, help="seconds a 'stall' fault holds the response")
    sim.add_argument("--api-key-env", help="require the key held in this environment variable")
    sim.add_argument("--header-style", choices=["openai", "azure"], default="openai")
    sim.add_argument("--any-model", action="store_true", help="accept any model name")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--log", help="append one JSON line per request to this file")
    return parser


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    values = {}
    for name, raw in vars(args).items():
        if name.startswith("override__") and raw is not None:
            dotted, value = parse_override(name.removeprefix("override__"), raw)
            values[dotted] = value
    return values
