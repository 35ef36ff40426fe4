"""Frozen config objects, their defaults, and TOML loading with validation.

Every section is a keyword-only frozen dataclass; a file only needs the keys it
changes. Validation names the key and the file. Command-line overrides use the
key's own name (``--max-tokens`` → ``request.max_tokens``), see ``OVERRIDES``.
The API key itself is never part of a config: only the *name* of the variable.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from .errors import ConfigError

Detail = Literal["low", "high", "auto"]

PACKAGE_ROOT = Path(__file__).resolve().parent
# Package data, found however the package is installed (a wheel, pipx), not beside the source tree.
DEFAULT_PRICING_PATH = PACKAGE_ROOT / "pricing.toml"


@dataclass(frozen=True, kw_only=True)
class EndpointConfig:
    base_url: str = "https://api.302.ai/v1"
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 120.0
    max_response_bytes: int = 8_000_000  # a body over this is invalid_response; its connection is dropped


@dataclass(frozen=True, kw_only=True)
class RequestConfig:
    model: str = "gpt-4o"
    prompt: str = "Describe this image in one sentence."
    system: str | None = None
    detail: Detail = "auto"
    max_tokens: int = 300
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    stop: str | list[str] | None = None
    response_format: dict[str, Any] | None = None
    extra_body: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class LimitsConfig:
    rpm: int | None = 500
    tpm: int | None = 200_000
    concurrency: int = 64
    max_attempts: int = 6
    max_cost_usd: float | None = None
    max_wait_s: float = 300.0  # a server asking for a longer wait stops the run (exit 3, resumable)


@dataclass(frozen=True, kw_only=True)
class ImagesConfig:
    inline_remote: bool = False
    download_timeout_s: float = 30.0
    max_side: int | None = None
    max_bytes: int = 20_000_000
    max_pixels: int = 89_478_485
    dedup: bool = True


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    chunk_size: int = 256
    flush_interval_s: float = 5.0


@dataclass(frozen=True, kw_only=True)
class ManifestConfig:
    url_column: str = "url"
    id_column: str = "id"


@dataclass(frozen=True, kw_only=True)
class Price:
    """USD per 1M tokens."""

    input: float
    output: float
    cached_input: float | None = None
    date: str | None = None


@dataclass(frozen=True, kw_only=True)
class Config:
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)
    request: RequestConfig = field(default_factory=RequestConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    images: ImagesConfig = field(default_factory=ImagesConfig)
    run: RunConfig = field(default_factory=RunConfig)
    manifest: ManifestConfig = field(default_factory=ManifestConfig)
    pricing: dict[str, Price] = field(default_factory=dict)
    source: str = "<defaults>"

    def request_fingerprint(self) -> str:
        """Hash of everything that changes what a request asks for."""
        blob = json.dumps(self.request_identity(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def request_identity(self) -> dict[str, Any]:
        """The parameters a resumed run must share with the run it continues."""
        identity = dataclasses.asdict(self.request)
        identity["max_side"] = self.images.max_side
        return identity


SECTIONS: dict[str, type] = {
    "endpoint": EndpointConfig,
    "request": RequestConfig,
    "limits": LimitsConfig,
    "images": ImagesConfig,
    "run": RunConfig,
    "manifest": ManifestConfig,
}

# Flags whose name is not simply the key's: the rest are derived from the keys.
FLAG_ALIASES: dict[str, str] = {"max-cost": "limits.max_cost_usd", "timeout": "endpoint.timeout_s"}


def override_flags() -> dict[str, str]:
    """``flag name`` → ``section.key`` for every key that can be set from the command line."""
    flags = {}
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            flags[f.name.replace("_", "-")] = f"{section}.{f.name}"
    flags.update(FLAG_ALIASES)
    return flags


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp) if a is not type(None))
    return getattr(tp, "__name__", str(tp))


def _check_value(value: Any, tp: Any) -> bool:
    origin = get_origin(tp)
    if tp is Any:
        return True
    if origin is Literal:
        return value in get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_check_value(value, a) for a in get_args(tp))
    if tp is type(None):
        return value is None
    if origin is list:
        (inner,) = get_args(tp)
        return isinstance(value, list) and all(_check_value(v, inner) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


_POSITIVE = {
    "timeout_s", "max_tokens", "rpm", "tpm", "concurrency", "max_attempts", "max_bytes",
    "max_pixels", "chunk_size", "flush_interval_s", "max_side", "n", "max_cost_usd", "download_timeout_s",
}
# Caps on what a server can make the run do: NaN or inf would switch the cap off.
_FINITE_POSITIVE = {"max_wait_s", "max_response_bytes"}


def _build_section(cls: type, values: dict[str, Any], *, section: str, path: str) -> Any:
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        if key not in hints:
            known = ", ".join(sorted(hints))
            raise ConfigError(f"unknown key (known keys: {known})", key=f"{section}.{key}", path=path)
        if not _check_value(value, hints[key]):
            raise ConfigError(
                f"expected {_type_name(hints[key])}, got {value!r}", key=f"{section}.{key}", path=path
            )
        if key in _POSITIVE and value is not None and value <= 0:
            raise ConfigError(f"must be greater than 0, got {value!r}", key=f"{section}.{key}", path=path)
        if key in _FINITE_POSITIVE and not (math.isfinite(value) and value > 0):
            raise ConfigError(f"must be a finite number greater than 0, got {value!r}", key=f"{section}.{key}", path=path)
    if section == "endpoint" and "base_url" in values:
        if not str(values["base_url"]).startswith(("http://", "https://")):
            raise ConfigError("must start with http:// or https://", key="endpoint.base_url", path=path)
    return cls(**values)


def _build_pricing(table: dict[str, Any], *, path: str) -> dict[str, Price]:
    prices = {}
    for model, entry in table.items():
        if not isinstance(entry, dict):
            raise ConfigError("expected a table of prices", key=f"pricing.{model}", path=path)
        prices[model] = _build_section(Price, entry, section=f"pricing.{model}", path=path)
    return prices


def load_pricing(path: Path = DEFAULT_PRICING_PATH) -> dict[str, Price]:
    """The shipped pricing table. Missing, it is an install fault, not an empty table: every
    cost would silently be null and a budget cap could not run."""
    data = _read_toml(path)
    return _build_pricing(data.get("pricing", data), path=str(path))


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("file not found", path=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML ({exc})", path=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot be read ({exc})", path=str(path)) from None


def build_config(
    data: dict[str, Any],
    *,
    path: str = "<defaults>",
    overrides: dict[str, Any] | None = None,
    pricing: dict[str, Price] | None = None,
) -> Config:
    """Validate a parsed TOML document plus ``section.key`` overrides into a Config."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for dotted, value in (overrides or {}).items():
        section, key = dotted.split(".", 1)
        data.setdefault(section, {})[key] = value
    unknown = set(data) - set(SECTIONS) - {"pricing"}
    if unknown:
        raise ConfigError(f"unknown section (known: {', '.join([*SECTIONS, 'pricing'])})",
                          key=sorted(unknown)[0], path=path)
    sections = {}
    for name, cls in SECTIONS.items():
        values = data.get(name, {})
        if not isinstance(values, dict):
            raise ConfigError("expected a table", key=name, path=path)
        sections[name] = _build_section(cls, values, section=name, path=path)
    prices = dict(pricing if pricing is not None else load_pricing())
    prices.update(_build_pricing(data.get("pricing", {}), path=path))
    return Config(**sections, pricing=prices, source=path)


def load_config(
    path: Path | None,
    *,
    overrides: dict[str, Any] | None = None,
    pricing: dict[str, Price] | None = None,
) -> Config:
    """Read a TOML file (or only defaults when ``path`` is None) and apply overrides."""
    data = _read_toml(path) if path is not None else {}
    return build_config(data, path=str(path) if path else "<defaults>", overrides=overrides, pricing=pricing)


def parse_override(flag: str, raw: str) -> tuple[str, Any]:
    """Turn ``--rpm 600`` into ``("limits.rpm", 600)`` using the key's declared type."""
    flags = override_flags()
    if flag not in flags:
        raise ConfigError(f"unknown option --{flag}")
    dotted = flags[flag]
    section, key = dotted.split(".", 1)
    tp = typing.get_type_hints(SECTIONS[section])[key]
    return dotted, _coerce(raw, tp, dotted)


def _coerce(raw: str, tp: Any, dotted: str) -> Any:
    candidates = get_args(tp) if get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    if raw.lower() in ("none", "null") and type(None) in candidates:
        return None
    for cand in candidates:
        origin = get_origin(cand)
        try:
            if cand is bool:
                if raw.lower() in ("true", "1", "yes", "on"):
                    return True
                if raw.lower() in ("false", "0", "no", "off"):
                    return False
                continue
            if cand is int:
                return int(raw)
            if cand is float:
                return float(raw)
            if origin is dict or origin is list:
                value = json.loads(raw)
                if _check_value(value, cand):
                    return value
                continue
            if origin is Literal:
                if raw in get_args(cand):
                    return raw
                continue
            if cand is str:
                return raw
        except ValueError:
            continue
    raise ConfigError(f"cannot use {raw!r}: expected {_type_name(tp)}", key=dotted, path="command line")
