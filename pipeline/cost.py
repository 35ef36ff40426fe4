"""PURE: the price of a model and the cost of a usage.

A dated snapshot the server reports (``gpt-4o-2024-08-06``) is priced as its base
model unless the table names the snapshot itself; 302.AI's ``-ocr`` suffix is the
base model plus the OCR model (``gpt-4o-mini`` unless ``ocr_model`` says otherwise).
"""

from __future__ import annotations

import re

from .config import Config, Price
from .models import Usage

DEFAULT_OCR_MODEL = "gpt-4o-mini"
_SNAPSHOT = re.compile(r"-\d{4}-\d{2}-\d{2}$")


def price_for(model: str | None, table: dict[str, Price]) -> Price | None:
    if not model:
        return None
    if model in table:  # the common case, once per answer: no string work
        return table[model]
    candidates = [model, model.rsplit("/", 1)[-1]]
    for name in list(candidates):
        candidates.append(_SNAPSHOT.sub("", name))
    for name in candidates:
        if name in table:
            return table[name]
    return None


def usage_cost_usd(usage: Usage, price: Price) -> float:
    """``cached_tokens`` are a subset of ``prompt_tokens``, billed at the cached price."""
    prompt = usage.prompt_tokens or 0
    cached = min(usage.cached_tokens or 0, prompt)
    cached_price = price.cached_input if price.cached_input is not None else price.input
    return (
        (prompt - cached) * price.input + cached * cached_price + (usage.completion_tokens or 0) * price.output
    ) / 1e6


def row_cost_usd(
    model: str | None, usage: Usage, table: dict[str, Price], *, ocr_model: str | None = None
) -> float | None:
    """Cost of one answered request, or None for a model the table does not price.

    For ``-ocr`` models the gateway reports one usage; the OCR pass is priced on
    the same prompt tokens (the image analysis) as an upper-bound approximation.
    """
    if model and model.endswith("-ocr"):
        base = price_for(model[: -len("-ocr")], table)
        ocr = price_for(ocr_model or DEFAULT_OCR_MODEL, table)
        if base is None or ocr is None:
            return None
        return usage_cost_usd(usage, base) + usage_cost_usd(Usage(prompt_tokens=usage.prompt_tokens), ocr)
    price = price_for(model, table)
    return None if price is None else usage_cost_usd(usage, price)


def format_usd(value: float | None) -> str:
    """Money as every output shows it; ``None`` (a model with no price) reads "unpriced", not $0."""
    if value is None:
        return "unpriced"
    return f"${value:,.4f}" if abs(value) < 100 else f"${value:,.2f}"


def is_priced(config: Config) -> bool:
    """Whether the pricing table prices the configured model (an ``-ocr`` model needs both prices)."""
    usage = Usage(prompt_tokens=1)
    ocr_model = config.request.extra_body.get("ocr_model")
    return row_cost_usd(config.request.model, usage, config.pricing, ocr_model=ocr_model) is not None
