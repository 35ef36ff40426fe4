"""The simulator: validation like the real API, real response shapes, token counting, enforced limits, faults, stats."""

from __future__ import annotations

import base64
import io
import json

import anyio
import httpx
import pytest
from PIL import Image

from pipeline.ratelimit import parse_duration_s
from pipeline.simulator import SimConfig, SimulatorApp, caption_for
from pipeline.simulator.limits import TokenBucketLimiter, format_go_duration
from pipeline.tokens import image_tokens


def body(url="https://images.example.com/a.jpg", *, model="gpt-4o", detail="auto", **extra):
    return {
        "model": model,
        "max_tokens": 100,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Describe this image."},
                    {"type": "image_url", "image_url": {"url": url, "detail": detail}},
                ],
            }
        ],
        **extra,
    }


def call(app: SimulatorApp, payload, *, path="/v1/chat/completions", method="POST", headers=None) -> httpx.Response:
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim") as client:
            if method == "GET":
                return await client.get(path)
            content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            return await client.post(path, content=content, headers=headers or {})

    return anyio.run(go)


def fast(**kw) -> SimulatorApp:
    return SimulatorApp(SimConfig(latency_median_s=0.0, latency_p99_s=0.0, **kw))


def test_a_vision_request_gets_an_azure_shaped_completion_with_a_deterministic_caption():
    """200: the caption derived from the image, usage with detail objects, per-choice and prompt filter results."""
    r = call(fast(), body())
    assert r.status_code == 200
    data = r.json()
    assert data["choices"][0]["message"]["content"] == caption_for("https://images.example.com/a.jpg")
    assert data["choices"][0]["content_filter_results"]["violence"] == {"filtered": False, "severity": "safe"}
    assert data["prompt_filter_results"][0]["prompt_index"] == 0
    usage = data["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert (
        usage["prompt_tokens_details"]["cached_tokens"] == 0
        and "reasoning_tokens" in usage["completion_tokens_details"]
    )


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({"model": "gpt-4o"}, "messages"),
        ({"model": "gpt-4o", "messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        (body(detail="ultra"), "messages[0].content[1].image_url.detail"),
        (body(url="ftp://x/a.jpg"), "messages[0].content[1].image_url.url"),
        (body(max_tokens=0), "max_tokens"),
    ],
)
def test_malformed_requests_get_openai_400s(payload, param):
    """A malformed body is a 400 in OpenAI's error envelope naming the bad parameter."""
    r = call(fast(), payload)
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error" and r.json()["error"]["param"] == param


def test_non_json_body_is_a_400():
    """A body that is not JSON is refused like the real API does."""
    assert call(fast(), b"{not json").status_code == 400


def test_bearer_key_is_checked_when_configured():
    """With api_key set: 401 invalid_api_key without it or with a wrong one; 200 with it."""
    app = fast(api_key="sk-right")
    assert call(app, body()).json()["error"]["code"] == "invalid_api_key"
    assert call(app, body(), headers={"Authorization": "Bearer sk-wrong"}).status_code == 401
    assert call(app, body(), headers={"Authorization": "Bearer sk-right"}).status_code == 200


def test_unknown_model_is_a_404_and_models_are_listed():
    """An unknown model: 404 model_not_found; GET /v1/models lists the served ones."""
    app = fast()
    r = call(app, body(model="gpt-9"))
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    models = call(app, None, path="/v1/models", method="GET").json()
    assert "gpt-4o" in [m["id"] for m in models["data"]]


def test_prompt_tokens_count_inlined_images_by_their_real_size():
    """An inlined 2000x1000 PNG at high detail costs the tile rule's tokens; low detail costs 85."""
    out = io.BytesIO()
    Image.new("RGB", (2000, 1000), "blue").save(out, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()
    app = fast()
    high = call(app, body(url, detail="high")).json()["usage"]["prompt_tokens"]
    low = call(app, body(url, detail="low")).json()["usage"]["prompt_tokens"]
    assert high - low == image_tokens("gpt-4o", detail="high", width=2000, height=1000) - 85
    assert image_tokens("gpt-4o", detail="high", width=2000, height=1000) == 85 + 170 * 6
    remote = call(app, body("https://images.example.com/x.jpg?size=2000x1000", detail="high")).json()["usage"][
        "prompt_tokens"
    ]
    assert remote == high


def test_limits_refill_continuously_under_a_burst_cap():
    """rpm 120 with a 1 s burst window: at most 4 per second; a full bucket of 120, then 2 a second
    (120/60) as it refills; a refused request says how long until one is back."""
    limiter = TokenBucketLimiter(rpm=120, tpm=None, burst_window_s=1.0, burst_factor=2.0)
    assert [limiter.check(0.0, 10).allowed for _ in range(5)] == [True, True, True, True, False]
    admitted = 4 + sum(limiter.check(1.0 + 0.25 * i, 10).allowed for i in range(116))  # 4 a second: all fit
    assert admitted == 120
    drained = TokenBucketLimiter(rpm=60, tpm=None, burst_factor=60.0)
    assert sum(drained.check(0.0, 1).allowed for _ in range(61)) == 60
    refused = drained.check(0.25, 1)
    assert not refused.allowed and "RPM" in refused.reason and refused.retry_after_s == pytest.approx(0.75)
    assert drained.check(1.0, 1).allowed


def test_tpm_counts_prompt_plus_max_tokens_and_says_when_tokens_free_up():
    """tpm 600 (10 a second): two 300-token requests empty the bucket; the third waits 30 s for 300 more."""
    limiter = TokenBucketLimiter(rpm=None, tpm=600)
    assert limiter.check(0.0, 300).allowed and limiter.check(0.0, 300).allowed
    refused = limiter.check(0.0, 300)
    assert not refused.allowed and "TPM" in refused.reason and refused.retry_after_s == pytest.approx(30.0)
    assert not limiter.check(29.0, 300).allowed and limiter.check(30.0, 300).allowed


def test_reset_times_are_the_time_to_refill_as_openai_reports_them():
    """One request at 3,000 rpm: remaining 2999, reset 20ms (1/50 s), not a minute's window."""
    limiter = TokenBucketLimiter(rpm=3000, tpm=250_000)
    decision = limiter.check(0.0, 11)
    assert decision.remaining_requests == 2999 and format_go_duration(decision.reset_requests_s) == "20ms"
    assert decision.remaining_tokens == 249_989 and format_go_duration(decision.reset_tokens_s) == "3ms"
    assert limiter.peek(0.02).remaining_requests == 3000


def test_429_and_200_carry_openai_rate_limit_headers_in_their_formats():
    """x-ratelimit-* on every answer; resets as Go durations; a 429 adds retry-after and retry-after-ms."""
    app = fast(rpm=2, burst_factor=60.0)
    ok = call(app, body())
    assert ok.headers["x-ratelimit-limit-requests"] == "2" and ok.headers["x-ratelimit-remaining-requests"] == "1"
    assert parse_duration_s(ok.headers["x-ratelimit-reset-requests"]) is not None
    call(app, body())
    limited = call(app, body())
    assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(limited.headers["retry-after"]) >= 1 and int(limited.headers["retry-after-ms"]) > 0
    assert limited.headers["x-ratelimit-remaining-requests"] == "0"


def test_azure_header_style():
    """header_style azure: remaining-* and the hyphenated x-rate-limit-reset-tokens in integer seconds."""
    r = call(fast(rpm=100, tpm=10_000, header_style="azure"), body())
    assert "x-ratelimit-remaining-tokens" in r.headers and r.headers["x-rate-limit-reset-tokens"].isdigit()
    assert "x-ratelimit-limit-requests" not in r.headers


@pytest.mark.parametrize(("seconds", "text"), [(0.02, "20ms"), (1.0, "1s"), (360.0, "6m0s"), (26.604, "26.604s")])
def test_go_durations_round_trip_with_the_client_parser(seconds, text):
    """The simulator writes resets the way OpenAI does, and the client reads them back."""
    assert format_go_duration(seconds) == text and parse_duration_s(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("kind", "status", "check"),
    [
        ("500", 500, lambda r: r.json()["error"]["type"] == "server_error"),
        ("502", 502, lambda r: "502: Bad gateway" in r.text and r.headers["content-type"] == "text/html"),
        ("503", 503, lambda r: "overloaded" in r.json()["error"]["message"]),
        (
            "429",
            429,
            lambda r: (
                r.headers["retry-after-ms"] == "1000"
                and r.headers["retry-after"] == "1"
                and "try again in 1s." in r.json()["error"]["message"]
            ),
        ),
        ("quota", 429, lambda r: r.json()["error"]["code"] == "insufficient_quota"),
        ("auth", 401, lambda r: r.json()["error"]["code"] == "invalid_api_key"),
        ("invalid_image_url", 400, lambda r: r.json()["error"]["code"] == "invalid_image_url"),
        (
            "filter_prompt",
            400,
            lambda r: r.json()["error"]["innererror"]["content_filter_result"]["violence"]["filtered"],
        ),
        ("filter_completion", 200, lambda r: r.json()["choices"][0]["finish_reason"] == "content_filter"),
        ("nochoices", 200, lambda r: r.json()["choices"] == []),
        ("nonjson", 200, lambda r: not r.text.startswith("{")),
        ("truncated", 200, lambda r: r.text.startswith('{"id"') and not r.text.endswith("}")),
    ],
)
def test_each_fault_by_url_rule(kind, status, check):
    """?sim=KIND makes that image's requests answer with the fault, in the real shapes."""
    r = call(fast(), body(f"https://images.example.com/f.jpg?sim={kind}"))
    assert r.status_code == status and check(r)


def test_fault_rule_with_a_count_fails_only_the_first_requests():
    """?sim=503x2: two 503s for that image, then a normal answer."""
    app = fast()
    url = "https://images.example.com/g.jpg?sim=503x2"
    assert [call(app, body(url)).status_code for _ in range(3)] == [503, 503, 200]


def test_fault_rates_are_seeded_and_counted_in_stats(tmp_path):
    """Faults by rate are reproducible for a seed; /stats and the JSONL log show what the server did."""
    log = tmp_path / "requests.jsonl"
    app = fast(fault_rates={"500": 0.3}, seed=7, log_path=str(log))
    statuses = [call(app, body(f"https://images.example.com/{i}.jpg")).status_code for i in range(40)]
    again = fast(fault_rates={"500": 0.3}, seed=7)
    assert statuses == [call(again, body(f"https://images.example.com/{i}.jpg")).status_code for i in range(40)]
    stats = call(app, None, path="/stats", method="GET").json()
    assert stats["requests"] == 40 and stats["by_status"].get("500", 0) == statuses.count(500) > 0
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(lines) == 40 and sum(1 for line in lines if line["fault"] == "500") == statuses.count(500)


def test_control_endpoint_takes_the_endpoint_down_and_back():
    """POST /control {"down": true} makes every request 503 until it is set back."""
    app = fast()
    assert call(app, {"down": True}, path="/control").status_code == 200
    assert call(app, body()).status_code == 503
    call(app, {"down": False}, path="/control")
    assert call(app, body()).status_code == 200
    assert call(app, {"nonsense": 1}, path="/control").status_code == 400


def test_azure_profile_wants_its_deployment_path_and_a_known_api_version():
    """Azure: no api-version 404, an unknown one 400, the OpenAI path 404; the deployment names the
    model whatever the body says; the key only in api-key."""
    app = fast(profile="azure", api_key="az-key")
    key = {"api-key": "az-key"}
    path = "/openai/deployments/gpt-4o-mini/chat/completions"
    assert call(app, body(), path=path, headers=key).status_code == 404
    assert call(app, body(), path=path + "?api-version=1999-01-01", headers=key).status_code == 400
    assert call(app, body(), path="/v1/chat/completions", headers=key).status_code == 404
    ok = call(app, body(model="ignored"), path=path + "?api-version=2024-10-21", headers=key)
    assert ok.status_code == 200 and ok.json()["model"] == "gpt-4o-mini-2024-07-18"
    bearer = call(app, body(), path=path + "?api-version=2024-10-21", headers={"Authorization": "Bearer az-key"})
    assert bearer.status_code == 401 and bearer.json()["error"]["code"] == "401"
    gone = call(app, body(), path="/openai/deployments/nope/chat/completions?api-version=2024-10-21", headers=key)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "DeploymentNotFound"


@pytest.mark.parametrize(
    ("profile", "extra", "status"),
    [
        ("openai", {"foo": 1}, 400),
        ("azure", {"foo": 1}, 400),
        ("openai", {"ocr_model": "gpt-4o-mini"}, 200),  # the 302.AI gateway's own key, accepted by default
        ("openrouter", {"foo": 1}, 200),
        ("vllm", {"foo": 1}, 200),
        ("openrouter", {"stream": True}, 400),
    ],
)
def test_unknown_parameters_are_refused_where_openai_refuses_them(profile, extra, status):
    """OpenAI (and Azure) refuse a body key they do not know with their words; OpenRouter and vLLM
    ignore it; streaming is refused everywhere (the pipeline does not stream)."""
    path = "/openai/v1/chat/completions" if profile == "azure" else "/v1/chat/completions"
    r = call(fast(profile=profile), body(**extra), path=path)
    assert r.status_code == status and "x-request-id" in r.headers
    if status == 400 and "foo" in extra:
        assert r.json()["error"]["message"] == "Unrecognized request argument supplied: foo"
