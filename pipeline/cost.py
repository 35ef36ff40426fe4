"""PURE: the price of a model and the cost of a usage.

A dated snapshot the server reports (``gpt-4o-2024-08-06``, ``gpt-3.5-turbo-0125``) is priced as
its base model unless the table names the snapshot itself; 302.AI's ``-ocr`` suffix is the
base model plus the OCR model (``gpt-4o-mini`` unless ``ocr_model`` says otherwise).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from .config import Config, Price
from .models import Usage

DEFAULT_OCR_MODEL = "gpt-4o-mini"
# Dated snapshots: ``gpt-4o-2024-08-06``, and the older month-day form ``gpt-3.5-turbo-0125``.
_SNAPSHOT = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{4})$")


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


PriceOf = Callable[[str | None], Price | None]
_NAMES_KEPT = 256  # model names a PriceLookup remembers (a server could name a new one on every answer)


class PriceLookup:
    """``price_for`` over one table, remembering each name: the server names the model (usually a
    dated snapshot, resolved through its candidates) on every answer."""

    def __init__(self, table: dict[str, Price]) -> None:
        self._table = table
        self._known: dict[str, Price | None] = {}

    def __call__(self, model: str | None) -> Price | None:
        if not model:
            return None
        try:
            return self._known[model]
        except KeyError:
            if len(self._known) >= _NAMES_KEPT:
                self._known.clear()
            price = self._known[model] = price_for(model, self._table)
            return price


def row_cost_usd(
    model: str | None, usage: Usage, table: dict[str, Price], *, ocr_model: str | None = None
) -> float | None:
    """Cost of one answered request, or None for a model the table does not price."""
    return cost_with(model, usage, lambda name: price_for(name, table), ocr_model=ocr_model)


def cost_with(model: str | None, usage: Usage, price_of: PriceOf, *, ocr_model: str | None = None) -> float | None:
    """``row_cost_usd`` with prices looked up by ``price_of`` (a ``PriceLookup`` on the hot path).

    For ``-ocr`` models the gateway reports one usage; the OCR pass is priced on
    the same prompt tokens (the image analysis) as an upper-bound approximation.
    """
    if model and model.endswith("-ocr"):
        base = price_of(model[: -len("-ocr")])
        ocr = price_of(ocr_model or DEFAULT_OCR_MODEL)
        if base is None or ocr is None:
            return None
        return usage_cost_usd(usage, base) + usage_cost_usd(Usage(prompt_tokens=usage.prompt_tokens), ocr)
    price = price_of(model)
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
