"""Reasoning models (o1, o3, o4-mini, gpt-5 ...) get max_completion_tokens, and a request the endpoint
refuses for its parameters stops the run instead of failing every row."""

from __future__ import annotations

import json

import polars as pl
import pytest

from pipeline.config import RequestConfig
from pipeline.dialects.openai import classify_http
from pipeline.request import build_body, is_reasoning_model
from pipeline.simulator import SimConfig, SimulatorApp, SimulatorServer
from tests.conftest import FAST_CONFIG, remote_rows, run_args, run_cli, write_config, write_csv


@pytest.mark.parametrize(
    "model",
    ["o1", "o3", "o4-mini", "o4-mini-2025-04-16", "gpt-5", "gpt-5-nano", "openai/gpt-5", "O3-MINI", "a/b/o1-preview"],
)
def test_reasoning_models_get_max_completion_tokens_and_their_effort(model):
    assert is_reasoning_model(model)
    body = build_body(
        RequestConfig(model=model, max_tokens=500, reasoning_effort="low"), image_url="https://x/a.png", fields={}
    )
    assert body["max_completion_tokens"] == 500 and "max_tokens" not in body and body["reasoning_effort"] == "low"
    assert "temperature" not in body and "top_p" not in body


@pytest.mark.parametrize(
    "model",
    [
        "gpt-4o",
        "gpt-4.1-mini",
        "gpt-4o-mini-2024-07-18",
        "omni-moderation",
        "o1x",
        "gpt-50",
        "xo1",
        "o1/gpt-4o",
        "o3/",
        "vendor/o1-x/gpt-4o",
        "openai/o1-mini/",
    ],
)
def test_other_models_keep_max_tokens_and_get_no_effort(model):
    assert not is_reasoning_model(model)
    body = build_body(
        RequestConfig(model=model, max_tokens=500, reasoning_effort="low"), image_url="https://x/a.png", fields={}
    )
    assert body["max_tokens"] == 500 and "max_completion_tokens" not in body and "reasoning_effort" not in body


def test_a_parameter_the_model_refuses_is_fatal_not_a_row_error():
    body = json.dumps(
        {
            "error": {
                "message": "Unsupported parameter: 'max_tokens' is not supported with this model. "
                "Use 'max_completion_tokens' instead.",
                "type": "invalid_request_error",
                "param": "max_tokens",
                "code": "unsupported_parameter",
            }
        }
    ).encode()
    failure = classify_http(400, body, {})
    assert failure.fatal == "request_shape" and failure.error_type == "bad_request" and not failure.retryable
    image = json.dumps(
        {"error": {"message": "Invalid image URL", "type": "invalid_request_error", "code": "invalid_image_url"}}
    ).encode()
    assert classify_http(400, image, {}).fatal is None  # about the row's image: recorded, the run goes on


def _run(tmp_path, extra: str, rows: int = 40):
    log = tmp_path / "sim.jsonl"
    app = SimulatorApp(SimConfig(latency_median_s=0.002, latency_p99_s=0.005, log_path=str(log)))
    config = write_config(tmp_path / "c.toml", FAST_CONFIG + extra)
    manifest = write_csv(tmp_path / "m.csv", remote_rows(rows))
    with SimulatorServer(app, log_level="critical") as sim:
        result = run_cli(run_args(manifest, tmp_path / "out", config, sim.base_url))
        stats = app.stats()
    return result, stats


def test_o4_mini_rows_all_succeed_against_a_server_that_refuses_max_tokens(tmp_path):
    """The simulator refuses max_tokens for reasoning models, as the real API does: every row ok."""
    result, stats = _run(tmp_path, '\n[request]\nmodel = "o4-mini"\nreasoning_effort = "low"\n')
    assert result.returncode == 0, result.stderr
    assert stats["accepted"] == 40 and stats["by_status"].get("400", 0) == 0
    assert (pl.read_parquet(tmp_path / "out" / "results.parquet")["status"] == "ok").all()


def test_a_request_shape_400_stops_the_run_after_at_most_concurrency_plus_5_requests(tmp_path):
    """o4-mini with temperature 0.2: the server refuses every request alike; exit 3 with its words,
    after at most concurrency (16) + 5 requests, not 400 error rows."""
    result, stats = _run(tmp_path, '\n[request]\nmodel = "o4-mini"\ntemperature = 0.2\n', rows=400)
    assert result.returncode == 3, result.stderr
    assert "refuses this request's parameters" in result.stderr and "temperature" in result.stderr
    assert stats["requests"] <= 16 + 5, stats
