"""Response parsing, pinned on the real responses in shared/seeds."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pipeline.parse import InvalidResponseError, parse_completion, parse_completion_bytes, parse_error_body

FIXTURES = Path(__file__).parent / "fixtures"


def load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def test_seed000_parses_to_its_caption_tokens_and_safe_filters():
    """Seed 000: exact caption, 1116/89/1205 tokens, not flagged, max severity safe."""
    data = load("seed000_azure_filter_response.json")
    c = parse_completion(data)
    assert c.caption == data["choices"][0]["message"]["content"]
    assert c.caption.startswith("这张插画中有两个人在办公室场景中工作。")
    assert (c.usage.prompt_tokens, c.usage.completion_tokens, c.usage.total_tokens) == (1116, 89, 1205)
    assert c.usage.cached_tokens == 0 and c.usage.reasoning_tokens == 0
    assert c.filters.flagged is False and c.filters.categories == ()
    assert c.filters.max_severity == "safe"
    assert c.model == "gpt-4o" and c.finish_reason == "stop"
    assert c.response_id == "chatcmpl-D2AHysLDj24xz3TunPwZdLMBB9NiD"
    raw = json.loads(c.filters.raw_json)
    assert raw["prompt"][0]["content_filter_result"]["custom_blocklists"]["details"] == []


def test_seed003_vendor_usage_extras_are_tolerated():
    """Seed 003: 99/552/651 tokens; vendor extras ignored; absent details give null cached/reasoning."""
    c = parse_completion(load("seed003_vendor_usage_response.json"))
    assert (c.usage.prompt_tokens, c.usage.completion_tokens, c.usage.total_tokens) == (99, 552, 651)
    assert c.usage.cached_tokens is None and c.usage.reasoning_tokens is None
    assert c.filters.max_severity is None and c.filters.raw_json is None
    assert "[Click to download](https://file.302.ai/" in c.caption


def test_filtered_choice_reports_categories_and_highest_severity():
    """A choice cut by the filter: flagged, its categories, and the worst severity seen."""
    body = {
        "id": "x",
        "model": "gpt-4o",
        "prompt_filter_results": [
            {"prompt_index": 0, "content_filter_results": {"hate": {"filtered": False, "severity": "low"}}}
        ],
        "choices": [
            {
                "index": 0,
                "finish_reason": "content_filter",
                "message": {"role": "assistant", "content": None},
                "content_filter_results": {
                    "violence": {"filtered": True, "severity": "high"},
                    "jailbreak": {"filtered": True, "detected": True},
                },
            }
        ],
    }
    c = parse_completion(body)
    assert c.finish_reason == "content_filter" and c.caption is None
    assert c.filters.flagged and c.filters.categories == ("jailbreak", "violence")
    assert c.filters.max_severity == "high"


@pytest.mark.parametrize(
    "body", [b"not json", b"[]", b'{"choices": []}', b'{"id": "x"}', b'{"error": {"message": "boom"}}']
)
def test_unusable_200_bodies_raise_invalid_response(body):
    """Non-JSON, no choices, or an error object inside a 200 is an invalid response (retried)."""
    with pytest.raises(InvalidResponseError):
        parse_completion_bytes(body)


def test_content_as_parts_is_joined():
    """Servers that return content parts still give a caption string."""
    c = parse_completion(
        {"choices": [{"message": {"content": [{"type": "text", "text": "a "}, {"type": "text", "text": "cat"}]}}]}
    )
    assert c.caption == "a cat"


def test_error_body_from_html_gateway_page_keeps_its_title():
    """Cloudflare's HTML 502 is summarised by its title, not dumped."""
    err = parse_error_body(
        b"<html><head><title>api.openai.com | 502: Bad gateway</title></head><body>...</body></html>"
    )
    assert err.message == "api.openai.com | 502: Bad gateway" and err.code is None


def _choice(content, **extra) -> dict:
    return {"choices": [{"message": {"role": "assistant", "content": content}, "finish_reason": "stop", **extra}]}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (_choice({"text": "x"}), "choices[0].message.content is dict"),
        (_choice(42), "choices[0].message.content is int"),
        (_choice([{"type": "text", "text": 5}]), "choices[0].message.content[0].text is int"),
        (_choice([{"type": "text", "text": "a"}, {"type": "text", "text": None}]), "content[1].text is null"),
        ({"choices": [{"message": "a caption"}]}, "choices[0].message is str"),
        ({**_choice("a"), "usage": {"prompt_tokens": -5}}, "usage.prompt_tokens is -5"),
        ({**_choice("a"), "usage": {"prompt_tokens": 2**63 - 1}}, "usage.prompt_tokens is 9223372036854775807"),
        ({**_choice("a"), "usage": {"completion_tokens": "12"}}, "usage.completion_tokens is str"),
        ({**_choice("a"), "usage": {"total_tokens": 1.5}}, "usage.total_tokens is float"),
        ({**_choice("a"), "usage": {"prompt_tokens_details": {"cached_tokens": -1}}}, "cached_tokens is -1"),
        ({**_choice("a"), "usage": [1, 2]}, "usage is list"),
    ],
)
def test_unexpected_shapes_are_invalid_responses_naming_the_field(body, field):
    """Wrong types and out-of-bounds usage: InvalidResponseError naming the field, not retried."""
    with pytest.raises(InvalidResponseError, match=re.escape(field)) as caught:
        parse_completion(body)
    assert caught.value.retryable is False


def test_filter_results_nested_past_what_can_be_stored_are_invalid():
    """content_filter_results nested 300 deep: invalid_response naming the field, not RecursionError/TypeError."""
    block: dict = {"filtered": False}
    for _ in range(300):
        block = {"hate": block}
    body = json.dumps(_choice("a", content_filter_results=block)).encode()
    with pytest.raises(InvalidResponseError, match="content_filter_results"):
        parse_completion_bytes(body)


def test_huge_numbers_are_invalid_not_overflow():
    """2^64 (a float to orjson) and 1e400 (infinity) in usage are invalid responses."""
    with pytest.raises(InvalidResponseError, match="outside 0"):
        parse_completion_bytes(
            b'{"choices": [{"message": {"content": "a"}}], "usage": {"prompt_tokens": 18446744073709551616}}'
        )
    with pytest.raises(InvalidResponseError, match="not valid JSON"):
        parse_completion_bytes(b'{"choices": [{"message": {"content": "a"}}], "usage": {"prompt_tokens": 1e400}}')


def test_integral_floats_and_null_usage_are_tolerated():
    """Gateways that send 12.0, or null counts, are read as 12 and null."""
    c = parse_completion({**_choice("a"), "usage": {"prompt_tokens": 12.0, "completion_tokens": None}})
    assert (c.usage.prompt_tokens, c.usage.completion_tokens) == (12, None)
