"""PURE: estimating a run before it starts from the formula: tokens, cost, duration, the summary.

Every row's prompt tokens are computed the way the provider counts them, text by
BPE and the image by its real size (read from the header of local files and
data URLs, or with ``--probe`` from the first bytes of remote images); an image
of unknown size is bounded by 512x512 (low), assumed 1024x1024 (expected) and
bounded by the largest tiling (high). Output tokens are an assumption
(``--output-tokens``, else 60, a one-sentence caption), bounded by ``max_tokens``.

A sample (``--sample N``) corrects these figures: ``estimate_sample`` does the
arithmetic, ``estimate_run`` reads the manifest and sends the sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import Config
from .cost import format_usd, row_cost_usd
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


def money_text(value: float | None) -> str:
    return format_usd(value)


def _cost_line(cost: dict[str, float | None], model: str) -> str:
    if cost["expected"] is None:
        return f"cost               unpriced (no price for model '{model}' in the pricing table)"
    return (
        f"cost               {money_text(cost['expected'])} expected "
        f"(low {money_text(cost['low'])}, high {money_text(cost['high'])})"
    )


def format_estimate(result: dict[str, Any], config: Config) -> str:
    cost = result["cost_usd"]
    lines = [
        f"rows               {result['rows']:,} ({result['requests']:,} requests after dedup, "
        f"{result['images_with_known_size']:,} images of known size)",
        f"model              {result['model']}",
        f"input tokens       {result['input_tokens']:,} (range {result['input_tokens_range'][0]:,} - {result['input_tokens_range'][1]:,})",
        f"output tokens      {result['output_tokens']:,} (at most {result['output_tokens_range'][1]:,} at max_tokens)",
        _cost_line(cost, result["model"]),
        f"duration           {duration_text(result['duration_s'])} at rpm {config.limits.rpm or '-'} / tpm {config.limits.tpm or '-'}, "
        f"concurrency {config.limits.concurrency}",
    ]
    if "sample" in result:
        s = result["sample"]
        lo, hi = result["interval_95"]
        interval = "" if lo is None else f"; 95% interval {money_text(lo)} - {money_text(hi)}"
        lines.append(
            f"sample             {s['rows']} rows sent, {money_text(s['measured_cost_usd'])} paid, "
            f"{s['mean_latency_s']:.2f} s mean latency{interval}"
        )
        if s["kept_in"]:
            lines.append(f"                   kept in {s['kept_in']}: the full run will not send them again")
    if "max_side_saving_tokens" in result:
        lines.append(
            f"max_side {result['max_side']}       saves {result['max_side_saving_tokens']:,} input tokens "
            f"({money_text(result['max_side_saving_usd'])})"
        )
    lines += [f"assumption         {a}" for a in result["assumptions"]]
    return "\n".join(lines)


def duration_text(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
