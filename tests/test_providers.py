"""Providers: each reads its own key variable and has its own defaults; keys go only where they belong;
Azure's URL, query and header; extra headers and query parameters; self-hosted servers without limits."""

from __future__ import annotations

import json

import httpx
import pytest

from pipeline.config import build_config, load_config
from pipeline.errors import ConfigError
from pipeline.models import Item
from pipeline.simulator import SimConfig, SimulatorApp, SimulatorServer
from tests.conftest import FAST_CONFIG, cli_env, remote_rows, run_args, run_cli, write_config, write_csv
from tests.test_row_boundary import Endpoint, completion, run

OPENAI_KEY = "sk-openai-" + "x" * 40


def test_the_default_provider_never_reads_an_openai_key(tmp_path):
    """Default config (302.AI) with only OPENAI_API_KEY set: exit 2 naming 302.AI's own variable;
    the OpenAI key is not sent anywhere."""
    manifest = write_csv(tmp_path / "m.csv", remote_rows(3))
    result = run_cli(["run", str(manifest), "--out", str(tmp_path / "out")], env=cli_env(OPENAI_API_KEY=OPENAI_KEY))
    assert result.returncode == 2, result.stderr
    assert "AI302_API_KEY" in result.stderr and "302ai" in result.stderr


def test_an_openai_key_in_the_environment_reaches_no_other_host(tmp_path):
    """Default config against a gateway (loopback) that accepts only its own key, with both keys in the
    environment: every request carries the gateway's key, never the OpenAI one (the gateway would
    refuse it: 401, exit 3)."""
    gateway_key = "sk-302-" + "g" * 40
    app = SimulatorApp(SimConfig(latency_median_s=0.002, accept_any_model=True, api_key=gateway_key))
    config = write_config(tmp_path / "c.toml", FAST_CONFIG)
    manifest = write_csv(tmp_path / "m.csv", remote_rows(5))
    with SimulatorServer(app, log_level="critical") as sim:
        result = run_cli(
            run_args(manifest, tmp_path / "out", config, sim.base_url),
            env=cli_env(OPENAI_API_KEY=OPENAI_KEY, AI302_API_KEY=gateway_key),
        )
        stats = app.stats()
    assert result.returncode == 0, result.stderr
    assert stats["accepted"] == 5 and stats["by_status"].get("401", 0) == 0


def test_openai_reads_openai_base_url_and_its_own_key(tmp_path):
    """provider = "openai" with no base_url: OPENAI_BASE_URL is honoured, OPENAI_API_KEY sent as Bearer."""
    app = SimulatorApp(SimConfig(latency_median_s=0.002, accept_any_model=True, api_key=OPENAI_KEY))
    config = write_config(tmp_path / "c.toml", FAST_CONFIG + '\n[endpoint]\nprovider = "openai"\n')
    manifest = write_csv(tmp_path / "m.csv", remote_rows(4))
    with SimulatorServer(app, log_level="critical") as sim:
        result = run_cli(
            ["run", str(manifest), "--out", str(tmp_path / "out"), "--config", str(config), "--no-progress"],
            env=cli_env(OPENAI_API_KEY=OPENAI_KEY, OPENAI_BASE_URL=sim.base_url),
        )
        accepted = app.stats()["accepted"]
    assert result.returncode == 0, result.stderr
    assert accepted == 4 and sim.base_url.split("//")[1].split("/")[0] in result.stderr


def _sent(config, tmp_path) -> list[httpx.Request]:
    endpoint = Endpoint()
    run(config, [Item(id="a", url="https://img.test/a.png")], tmp_path / "out", endpoint, api_key="azure-key-123")
    return endpoint.requests


@pytest.mark.parametrize(
    "base_url,expected_path",
    [
        ("https://res.openai.azure.com/openai/deployments/dep", "/openai/deployments/dep/chat/completions"),
        (
            "https://res.openai.azure.com/openai/deployments/dep?api-version=2024-06-01",
            "/openai/deployments/dep/chat/completions",
        ),
    ],
)
def test_azure_puts_the_deployment_in_the_path_the_version_in_the_query_and_the_key_in_api_key(
    tmp_path, base_url, expected_path
):
    config = build_config(
        {
            "endpoint": {"provider": "azure", "base_url": base_url, "api_version": "2024-10-21"},
            "limits": {"rpm": None, "tpm": None},
        }
    )
    (request,) = _sent(config, tmp_path)
    assert request.url.path == expected_path
    assert request.url.params["api-version"] == "2024-10-21"  # the configured one wins over the URL's
    assert request.headers["api-key"] == "azure-key-123" and "authorization" not in request.headers
    assert json.loads(request.content)["model"] == "gpt-4o"


def test_configured_headers_and_query_are_sent_and_cannot_replace_the_key(tmp_path):
    config = build_config(
        {
            "endpoint": {
                "provider": "openrouter",
                "headers": {
                    "HTTP-Referer": "https://example.org",
                    "X-Title": "caption",
                    "Authorization": "Bearer spoofed",
                },
                "query": {"trace": "1"},
            },
            "limits": {"rpm": None, "tpm": None},
        }
    )
    (request,) = _sent(config, tmp_path)
    assert request.url.host == "openrouter.ai" and request.url.params["trace"] == "1"
    assert request.headers["x-title"] == "caption" and request.headers["http-referer"] == "https://example.org"
    assert request.headers["authorization"] == "Bearer azure-key-123"


def test_providers_default_their_key_variable_url_and_limits():
    assert load_config(None).endpoint.api_key_env == "AI302_API_KEY"
    openai = build_config({"endpoint": {"provider": "openai"}})
    assert openai.endpoint.base_url == "https://api.openai.com/v1" and openai.endpoint.api_key_env == "OPENAI_API_KEY"
    vllm = build_config({"endpoint": {"provider": "vllm", "base_url": "http://127.0.0.1:8000/v1"}})
    assert vllm.limits.rpm is None and vllm.limits.tpm is None  # concurrency bounds a local server
    assert (
        build_config(
            {"endpoint": {"provider": "vllm", "base_url": "http://127.0.0.1:8000/v1"}, "limits": {"rpm": 100}}
        ).limits.rpm
        == 100
    )
    assert build_config({"endpoint": {"provider": "openai", "api_key_env": "MY_KEY"}}).endpoint.api_key_env == "MY_KEY"
    with pytest.raises(ConfigError, match="provider 'azure' needs endpoint.base_url"):
        build_config({"endpoint": {"provider": "azure"}})
    with pytest.raises(ConfigError, match="endpoint.headers"):
        build_config({"endpoint": {"headers": {"X": "a\nb"}}})


def _run_openrouter(tmp_path, answer):
    """Six rows through provider = openrouter over a MockTransport; returns (stop error or totals, rows)."""
    config = build_config(
        {"endpoint": {"provider": "openrouter"}, "limits": {"rpm": None, "tpm": None, "concurrency": 1}}
    )
    items = [Item(id=f"r{i}", url=f"https://img.test/{i}.png") for i in range(6)]
    endpoint = Endpoint(lambda body: answer(body["messages"][0]["content"][1]["image_url"]["url"]))
    result, frame = run(config, items, tmp_path / "out", endpoint, api_key="sk-or-test")
    return result, {r["id"]: r for r in frame.to_dicts()}


def _openrouter_error(status: int, message: str, metadata: dict | None = None) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": status, "message": message, "metadata": metadata or {}}})


def test_openrouter_402_is_out_of_credits_and_stops_the_run(tmp_path):
    from pipeline.errors import QuotaError

    result, rows = _run_openrouter(
        tmp_path,
        lambda url: _openrouter_error(402, "Insufficient credits. Add more using https://openrouter.ai/credits"),
    )
    assert isinstance(result, QuotaError) and result.exit_code == 3
    assert not any(r["status"] == "error" for r in rows.values())  # not burnt into error rows


def test_openrouter_403_moderation_is_that_rows_filter_verdict_and_the_run_goes_on(tmp_path):
    def answer(url: str) -> httpx.Response:
        if url.endswith("/2.png"):
            return _openrouter_error(
                403, "Input was flagged by moderation", {"reasons": ["violence"], "flagged_input": "..."}
            )
        return httpx.Response(200, json=completion())

    result, rows = _run_openrouter(tmp_path, answer)
    assert not isinstance(result, Exception), result
    assert rows["r2"]["status"] == "filtered" and rows["r2"]["flagged_categories"] == ["violence"]
    assert all(rows[f"r{i}"]["status"] == "ok" for i in (0, 1, 3, 4, 5))
