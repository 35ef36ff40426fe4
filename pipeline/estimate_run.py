"""Estimating by reading and sending: the formula pass over a manifest, and the sample through the runner,
for one model or the same sampled rows for several (``--models``).

The arithmetic is elsewhere (``estimate`` for the formula, ``estimate_sample`` for the sample); this
module reads the manifest, probes images, and sends the sample with the same runner a run uses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import random
import re
import tempfile
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from .client import Http, open_http, probe_image_size
from .compose import build_runner
from .config import Config
from .dedup import DEDUP_WINDOW
from .errors import ConfigError, PipelineError, RunStoppedError
from .estimate import FormulaTotals, row_formula, summarise
from .estimate_sample import Reservoir, sample_summary
from .feed import MANIFEST_CHUNK_ROWS
from .images import is_remote, local_image_size
from .journal import Journal
from .manifest import base_dir, chunk_source
from .models import Item
from .request import build_body
from .run_meta import check_resume, sample_meta
from .runner import Runner
from .secrets import Scrubber
from .tokens import TextCounter

Size = tuple[int, int] | None
Probe = Callable[[str], Awaitable[Size]]
# The CLI's way of running a runner: signals turn into a graceful stop, the reason is returned.
RunUntilStopped = Callable[[Runner], Awaitable[PipelineError | None]]


@dataclass(frozen=True, kw_only=True)
class EstimateJob:
    """What `caption estimate` was asked: the manifest, the sample and how to read it."""

    manifest: Path
    sample: int = 0
    seed: int = 0
    probe: bool = False
    output_tokens: int | None = None


@dataclass(frozen=True, kw_only=True)
class Sending:
    """What sending the sample needs from the CLI: the key, the scrubber and its stop handling."""

    api_key: str | None
    scrubber: Scrubber | None
    run_until_stopped: RunUntilStopped


@dataclass(frozen=True, kw_only=True)
class ModelEstimate:
    """One model's estimate (the `--json` object) and the sampled rows it answered, in sample order;
    or, for a model whose sample stopped (an unknown model, a refused key), ``error`` and no result."""

    model: str
    result: dict[str, Any]
    items: list[Item]
    rows: dict[str, dict[str, Any]]
    error: RunStoppedError | None = None


def model_folder(out: Path, model: str) -> Path:
    """``--models`` with ``--out OUT``: each model's sample is kept in ``OUT/<model>`` (a model name made
    safe for a folder), so ``caption run M --model <model> --out OUT/<model>`` skips the rows it paid for."""
    return out / (re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip(".") or "model")


def with_model(config: Config, model: str) -> Config:
    return dataclasses.replace(config, request=dataclasses.replace(config.request, model=model))


def open_journals(
    stack: contextlib.ExitStack, configs: list[Config], outs: list[Path | None], *, force: bool
) -> list[Journal | None]:
    """Each kept sample's folder, locked and checked against its model's request before anything is sent."""
    journals: list[Journal | None] = []
    for config, out in zip(configs, outs, strict=True):
        if out is None:
            journals.append(None)
            continue
        journal = stack.enter_context(Journal(out))
        check_resume(journal, config, force=force)
        journals.append(journal)
    return journals


@dataclass
class _Sampling:
    """One model's sample on its way: its formula totals, sampled rows and the folder they go to."""

    config: Config
    totals: FormulaTotals
    reservoir: Reservoir
    journal: Journal
    # run.json as it was before the sample (None: a new folder), restored in what the sample must not change.
    previous: dict[str, Any] | None
    kept: bool
    error: RunStoppedError | None = None


async def run_estimates(
    configs: list[Config], job: EstimateJob, *, journals: list[Journal | None], sending: Sending | None
) -> list[ModelEstimate]:
    """Each config's estimate; with a sample, the same sampled rows (one seed, one manifest) sent with each.

    With several models, each is first sent one sampled row: a model the endpoint refuses (a typo'd
    name, 404) stops there, and the others' samples are still sent, paid for and shown.
    """
    chunks = chunk_source(
        job.manifest,
        chunk_size=MANIFEST_CHUNK_ROWS,
        url_column=configs[0].manifest.url_column,
        id_column=configs[0].manifest.id_column,
    )
    first = configs[0]
    async with open_http(
        concurrency=max(32, first.limits.concurrency),
        timeout_s=first.endpoint.timeout_s,
        endpoint_url=first.endpoint.base_url,
    ) as http:
        # Probed once for all models: a model changes the tokens of a size, not the size.
        sizes: dict[str, Size] = {}

        async def probe(url: str) -> Size:
            if url not in sizes:
                sizes[url] = await probe_image_size(http.client, url)
            return sizes[url]

        with contextlib.ExitStack() as stack:
            estimates: list[ModelEstimate | _Sampling] = []
            for config, journal in zip(configs, journals, strict=True):
                reservoir = Reservoir(k=job.sample, rng=random.Random(job.seed)) if job.sample else None
                totals = await formula_pass(
                    chunks,
                    config=config,
                    base_dir=base_dir(job.manifest),
                    probe=probe if job.probe else None,
                    reservoir=reservoir,
                )
                if reservoir is None or sending is None:
                    result = summarise(config, totals, average_output=job.output_tokens)
                    estimates.append(ModelEstimate(model=config.request.model, result=result, items=[], rows={}))
                    continue
                kept = journal or Journal(
                    Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="caption-sample-")))
                )
                previous = kept.read_meta() if journal else None
                estimates.append(_Sampling(config, totals, reservoir, kept, previous, kept=journal is not None))
            sampling = [s for s in estimates if isinstance(s, _Sampling)]
            if sending is not None and sampling:
                await _send_samples(sampling, job, http, sending)
            return [_finished(s, job) if isinstance(s, _Sampling) else s for s in estimates]


async def _send_samples(sampling: list[_Sampling], job: EstimateJob, http: Http, sending: Sending) -> None:
    """Each model's sample; with several, one row per model first so a refused model costs one request.

    A stop (unknown model, refused key, budget) ends that model's sample only: its ``error`` says why.
    An interrupt (not a stop of one model) ends them all, as it does a run.
    """
    batches = [1, job.sample] if len(sampling) > 1 else [job.sample]
    for size in batches:
        for s in sampling:
            if s.error is not None:
                continue
            items = [item for item, _ in s.reservoir.items][:size]
            try:
                await _send_sample(s, job, items, http, sending)
            except RunStoppedError as exc:
                if len(sampling) == 1:
                    raise
                s.error = exc


def _finished(s: _Sampling, job: EstimateJob) -> ModelEstimate:
    model = s.config.request.model
    items = [item for item, _ in s.reservoir.items]
    if s.error is not None:
        return ModelEstimate(model=model, result={}, items=items, rows={}, error=s.error)
    wanted = {item.id for item in items}
    rows = {r["id"]: r for r in s.journal.latest_frame().to_dicts() if r["id"] in wanted}
    sample = sample_summary(s.config, s.totals, s.reservoir.items, rows, seed=job.seed)
    sample["kept_in"] = str(s.journal.out_dir) if s.kept else None
    result = summarise(s.config, s.totals, average_output=job.output_tokens, sample=sample)
    return ModelEstimate(model=model, result=result, items=items, rows=rows)


async def _send_sample(s: _Sampling, job: EstimateJob, items: list[Item], http: Http, sending: Sending) -> None:
    """The sampled rows through the runner a run uses, into the model's folder (kept or temporary).

    A kept folder's run.json then says what it said before (or, new, that only a sample of the
    manifest's rows is done): the runner wrote it as if the sample were the whole manifest.
    """
    previous_rows = (s.previous or {}).get("rows_in_manifest")
    runner = build_runner(
        s.config,
        http=http,
        journal=s.journal,
        api_key=sending.api_key,
        chunks=lambda: iter([items]),
        base_dir=base_dir(job.manifest),
        total_rows=previous_rows if isinstance(previous_rows, int) else s.totals.rows,
        manifest_label=str(job.manifest),
        scrubber=sending.scrubber,
    )
    try:
        stopped = await sending.run_until_stopped(runner)
    finally:
        if s.kept:
            written = s.journal.read_meta()
            if written is not None:
                s.journal.write_meta(sample_meta(s.previous, written, rows_in_manifest=s.totals.rows))
    if stopped is not None:
        raise stopped


def plan(
    config: Config, *, models: str | None, sample: int, out: Path | None, html: Path | None
) -> tuple[list[Config], list[Path | None]]:
    """The config of each model to estimate and the folder each one's sample is kept in (None: not kept).

    Refused before anything is sent: --models without --sample, a model named twice or two models that
    would share a kept folder, --html without a sample to show.
    """
    if html is not None and sample < 1:
        raise ConfigError("--html shows the sampled captions: give --sample N", key="--html")
    if html is not None:
        check_page_target(html)
    if models is None:
        return [config], [out if sample else None]
    names = [m.strip() for m in models.split(",") if m.strip()]
    if not names or sample < 1:
        raise ConfigError("--models needs model names (a,b,c) and --sample N: the rows sent to each", key="--models")
    if len(set(names)) < len(names):
        raise ConfigError(f"--models names a model twice: {','.join(names)}", key="--models")
    folders = [model_folder(out, m) if out is not None else None for m in names]
    if out is not None and len(set(folders)) < len(folders):
        raise ConfigError("--models: two models map to the same folder under --out", key="--models")
    return [with_model(config, m) for m in names], folders


def check_page_target(page: Path) -> None:
    """Refused before anything is paid: a page the samples could not be written to after they were sent."""
    folder = page.parent
    if page.is_dir():
        raise ConfigError(f"{page}: is a folder; give a file name for the page", key="--html")
    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is not a folder"
        raise ConfigError(f"{page}: the folder {folder} {what}", key="--html")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{page}: the folder {folder} is not writable", key="--html")


async def formula_pass(
    chunks: Callable[[], Any],
    *,
    config: Config,
    base_dir: Path,
    probe: Probe | None,
    reservoir: Reservoir | None,
    probe_concurrency: int = 32,
) -> FormulaTotals:
    """Stream the manifest once: read each image's size (header only) and add up the formula.

    ``probe`` is an async ``url -> size | None`` for remote images, or None to
    leave them unknown (and assumed).
    """
    totals = FormulaTotals()
    counter = TextCounter()
    limiter = anyio.CapacityLimiter(probe_concurrency)
    seen: OrderedDict[bytes, None] | None = OrderedDict() if config.images.dedup else None
    for chunk in chunks():
        sizes: dict[int, tuple[int, int] | None] = {}
        local = [(i, item.url) for i, item in enumerate(chunk) if not is_remote(item.url)]

        def read_local(batch: list[tuple[int, str]] = local) -> dict[int, tuple[int, int] | None]:
            return {i: local_image_size(url, base_dir=base_dir) for i, url in batch}

        sizes.update(await anyio.to_thread.run_sync(read_local))
        if probe is not None:

            async def probe_one(i: int, url: str, found: dict[int, tuple[int, int] | None] = sizes) -> None:
                async with limiter:
                    found[i] = await probe(url)

            async with anyio.create_task_group() as tg:
                for i, item in enumerate(chunk):
                    if is_remote(item.url):
                        tg.start_soon(probe_one, i, item.url)
        for i, item in enumerate(chunk):
            if seen is not None and _is_repeat(seen, item, config, window=DEDUP_WINDOW):
                totals.add_duplicate()
                continue
            formula = row_formula(item, config=config, counter=counter, size=sizes.get(i))
            totals.add(formula)
            if reservoir is not None:
                reservoir.offer(item, formula)
    return totals


def _is_repeat(seen: OrderedDict[bytes, None], item: Item, config: Config, *, window: int) -> bool:
    """Mirrors the runner's dedup: the same image reference and the same rendered prompt, within its window."""
    body = build_body(config.request, image_url=item.url, fields=item.fields)
    key = hashlib.blake2b(json.dumps(body, sort_keys=True).encode(), digest_size=16).digest()
    if key in seen:
        seen.move_to_end(key)
        return True
    seen[key] = None
    if len(seen) > window:
        seen.popitem(last=False)
    return False


def sample_images(items: list[Item], *, manifest: Path, remote: bool) -> dict[str, str | None]:
    """Each sampled image for the comparison page: a local one as an inline thumbnail, a remote one by
    its URL only when ``remote`` (the page then loads it), else None (a placeholder naming it)."""
    from .report_html import thumbnail_data_url

    base = base_dir(manifest)
    return {
        item.id: item.url if remote and is_remote(item.url) else thumbnail_data_url(item.url, base_dir=base)
        for item in items
    }
