"""PURE: OpenAI's chat-completions wire format, also spoken by 302.AI and other compatible gateways.

- URL: ``{base_url}/chat/completions``, query parameters appended.
- Auth: ``Authorization: Bearer <key>``; no header without a key (a local vLLM).
- Body and answers: ``request.build_body`` and ``parse.parse_completion_bytes``
  (shared by every dialect that shapes messages as OpenAI does).
- Errors: ``classify_http``, the ``{"error": {...}}`` envelope plus status; tested
  from a table of real bodies (shared/reference/providers.md §2). A provider-side image
  download timeout (400 ``invalid_image_url`` "Timeout while downloading ...") is a
  retryable ``timeout``, not a bad image.
- Headers: the ``x-ratelimit-*`` family (and Azure's hyphenated ``x-rate-limit-*``),
  the waits (``retry-after``, ``retry-after-ms``, ``x-ms-retry-after-ms``).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable, Mapping

from ..models import ErrorType, Failure, FatalKind, FilterVerdict
from ..parse import ErrorBody, InvalidResponseError, filter_verdict, parse_completion_bytes, parse_error_body
from ..ratelimit import RateLimitHeaders, header_count, parse_duration_s
from ..request import build_body
from ..retry import retry_after_from_message, retry_after_s
from .base import Dialect

RETRYABLE_STATUSES = frozenset({408, 409, 429})
QUOTA_CODES = frozenset({"insufficient_quota", "credit_balance_exhausted", "billing_hard_limit_reached"})

# Headers worth keeping from a response: the rate-limit family and the waits.
KEPT_HEADER_PREFIXES = ("x-ratelimit-", "x-rate-limit-", "retry-after", "x-ms-retry-after")


def request_url(base_url: str, query: Mapping[str, str]) -> str:
    """``{base_url}/chat/completions``; a query the base URL carries (Azure's ``?api-version=``)
    stays a query, after the path, merged with the configured one."""
    parts = urllib.parse.urlsplit(base_url)
    params = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    params.update(query)
    path = parts.path.rstrip("/") + "/chat/completions"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, urllib.parse.urlencode(params), ""))


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def headers_kept(prefixes: tuple[str, ...]) -> Callable[[Mapping[str, str]], dict[str, str]]:
    """A ``kept_headers`` keeping the headers whose lower-cased names start with ``prefixes``:
    a dialect that keeps more names widens the tuple, and each answer is still read once."""

    def kept_headers(headers: Mapping[str, str]) -> dict[str, str]:
        kept = {}
        for name, value in headers.items():
            name = name.lower()
            if name.startswith(prefixes):
                kept[name] = value
        return kept

    return kept_headers


kept_headers = headers_kept(KEPT_HEADER_PREFIXES)


def parse_rate_limit_headers(headers: Mapping[str, str]) -> RateLimitHeaders:
    """OpenAI's ``x-ratelimit-*`` family (and Azure's hyphenated ``x-rate-limit-reset-tokens``)."""
    reset_tokens = headers.get("x-ratelimit-reset-tokens", headers.get("x-rate-limit-reset-tokens"))
    return RateLimitHeaders(
        limit_requests=header_count(headers, "x-ratelimit-limit-requests"),
        limit_tokens=header_count(headers, "x-ratelimit-limit-tokens"),
        remaining_requests=header_count(headers, "x-ratelimit-remaining-requests"),
        remaining_tokens=header_count(headers, "x-ratelimit-remaining-tokens"),
        reset_requests_s=parse_duration_s(headers.get("x-ratelimit-reset-requests")),
        reset_tokens_s=parse_duration_s(reset_tokens),
    )


def _is_quota(err: ErrorBody) -> bool:
    return err.type in QUOTA_CODES or err.code in QUOTA_CODES


def _is_content_filter(err: ErrorBody) -> bool:
    return err.code == "content_filter" or err.inner_filter is not None


# 400 codes that say the request's parameters are wrong for the model (max_tokens to a reasoning
# model, a temperature it does not allow, an unknown body key): the same for every row.
_REQUEST_SHAPE_CODES = frozenset({"unsupported_parameter", "unsupported_value", "unknown_parameter"})


def _is_request_shape(err: ErrorBody) -> bool:
    return err.code in _REQUEST_SHAPE_CODES or err.message.startswith("Unrecognized request argument")


# The provider could not fetch the image in time (its download, not ours): usually the image host
# was slow for a moment, so it is retried like a timeout (shared/reference/providers.md §2).
_DOWNLOAD_TIMEOUT_CODES = frozenset({"invalid_image_url", "invalid_value"})


def _is_download_timeout(err: ErrorBody) -> bool:
    return err.code in _DOWNLOAD_TIMEOUT_CODES and "timeout while downloading" in err.message.lower()


def classify_http(status: int, body: bytes, headers: Mapping[str, str], *, now_epoch: float | None = None) -> Failure:
    """What a non-200 answer means for this row and for the run."""
    err = parse_error_body(body)
    # One line: a gateway's message may span several (LiteLLM's "...\nAvailable Model Group Fallbacks").
    words = " ".join(err.message.split())
    detail = " ".join(
        x for x in (f"HTTP {status}", f"[{err.code or err.type}]" if (err.code or err.type) else "", words) if x
    )
    wait = retry_after_s(headers, now_epoch=now_epoch)
    if wait is None:
        wait = retry_after_from_message(err.message)

    def failure(
        error_type: ErrorType, *, retryable: bool, fatal: FatalKind | None = None, filters: FilterVerdict | None = None
    ) -> Failure:
        return Failure(
            error_type=error_type,
            message=detail,
            retryable=retryable,
            http_status=status,
            retry_after_s=wait if retryable else None,
            fatal=fatal,
            filters=filters,
        )

    if status in (401, 403):
        return failure("auth", retryable=False, fatal="auth")
    if _is_quota(err):
        return failure("quota", retryable=False, fatal="quota")
    if status == 404 or err.code == "model_not_found":
        return failure("model_not_found", retryable=False, fatal="model_not_found")
    if status == 400 and _is_request_shape(err):
        return failure("bad_request", retryable=False, fatal="request_shape")
    if _is_content_filter(err):
        try:
            filters = filter_verdict(err.inner_filter or {}, [])
        except InvalidResponseError:  # categories nested past what can be stored: blocked, categories unknown
            filters = None
        return failure("content_filter", retryable=False, filters=filters)
    if status == 400 and _is_download_timeout(err):
        return failure("timeout", retryable=True)
    if status == 429:
        if err.message.startswith("Request too large"):
            return failure("bad_request", retryable=False)
        return failure("rate_limited", retryable=True)
    if status in RETRYABLE_STATUSES:
        return failure("timeout" if status == 408 else "server_error", retryable=True)
    if status >= 500:
        return failure("server_error", retryable=True)
    return failure("bad_request", retryable=False)


DIALECT = Dialect(
    name="openai",
    request_url=request_url,
    auth_headers=auth_headers,
    build_body=build_body,
    parse_completion=parse_completion_bytes,
    classify_error=classify_http,
    kept_headers=kept_headers,
    rate_limit_headers=parse_rate_limit_headers,
)
