"""The litellm profile against a real LiteLLM proxy: tests/fixtures/litellm_proxy_1.80.0.json holds what
litellm[proxy]==1.80.0 answered in front of this simulator. The profile must answer in the same
shapes (status, type, param, code, the message's frame around the upstream's words, the fields a
200 keeps) and mean the same to the litellm dialect."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest

from pipeline.dialects import dialect_for
from pipeline.simulator import SimConfig, SimulatorApp

CAPTURED = json.loads((Path(__file__).parent / "fixtures" / "litellm_proxy_1.80.0.json").read_text())["answers"]
LITELLM = dialect_for("litellm")
KEY = "sk-proxy-master-" + "m" * 24
FRAME_END = ". Received Model Group=gpt-4o\nAvailable Model Group Fallbacks=None"


def ask(*, image_rule: str = "", model: str = "gpt-4o", key: str = KEY) -> httpx.Response:
    app = SimulatorApp(
        SimConfig(latency_median_s=0.0, latency_p99_s=0.0, profile="litellm", api_key=KEY, rpm=6000, fault_wait_s=1.0)
    )
    url = "https://images.example.com/ll.jpg" + (f"?sim={image_rule}" if image_rule else "")
    body = {
        "model": model,
        "max_tokens": 100,
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "Describe."}, {"type": "image_url", "image_url": {"url": url}}],
            }
        ],
    }

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim") as client:
            return await client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})

    return anyio.run(go)


def meaning(status: int, body: Any, headers: Any) -> tuple[Any, ...]:
    failure = LITELLM.classify_error(status, orjson.dumps(body), headers)
    return failure.error_type, failure.fatal, failure.retryable


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("quota", "quota"),
        ("429", "429"),
        ("upstream_auth", "auth"),
        ("503", "503"),
        ("filter_prompt", "filter_prompt"),
        ("invalid_image_url", "image_timeout"),  # captured when the simulator's only image fault said "Timeout"
    ],
)
def test_upstream_errors_come_framed_as_the_real_proxy_frames_them(name, rule):
    """Same status, type, param and code; the upstream's words inside the same frame; the same meaning."""
    real, ours = CAPTURED[name], ask(image_rule=rule)
    assert ours.status_code == real["status"]
    real_error, our_error = real["body"]["error"], ours.json()["error"]
    for field in ("type", "param", "code"):
        assert our_error[field] == real_error[field], field
    frame = real_error["message"].split("OpenAIException - ")[0]
    assert our_error["message"].startswith(frame + "OpenAIException - ") and our_error["message"].endswith(FRAME_END)
    assert meaning(ours.status_code, ours.json(), dict(ours.headers)) == meaning(
        real["status"], real["body"], real["headers"]
    )
    assert not any(name.startswith(("x-ratelimit-", "llm_provider-x-ratelimit-")) for name in ours.headers)


@pytest.mark.parametrize(
    ("name", "change"), [("wrong_proxy_key", {"key": "sk-someone-else"}), ("unknown_model", {"model": "gpt-9"})]
)
def test_the_proxys_own_refusals_are_the_captured_answers(name, change):
    """A key other than the master key (no database: 400 no_db_connection) and an unknown model: word for word."""
    ours = ask(**change)
    assert (ours.status_code, ours.json()) == (CAPTURED[name]["status"], CAPTURED[name]["body"])


@pytest.mark.parametrize(("name", "rule"), [("ok", ""), ("filter_completion", "filter_completion")])
def test_a_200_keeps_the_fields_and_headers_the_real_proxy_keeps(name, rule):
    """Choice and message fields as LiteLLM's types keep them (filters and refusal moved into
    provider_specific_fields), the renamed and the copied rate-limit headers, the same reading."""
    real, ours = CAPTURED[name], ask(image_rule=rule)
    assert ours.status_code == 200
    real_choice, our_choice = real["body"]["choices"][0], ours.json()["choices"][0]
    assert set(our_choice) == set(real_choice) and set(our_choice["message"]) == set(real_choice["message"])
    assert our_choice["provider_specific_fields"] == real_choice["provider_specific_fields"]
    assert set(real["headers"]) <= set(ours.headers)
    real_reading = LITELLM.parse_completion(orjson.dumps(real["body"]))
    our_reading = LITELLM.parse_completion(orjson.dumps(ours.json()))
    assert (our_reading.filters.flagged, our_reading.filters.categories) == (
        real_reading.filters.flagged,
        real_reading.filters.categories,
    )
