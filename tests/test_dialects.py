"""The dialect seam: the lookup by name, and a dialect plugged into ``build_runner`` deciding the URL, the
auth headers, the body and which rate-limit headers the limiter reads (over ``httpx.MockTransport``)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from pipeline.client import Http, HttpxPoster
from pipeline.compose import build_runner
from pipeline.config import RequestConfig
from pipeline.dialects import DEFAULT_DIALECT, Dialect, dialect_for
from pipeline.dialects import openai as openai_dialect
from pipeline.errors import ConfigError
from pipeline.journal import Journal
from pipeline.models import Item
from pipeline.ratelimit import RateLimitHeaders, header_count
from pipeline.request import build_body
from tests.test_row_boundary import completion
from tests.test_runner import make_config

KEY = "azure-key-0123456789abcdef"
BASE = "http://res.test/openai/deployments/dep"
ITEMS = [Item(id=f"r{i}", url=f"https://img.test/{i}.png") for i in range(3)]


def azure_like() -> Dialect:
    """Azure's shape where it differs from OpenAI's: ``api-key`` instead of Bearer, ``?api-version=`` on the URL,
    a marker in the body, and its own name for the requests limit."""

    def request_url(base_url: str, query: Mapping[str, str]) -> str:
        return base_url.rstrip("/") + "/chat/completions?api-version=2024-10-21"

    def auth_headers(api_key: str | None) -> dict[str, str]:
        return {"api-key": api_key} if api_key else {}

    def body(request: RequestConfig, *, image_url: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        return {**build_body(request, image_url=image_url, fields=fields), "dialect": "azure-like"}

    def kept_headers(headers: Mapping[str, str]) -> dict[str, str]:
        return {k.lower(): v for k, v in headers.items() if k.lower().startswith("azure-")}

    def rate_limits(headers: Mapping[str, str]) -> RateLimitHeaders:
        return RateLimitHeaders(limit_requests=header_count(headers, "azure-limit-requests"))

    return dataclasses.replace(
        dialect_for("openai"),
        name="azure-like",
        request_url=request_url,
        auth_headers=auth_headers,
        build_body=body,
        kept_headers=kept_headers,
        rate_limit_headers=rate_limits,
    )


def run_with(dialect: Dialect | None, out: Path) -> tuple[list[httpx.Request], Any]:
    """Three rows through ``build_runner`` over a mock endpoint; the chat requests it saw, and the runner."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            seen.append(request)
            return httpx.Response(
                200, json=completion(), headers={"azure-limit-requests": "600", "x-ratelimit-limit-requests": "60"}
            )
        return httpx.Response(404)

    async def go() -> Any:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            runner = build_runner(
                make_config(BASE),
                http=Http(client=http, poster=HttpxPoster(http, timeout_s=5)),
                journal=journal,
                chunks=lambda: iter([ITEMS]),
                base_dir=out.parent,
                total_rows=len(ITEMS),
                api_key=KEY,
                grace_s=2,
                dialect=dialect,
            )
            await runner.run()
            return runner

    with Journal(out) as journal:
        runner = anyio.run(go)
    return seen, runner


def test_openai_generic_and_302ai_are_todays_one_dialect():
    """Until issue 13 every name an endpoint may go by speaks OpenAI's format, and it is the default."""
    assert dialect_for("generic") is dialect_for("302ai") is dialect_for("openai") is openai_dialect.DIALECT
    assert dialect_for(DEFAULT_DIALECT) is openai_dialect.DIALECT


def test_an_unknown_dialect_is_a_config_error_naming_the_known_ones():
    """A misspelt provider is refused with the list of known ones, not a KeyError."""
    with pytest.raises(ConfigError, match="known: 302ai, azure, generic, litellm, openai, openrouter, vllm"):
        dialect_for("azrue")


def test_a_dialect_plugged_into_build_runner_sets_the_url_and_headers_the_client_sends(tmp_path):
    """An Azure-like dialect given to build_runner: every POST goes to its URL with its query and carries
    ``api-key``, never a Bearer header; the default dialect still sends OpenAI's path and Bearer."""
    seen, _ = run_with(azure_like(), tmp_path / "azure")
    assert len(seen) == len(ITEMS)
    for request in seen:
        assert request.url.path == "/openai/deployments/dep/chat/completions"
        assert request.url.params["api-version"] == "2024-10-21"
        assert request.headers["api-key"] == KEY and "authorization" not in request.headers

    default, _ = run_with(None, tmp_path / "openai")
    assert {str(r.url) for r in default} == {BASE + "/chat/completions"}
    assert all(r.headers["authorization"] == f"Bearer {KEY}" and "api-key" not in r.headers for r in default)


def test_the_dialect_builds_the_body_and_reads_the_rate_limit_headers(tmp_path):
    """Bodies come from the dialect's build_body, and the limiter learns its limit from the dialect's header
    names (azure-limit-requests: 600), not OpenAI's (x-ratelimit-limit-requests: 60, ignored)."""
    seen, runner = run_with(azure_like(), tmp_path / "azure")
    assert all(json.loads(r.content)["dialect"] == "azure-like" for r in seen)
    assert runner.deps.limiter.rpm == 600

    _, default = run_with(None, tmp_path / "openai")
    assert default.deps.limiter.rpm == 60
