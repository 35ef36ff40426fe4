"""The contract a provider dialect fulfils: every way its wire format differs, as pure functions.

A ``Dialect`` is a frozen bundle of functions rather than a class hierarchy: a
dialect close to another (Azure to OpenAI) is ``dataclasses.replace`` of it with
the few functions that differ, and a test plugs in a fake the same way.

The callers: ``client.VisionClient`` (URL, auth headers, reading answers and
error answers, which headers to keep), ``runner.Runner`` (the body) and
``ratelimit.RateLimiter`` (reading the kept rate-limit headers).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ..config import RequestConfig
from ..models import Completion, Failure
from ..ratelimit import RateLimitHeaders


class BodyBuilder(Protocol):
    def __call__(self, request: RequestConfig, *, image_url: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        """The request body for one image and its row's fields."""
        ...


class ErrorClassifier(Protocol):
    def __call__(
        self, status: int, body: bytes, headers: Mapping[str, str], *, now_epoch: float | None = None
    ) -> Failure:
        """What a non-200 answer means for the row and for the run (retryable, fatal, the server's wait)."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Dialect:
    """How one provider's wire format works. Every function is pure.

    - ``request_url(base_url, query)``: the URL every chat request is POSTed to.
    - ``auth_headers(api_key)``: the headers carrying the key (none without a key).
    - ``build_body``: the request body (``BodyBuilder``).
    - ``parse_completion(content)``: a 200's body → ``Completion``; raises
      ``parse.InvalidResponseError`` for a body that is not a usable answer.
    - ``classify_error``: a non-200 → ``Failure`` (``ErrorClassifier``).
    - ``kept_headers(headers)``: the response headers worth keeping (lower-cased names),
      what ``rate_limit_headers`` reads later.
    - ``rate_limit_headers(headers)``: kept headers → ``RateLimitHeaders`` for the limiter.
    """

    name: str
    request_url: Callable[[str, Mapping[str, str]], str]
    auth_headers: Callable[[str | None], dict[str, str]]
    build_body: BodyBuilder
    parse_completion: Callable[[bytes], Completion]
    classify_error: ErrorClassifier
    kept_headers: Callable[[Mapping[str, str]], dict[str, str]]
    rate_limit_headers: Callable[[Mapping[str, str]], RateLimitHeaders]
