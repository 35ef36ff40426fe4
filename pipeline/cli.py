"""The ``caption`` command: parse options, build one frozen config, run, map errors to exit codes.

The only module that reads the environment (the API key, by the variable name
the config gives) and the only one that builds production dependencies.

Exit codes: 0 all rows ok/filtered; 1 some rows error; 2 bad usage, config or
manifest (nothing sent); 3 stopped early (auth/quota/model, budget, breaker;
resumable); 130 interrupted (resumable).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any

import anyio

from . import event_loop
from .cli_parser import config_overrides, parse_args
from .config import Config, load_config
from .errors import ConfigError, InterruptedRunError, ManifestError, PipelineError
from .journal import Journal
from .manifest import inspect_manifest
from .models import RunTotals
from .progress import BarProgress, LogProgress, NoProgress, Progress
from .providers import PROVIDERS, endpoint_host
from .request import missing_columns
from .secrets import Scrubber, ScrubbingFilter

log = logging.getLogger("caption")


def _setup_logging(verbosity: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbosity >= 1 else logging.INFO)
    log.propagate = False


def _api_key(config: Config, *, simulate: bool) -> tuple[str | None, Scrubber]:
    """The key from the environment, stripped once here (HTTP sends it stripped, so it is
    used and masked stripped everywhere), and the scrubber that masks it as given and stripped."""
    raw = os.environ.get(config.endpoint.api_key_env) or ""
    key = raw.strip() or None
    if key is not None and any(c in key for c in "\r\n\0"):
        raise ConfigError(
            f"the API key in ${config.endpoint.api_key_env} contains a line break or NUL: "
            "it cannot be sent in a header; set the variable to the key alone",
            key="endpoint.api_key_env",
            path=config.source,
        )
    required = PROVIDERS[config.endpoint.provider].key_required
    if key is None and required and not simulate and not _is_loopback(config.endpoint.base_url):
        raise ConfigError(
            f"no API key for provider '{config.endpoint.provider}': set the environment variable "
            f"{config.endpoint.api_key_env} (or point endpoint.api_key_env at the variable that holds it)",
            key="endpoint.api_key_env",
            path=config.source,
        )
    return key, Scrubber([raw])


def _mask_output(args: argparse.Namespace, scrubber: Scrubber) -> None:
    """From here on, log records and the final error line pass the scrubber."""
    args.scrubber = scrubber
    for handler in log.handlers:
        handler.addFilter(ScrubbingFilter(scrubber))


def _is_loopback(url: str) -> bool:
    host = url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def _progress(total: int, *, no_progress: bool) -> Progress:
    if no_progress or not sys.stderr.isatty():
        return LogProgress(total=total) if total > 0 else NoProgress()
    return BarProgress(total=total)


def _load_inputs(args: argparse.Namespace) -> tuple[Config, Any]:
    """Config, then the manifest and the prompt's placeholders: all refused before anything is sent."""
    # The only environment the config sees: variables that may name a provider's base URL.
    environ = {name: os.environ[name] for name in ("OPENAI_BASE_URL",) if os.environ.get(name)}
    config = load_config(args.config, overrides=config_overrides(args), environ=environ)
    _check_label_schema(config)
    info = inspect_manifest(args.manifest, url_column=config.manifest.url_column, id_column=config.manifest.id_column)
    for template, key in ((config.request.prompt, "request.prompt"), (config.request.system or "", "request.system")):
        missing = missing_columns(template, [*info.columns, config.manifest.url_column, config.manifest.id_column])
        if missing:
            raise ManifestError(
                str(args.manifest),
                f"{key} uses {{{missing[0]}}} but the manifest has no such column (columns: {', '.join(info.columns)})",
            )
    return config, info


@contextlib.contextmanager
def _endpoint(config: Config, *, simulate: bool) -> Iterator[Config]:
    """The config pointed at the in-process simulator when --simulate, else as given."""
    if not simulate:
        yield config
        return
    from .simulator import SimConfig, SimulatorApp, SimulatorServer

    app = SimulatorApp(SimConfig(latency_median_s=0.05, latency_p99_s=0.4, accept_any_model=True))
    with SimulatorServer(app, log_level="error") as sim:
        log.info("simulator listening on %s", sim.base_url)
        yield _with_base_url(config, sim.base_url)


def cmd_run(args: argparse.Namespace) -> int:
    from .run_meta import check_resume

    config, info = _load_inputs(args)
    _check_budget_is_priced(config)
    api_key, scrubber = _api_key(config, simulate=args.simulate)
    _mask_output(args, scrubber)
    with Journal(args.out) as journal:
        check_resume(journal, config, force=args.force)
        with _endpoint(config, simulate=args.simulate) as config:
            return event_loop.run(_run_async, config, args, info.ids, journal, api_key)


def _check_label_schema(config: Config) -> None:
    import jsonschema

    from .labels import label_spec

    try:
        label_spec(config.request.response_format)
    except jsonschema.SchemaError as exc:
        raise ConfigError(
            f"not a valid JSON schema: {exc.message}", key="request.response_format", path=config.source
        ) from None


def _check_budget_is_priced(config: Config) -> None:
    from .cost import is_priced

    if config.limits.max_cost_usd is None or is_priced(config):
        return
    model = config.request.model
    raise ConfigError(
        f"limits.max_cost_usd needs a price for model '{model}': add [pricing.\"{model}\"] "
        "with input and output (USD per 1M tokens)",
        key="limits.max_cost_usd",
        path=config.source,
    )


def _with_base_url(config: Config, base_url: str) -> Config:
    import dataclasses

    return dataclasses.replace(config, endpoint=dataclasses.replace(config.endpoint, base_url=base_url))


async def _run_until_stopped(runner: Any) -> PipelineError | None:
    """Run with Ctrl-C / SIGTERM turned into a graceful stop; the stop reason is returned, not raised."""
    stopped: PipelineError | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(_stop_on_signals, runner)
        try:
            await runner.run()
        except PipelineError as exc:
            # Returned outside the task group, or anyio would wrap it in an ExceptionGroup.
            stopped = exc
        finally:
            tg.cancel_scope.cancel()
    return stopped


async def _run_async(
    config: Config, args: argparse.Namespace, total_rows: int, journal: Journal, api_key: str | None
) -> int:
    from .client import open_http
    from .compose import build_runner
    from .feed import MANIFEST_CHUNK_ROWS
    from .manifest import base_dir, chunk_source

    chunks = chunk_source(
        args.manifest,
        chunk_size=MANIFEST_CHUNK_ROWS,
        url_column=config.manifest.url_column,
        id_column=config.manifest.id_column,
    )
    # Said before anything is sent: where the key is about to go, and which folder this run holds.
    log.info(
        "run: %d rows, model %s at %s; results in %s (locked by pid %d)",
        total_rows,
        config.request.model,
        endpoint_host(config.endpoint.base_url),
        journal.out_dir,
        os.getpid(),
    )
    async with open_http(
        concurrency=config.limits.concurrency,
        timeout_s=config.endpoint.timeout_s,
        endpoint_url=config.endpoint.base_url,
    ) as http:
        runner = build_runner(
            config,
            http=http,
            journal=journal,
            api_key=api_key,
            chunks=chunks,
            base_dir=base_dir(args.manifest),
            total_rows=total_rows,
            manifest_label=str(args.manifest),
            retry_errors=args.retry_errors,
            scrubber=args.scrubber,
            progress=_progress(total_rows, no_progress=args.no_progress),
        )
        stopped = await _run_until_stopped(runner)
    errors, not_retried = _error_rows(journal)
    _print_summary(runner, journal, stopped=stopped, not_retried=0 if args.retry_errors else sum(not_retried.values()))
    if not_retried and not args.retry_errors:
        kinds = ", ".join(f"{kind} {n}" for kind, n in not_retried.items())
        _say(
            f"caption: {sum(not_retried.values())} rows ended in errors that are not retried ({kinds}): "
            "re-run with --retry-errors to send them again"
        )
    if stopped is not None:
        raise stopped
    return 1 if errors else 0


# SIGHUP is what closing an ssh session sends: without it the process dies unflushed.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


async def _stop_on_signals(runner: Any) -> None:
    """The first signal stops the run gracefully; another one ends the wait for requests in flight."""
    with anyio.open_signal_receiver(*STOP_SIGNALS) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if runner.stop_reason is None:
                runner.request_stop(InterruptedRunError(f"interrupted by {name}; re-run the same command to resume"))
            else:
                if runner.in_flight:
                    log.warning("%s again: not waiting for %d request(s) in flight", name, runner.in_flight)
                runner.hurry()


def _error_rows(journal: Journal) -> tuple[int, dict[str, int]]:
    from .report import error_rows

    return error_rows(journal.out_dir)


def _print_summary(runner: Any, journal: Journal, *, stopped: PipelineError | None, not_retried: int) -> None:
    from .cost import format_usd

    totals: RunTotals = runner.totals
    verb = "stopped" if stopped else "finished"
    remaining = max(0, totals.total - totals.skipped - totals.done)
    if runner.budget.max_cost_usd is not None:
        folder = f" ({runner.budget.describe()} in this folder)"
    else:
        folder = f" ({format_usd(totals.folder_spent_usd)} in this folder)" if totals.spent_before_usd else ""
    cost = format_usd(totals.cost_usd) + folder if totals.priced else format_usd(None)
    # Skipped rows include errors a re-run does not retry: said apart, so "0 left" is not a mystery.
    skipped_errors = min(totals.skipped, max(0, not_retried - totals.errors_not_retried))
    skipped = f"{totals.skipped - skipped_errors} already done" + (
        f", {skipped_errors} errors not retried" if skipped_errors else ""
    )
    _say(
        f"caption: {verb}: {totals.done} rows this run (ok {totals.ok}, filtered {totals.filtered}, error {totals.error}, "
        f"flagged {totals.flagged}), {skipped}, {remaining} left; {totals.requests} requests, "
        f"{totals.prompt_tokens} prompt + {totals.completion_tokens} completion tokens, {cost}; "
        f"results: {journal.results_path}"
    )


def _say(line: str) -> None:
    """A line on stderr that cannot end the run: after SIGHUP the terminal may be gone (EIO), and
    the run's exit code, not a traceback, is what a supervisor must see."""
    try:
        print(line, file=sys.stderr, flush=True)
    except OSError:
        pass


def cmd_estimate(args: argparse.Namespace) -> int:
    """One model, or with --models the same sampled rows sent to each (estimate_run, compare)."""
    import functools

    from .compare import estimate_output, render_comparison_html
    from .estimate_run import EstimateJob, Sending, open_journals, plan, run_estimates, sample_images

    config, _ = _load_inputs(args)
    if args.sample < 0 or (args.output_tokens is not None and args.output_tokens < 1):
        raise ConfigError("--sample must be >= 0 and --output-tokens >= 1")
    configs, outs = plan(config, models=args.models, sample=args.sample, out=args.out, html=args.html)
    job = EstimateJob(
        manifest=args.manifest, sample=args.sample, seed=args.seed, probe=args.probe, output_tokens=args.output_tokens
    )
    sending = None
    if args.sample:
        api_key, scrubber = _api_key(config, simulate=args.simulate)
        _mask_output(args, scrubber)
        sending = Sending(api_key=api_key, scrubber=scrubber, run_until_stopped=_run_until_stopped)
    with contextlib.ExitStack() as stack:
        journals = open_journals(stack, configs, outs, force=args.force)
        with _endpoint(config, simulate=args.simulate and args.sample > 0) as sent_to:
            configs = [_with_base_url(c, sent_to.endpoint.base_url) for c in configs]
            estimates = event_loop.run(
                functools.partial(run_estimates, configs, job, journals=journals, sending=sending)
            )
    # A model whose sample stopped (unknown, refused) is named with why; the others' paid samples are shown.
    finished = [e for e in estimates if e.error is None]
    failed = [e.error for e in estimates if e.error is not None]
    html = args.html
    scrub = getattr(args, "scrubber", None) or Scrubber()
    why = {e.model: scrub(str(e.error)) for e in estimates if e.error is not None}
    if finished:  # printed before the page is written: a late write failure must not lose the paid table
        output = estimate_output(
            finished, configs[0], compared=args.models is not None, as_json=args.json, html=html, not_estimated=why
        )
        print(output, flush=True)
    for model, reason in why.items():
        _say(f"caption: {model}: not estimated: {reason}")
    if not finished:
        return failed[0].exit_code
    if html is not None:
        images = sample_images(finished[0].items, manifest=args.manifest, remote=args.remote_thumbnails)
        page = render_comparison_html(finished, images=images, title=f"caption estimate · {args.manifest}")
        try:
            html.write_text(page, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{html}: cannot write the page ({exc.strerror or exc})", key="--html") from exc
    return failed[0].exit_code if failed else 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import format_table, reading, report, to_json
    from .report_html import render_html

    if not args.out.is_dir():
        raise ConfigError(f"{args.out}: not a folder; give the --out folder of a `caption run`")
    # Checked before the report is computed: a typo in --html's folder is a one-line error, not a traceback.
    if args.html is not None and not args.html.parent.is_dir():
        raise ConfigError(f"{args.html.parent}: no such folder to write the page in", key="--html")
    if args.html is not None and args.html.is_dir():
        raise ConfigError(f"{args.html}: is a folder; give the page's file name", key="--html")
    summary = report(args.out)
    if args.html is not None:
        page = reading(
            args.out,
            lambda: render_html(
                args.out, summary, gallery_limit=args.gallery, remote_thumbnails=args.remote_thumbnails
            ),
        )
        args.html.write_text(page, encoding="utf-8")
        log.info("wrote %s", args.html)
    print(to_json(summary) if args.json else format_table(summary))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import ExportOptions, export_folder

    options = ExportOptions(
        format=args.format, to=args.to, field=args.field, force=args.force, shard_size=args.shard_size
    )
    print("\n".join(export_folder(args.out, options).lines()))
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from .simulator import FAULT_KINDS, SimConfig, SimulatorApp, SimulatorServer

    rates = {}
    for spec in args.fault:
        kind, _, rate = spec.partition("=")
        if kind not in FAULT_KINDS:
            raise ConfigError(f"unknown fault kind '{kind}' (kinds: {', '.join(FAULT_KINDS)})", key="--fault")
        try:
            rates[kind] = float(rate)
        except ValueError:
            raise ConfigError(f"'{spec}': the rate must be a number, e.g. {kind}=0.01", key="--fault") from None
    if not 0.0 <= args.cached_share <= 1.0:
        raise ConfigError(f"--cached-share must be between 0 and 1, got {args.cached_share}", key="--cached-share")
    api_key = os.environ.get(args.api_key_env) if args.api_key_env else None
    if args.api_key_env and not api_key:
        raise ConfigError(f"the environment variable {args.api_key_env} is not set", key="--api-key-env")
    sim_config = SimConfig(
        latency_median_s=args.latency_median,
        latency_p99_s=args.latency_p99,
        rpm=args.rpm,
        tpm=args.tpm,
        burst_window_s=args.burst_window,
        burst_factor=args.burst_factor,
        api_key=api_key,
        fault_rates=rates,
        stall_s=args.stall,
        header_style=args.header_style,
        profile=args.profile,
        accept_any_model=args.any_model,
        cached_share=args.cached_share,
        seed=args.seed,
        log_path=args.log,
    )
    server = SimulatorServer(
        SimulatorApp(sim_config), host=args.host, port=args.port, log_level="debug" if args.verbose else "warning"
    )
    # The actual port (--port 0 picks a free one) on a line scripts can read.
    where = server.base_url
    if args.profile == "azure":
        where = f"{server.root_url}/openai/deployments/<model> (api-version=2024-10-21; or {server.root_url}/openai/v1)"
    print(f"caption simulate ({args.profile}): listening on {where} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    server.serve_forever()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _setup_logging(args.verbose)
    handlers = {
        "run": cmd_run,
        "estimate": cmd_estimate,
        "report": cmd_report,
        "export": cmd_export,
        "simulate": cmd_simulate,
    }
    try:
        return handlers[args.command](args)
    except PipelineError as exc:
        # Printed outside the log, so masked here: a stop reason quotes the server's message.
        scrub = getattr(args, "scrubber", None) or Scrubber()
        for line in str(exc).splitlines() or [""]:  # several config errors: one line each
            _say(scrub(f"caption: error: {line}"))
        return exc.exit_code
    except KeyboardInterrupt:
        _say("caption: interrupted; re-run the same command to resume")
        return 130
