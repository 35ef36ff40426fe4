"""PURE: what makes a config value unusable beyond its declared type: bounds per numeric key,
NaN and inf, ints past 64 bits, body keys the pipeline owns, URLs and header tables.

A new numeric key gets one line in ``BOUNDS``; tests/test_hostile_config.py fails for a
numeric key without one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True, slots=True)
class Range:
    """The values a numeric key accepts; NaN and inf are refused for every key, bounded or not."""

    low: float
    high: float
    low_open: bool = False  # True: the value must be greater than ``low``, not equal to it

    def describe(self) -> str:
        low = f"greater than {_number(self.low)}" if self.low_open else f"at least {_number(self.low)}"
        return f"must be {low} and at most {_number(self.high)}"

    def admits(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        return above and value <= self.high


def _number(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"


_DAY_S = 86_400.0
_TIMEOUT = Range(0, _DAY_S, low_open=True)  # a wait longer than a day is a typo, not a plan
_PRICE = Range(0, 1_000_000)  # USD per 1M tokens; negative prices would give the budget cap false headroom

# Bounds per ``section.key`` (``pricing.<field>`` for every model's prices). A new numeric key
# gets one line here; tests/test_hostile_config.py fails for a numeric key without one.
BOUNDS: dict[str, Range] = {
    "endpoint.timeout_s": _TIMEOUT,
    # The largest completion any current model allows is well under 1M tokens; more is a typo
    # that would also space requests hours apart under a TPM limit.
    "request.max_tokens": Range(0, 1_000_000, low_open=True),
    "request.temperature": Range(0, 2),
    "request.top_p": Range(0, 1),
    "request.n": Range(0, 128, low_open=True),  # OpenAI's own ceiling for n
    "limits.rpm": Range(0, 100_000_000, low_open=True),
    "limits.tpm": Range(0, 1_000_000_000_000, low_open=True),
    "limits.concurrency": Range(0, 10_000, low_open=True),  # each slot holds a connection and a prepared image
    "limits.max_attempts": Range(0, 100, low_open=True),
    "limits.max_cost_usd": Range(0, 1_000_000_000),
    # Caps on what a server can make the run do; NaN or inf would switch them off.
    "limits.max_wait_s": Range(0, _DAY_S * 365, low_open=True),
    "endpoint.max_response_bytes": Range(0, 2_000_000_000, low_open=True),
    "images.download_timeout_s": _TIMEOUT,
    "images.max_side": Range(0, 65_535, low_open=True),  # the largest side JPEG and WebP can encode
    "images.max_bytes": Range(0, 2_000_000_000, low_open=True),  # a file is held in memory and base64-encoded
    "images.max_pixels": Range(0, 65_535 * 65_535, low_open=True),
    "images.workers": Range(0, 1024, low_open=True),  # each holds a decoded image; more than cores only waits
    "run.part_rows": Range(0, 1_000_000, low_open=True),
    "run.flush_interval_s": _TIMEOUT,
    "pricing.input": _PRICE,
    "pricing.cached_input": _PRICE,
    "pricing.output": _PRICE,
}

_INT64 = Range(-(2**63), 2**63 - 1)

# Body keys the pipeline builds itself: an extra_body that replaced them would break every row
# (model, messages), the parser (stream) or the estimates and label columns (the request.* knobs).
_OWNED_BODY_KEYS = {
    "model": "request.model",
    "messages": "request.prompt and request.system",
    "stream": None,
    "stream_options": None,
    "max_tokens": "request.max_tokens",
    "max_completion_tokens": "request.max_tokens",
    "reasoning_effort": "request.reasoning_effort",
    "temperature": "request.temperature",
    "top_p": "request.top_p",
    "n": "request.n",
    "stop": "request.stop",
    "response_format": "request.response_format",
}


def _number_problem(value: Any, bounds: Range | None) -> str | None:
    """Why a number cannot be used, or None. Ints are exact: one beyond int64 is refused, not rounded."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value!r}"
    if isinstance(value, int) and not _INT64.admits(value):
        return f"is beyond a 64-bit integer, got {value!r}"
    if bounds is not None and not bounds.admits(value):
        return f"{bounds.describe()}, got {value!r}"
    return None


def _json_problem(value: Any, *, where: str = "", depth: int = 0) -> str | None:
    """A table sent in the body must be plain JSON: no NaN/inf (invalid JSON), no int over 64 bits."""
    if depth > 32:
        return f"{where or 'the value'} is nested too deeply (more than 32 levels)"
    if isinstance(value, dict):
        children: Any = ((f"{where}.{k}" if where else str(k), v) for k, v in value.items())
    elif isinstance(value, list):
        children = ((f"{where}[{i}]", v) for i, v in enumerate(value))
    else:
        problem = _number_problem(value, None)
        return f"{where}: {problem}" if problem and where else problem
    return next((p for w, v in children if (p := _json_problem(v, where=w, depth=depth + 1))), None)


def _extra_body_problem(extra: dict[str, Any]) -> str | None:
    for key in extra:
        if key in _OWNED_BODY_KEYS:
            own = _OWNED_BODY_KEYS[key]
            instead = f"set {own} instead" if own else "the pipeline does not support it"
            return f"must not set '{key}': the pipeline builds that part of the request ({instead})"
    return _json_problem(extra)


def base_url_problem(url: str) -> str | None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL with a host"
    if parts.username is not None or parts.password is not None:
        return (
            "must not hold user:pass@ credentials: put the API key in the environment variable "
            "named by endpoint.api_key_env"
        )
    if any(ord(ch) < 0x20 or ch in " \x7f" for ch in url):
        return "must not contain spaces or control characters"
    return None


def _string_table_problem(table: dict[str, Any]) -> str | None:
    for name, value in table.items():
        if not isinstance(value, str):
            return f"'{name}' must be a string, got {value!r}"
        if any(ord(ch) < 0x20 or ch == "\x7f" for ch in name + value):
            return f"'{name}' must not contain line breaks or control characters"
    return None


def value_problem(dotted: str, bounds_key: str, value: Any) -> str | None:
    """Everything beyond the declared type that makes one value unusable."""
    if dotted == "endpoint.base_url":
        return base_url_problem(value)
    if dotted in ("endpoint.headers", "endpoint.query"):
        return _string_table_problem(value)
    if dotted == "request.extra_body":
        return _extra_body_problem(value)
    if dotted == "request.response_format" and value is not None:
        return _json_problem(value)
    return _number_problem(value, BOUNDS.get(bounds_key))
