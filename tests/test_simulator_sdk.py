"""The simulator as the official ``openai`` SDK sees it, in every profile: typed answers parse,
each error becomes the SDK's exception class with the provider's code, headers are where clients
look for them, and ``AzureOpenAI`` works against the azure profile."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletion

from pipeline.simulator import SimConfig, SimulatorApp, SimulatorServer, caption_for

KEY = "sk-sim-" + "k" * 32
IMAGE = "https://images.example.com/sdk/a.jpg"


@contextmanager
def served(profile: str, *, clock: Any = None, **knobs: Any) -> Iterator[SimulatorServer]:
    config = SimConfig(latency_median_s=0.001, latency_p99_s=0.002, profile=profile, **knobs)  # type: ignore[arg-type]
    app = SimulatorApp(config) if clock is None else SimulatorApp(config, clock=clock)
    with SimulatorServer(app, log_level="critical") as server:
        yield server


def loopback() -> Any:
    """The SDK's own HTTP client, blind to HTTP(S)_PROXY: these requests stay on 127.0.0.1."""
    return openai.DefaultHttpx2Client(trust_env=False)


def client_for(server: SimulatorServer, profile: str, *, key: str | None = KEY) -> openai.OpenAI:
    """The client a user of that provider writes (Azure: ``AzureOpenAI`` on the deployments path)."""
    if profile == "azure":
        return openai.AzureOpenAI(
            azure_endpoint=server.root_url,
            api_version="2024-10-21",
            api_key=key,
            max_retries=0,
            http_client=loopback(),
            timeout=5,
        )
    return openai.OpenAI(
        base_url=server.base_url, api_key=key or "unused", max_retries=0, http_client=loopback(), timeout=5
    )


def messages(url: str = IMAGE) -> list[dict[str, Any]]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe this image."},
                {"type": "image_url", "image_url": {"url": url}},
            ],
        }
    ]


def knobs_for(profile: str) -> dict[str, Any]:
    return {} if profile == "vllm" else {"api_key": KEY, "rpm": 3000, "tpm": 1_000_000}


@pytest.mark.parametrize(
    ("profile", "model"),
    [
        ("openai", "gpt-4o-2024-08-06"),
        ("azure", "gpt-4o-2024-08-06"),
        ("litellm", "gpt-4o-2024-08-06"),
        ("openrouter", "openai/gpt-4o"),
        ("vllm", "gpt-4o"),
    ],
)
def test_a_typed_completion_parses_in_every_profile(profile, model):
    """chat.completions.create gives a ChatCompletion: the caption, usage that adds up, the model
    as that provider names it (a dated snapshot from OpenAI, Azure and LiteLLM's upstream)."""
    with served(profile, **knobs_for(profile)) as server:
        answer = client_for(server, profile).chat.completions.create(model="gpt-4o", messages=messages(), max_tokens=60)
    assert isinstance(answer, ChatCompletion)
    assert answer.choices[0].message.content == caption_for(IMAGE) and answer.choices[0].finish_reason == "stop"
    assert answer.model == model
    assert answer.usage is not None and answer.usage.prompt_tokens > 85
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens


ERRORS = [
    # profile, image fault or request change, SDK class, status, code
    ("openai", "429", openai.RateLimitError, 429, "rate_limit_exceeded"),
    ("openai", "quota", openai.RateLimitError, 429, "insufficient_quota"),
    ("openai", "auth", openai.AuthenticationError, 401, "invalid_api_key"),
    ("openai", "500", openai.InternalServerError, 500, None),
    ("openai", "503", openai.InternalServerError, 503, None),
    ("openai", "invalid_image_url", openai.BadRequestError, 400, "invalid_image_url"),
    ("openai", "model=gpt-9", openai.NotFoundError, 404, "model_not_found"),
    ("openai", "model=o4-mini", openai.BadRequestError, 400, "unsupported_parameter"),
    ("openai", "stream", openai.BadRequestError, 400, "unsupported_value"),
    ("azure", "429", openai.RateLimitError, 429, "429"),
    ("azure", "auth", openai.AuthenticationError, 401, "401"),
    ("azure", "model=gpt-9", openai.NotFoundError, 404, "DeploymentNotFound"),
    ("azure", "filter_prompt", openai.BadRequestError, 400, "content_filter"),
    ("openrouter", "quota", openai.APIStatusError, 402, "402"),
    ("openrouter", "filter_prompt", openai.PermissionDeniedError, 403, "403"),
    ("openrouter", "model=gpt-9", openai.BadRequestError, 400, "400"),
    ("openrouter", "auth", openai.AuthenticationError, 401, "401"),
    ("vllm", "model=gpt-9", openai.NotFoundError, 404, "404"),
    ("vllm", "500", openai.InternalServerError, 500, "500"),
    ("litellm", "quota", openai.RateLimitError, 429, "429"),
    ("litellm", "auth", openai.AuthenticationError, 401, "401"),
    ("litellm", "model=gpt-9", openai.BadRequestError, 400, "400"),
    ("litellm", "filter_prompt", openai.BadRequestError, 400, "400"),
]


@pytest.mark.parametrize(("profile", "change", "error", "status", "code"), ERRORS)
def test_each_error_is_the_sdk_exception_with_the_providers_code(profile, change, error, status, code):
    """The same fault in each profile: the SDK class a client catches, the status, the provider's code."""
    request: dict[str, Any] = {"model": "gpt-4o", "messages": messages(), "max_tokens": 60}
    if change.startswith("model="):
        request["model"] = change.removeprefix("model=")
    elif change == "stream":
        request["stream"] = True
    else:
        request["messages"] = messages(f"{IMAGE}?sim={change}")
    with served(profile, **knobs_for(profile)) as server, pytest.raises(error) as caught:
        client_for(server, profile).chat.completions.create(**request)
    assert type(caught.value) is error and caught.value.status_code == status
    assert caught.value.code == code


def test_litellm_passes_the_upstream_quota_error_as_a_generic_429_and_hides_its_own_wait():
    """Behind LiteLLM, insufficient_quota is only the upstream's words in a 429's message; the proxy's
    own limiter puts its wait in llm_provider-retry-after alone (no retry-after, no x-ratelimit-*); a
    key other than the master key is the captured proxy's 400 no_db_connection."""
    # A stopped clock: the bucket does not refill while the 60 requests are sent.
    with served("litellm", api_key=KEY, rpm=60, burst_factor=60.0, clock=lambda: 0.0) as server:
        client = client_for(server, "litellm")
        with pytest.raises(openai.RateLimitError) as quota:
            client.chat.completions.create(model="gpt-4o", messages=messages(f"{IMAGE}?sim=quota"), max_tokens=60)
        for _ in range(59):
            client.chat.completions.create(model="gpt-4o", messages=messages(), max_tokens=60)
        with pytest.raises(openai.RateLimitError) as limited:
            client.chat.completions.create(model="gpt-4o", messages=messages(), max_tokens=60)
        with pytest.raises(openai.BadRequestError) as stranger:
            client_for(server, "litellm", key="sk-someone-else").chat.completions.create(
                model="gpt-4o", messages=messages()
            )
    assert "You exceeded your current quota" in quota.value.message and quota.value.code == "429"
    assert quota.value.body["type"] == "throttling_error"  # type: ignore[index]  # not insufficient_quota
    headers = limited.value.response.headers
    assert headers["llm_provider-retry-after"] == "1" and "retry-after" not in headers
    assert not any(name.startswith("x-ratelimit-") for name in headers)
    assert stranger.value.code == "400" and stranger.value.message.endswith("No connected db.")


def test_with_raw_response_shows_the_request_id_and_rate_limits_on_every_answer():
    """x-request-id and x-ratelimit-* (resets from continuous refill) on a 200, and on a 400, 401 and 500."""
    with served("openai", api_key=KEY, rpm=3000, tpm=1_000_000) as server:
        client = client_for(server, "openai")
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=messages(), max_tokens=60)
        errors = []
        for change in ("auth", "500"):
            with pytest.raises(openai.APIStatusError) as caught:
                client.chat.completions.create(model="gpt-4o", messages=messages(f"{IMAGE}?sim={change}"))
            errors.append(caught.value.response)
        with pytest.raises(openai.BadRequestError) as bad:
            client.chat.completions.create(model="gpt-4o", messages=messages(), extra_body={"foo": 1})
        errors.append(bad.value.response)
    assert raw.headers["x-request-id"].startswith("req_") and raw.headers["x-ratelimit-limit-requests"] == "3000"
    assert (
        raw.headers["x-ratelimit-remaining-requests"] == "2999" and raw.headers["x-ratelimit-reset-requests"] == "20ms"
    )
    assert raw.parse().choices[0].message.content == caption_for(IMAGE)
    assert [r.status_code for r in errors] == [401, 500, 400]
    for response in errors:
        assert (
            response.headers["x-request-id"].startswith("req_") and "x-ratelimit-remaining-tokens" in response.headers
        )
    assert bad.value.message.endswith("Unrecognized request argument supplied: foo")


def test_azure_openai_client_works_and_the_key_goes_only_in_api_key(tmp_path: Path):
    """AzureOpenAI(azure_endpoint, api_version, api_key) reaches the deployment path with api-version
    and the api-key header; a wrong key, the key as a Bearer token on the deployments path or no
    api-version is refused as Azure does; its v1 path takes the key as OpenAI's client sends it."""
    log = tmp_path / "azure.jsonl"
    with served("azure", api_key=KEY, log_path=str(log)) as server:
        answer = client_for(server, "azure").chat.completions.create(
            model="gpt-4o-mini", messages=messages(), max_tokens=60
        )
        with pytest.raises(openai.AuthenticationError):
            client_for(server, "azure", key="wrong-key").chat.completions.create(model="gpt-4o", messages=messages())
        deployment = f"{server.root_url}/openai/deployments/gpt-4o"
        bearer = openai.OpenAI(
            base_url=deployment,
            api_key=KEY,
            default_query={"api-version": "2024-10-21"},
            max_retries=0,
            http_client=loopback(),
        )
        with pytest.raises(openai.AuthenticationError):
            bearer.chat.completions.create(model="gpt-4o", messages=messages())
        v1 = openai.OpenAI(
            base_url=f"{server.root_url}/openai/v1", api_key=KEY, max_retries=0, http_client=loopback(), timeout=5
        )
        assert v1.chat.completions.create(model="gpt-4o", messages=messages()).model == "gpt-4o-2024-08-06"
        unversioned = openai.OpenAI(
            base_url=deployment, api_key="x", default_headers={"api-key": KEY}, max_retries=0, http_client=loopback()
        )
        with pytest.raises(openai.NotFoundError):
            unversioned.chat.completions.create(model="gpt-4o", messages=messages())
    assert answer.model == "gpt-4o-mini-2024-07-18"
    first = json.loads(log.read_text().splitlines()[0])
    assert first["path"] == "/openai/deployments/gpt-4o-mini/chat/completions"
    assert first["query"] == {"api-version": "2024-10-21"} and first["auth"] == ["api-key"]
    assert KEY not in log.read_text()


def test_models_need_the_key_and_are_routed_by_id():
    """GET /v1/models refuses a wrong key; /v1/models/{id} answers a model card or model_not_found."""
    with served("openai", api_key=KEY) as server:
        with pytest.raises(openai.AuthenticationError):
            client_for(server, "openai", key="sk-wrong").models.list()
        client = client_for(server, "openai")
        listed = [m.id for m in client.models.list()]
        card = client.models.retrieve("gpt-4o")
        with pytest.raises(openai.NotFoundError) as missing:
            client.models.retrieve("gpt-9")
    assert "gpt-4o" in listed and card.id == "gpt-4o" and card.object == "model"
    assert missing.value.code == "model_not_found"


def test_reasoning_models_report_reasoning_tokens_and_refuse_a_temperature():
    """o4-mini with max_completion_tokens: reasoning_tokens counted inside completion_tokens; a
    non-default temperature is OpenAI's unsupported_value."""
    with served("openai", api_key=KEY) as server:
        client = client_for(server, "openai")
        answer = client.chat.completions.create(model="o4-mini", messages=messages(), max_completion_tokens=500)
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model="o4-mini", messages=messages(), temperature=0.2)
    usage = answer.usage
    assert usage is not None and usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 64 and usage.completion_tokens > 64
    assert answer.model == "o4-mini-2025-04-16" and refused.value.code == "unsupported_value"


def test_litellm_moves_filter_results_into_provider_specific_fields_and_openrouter_names_its_provider():
    """Per-choice content_filter_results sit under provider_specific_fields behind LiteLLM;
    OpenRouter's answer names the provider that served it and has no filter results."""
    with served("litellm", api_key=KEY) as server:
        proxied = client_for(server, "litellm").chat.completions.create(model="gpt-4o", messages=messages())
    with served("openrouter", api_key=KEY) as server:
        routed = client_for(server, "openrouter").chat.completions.create(model="openai/gpt-4o", messages=messages())
    extra = proxied.choices[0].model_extra or {}
    assert extra["provider_specific_fields"]["content_filter_results"]["violence"]["filtered"] is False
    assert "content_filter_results" not in extra
    assert (routed.model_extra or {})["provider"] == "OpenAI" and routed.id.startswith("gen-")
    assert "content_filter_results" not in (routed.choices[0].model_extra or {})
