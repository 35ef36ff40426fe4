"""The ``caption`` command line: its subcommands, options and config overrides (argparse).

Every parser refuses abbreviations (``allow_abbrev=False``): a mistyped or future option
must be an error, not silently another one (``--mode batch`` is not ``--model batch``).
Each config override shows one name, its type or choices and its default, read from the
config schema; old and long names still work, hidden (``config.HIDDEN_FLAGS``).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeAlias, get_args, get_origin

from . import version
from .config import HIDDEN_FLAGS, SECTIONS, did_you_mean, override_flags, parse_override
from .errors import ConfigError, ConfigErrors

RUN_EPILOG = """examples:
  caption run data/manifest.csv --out runs/demo --config configs/demo.toml --simulate
  caption run images.jsonl --out runs/night1 --model gpt-4o-mini --rpm 3000 --tpm 2000000
  caption run data/manifest.csv --out runs/labels --config configs/labels.toml --max-cost 25
Re-running the same command on the same --out resumes: finished rows are never sent again."""

ESTIMATE_EPILOG = """examples:
  caption estimate images.csv --config configs/default.toml
  caption estimate images.csv --sample 50 --out runs/night1   # the sampled rows are not paid for again
  caption estimate urls.txt --probe --json
  caption estimate data/manifest.csv --config configs/demo.toml --simulate \\
      --models gpt-4o,gpt-4o-mini,gpt-4.1-mini --sample 10 --html compare.html
With --models and --out OUT, each model's sample is kept in OUT/<model>: a later
`caption run ... --model M --out OUT/<model>` does not send those rows again."""


def _metavar(tp: Any) -> str:
    """How a key's type reads in --help: choices in braces, else the kind of value."""
    args = [a for a in get_args(tp) if a is not type(None)]
    if get_origin(tp) is Literal:
        return "{" + ",".join(str(a) for a in get_args(tp)) + "}"
    if get_origin(tp) in (typing.Union, types.UnionType):
        if type(None) in get_args(tp) and len(args) == 1 and get_origin(args[0]) is Literal:
            return _metavar(args[0])[:-1] + ",none}"
        return "|".join(dict.fromkeys(_metavar(a) for a in args))
    if tp is bool:
        return "{true,false}"
    if get_origin(tp) in (dict, list):
        return "JSON"
    return {int: "INT", float: "NUMBER", str: "TEXT"}.get(tp, "VALUE")


def _default_text(dotted: str, value: Any) -> str:
    if value is None:
        return "no cap" if dotted == "limits.max_cost_usd" else "none"
    if value == "" and dotted.startswith("endpoint."):
        return "the provider's"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, str) else str(value)


def override_help(dotted: str) -> tuple[str, str]:
    """(metavar, help) of a config key's flag, from the schema: its type or choices and its default."""
    section, key = dotted.split(".", 1)
    cls = SECTIONS[section]
    tp = typing.get_type_hints(cls)[key]
    spec = next(f for f in dataclasses.fields(cls) if f.name == key)
    default = spec.default if spec.default_factory is dataclasses.MISSING else spec.default_factory()
    optional = type(None) in get_args(tp) and get_origin(tp) is not Literal
    unset = "; none unsets it" if optional and default is not None else ""
    # argparse formats help with %: a default such as a prompt may hold one.
    text = f"{dotted} (default: {_default_text(dotted, default)}{unset})".replace("%", "%%")
    return _metavar(tp), text


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("config overrides (any config key, by its name)")
    for flag, dotted in sorted(override_flags().items()):
        metavar, text = override_help(dotted)
        hidden = flag in HIDDEN_FLAGS
        group.add_argument(
            f"--{flag}", dest=f"override__{flag}", metavar=metavar, help=argparse.SUPPRESS if hidden else text
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="caption",
        description="Batch image captioning against OpenAI-compatible vision endpoints.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"caption {version()}")
    common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    common.add_argument("-v", "--verbose", action="count", default=0, help="debug log output (each flush, each stop)")
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parser(sub, common)
    _estimate_parser(sub, common)
    _report_parser(sub, common)
    _export_parser(sub, common)
    _simulate_parser(sub, common)
    return parser


Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _run_parser(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    run = sub.add_parser(
        "run",
        help="caption a manifest (resumable)",
        epilog=RUN_EPILOG,
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
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


def _estimate_parser(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    est = sub.add_parser(
        "estimate",
        help="tokens, cost and duration before a run; --models compares models on one sample",
        parents=[common],
        epilog=ESTIMATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
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
    est.add_argument(
        "--models",
        metavar="A,B,...",
        help="send the same sampled rows to each model and compare cost, duration and captions (needs --sample)",
    )
    est.add_argument(
        "--html", type=Path, metavar="FILE", help="write a page with each sampled image beside the captions"
    )
    est.add_argument(
        "--remote-thumbnails",
        action="store_true",
        help="in --html, show remote images by their URL (the page then loads them); off: offline-safe",
    )
    _add_overrides(est)


def _report_parser(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    rep = sub.add_parser(
        "report",
        help="what a run did: counts, tokens, cost, latency, flags, errors; an HTML page",
        parents=[common],
        epilog="examples:\n  caption report runs/night1\n"
        "  caption report runs/night1 --html night1.html\n  caption report runs/night1 --json\n"
        "  caption report runs/night1 --html night1.html --remote-thumbnails   # remote images load in the page",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
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


def _export_parser(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    exp = sub.add_parser(
        "export",
        help="a run's ok rows as caption .txt files, JSONL, CSV or WebDataset shards",
        parents=[common],
        epilog="examples:\n  caption export runs/night1 --format txt            # photo.jpg -> photo.txt beside it\n"
        "  caption export runs/night1 --format txt --to captions/ --field tags\n"
        "  caption export runs/night1 --format webdataset --to shards/ --shard-size 1000\n"
        "  caption export runs/night1 --format jsonl --to exports/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
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


def _simulate_parser(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    sim = sub.add_parser(
        "simulate",
        help="serve a local OpenAI-compatible vision endpoint",
        parents=[common],
        epilog="examples:\n  caption simulate --port 8000 --rpm 600 --latency-median 1.5 --fault 503=0.02\n"
        "  AZ_KEY=k caption simulate --profile azure --api-key-env AZ_KEY  # POST /openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
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
        help="inject a fault at a rate, e.g. 503=0.02 (kinds: 500 502 503 429 gateway_limit reset stall truncated "
        "nonjson nochoices invalid_image_url image_timeout filter_completion filter_prompt quota auth)",
    )
    sim.add_argument("--stall", type=float, default=30.0, help="seconds a 'stall' fault holds the response")
    sim.add_argument("--api-key-env", help="require the key held in this environment variable")
    sim.add_argument(
        "--profile",
        choices=["openai", "azure", "openrouter", "vllm", "litellm"],
        default="openai",
        help="the provider to imitate: its URLs, auth header, rate-limit headers, error bodies and model names",
    )
    sim.add_argument("--header-style", choices=["openai", "azure"], help="only the rate-limit headers' format")
    sim.add_argument("--any-model", action="store_true", help="accept any model name")
    sim.add_argument(
        "--cached-share",
        type=float,
        default=0.0,
        metavar="X",
        help="share of each prompt reported as cached_tokens (prompt caching), 0 to 1",
    )
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--log", help="append one JSON line per request to this file")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line parsed; an unknown option is an error that names the closest real one."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        known = [s for a in sub.choices[args.command]._actions for s in a.option_strings if s.startswith("--")]
        hints = [did_you_mean(x.split("=", 1)[0], known) for x in extra if x.startswith("--")]
        parser.error(f"unrecognized arguments: {' '.join(extra)}{next((h for h in hints if h), '')}")
    return args


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``section.key`` → value from the override flags given, every bad one reported at once; one key given
    under two names is refused."""
    values: dict[str, Any] = {}
    given: dict[str, str] = {}
    errors: list[ConfigError] = []
    for name, raw in vars(args).items():
        if name.startswith("override__") and raw is not None:
            flag = name.removeprefix("override__")
            try:
                dotted, value = parse_override(flag, raw)
            except ConfigError as exc:
                errors.append(exc)
                continue
            if dotted in given:
                errors.append(ConfigError(f"--{given[dotted]} and --{flag} set the same key; give one", key=dotted))
            given[dotted] = flag
            values[dotted] = value
    ConfigErrors.raise_if_any(errors)
    return values
