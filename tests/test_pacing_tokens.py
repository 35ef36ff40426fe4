"""A run's request estimates do not load the tokenizer for a short fixed ASCII prompt (0.3 s of
CPU at every start); long, non-ASCII or per-row templated text is still counted exactly."""

from __future__ import annotations

import pytest

from pipeline.config import RequestConfig
from pipeline.request import prompts_need_tokenizer
from pipeline.tokens import PACING_APPROX_MAX_CHARS, TextCounter, close_enough_for_pacing, pacing_text_tokens


class CountingLoads:
    def __init__(self) -> None:
        self.loads: list[str] = []

    def __call__(self, name: str):
        self.loads.append(name)
        from pipeline.tokens import _load_shipped_encoding

        return _load_shipped_encoding(name)


def test_a_short_ascii_prompt_is_estimated_high_without_the_tokenizer() -> None:
    loads = CountingLoads()
    counter = TextCounter(load_encoding=loads)
    prompt = "Describe this image in one sentence."
    estimate = counter.count_for_pacing(prompt, model="gpt-4o")
    assert loads.loads == []
    exact = TextCounter().count(prompt, model="gpt-4o")
    assert exact <= estimate <= exact + 12, "errs high for prose, by a few tokens"


@pytest.mark.parametrize(
    "text",
    [
        "Describe this image in one sentence.",
        'Answer as JSON: {"objects": ["..."], "count": 0, "colors": ["#aabbcc"]}',
        "SKU 4006381333931 / 0123456789 / 9780262033848 / 2024-08-06T12:00:00Z / 3.14159 2.71828 1.41421",
    ],
)
def test_the_estimate_is_at_most_a_few_tokens_low_even_for_digits_and_json(text: str) -> None:
    assert close_enough_for_pacing(text)
    exact = TextCounter().count(text, model="gpt-4o")
    assert pacing_text_tokens(text) >= exact - 30


@pytest.mark.parametrize(
    "text", ["画像を一文で説明してください。", "x" * (PACING_APPROX_MAX_CHARS + 1), "Décrivez cette image."]
)
def test_long_or_non_ascii_text_is_counted_with_the_tokenizer(text: str) -> None:
    loads = CountingLoads()
    counter = TextCounter(load_encoding=loads)
    assert not close_enough_for_pacing(text)
    assert counter.count_for_pacing(text, model="gpt-4o") == TextCounter().count(text, model="gpt-4o")
    assert loads.loads == ["o200k_base"]


def test_pacing_estimate_of_empty_text_is_zero() -> None:
    assert pacing_text_tokens("") == 0 and pacing_text_tokens("ab") == 1


@pytest.mark.parametrize(
    ("request_config", "needs"),
    [
        (RequestConfig(prompt="Describe this image in one sentence."), False),
        (RequestConfig(prompt="Describe this image.", system="You caption photos for a shop."), False),
        (RequestConfig(prompt="Caption this photo of a {product}."), True),
        (RequestConfig(prompt="Describe the image.", system="Context: {notes}"), True),
        (RequestConfig(prompt="Literal {{braces}} only."), False),
        (RequestConfig(prompt="この画像を説明してください。"), True),
        (RequestConfig(prompt="word " * 100), True),
    ],
)
def test_the_run_loads_the_tokenizer_only_when_its_prompts_can_need_it(request_config, needs) -> None:
    assert prompts_need_tokenizer(request_config) is needs
