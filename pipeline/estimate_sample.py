"""PURE: what a sample of real requests says about the whole manifest's cost.

N rows, drawn at random (``Reservoir``), go through the real pipeline; the
total is extrapolated with a ratio estimator (measured cost / formula cost,
times the formula cost of the whole manifest), which stays accurate when rows
differ in size, and a bootstrap gives the 95% interval. A sampled row is priced
by ``cost.row_cost_usd`` from its own usage, cached tokens included: the same
function that prices a run's rows, so the estimate bills what the run will.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

from .config import Config
from .cost import is_priced, row_cost_usd
from .estimate import FormulaTotals, RowFormula, tokens_cost_usd
from .models import Item, Usage


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


def sampled_row(config: Config, row: dict[str, Any], formula: RowFormula) -> SampledRow:
    """PURE: one sampled result priced as the run priced it: the model the server named (else the config's),
    its cached prompt tokens at the cached price, through ``cost.row_cost_usd``."""
    model = row.get("model") or config.request.model
    ocr_model = config.request.extra_body.get("ocr_model")

    def usd(usage: Usage) -> float:
        return row_cost_usd(model, usage, config.pricing, ocr_model=ocr_model) or 0.0

    prompt = Usage(prompt_tokens=row.get("prompt_tokens") or 0, cached_tokens=row.get("cached_tokens"))
    return SampledRow(
        formula_input_usd=tokens_cost_usd(config, prompt=formula.prompt_expected, completion=0) or 0.0,
        input_usd=usd(prompt),
        output_usd=usd(Usage(completion_tokens=row.get("completion_tokens") or 0)),
    )


def sample_summary(
    config: Config,
    totals: FormulaTotals,
    sampled_items: list[tuple[Item, RowFormula]],
    results: dict[str, dict[str, Any]],
    *,
    seed: int,
) -> dict[str, Any]:
    """PURE: what the sampled rows measured, and the manifest's cost extrapolated from them.

    An unpriced model has no cost to extrapolate: its figures are None ("unpriced"), not $0.
    """

    def usd(prompt: int) -> float:
        return tokens_cost_usd(config, prompt=prompt, completion=0) or 0.0

    sampled = [(results[item.id], formula) for item, formula in sampled_items if item.id in results]
    strata = []
    for known in (True, False):
        rows = [sampled_row(config, r, f) for r, f in sampled if f.size_known == known]
        requests = totals.known_sizes if known else totals.requests - totals.known_sizes
        formula_input = totals.known_input_expected if known else totals.input_expected - totals.known_input_expected
        strata.append(Stratum(rows, usd(formula_input), requests))
    priced = is_priced(config)
    point, low, high = extrapolate(strata, rng=random.Random(seed)) if priced else (None, None, None)
    latencies = [r["latency_s"] for r, _ in sampled if r["latency_s"] is not None]
    completions = [r["completion_tokens"] for r, _ in sampled if r["completion_tokens"] is not None]
    costs = [r["cost_usd"] for r, _ in sampled if r["cost_usd"] is not None]
    return {
        "rows": len(sampled),
        "by_status": {s: sum(1 for r, _ in sampled if r["status"] == s) for s in ("ok", "filtered", "error")},
        "measured_cost_usd": _round(sum(costs)) if priced else None,
        "mean_latency_s": round(sum(latencies) / len(latencies), 3) if latencies else 0.0,
        "mean_completion_tokens": sum(completions) / len(completions) if completions else 0.0,
        "point_usd": _round(point),
        "interval_95": [_round(low), _round(high)],
    }


def _round(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else round(value, 6)
