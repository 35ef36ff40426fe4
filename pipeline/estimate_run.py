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
from .errors import ConfigError, PipelineError
from .estimate import FormulaTotals, row_formula, summarise
from .estimate_sample import Reservoir, sample_summary
from .feed import MANIFEST_CHUNK_ROWS
from .images import is_remote, local_image_size
from .journal import Journal
from .manifest import base_dir, chunk_source
from .models import Item
from .request import build_body
from .run_meta import check_resume
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
    """One model's estimate (the `--json` object) and the sampled rows it answered, in sample order."""

    model: str
    result: dict[str, Any]
    items: list[Item]
    rows: dict[str, dict[str, Any]]


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


async def run_estimates(
    configs: list[Config], job: EstimateJob, *, journals: list[Journal | None], sending: Sending | None
) -> list[ModelEstimate]:
    """Each config's estimate; with a sample, the same sampled rows (one seed, one manifest) sent with each."""
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

        estimates = []
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
            rows = await _send_sample(config, job, [i for i, _ in reservoir.items], http, journal, sending)
            sample = sample_summary(config, totals, reservoir.items, rows, seed=job.seed)
            sample["kept_in"] = str(journal.out_dir) if journal else None
            result = summarise(config, totals, average_output=job.output_tokens, sample=sample)
            items = [item for item, _ in reservoir.items]
            estimates.append(ModelEstimate(model=config.request.model, result=result, items=items, rows=rows))
    return estimates


async def _send_sample(
    config: Config, job: EstimateJob, items: list[Item], http: Http, journal: Journal | None, sending: Sending
) -> dict[str, dict[str, Any]]:
    """The sampled rows through the runner a run uses, into the kept folder or a temporary one."""
    with contextlib.ExitStack() as stack:
        sample_journal = journal or Journal(
            Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="caption-sample-")))
        )
        runner = build_runner(
            config,
            http=http,
            journal=sample_journal,
            api_key=sending.api_key,
            chunks=lambda: iter([items]),
            base_dir=base_dir(job.manifest),
            total_rows=len(items),
            manifest_label=str(job.manifest),
            scrubber=sending.scrubber,
        )
        stopped = await sending.run_until_stopped(runner)
        if stopped is not None:
            raise stopped
        wanted = {item.id for item in items}
        return {r["id"]: r for r in sample_journal.latest_frame().to_dicts() if r["id"] in wanted}


def plan(
    config: Config, *, models: str | None, sample: int, out: Path | None, html: Path | None
) -> tuple[list[Config], list[Path | None]]:
    """The config of each model to estimate and the folder each one's sample is kept in (None: not kept).

    Refused before anything is sent: --models without --sample, a model named twice or two models that
    would share a kept folder, --html without a sample to show.
    """
    if html is not None and sample < 1:
        raise ConfigError("--html shows the sampled captions: give --sample N", key="--html")
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
