"""PURE: LiteLLM's proxy: OpenAI's format, with what upstream said folded into words and renamed headers.

Measured against litellm 1.80.0's proxy in front of the simulator (scripts/check_litellm.py):

- Every error is ``{"error": {"message": "litellm.<Class>: <Class>: <Provider>Exception -
  <upstream message>. Received Model Group=...", "type": ..., "param": ..., "code": "<status>"}}``.
  Upstream's own ``code`` (``insufficient_quota``, ``content_filter``, ``unsupported_parameter``)
  survives only as words, so this dialect reads the words:
  - quota: a 429 "You exceeded your current quota" (OpenAI's reading retries it for ever);
    the proxy's own budget: 400 ``budget_exceeded`` "Budget has been exceeded!".
  - a key the proxy refuses: 401 ``auth_error`` / ``expired_key`` / ``token_not_found_in_db``,
    or, with no database behind it, 400 ``no_db_connection`` "No connected db.".
  - a key not allowed the model: ``*_model_access_denied``; an unknown model: 400 "Invalid
    model name passed in model=X".
  - a parameter the model refuses: "Unrecognized request argument", ``UnsupportedParamsError``,
    ``unsupported_parameter``/``unsupported_value`` anywhere in the words.
  - a filtered prompt: 400 "...content management policy..." / ``ContentPolicyViolationError``,
    its categories lost on the way: that row's ``content_filter`` verdict.
  - its router's cooldown: 429 "No deployments available ... Try again in 5 seconds".
  - upstream's image download timed out: 400 "Timeout while downloading": retried, as OpenAI's.
- Headers: the limits and remainders are passed on plainly, but the resets only as
  ``llm_provider-x-ratelimit-reset-*``; its own limiters put their wait in ``retry-after``, a
  wait upstream asked for arrives as ``llm_provider-retry-after[-ms]``.
- Answers: each choice's ``content_filter_results`` is moved into
  ``choices[i].provider_specific_fields``; put back before the common parser reads it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from ..models import Completion, Failure, FatalKind, FilterVerdict
from ..parse import parse_completion_bytes, parse_error_body
from ..ratelimit import RateLimitHeaders
from . import openai
from .base import Dialect

_PROVIDER_PREFIX = "llm_provider-"

_QUOTA = re.compile(r"exceeded your current quota|insufficient_quota|Budget has been exceeded", re.I)
_AUTH_TYPES = frozenset({"auth_error", "expired_key", "token_not_found_in_db", "no_db_connection"})
_ACCESS_TYPES = frozenset(
    {"key_model_access_denied", "team_model_access_denied", "user_model_access_denied", "org_model_access_denied"}
)
_UNKNOWN_MODEL = re.compile(r"Invalid model name passed in model=", re.I)
_REQUEST_SHAPE = re.compile(
    r"Unrecognized request argument|UnsupportedParamsError|unsupported_parameter|unsupported_value", re.I
)
_PROMPT_FILTERED = re.compile(r"content management policy|ContentPolicyViolationError", re.I)
_DOWNLOAD_TIMEOUT = re.compile(r"Timeout while downloading", re.I)


def _with_upstream_waits(headers: Mapping[str, str]) -> Mapping[str, str]:
    """The proxy's own wait wins; else the one upstream asked for, renamed by the proxy."""
    merged = {name.lower(): value for name, value in headers.items()}
    if "retry-after" in merged or "retry-after-ms" in merged:
        return merged
    for name in ("retry-after", "retry-after-ms"):
        forwarded = headers.get(_PROVIDER_PREFIX + name)
        if forwarded is not None:
            merged[name] = forwarded
    return merged


def classify_http(status: int, body: bytes, headers: Mapping[str, str], *, now_epoch: float | None = None) -> Failure:
    failure = openai.classify_http(status, body, _with_upstream_waits(headers), now_epoch=now_epoch)
    if failure.fatal is not None:
        return failure
    err = parse_error_body(body)
    words, kind = err.message, err.type or ""

    def fatal(error_type: Any, reason: FatalKind) -> Failure:
        return dataclasses.replace(failure, error_type=error_type, retryable=False, retry_after_s=None, fatal=reason)

    if _QUOTA.search(words) or kind == "budget_exceeded":
        return fatal("quota", "quota")
    if kind in _AUTH_TYPES or kind in _ACCESS_TYPES:
        return fatal("auth", "auth")
    if _UNKNOWN_MODEL.search(words):
        return fatal("model_not_found", "model_not_found")
    if status == 400 and _REQUEST_SHAPE.search(words):
        return fatal("bad_request", "request_shape")
    if status == 400 and _PROMPT_FILTERED.search(words):
        verdict = FilterVerdict(flagged=True, categories=("content_policy",), raw_json=None)
        return dataclasses.replace(
            failure, error_type="content_filter", retryable=False, retry_after_s=None, filters=verdict
        )
    if status == 400 and _DOWNLOAD_TIMEOUT.search(words):  # upstream's image host was slow: transient
        return dataclasses.replace(failure, error_type="timeout", retryable=True)
    return failure


def _restore_choice_filters(data: Any) -> Any:
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list):
        return data
    for choice in choices:
        if not isinstance(choice, dict) or "content_filter_results" in choice:
            continue
        moved = choice.get("provider_specific_fields")
        if isinstance(moved, dict) and "content_filter_results" in moved:
            choice["content_filter_results"] = moved["content_filter_results"]
    return data


def parse_answer(body: bytes) -> Completion:
    return parse_completion_bytes(body, reshape=_restore_choice_filters)


kept_headers = openai.headers_kept(
    openai.KEPT_HEADER_PREFIXES + (_PROVIDER_PREFIX + "x-ratelimit-", _PROVIDER_PREFIX + "retry-after")
)


def parse_rate_limit_headers(headers: Mapping[str, str]) -> RateLimitHeaders:
    """The plain ``x-ratelimit-*`` where the proxy passed them on, upstream's renamed ones otherwise."""
    plain = openai.parse_rate_limit_headers(headers)
    upstream = openai.parse_rate_limit_headers(
        {k.removeprefix(_PROVIDER_PREFIX): v for k, v in headers.items() if k.startswith(_PROVIDER_PREFIX)}
    )
    return RateLimitHeaders(
        **{
            f.name: getattr(plain, f.name) if getattr(plain, f.name) is not None else getattr(upstream, f.name)
            for f in dataclasses.fields(RateLimitHeaders)
        }
    )


DIALECT: Dialect = dataclasses.replace(
    openai.DIALECT,
    name="litellm",
    classify_error=classify_http,
    parse_completion=parse_answer,
    kept_headers=kept_headers,
    rate_limit_headers=parse_rate_limit_headers,
)
