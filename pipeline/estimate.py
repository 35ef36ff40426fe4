"""Estimating a run before it starts: tokens, cost and duration, from the formula and from a sample.

Formula (nothing is sent): every row's prompt tokens are computed the way the
provider counts them, text by BPE and the image by its real size (read from
the header of local files and data URLs, or with ``--probe`` from the first
bytes of remote images); an image of unknown size is bounded by 512x512 (low),
assumed 1024x1024 (expected) and bounded by the largest tiling (high). Output
tokens are an assumption (``--output-tokens``, else 60, a one-sentence
caption), bounded by ``max_tokens``.

Sample (``--sample N``): N rows, drawn at random, go through the real pipeline;
the total is extrapolated with a ratio estimator (measured cost / formula cost,
times the formula cost of the whole manifest), which stays accurate when rows
differ in size, and a bootstrap gives the 95% interval.

The pure functions here are unit-tested; ``formula_pass`` reads the manifest (and
probes images), and the sample itself goes through the runner (``cli._estimate_async``).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from .config import Config
from .cost import row_cost_usd
from .images import resized_size
from .models import Item, Usage
from .request import build_body, prompt_text
from .tokens import MESSAGE_OVERHEAD_TOKENS, TextCounter, image_tokens, max_image_tokens

DEFAULT_OUTPUT_TOKENS = 60
ASSUMED_LATENCY_S = 3.0
UNKNOWN_LOW_SIZE = (512, 512)


@dataclass(frozen=True, slots=True)
class RowFormula:
    prompt_low: int
    prompt_expected: int
    prompt_high: int
    size_known: bool
    resize_saving: int = 0


@dataclass(slots=True)
class FormulaTotals:
    rows: int = 0
    known_sizes: int = 0
    input_low: int = 0
    input_expected: int = 0
    input_high: int = 0
    resize_saving: int = 0
    known_input_expected: int = 0
    duplicates: int = 0

    @property
    def requests(self) -> int:
        return self.rows - self.duplicates

    def add_duplicate(self) -> None:
        """A row whose request another row already makes: it is answered by the same request, at no cost."""
        self.rows += 1
        self.duplicates += 1

    def add(self, row: RowFormula) -> None:
        self.rows += 1
        self.known_sizes += row.size_known
        self.known_input_expected += row.prompt_expected if row.size_known else 0
        self.input_low += row.prompt_low
        self.input_expected += row.prompt_expected
        self.input_high += row.prompt_high
        self.resize_saving += row.resize_saving


def row_formula(item: Item, *, config: Config, counter: TextCounter, size: tuple[int, int] | None) -> RowFormula:
    """PURE: one row's prompt tokens as the provider would count them (size as read, before resizing)."""
    request = config.request
    body = build_body(request, image_url="", fields=item.fields)
    text = counter.count(prompt_text(body), model=request.model) + MESSAGE_OVERHEAD_TOKENS
    model, detail = request.model, request.detail
    if size is not None:
        sent = resized_size(*size, config.images.max_side)
        tokens = image_tokens(model, detail=detail, width=sent[0], height=sent[1])
        saving = image_tokens(model, detail=detail, width=size[0], height=size[1]) - tokens
        return RowFormula(text + tokens, text + tokens, text + tokens, True, saving)
    low = image_tokens(model, detail=detail, width=UNKNOWN_LOW_SIZE[0], height=UNKNOWN_LOW_SIZE[1])
    return RowFormula(
        text + low, text + image_tokens(model, detail=detail), text + max_image_tokens(model, detail=detail), False
    )


def output_tokens(config: Config, average: int | None) -> int:
    """Expected completion tokens per request: given, else a one-sentence caption, never over max_tokens."""
    per_choice = average if average is not None else DEFAULT_OUTPUT_TOKENS
    return min(per_choice, config.request.max_tokens) * (config.request.n or 1)


def tokens_cost_usd(config: Config, *, prompt: int, completion: int) -> float | None:
    return row_cost_usd(
        config.request.model,
        Usage(prompt_tokens=prompt, completion_tokens=completion),
        config.pricing,
        ocr_model=config.request.extra_body.get("ocr_model"),
    )


def duration_s(*, rows: int, tpm_tokens: int, config: Config, latency_s: float) -> float:
    """The slowest of the three bounds: requests per minute, tokens per minute, and concurrency / latency."""
    limits = config.limits
    bounds = [rows * latency_s / limits.concurrency]
    if limits.rpm:
        bounds.append(rows * 60.0 / limits.rpm)
    if limits.tpm:
        bounds.append(tpm_tokens * 60.0 / limits.tpm)
    return max(bounds)


@dataclass(frozen=True, slots=True)
class SampledRow:
    """One sampled request: its formula input cost, and what its input and output really cost."""

    formula_input_usd: float
    input_usd: float
    output_usd: float


@dataclass(frozen=True, slots=True)
class Stratum:
    """The sampled rows of one kind (images of known or of unknown size) and the totals of all such requests."""

    sampled: list[SampledRow]
    total_formula_input_usd: float
    requests: int


def extrapolate(strata: list[Stratum], *, rng: random.Random, resamples: int = 2000) -> tuple[float, float, float]:
    """PURE: (point, low, high) of the manifest's cost from a sample.

    Input and output are estimated apart, per stratum: input by a ratio
    estimator (measured / formula input cost, times the stratum's formula input
    total; ~1 when sizes are known, a correction of the size guess when not),
    output by the sampled mean output cost times the stratum's requests. One
    ratio over input+output would mix an exact quantity with a guessed one and
    drift with the image sizes in the sample. The 95% interval is a bootstrap
    resampling within each stratum; a stratum nobody sampled borrows the pooled
    figures.
    """
    sampled = [s for s in strata if s.sampled]
    if not sampled:
        return math.nan, math.nan, math.nan
    pool = [r for s in sampled for r in s.sampled]
    pooled_ratio = _ratio(pool)
    pooled_output = sum(r.output_usd for r in pool) / len(pool)

    def estimate(rows_by_stratum: list[list[SampledRow]]) -> float:
        total, picks = 0.0, iter(rows_by_stratum)
        for stratum in strata:
            rows = next(picks) if stratum.sampled else []
            ratio = _ratio(rows) if rows else pooled_ratio
            output = sum(r.output_usd for r in rows) / len(rows) if rows else pooled_output
            total += stratum.total_formula_input_usd * ratio + stratum.requests * output
        return total

    point = estimate([s.sampled for s in sampled])
    draws = sorted(
        estimate([[s.sampled[rng.randrange(len(s.sampled))] for _ in s.sampled] for s in sampled])
        for _ in range(resamples)
    )
    low = draws[int(0.025 * (len(draws) - 1))]
    high = draws[int(math.ceil(0.975 * (len(draws) - 1)))]
    return point, low, high


def _ratio(rows: list[SampledRow]) -> float:
    formula = sum(r.formula_input_usd for r in rows)
    return sum(r.input_usd for r in rows) / formula if formula > 0 else 1.0


@dataclass(slots=True)
class Reservoir:
    """A uniform random sample of k items from a stream of unknown length (Algorithm R)."""

    k: int
    rng: random.Random
    seen: int = 0
    items: list[tuple[Item, RowFormula]] = field(default_factory=list)

    def offer(self, item: Item, formula: RowFormula) -> None:
        self.seen += 1
        if len(self.items) < self.k:
            self.items.append((item, formula))
            return
        j = self.rng.randrange(self.seen)
        if j < self.k:
            self.items[j] = (item, formula)


async def formula_pass(
    chunks: Any,
    *,
    config: Config,
    base_dir: Any,
    probe: Any | None,
    reservoir: Reservoir | None,
    probe_concurrency: int = 32,
) -> FormulaTotals:
    """Stream the manifest once: read each image's size (header only) and add up the formula.

    ``probe`` is an async ``url -> size | None`` for remote images, or None to
    leave them unknown (and assumed).
    """
    import anyio

    from .dedup import DEDUP_WINDOW
    from .images import is_remote, local_image_size

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


def summarise(
    config: Config, totals: FormulaTotals, *, average_output: int | None, sample: dict[str, Any] | None = None
) -> dict[str, Any]:
    """PURE: the estimate as the JSON object `caption estimate --json` prints."""
    per_row_out = output_tokens(config, average_output)
    max_out = config.request.max_tokens * (config.request.n or 1)
    requests = totals.requests
    out_expected = per_row_out * requests
    out_low = max(1, per_row_out // 2) * requests
    out_high = max_out * requests

    def cost(prompt: int, completion: int) -> float | None:
        value = tokens_cost_usd(config, prompt=prompt, completion=completion)
        return None if value is None else round(value, 6)

    formula_cost = {
        "low": cost(totals.input_low, out_low),
        "expected": cost(totals.input_expected, out_expected),
        "high": cost(totals.input_high, out_high),
    }
    latency = sample["mean_latency_s"] if sample else ASSUMED_LATENCY_S
    tpm_tokens = totals.input_expected + out_high  # providers count max_tokens against TPM
    assumptions = []
    if totals.duplicates:
        assumptions.append(
            f"{totals.duplicates} rows repeat an earlier request (same image, same prompt) and are "
            "answered by it at no cost (images.dedup)"
        )
    if totals.known_sizes < totals.requests:
        assumptions.append(
            f"{totals.requests - totals.known_sizes} images of unknown size (remote, not probed or unreadable) "
            "assumed 1024x1024, bounded by 512x512 and the largest tiling"
        )
    if average_output is None and not sample:
        assumptions.append(
            f"{per_row_out // (config.request.n or 1)} output tokens per answer (a one-sentence caption); "
            "pass --output-tokens or --sample to measure"
        )
    if not sample:
        assumptions.append(f"{ASSUMED_LATENCY_S:g} s per request for the concurrency bound on duration")
    result: dict[str, Any] = {
        "rows": totals.rows,
        "model": config.request.model,
        "images_with_known_size": totals.known_sizes,
        "input_tokens": totals.input_expected,
        "input_tokens_range": [totals.input_low, totals.input_high],
        "output_tokens": out_expected,
        "output_tokens_range": [out_low, out_high],
        "cost_usd": dict(formula_cost),
        "formula_cost_usd": formula_cost,
        "requests": requests,
        "duplicates": totals.duplicates,
        "duration_s": round(duration_s(rows=requests, tpm_tokens=tpm_tokens, config=config, latency_s=latency), 1),
        "assumptions": assumptions,
    }
    if config.images.max_side is not None:
        result["max_side"] = config.images.max_side
        result["max_side_saving_tokens"] = totals.resize_saving
        result["max_side_saving_usd"] = cost(totals.resize_saving, 0)
    if sample:
        result["sample"] = {k: v for k, v in sample.items() if k != "interval_95"}
        result["interval_95"] = sample["interval_95"]
        result["cost_usd"] = {
            "low": sample["interval_95"][0],
            "expected": sample["point_usd"],
            "high": sample["interval_95"][1],
        }
        result["output_tokens"] = round(sample["mean_completion_tokens"] * requests)
    return result


def sample_summary(
    config: Config,
    totals: FormulaTotals,
    sampled_items: list[tuple[Item, RowFormula]],
    results: dict[str, dict[str, Any]],
    *,
    seed: int,
) -> dict[str, Any]:
    """PURE: what the sampled rows measured, and the manifest's cost extrapolated from them."""

    def usd(prompt: int, completion: int) -> float:
        return tokens_cost_usd(config, prompt=prompt, completion=completion) or 0.0

    sampled = [(results[item.id], formula) for item, formula in sampled_items if item.id in results]
    costs = [r["cost_usd"] or 0.0 for r, _ in sampled]
    strata = []
    for known in (True, False):
        rows = [
            SampledRow(usd(f.prompt_expected, 0), usd(r["prompt_tokens"] or 0, 0), usd(0, r["completion_tokens"] or 0))
            for r, f in sampled
            if f.size_known == known
        ]
        requests = totals.known_sizes if known else totals.requests - totals.known_sizes
        formula_input = totals.known_input_expected if known else totals.input_expected - totals.known_input_expected
        strata.append(Stratum(rows, usd(formula_input, 0), requests))
    point, low, high = extrapolate(strata, rng=random.Random(seed))
    latencies = [r["latency_s"] for r, _ in sampled if r["latency_s"] is not None]
    completions = [r["completion_tokens"] for r, _ in sampled if r["completion_tokens"] is not None]
    sample = {
        "rows": len(sampled),
        "by_status": {s: sum(1 for r, _ in sampled if r["status"] == s) for s in ("ok", "filtered", "error")},
        "measured_cost_usd": round(sum(costs), 6),
        "mean_latency_s": round(sum(latencies) / len(latencies), 3) if latencies else 0.0,
        "mean_completion_tokens": sum(completions) / len(completions) if completions else 0.0,
        "point_usd": round(point, 6),
        "interval_95": [round(low, 6), round(high, 6)],
    }
    return sample


def _money(value: float | None) -> str:
    return "unpriced" if value is None else f"${value:,.4f}"


def format_estimate(result: dict[str, Any], config: Config) -> str:
    cost = result["cost_usd"]
    lines = [
        f"rows               {result['rows']:,} ({result['requests']:,} requests after dedup, "
        f"{result['images_with_known_size']:,} images of known size)",
        f"model              {result['model']}",
        f"input tokens       {result['input_tokens']:,} (range {result['input_tokens_range'][0]:,} - {result['input_tokens_range'][1]:,})",
        f"output tokens      {result['output_tokens']:,} (at most {result['output_tokens_range'][1]:,} at max_tokens)",
        f"cost               {_money(cost['expected'])} expected (low {_money(cost['low'])}, high {_money(cost['high'])})"
        if cost["expected"] is not None
        else f"cost               unpriced (no price for model '{result['model']}' in the pricing table)",
        f"duration           {_duration(result['duration_s'])} at rpm {config.limits.rpm or '-'} / tpm {config.limits.tpm or '-'}, "
        f"concurrency {config.limits.concurrency}",
    ]
    if "sample" in result:
        s = result["sample"]
        lo, hi = result["interval_95"]
        lines.append(
            f"sample             {s['rows']} rows sent, {_money(s['measured_cost_usd'])} measured, "
            f"{s['mean_latency_s']:.2f} s mean latency; 95% interval {_money(lo)} - {_money(hi)}"
        )
        if s["kept_in"]:
            lines.append(f"                   kept in {s['kept_in']}: the full run will not send them again")
    if "max_side_saving_tokens" in result:
        lines.append(
            f"max_side {result['max_side']}       saves {result['max_side_saving_tokens']:,} input tokens "
            f"({_money(result['max_side_saving_usd'])})"
        )
    lines += [f"assumption         {a}" for a in result["assumptions"]]
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
