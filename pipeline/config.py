"""Frozen config objects, their defaults, and TOML loading with validation.

Every section is a keyword-only frozen dataclass; a file only needs the keys it
changes. Validation names the key and the file. Command-line overrides use the
key's own name (``--max-tokens`` → ``request.max_tokens``), see ``override_flags``.
The API key itself is never part of a config: only the *name* of the variable.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from .config_checks import base_url_problem, value_problem
from .errors import ConfigError, ConfigErrors
from .providers import PROVIDERS, Provider

Detail = Literal["low", "high", "auto"]

PACKAGE_ROOT = Path(__file__).resolve().parent
# Package data, found however the package is installed (a wheel, pipx), not beside the source tree.
DEFAULT_PRICING_PATH = PACKAGE_ROOT / "pricing.toml"


@dataclass(frozen=True, kw_only=True)
class EndpointConfig:
    # Which wire format, default URL and key variable (providers.py); 302.AI, the seeds' gateway.
    provider: Provider = "302ai"
    base_url: str = ""  # "" → the provider's (for openai, $OPENAI_BASE_URL first)
    api_key_env: str = ""  # "" → the provider's own variable: a key only goes where it belongs
    api_version: str | None = None  # Azure's api-version, sent as a query parameter
    headers: dict[str, str] = field(default_factory=dict)  # e.g. OpenRouter's HTTP-Referer, X-Title
    query: dict[str, str] = field(default_factory=dict)  # extra query parameters on every request
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
    # Sent to reasoning models only (o1, o3, o4-mini, gpt-5 and their variants).
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = None
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
    workers: int | None = None  # processes decoding and resizing images; None: one per core


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    # Rows per journal part: a flush happens when this many have finished (or every
    # flush_interval_s). Called chunk_size before; that name is still read (KEY_ALIASES).
    part_rows: int = 256
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
FLAG_ALIASES: dict[str, str] = {
    "max-cost": "limits.max_cost_usd",
    "timeout": "endpoint.timeout_s",
    "chunk-size": "run.part_rows",
}
# Flags that still work but are not shown in --help, so each option shows one name: the key's
# own name where FLAG_ALIASES gives a shorter one (--max-cost-usd, --timeout-s), old names (--chunk-size).
HIDDEN_FLAGS = frozenset({"max-cost-usd", "timeout-s", "chunk-size"})
# Old key names still read from files and the command line: ``old`` → ``new``.
KEY_ALIASES: dict[str, str] = {"run.chunk_size": "run.part_rows"}


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


# ``section.key`` → where its value came from (the file's path or the command-line flag).
Origin = typing.Callable[[str], str]


def did_you_mean(name: str, known: list[str]) -> str:
    """`` (did you mean 'model'?)`` for a close known name, else ``""``."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _build_section(
    cls: type,
    values: dict[str, Any],
    *,
    section: str,
    origin: Origin,
    errors: list[ConfigError],
    bounds_section: str | None = None,
) -> Any:
    """The section from its valid values; each bad key adds its error to ``errors`` (all reported at once)."""
    hints = typing.get_type_hints(cls)
    valid = {}
    for key, value in values.items():
        dotted = f"{section}.{key}"
        if key not in hints:
            known = ", ".join(sorted(hints))
            hint = did_you_mean(key, sorted(hints))
            errors.append(ConfigError(f"unknown key{hint} (known keys: {known})", key=dotted, path=origin(dotted)))
        elif not _check_value(value, hints[key]):
            errors.append(
                ConfigError(f"expected {_type_name(hints[key])}, got {value!r}", key=dotted, path=origin(dotted))
            )
        elif problem := value_problem(dotted, f"{bounds_section or section}.{key}", value):
            errors.append(ConfigError(problem, key=dotted, path=origin(dotted)))
        else:
            valid[key] = value
    try:
        return cls(**valid)
    except TypeError:  # a required key (a price's input or output) missing or refused above
        required = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        for key in (k for k in required if k not in values):
            errors.append(ConfigError("missing", key=f"{section}.{key}", path=origin(f"{section}.{key}")))
        return None


def _build_pricing(table: dict[str, Any], *, origin: Origin, errors: list[ConfigError]) -> dict[str, Price]:
    prices = {}
    for model, entry in table.items():
        if not isinstance(entry, dict):
            errors.append(
                ConfigError("expected a table of prices", key=f"pricing.{model}", path=origin(f"pricing.{model}"))
            )
            continue
        price = _build_section(
            Price, entry, section=f"pricing.{model}", origin=origin, errors=errors, bounds_section="pricing"
        )
        if price is not None:
            prices[model] = price
    return prices


def load_pricing(path: Path = DEFAULT_PRICING_PATH) -> dict[str, Price]:
    """The shipped pricing table. Missing, it is an install fault, not an empty table: every
    cost would silently be null and a budget cap could not run."""
    data = _read_toml(path)
    errors: list[ConfigError] = []
    prices = _build_pricing(data.get("pricing", data), origin=lambda _key: str(path), errors=errors)
    ConfigErrors.raise_if_any(errors)
    return prices


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
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Validate a parsed TOML document plus ``section.key`` overrides into a Config.

    An error names where the bad value came from: ``path`` for the file's own values, the
    command-line flag for an override (the file is not to blame for ``--timeout nan``).
    """
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    overrides = {KEY_ALIASES.get(k, k): v for k, v in (overrides or {}).items()}
    _apply_key_aliases(data, path=path)
    for dotted, value in overrides.items():
        section, key = dotted.split(".", 1)
        data.setdefault(section, {})[key] = value
    origin = _origin(path, overrides)
    errors: list[ConfigError] = []
    known_sections = [*SECTIONS, "pricing"]
    for name in sorted(set(data) - set(known_sections)):
        hint = did_you_mean(name, known_sections)
        errors.append(
            ConfigError(f"unknown section{hint} (known: {', '.join(known_sections)})", key=name, path=origin(name))
        )
    sections = {}
    for name, cls in SECTIONS.items():
        values = data.get(name, {})
        if not isinstance(values, dict):
            errors.append(ConfigError("expected a table", key=name, path=origin(name)))
            values = {}
        sections[name] = _build_section(cls, values, section=name, origin=origin, errors=errors)
    prices = dict(pricing if pricing is not None else load_pricing())
    pricing_table = data.get("pricing", {})
    if not isinstance(pricing_table, dict):
        errors.append(ConfigError("expected a table", key="pricing", path=origin("pricing")))
        pricing_table = {}
    prices.update(_build_pricing(pricing_table, origin=origin, errors=errors))
    # The endpoint is resolved from valid values only: a bad provider was reported above.
    ConfigErrors.raise_if_any(errors)
    sections["endpoint"] = _resolve_endpoint(sections["endpoint"], environ=environ or {}, origin=origin)
    if not PROVIDERS[sections["endpoint"].provider].default_limits:
        given = data.get("limits", {})
        sections["limits"] = dataclasses.replace(
            sections["limits"],
            rpm=sections["limits"].rpm if "rpm" in given else None,
            tpm=sections["limits"].tpm if "tpm" in given else None,
        )
    return Config(**sections, pricing=prices, source=path)


def _resolve_endpoint(endpoint: EndpointConfig, *, environ: Mapping[str, str], origin: Origin) -> EndpointConfig:
    """The provider's base URL and key variable where the config left them out.

    ``environ`` is what the CLI read from the environment (``OPENAI_BASE_URL``): the config
    module never reads it itself.
    """
    defaults = PROVIDERS[endpoint.provider]
    base_url = endpoint.base_url
    if not base_url and defaults.base_url_env and environ.get(defaults.base_url_env):
        base_url = environ[defaults.base_url_env]
        problem = base_url_problem(base_url)
        if problem:
            raise ConfigError(problem, key="endpoint.base_url", path=f"${defaults.base_url_env}")
    base_url = base_url or defaults.base_url
    if not base_url:
        raise ConfigError(
            f"provider '{endpoint.provider}' needs endpoint.base_url (the server's or resource's URL)",
            key="endpoint.base_url",
            path=origin("endpoint.base_url"),
        )
    return dataclasses.replace(endpoint, base_url=base_url, api_key_env=endpoint.api_key_env or defaults.key_env)


def _apply_key_aliases(data: dict[str, Any], *, path: str) -> None:
    """Move values given under an old key name to the new one; both at once is ambiguous."""
    for old, new in KEY_ALIASES.items():
        old_section, old_key = old.split(".", 1)
        new_section, new_key = new.split(".", 1)
        section = data.get(old_section)
        if not isinstance(section, dict) or old_key not in section:
            continue
        if new_key in data.get(new_section, {}):
            raise ConfigError(f"is the old name of {new}; give one of them, not both", key=old, path=path)
        data.setdefault(new_section, {})[new_key] = section.pop(old_key)


def _origin(path: str, overrides: dict[str, Any]) -> Origin:
    """``section.key`` → where its value came from, as an error message names it."""

    def origin(dotted: str) -> str:
        if dotted in overrides:
            return f"command line --{dotted.split('.', 1)[1].replace('_', '-')}"
        return path

    return origin


def load_config(
    path: Path | None,
    *,
    overrides: dict[str, Any] | None = None,
    pricing: dict[str, Price] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Read a TOML file (or only defaults when ``path`` is None) and apply overrides."""
    data = _read_toml(path) if path is not None else {}
    return build_config(
        data, path=str(path) if path else "<defaults>", overrides=overrides, pricing=pricing, environ=environ
    )


def parse_override(flag: str, raw: str) -> tuple[str, Any]:
    """Turn ``--rpm 600`` into ``("limits.rpm", 600)`` using the key's declared type."""
    flags = override_flags()
    if flag not in flags:
        raise ConfigError(f"unknown option --{flag}")
    dotted = flags[flag]
    section, key = dotted.split(".", 1)
    tp = typing.get_type_hints(SECTIONS[section])[key]
    value = _coerce(raw, tp, dotted, flag=flag)
    # Checked here, where the flag as typed is known (``--timeout``, not only ``--timeout-s``).
    problem = value_problem(dotted, dotted, value)
    if problem:
        raise ConfigError(problem, key=dotted, path=f"command line --{flag}")
    return dotted, value


def _coerce(raw: str, tp: Any, dotted: str, *, flag: str) -> Any:
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
    raise ConfigError(f"cannot use {raw!r}: expected {_type_name(tp)}", key=dotted, path=f"command line --{flag}")
