"""Request bodies: the chat-completions shape, prompt templates, knobs and extra_body."""

from __future__ import annotations

from pipeline.config import RequestConfig
from pipeline.request import build_body, missing_columns, render_prompt


def test_body_has_text_and_image_parts_with_detail():
    """One user message: the prompt text, then the image_url part with detail; max_tokens set."""
    body = build_body(RequestConfig(detail="low", max_tokens=50), image_url="https://x/a.jpg", fields={})
    assert body["model"] == "gpt-4o" and body["max_tokens"] == 50
    (message,) = body["messages"]
    assert message["role"] == "user"
    assert message["content"][0] == {"type": "text", "text": "Describe this image in one sentence."}
    assert message["content"][1] == {"type": "image_url", "image_url": {"url": "https://x/a.jpg", "detail": "low"}}
    assert "temperature" not in body and "response_format" not in body


def test_knobs_system_and_extra_body_are_sent():
    """Optional knobs appear only when set; extra_body is merged verbatim (ocr_model)."""
    request = RequestConfig(
        model="gpt-3.5-turbo-ocr",
        system="Be terse about {topic}.",
        temperature=0.2,
        n=2,
        stop=["\n"],
        response_format={"type": "json_object"},
        extra_body={"ocr_model": "gpt-4o-mini"},
    )
    body = build_body(request, image_url="data:image/png;base64,AAAA", fields={"topic": "cats"})
    assert body["messages"][0] == {"role": "system", "content": "Be terse about cats."}
    assert body["temperature"] == 0.2 and body["n"] == 2 and body["stop"] == ["\n"]
    assert body["response_format"] == {"type": "json_object"} and body["ocr_model"] == "gpt-4o-mini"


def test_templates_fill_columns_and_keep_other_braces():
    """{column} is filled; {{ }} are literal; a JSON example in the prompt survives."""
    template = 'Caption this {category} photo by {author}. Answer as {"caption": "..."} or {{x}}.'
    out = render_prompt(template, {"category": "street", "author": None})
    assert out == 'Caption this street photo by . Answer as {"caption": "..."} or {x}.'
    assert missing_columns(template, ["category"]) == ["author"]
    assert missing_columns("no placeholders", []) == []
