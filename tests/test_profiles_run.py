"""`caption run` against the simulator in each provider's profile, judged on what the simulator
received (its JSONL request log: path, query, which credential headers, a digest of the key, the
other headers and the body's keys), not on what the pipeline believes it sent."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.config import load_config
from pipeline.simulator import SimConfig, SimulatorApp, SimulatorServer
from tests.conftest import FAST_CONFIG, KEY_ENV, cli_env, remote_rows, run_args, run_cli, write_config, write_csv

AZURE_KEY = "azure-" + "a" * 32
OPENAI_KEY = "sk-openai-" + "o" * 40
ROUTER_KEY = "sk-or-v1-" + "r" * 40
GATEWAY_KEY = "sk-302-" + "g" * 40


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


@contextmanager
def served(tmp_path: Path, profile: str, **knobs: Any) -> Iterator[tuple[SimulatorServer, Path]]:
    log = tmp_path / f"{profile}.jsonl"
    config = SimConfig(latency_median_s=0.002, latency_p99_s=0.005, profile=profile, log_path=str(log), **knobs)  # type: ignore[arg-type]
    with SimulatorServer(SimulatorApp(config), log_level="critical") as server:
        yield server, log


def sent(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def results(tmp_path: Path) -> pl.DataFrame:
    return pl.read_parquet(tmp_path / "out" / "results.parquet")


def test_azure_sends_the_deployment_path_the_api_version_and_only_the_api_key_header(tmp_path):
    """provider azure: every request goes to /openai/deployments/DEP/chat/completions?api-version=...,
    with the key in api-key and no Authorization header; all rows ok, priced from the snapshot."""
    config = write_config(
        tmp_path / "c.toml", FAST_CONFIG + '\n[endpoint]\nprovider = "azure"\napi_version = "2024-10-21"\n'
    )
    manifest = write_csv(tmp_path / "m.csv", remote_rows(12))
    with served(tmp_path, "azure", api_key=AZURE_KEY) as (sim, log):
        base = f"{sim.root_url}/openai/deployments/gpt-4o"
        result = run_cli(
            run_args(manifest, tmp_path / "out", config, base), env=cli_env(AZURE_OPENAI_API_KEY=AZURE_KEY)
        )
    assert result.returncode == 0, result.stderr
    requests = sent(log)
    assert len(requests) == 12 and {r["status"] for r in requests} == {200}
    for request in requests:
        assert request["path"] == "/openai/deployments/gpt-4o/chat/completions"
        assert request["query"] == {"api-version": "2024-10-21"}
        assert request["auth"] == ["api-key"] and request["credential"] == digest(AZURE_KEY)
    rows = results(tmp_path)
    assert (rows["model"] == "gpt-4o-2024-08-06").all() and rows["cost_usd"].is_not_null().all()


def test_azure_with_a_wrong_key_stops_the_run(tmp_path):
    """Azure's 401 (Access denied ...) stops the run at once: exit 3, not an error row per image."""
    config = write_config(
        tmp_path / "c.toml", FAST_CONFIG + '\n[endpoint]\nprovider = "azure"\napi_version = "2024-10-21"\n'
    )
    manifest = write_csv(tmp_path / "m.csv", remote_rows(200))
    with served(tmp_path, "azure", api_key=AZURE_KEY) as (sim, log):
        base = f"{sim.root_url}/openai/deployments/gpt-4o"
        result = run_cli(run_args(manifest, tmp_path / "out", config, base), env=cli_env(AZURE_OPENAI_API_KEY="wrong"))
    assert result.returncode == 3, result.stderr
    assert "Access denied" in result.stderr
    assert len(sent(log)) <= 16 + 5 and {r["status"] for r in sent(log)} == {401}


def test_o4_mini_bodies_carry_max_completion_tokens_and_never_max_tokens(tmp_path):
    """provider openai, o4-mini, against the openai profile (which refuses max_tokens and unknown
    keys for it): every body has max_completion_tokens and no max_tokens; every row ok."""
    config = write_config(
        tmp_path / "c.toml",
        FAST_CONFIG + '\n[endpoint]\nprovider = "openai"\n[request]\nmodel = "o4-mini"\nreasoning_effort = "low"\n',
    )
    manifest = write_csv(tmp_path / "m.csv", remote_rows(20))
    with served(tmp_path, "openai", api_key=OPENAI_KEY) as (sim, log):
        result = run_cli(
            run_args(manifest, tmp_path / "out", config, sim.base_url), env=cli_env(OPENAI_API_KEY=OPENAI_KEY)
        )
    assert result.returncode == 0, result.stderr
    requests = sent(log)
    assert len(requests) == 20
    for request in requests:
        assert "max_completion_tokens" in request["body_keys"] and "max_tokens" not in request["body_keys"]
        assert request["auth"] == ["authorization"] and request["credential"] == digest(OPENAI_KEY)
    rows = results(tmp_path)
    assert (rows["status"] == "ok").all() and (rows["reasoning_tokens"] == 64).all()
    assert (rows["model"] == "o4-mini-2025-04-16").all()


def _openrouter_config(tmp_path: Path) -> Path:
    return write_config(
        tmp_path / "c.toml",
        FAST_CONFIG
        + '\n[endpoint]\nprovider = "openrouter"\n'
        + '[endpoint.headers]\n"HTTP-Referer" = "https://example.org/captions"\n"X-Title" = "caption"\n'
        + '[endpoint.query]\ntrace = "on"\n'
        + '[request]\nmodel = "openai/gpt-4o"\n',
    )


def test_openrouter_out_of_credits_stops_the_run(tmp_path):
    """OpenRouter's 402 (no credits) is a quota stop: exit 3 after a handful of requests."""
    manifest = write_csv(tmp_path / "m.csv", remote_rows(200, query="?sim=quota"))
    with served(tmp_path, "openrouter", api_key=ROUTER_KEY) as (sim, log):
        result = run_cli(
            run_args(manifest, tmp_path / "out", _openrouter_config(tmp_path), sim.base_url),
            env=cli_env(OPENROUTER_API_KEY=ROUTER_KEY),
        )
    assert result.returncode == 3, result.stderr
    assert len(sent(log)) <= 16 + 5 and {r["status"] for r in sent(log)} == {402}


def test_openrouter_moderation_is_a_filtered_row_and_configured_headers_and_query_are_sent(tmp_path):
    """A 403 moderation refusal is that row's `filtered` verdict (its reasons as categories) and the
    run goes on; endpoint.headers and endpoint.query reach the server on every request."""
    rows = remote_rows(10)
    rows[3]["url"] = str(rows[3]["url"]) + "?sim=filter_prompt"
    manifest = write_csv(tmp_path / "m.csv", rows)
    with served(tmp_path, "openrouter", api_key=ROUTER_KEY) as (sim, log):
        result = run_cli(
            run_args(manifest, tmp_path / "out", _openrouter_config(tmp_path), sim.base_url),
            env=cli_env(OPENROUTER_API_KEY=ROUTER_KEY),
        )
    assert result.returncode == 0, result.stderr
    by_id = {row["id"]: row for row in results(tmp_path).to_dicts()}
    flagged = by_id["img-0003"]
    assert flagged["status"] == "filtered" and flagged["http_status"] == 403
    assert flagged["flagged_categories"] == ["violence/graphic"]
    assert all(row["status"] == "ok" and row["model"] == "openai/gpt-4o" for i, row in by_id.items() if i != "img-0003")
    for request in sent(log):
        assert request["headers"]["http-referer"] == "https://example.org/captions"
        assert request["headers"]["x-title"] == "caption" and request["query"] == {"trace": "on"}
        assert request["credential"] == digest(ROUTER_KEY)


def test_vllm_needs_no_key_and_no_limits(tmp_path):
    """provider vllm with no [limits]: no key sent, no rpm/tpm pacing configured, every row ok, the
    model named as served; the server sends no rate-limit headers for the pipeline to learn from."""
    config = write_config(
        tmp_path / "c.toml",
        '[endpoint]\nprovider = "vllm"\n[request]\nmodel = "Qwen/Qwen2.5-VL-7B-Instruct"\n[run]\nflush_interval_s = 0.2\n',
    )
    manifest = write_csv(tmp_path / "m.csv", remote_rows(30))
    with served(tmp_path, "vllm", accept_any_model=True) as (sim, log):
        result = run_cli(run_args(manifest, tmp_path / "out", config, sim.base_url), env=cli_env())
    assert result.returncode == 0, result.stderr
    assert all(r["auth"] == [] and r["status"] == 200 for r in sent(log)) and len(sent(log)) == 30
    rows = results(tmp_path)
    assert (rows["status"] == "ok").all() and (rows["model"] == "Qwen/Qwen2.5-VL-7B-Instruct").all()
    limits = load_config(config, overrides={"endpoint.base_url": sim.base_url}).limits
    assert limits.rpm is None and limits.tpm is None  # what the run paced by: nothing but concurrency


def test_openai_base_url_is_honoured_with_the_openai_key(tmp_path):
    """provider openai and no base_url: OPENAI_BASE_URL names the server, OPENAI_API_KEY goes as Bearer."""
    config = write_config(tmp_path / "c.toml", FAST_CONFIG + '\n[endpoint]\nprovider = "openai"\n')
    manifest = write_csv(tmp_path / "m.csv", remote_rows(5))
    with served(tmp_path, "openai", api_key=OPENAI_KEY) as (sim, log):
        args = ["run", str(manifest), "--out", str(tmp_path / "out"), "--config", str(config), "--no-progress"]
        result = run_cli(args, env=cli_env(OPENAI_API_KEY=OPENAI_KEY, OPENAI_BASE_URL=sim.base_url))
    assert result.returncode == 0, result.stderr
    assert [r["path"] for r in sent(log)] == ["/v1/chat/completions"] * 5
    assert {r["credential"] for r in sent(log)} == {digest(OPENAI_KEY)}


def test_an_openai_key_in_the_environment_never_reaches_the_default_gateway(tmp_path):
    """Default config (302.AI) with OPENAI_API_KEY set: with the gateway's own key every request
    carries that one; without it, exit 2 and nothing is sent at all."""
    config = write_config(tmp_path / "c.toml", FAST_CONFIG)
    manifest = write_csv(tmp_path / "m.csv", remote_rows(6))
    with served(tmp_path, "openai", api_key=GATEWAY_KEY, accept_any_model=True) as (sim, log):
        both = run_cli(
            run_args(manifest, tmp_path / "out", config, sim.base_url),
            env=cli_env(OPENAI_API_KEY=OPENAI_KEY, **{KEY_ENV: GATEWAY_KEY}),
        )
        only_openai = run_cli(
            ["run", str(manifest), "--out", str(tmp_path / "out2"), "--config", str(config), "--no-progress"],
            env=cli_env(OPENAI_API_KEY=OPENAI_KEY),
        )
        requests = sent(log)
    assert both.returncode == 0, both.stderr
    assert len(requests) == 6 and {r["credential"] for r in requests} == {digest(GATEWAY_KEY)}
    assert only_openai.returncode == 2 and KEY_ENV in only_openai.stderr
    assert OPENAI_KEY not in log.read_text()


LITELLM_CONFIG = FAST_CONFIG + '\n[endpoint]\nprovider = "litellm"\napi_key_env = "LITELLM_KEY"\n'
PROXY_KEY = "sk-litellm-master-" + "m" * 24


def test_litellm_quota_in_a_generic_429_stops_the_run(tmp_path):
    """Behind LiteLLM, upstream's insufficient_quota arrives as a generic 429 whose words say quota:
    exit 3 after at most concurrency + 5 requests, not retried for ever."""
    config = write_config(tmp_path / "c.toml", LITELLM_CONFIG)
    manifest = write_csv(tmp_path / "m.csv", remote_rows(200, query="?sim=quota"))
    with served(tmp_path, "litellm", api_key=PROXY_KEY) as (sim, log):
        result = run_cli(run_args(manifest, tmp_path / "out", config, sim.base_url), env=cli_env(LITELLM_KEY=PROXY_KEY))
    assert result.returncode == 3, result.stderr
    assert "no quota or credit left" in result.stderr and "exceeded your current quota" in result.stderr
    assert 1 <= len(sent(log)) <= 16 + 5 and {r["status"] for r in sent(log)} == {429}


def test_litellm_own_limiter_wait_in_llm_provider_retry_after_is_honoured(tmp_path):
    """The proxy's own limiter puts its wait only in llm_provider-retry-after (2 s here; its words
    say 'Limit resets in 2 seconds', which no retry reads): nothing is answered before the wait after
    the first refusal is over, and every row ends ok. Read as OpenAI's, the retry came ~0.5 s later."""
    config = write_config(tmp_path / "c.toml", LITELLM_CONFIG)
    manifest = write_csv(tmp_path / "m.csv", remote_rows(6, query="?sim=gateway_limitx1"))
    with served(tmp_path, "litellm", api_key=PROXY_KEY, fault_wait_s=2.0) as (sim, log):
        result = run_cli(run_args(manifest, tmp_path / "out", config, sim.base_url), env=cli_env(LITELLM_KEY=PROXY_KEY))
    assert result.returncode == 0, result.stderr
    requests = sent(log)
    refused = [r["t"] for r in requests if r["status"] == 429]
    answered = [r["t"] for r in requests if r["status"] == 200]
    assert len(refused) == 6 and len(answered) == 6
    assert min(answered) - min(refused) >= 2.0 - 0.05, (refused, answered)
    assert (results(tmp_path)["status"] == "ok").all()
