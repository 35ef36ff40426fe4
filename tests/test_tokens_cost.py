"""Image/text token rules (providers.md §3) and pricing (§4)."""

from __future__ import annotations

import pytest

from pipeline.config import Price
from pipeline.cost import price_for, row_cost_usd, usage_cost_usd
from pipeline.models import Usage
from pipeline.tokens import TextCounter, base_model, image_tokens


@pytest.mark.parametrize(
    ("model", "size", "detail", "tokens"),
    [
        ("gpt-4o", (1024, 1024), "high", 765),
        ("gpt-4o", (2048, 4096), "high", 1105),
        ("gpt-4o", (4096, 8192), "low", 85),
        ("gpt-4o", (2560, 1707), "auto", 1105),
        ("gpt-4o-mini", (1024, 1024), "high", 25501),
        ("gpt-4o-mini", (2560, 1707), "high", 36835),
        ("gpt-5", (1024, 1024), "high", 630),
        ("o3", (2560, 1707), "high", 975),
        ("gpt-4.1-mini", (1024, 1024), "high", 1659),
        ("gpt-4.1-mini", (2560, 1707), "high", 2437),
        ("gpt-4.1-nano", (2560, 1707), "high", 3700),
        ("gpt-4o-2024-08-06", (1024, 1024), "high", 765),
    ],
)
def test_image_tokens_match_the_documented_examples(model, size, detail, tokens):
    """The worked examples of providers.md §3.3 and OpenAI's own doc examples."""
    assert image_tokens(model, detail=detail, width=size[0], height=size[1]) == tokens


def test_unknown_model_and_unknown_size_are_conservative():
    """An unknown model costs at least the gpt-4o rule; an unknown size is taken as 1024x1024."""
    assert image_tokens("some-vlm", width=1024, height=1024) >= 765
    assert image_tokens("gpt-4o") == 765


def test_model_names_normalise():
    """Provider prefix, -ocr suffix and snapshot dates are dropped for lookups."""
    assert base_model("openai/gpt-4o-2024-08-06") == "gpt-4o"
    assert base_model("gpt-3.5-turbo-ocr") == "gpt-3.5-turbo"


def test_text_tokens_use_the_shipped_bpe():
    """o200k counts for gpt-4o without downloading anything; other models fall back to chars/4."""
    counter = TextCounter()
    assert counter.count("hello world", model="gpt-4o") == 2
    assert counter.count("x" * 40, model="llava") == 10


def test_text_counts_are_cached_per_model_and_fall_back_when_the_encoding_cannot_load():
    """The cache never hands one model's count to another; a missing tokenizer file degrades to
    chars/4 (the stated fallback) instead of failing the run, and preload() does not raise either."""
    counter = TextCounter()
    text = "Décris cette image en une phrase, s’il te plaît: 東京タワー"  # 17 tokens in o200k, 22 in cl100k
    o200k, cl100k = counter.count(text, model="gpt-4o"), counter.count(text, model="gpt-4-turbo")
    assert o200k != cl100k and counter.count(text, model="gpt-4o") == o200k

    def missing(name: str):
        raise OSError(f"{name}.tiktoken.gz: no such file")

    offline = TextCounter(load_encoding=missing)
    offline.preload("gpt-4o")
    assert offline.count("x" * 40, model="gpt-4o") == 10


def test_cost_prices_cached_tokens_at_the_cached_rate():
    """(prompt - cached) * input + cached * cached_input + completion * output, per 1M."""
    price = Price(input=2.5, cached_input=1.25, output=10.0)
    assert usage_cost_usd(Usage(prompt_tokens=1000, cached_tokens=400, completion_tokens=100), price) == pytest.approx(
        (600 * 2.5 + 400 * 1.25 + 100 * 10.0) / 1e6
    )


def test_snapshot_priced_as_base_unless_named_and_unknown_is_null():
    """gpt-4o-2024-08-06 uses gpt-4o's price unless listed; an unpriced model gives None."""
    table = {"gpt-4o": Price(input=2.5, output=10.0), "gpt-4o-2024-05-13": Price(input=5.0, output=15.0)}
    assert price_for("gpt-4o-2024-08-06", table).input == 2.5
    assert price_for("gpt-4o-2024-05-13", table).input == 5.0
    assert row_cost_usd("mystery", Usage(prompt_tokens=10), table) is None


def test_every_snapshot_the_simulator_reports_is_priced_as_its_base_model():
    """The answers' dated snapshots (gpt-4o-2024-08-06, gpt-4.1-mini-2025-04-14, the month-day
    gpt-3.5-turbo-0125, OpenRouter's openai/gpt-4o) find the shipped price of the alias they stand for."""
    from pipeline.config import load_config
    from pipeline.simulator.profiles import SNAPSHOTS

    table = load_config(None).pricing
    priced = {alias: snapshot for alias, snapshot in SNAPSHOTS.items() if alias in table}
    assert {"gpt-4o", "gpt-4o-mini", "gpt-4.1-mini", "gpt-5-nano"} <= set(priced)
    for alias, snapshot in priced.items():
        assert price_for(snapshot, table) == table[alias], snapshot
    month_day = {"gpt-3.5-turbo": Price(input=0.5, output=1.5)}
    assert price_for("gpt-3.5-turbo-0125", month_day) == month_day["gpt-3.5-turbo"]
    assert price_for("openai/gpt-4o-2024-08-06", table) == table["gpt-4o"]


def test_ocr_suffix_adds_the_ocr_model():
    """A -ocr model costs its base model plus the OCR model on the prompt."""
    table = {"gpt-3.5-turbo": Price(input=0.5, output=1.5), "gpt-4o-mini": Price(input=0.15, output=0.6)}
    usage = Usage(prompt_tokens=1000, completion_tokens=100)
    expected = (1000 * 0.5 + 100 * 1.5) / 1e6 + 1000 * 0.15 / 1e6
    assert row_cost_usd("gpt-3.5-turbo-ocr", usage, table) == pytest.approx(expected)
