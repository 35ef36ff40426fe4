"""Hostile config values: NaN, inf, out of range, beyond int64, a body that replaces the pipeline's own
keys, credentials in the URL. Each is refused before anything is sent, blaming the file or the flag."""

from __future__ import annotations

import dataclasses
import logging
import math
import typing

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.cli import main
from pipeline.config import SECTIONS, Price, build_config, load_config, parse_override
from pipeline.config_checks import BOUNDS
from pipeline.errors import ConfigError
from tests.conftest import FAST_CONFIG, remote_rows, run_args, write_config, write_csv

BEYOND_INT64 = str(2**63)


@pytest.fixture(autouse=True)
def _restore_cli_logging():
    """main() points the 'caption' logger at this test's captured stderr; later tests get theirs back."""
    logger = logging.getLogger("caption")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("[endpoint]\ntimeout_s = nan\n", "endpoint.timeout_s", "finite"),
        ("[endpoint]\ntimeout_s = inf\n", "endpoint.timeout_s", "finite"),
        ("[endpoint]\ntimeout_s = 1e12\n", "endpoint.timeout_s", "at most 86,400"),
        ("[images]\ndownload_timeout_s = -inf\n", "images.download_timeout_s", "finite"),
        ("[run]\nflush_interval_s = nan\n", "run.flush_interval_s", "finite"),
        (f"[request]\nmax_tokens = {BEYOND_INT64}\n", "request.max_tokens", "64-bit"),
        ("[request]\nmax_tokens = 1000000000\n", "request.max_tokens", "at most 1,000,000"),
        ("[request]\ntemperature = nan\n", "request.temperature", "finite"),
        ("[request]\ntop_p = 7\n", "request.top_p", "at most 1"),
        ("[limits]\nmax_cost_usd = nan\n", "limits.max_cost_usd", "finite"),
        ("[limits]\nmax_cost_usd = inf\n", "limits.max_cost_usd", "finite"),
        ("[limits]\nconcurrency = 100000000\n", "limits.concurrency", "at most 10,000"),
        ("[limits]\nconcurrency = 10001\n", "limits.concurrency", "at most 10,000"),
        ("[limits]\nmax_attempts = 1000000\n", "limits.max_attempts", "at most 100"),
        (f"[limits]\ntpm = {BEYOND_INT64}\n", "limits.tpm", "64-bit"),
        ("[images]\nmax_side = 10000000\n", "images.max_side", "at most 65,535"),
        (f"[images]\nmax_bytes = {BEYOND_INT64}\n", "images.max_bytes", "64-bit"),
        ("[images]\nmax_pixels = 100000000000\n", "images.max_pixels", "at most"),
        ("[run]\nchunk_size = 1000000000\n", "run.part_rows", "at most 1,000,000"),
        ("[pricing.my-vlm]\ninput = -1.0\noutput = 1.0\n", "pricing.my-vlm.input", "at least 0"),
        ("[pricing.my-vlm]\ninput = 1.0\noutput = nan\n", "pricing.my-vlm.output", "finite"),
        ("[request.extra_body]\nmodel = 5\n", "request.extra_body", "must not set 'model'"),
        ("[request]\nextra_body = { messages = [] }\n", "request.extra_body", "must not set 'messages'"),
        ("[request.extra_body]\nstream = true\n", "request.extra_body", "must not set 'stream'"),
        ("[request.extra_body]\nmax_tokens = 5\n", "request.extra_body", "set request.max_tokens instead"),
        ("[request.extra_body]\nseed = nan\n", "request.extra_body", "finite"),
        (
            "[endpoint]\nbase_url = 'https://user:sk-secret@api.302.ai/v1'\n",
            "endpoint.base_url",
            "environment variable",
        ),
        ('[endpoint]\nbase_url = "https://api.302.ai/v1\\r\\nX-Evil: 1"\n', "endpoint.base_url", "control characters"),
    ],
)
def test_file_values_out_of_range_name_the_file_and_key(tmp_path, text, key, words):
    """A non-finite, out-of-range or pipeline-owned value in the file is a ConfigError naming file and key."""
    path = write_config(tmp_path / "c.toml", text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(str(path)) and key in message and words in message
    assert "sk-secret" not in message


@pytest.mark.parametrize(
    ("flag", "raw", "key", "words"),
    [
        ("timeout", "nan", "endpoint.timeout_s", "finite"),
        ("timeout-s", "inf", "endpoint.timeout_s", "finite"),
        ("max-cost", "nan", "limits.max_cost_usd", "finite"),
        ("max-cost", "-1", "limits.max_cost_usd", "at least 0"),
        ("flush-interval-s", "nan", "run.flush_interval_s", "finite"),
        ("download-timeout-s", "inf", "images.download_timeout_s", "finite"),
        ("max-tokens", "1000000000", "request.max_tokens", "at most 1,000,000"),
        ("max-tokens", BEYOND_INT64, "request.max_tokens", "64-bit"),
        ("concurrency", "100000000", "limits.concurrency", "at most 10,000"),
        ("rpm", BEYOND_INT64, "limits.rpm", "64-bit"),
        ("temperature", "nan", "request.temperature", "finite"),
        ("extra-body", '{"model": 5, "messages": null}', "request.extra_body", "must not set 'model'"),
        ("extra-body", '{"seed": 1e999}', "request.extra_body", "finite"),
        ("base-url", "http://me:pw@127.0.0.1:9/v1", "endpoint.base_url", "user:pass@"),
    ],
)
def test_command_line_values_are_blamed_on_the_flag(flag, raw, key, words):
    """An override is checked where it is parsed, and the error names the flag as typed, not a file."""
    with pytest.raises(ConfigError) as info:
        parse_override(flag, raw)
    message = str(info.value)
    assert message.startswith(f"command line --{flag}: ") and key in message and words in message


def test_overrides_passed_to_load_config_are_blamed_on_the_command_line(tmp_path):
    """load_config with a good file and a bad override names the command line, not the file."""
    path = write_config(tmp_path / "c.toml", "[endpoint]\ntimeout_s = 30\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides={"endpoint.timeout_s": math.nan})
    message = str(info.value)
    assert message.startswith("command line --timeout-s: ") and str(path) not in message


def test_zero_budget_and_loopback_urls_with_upper_case_scheme_are_accepted():
    """max_cost_usd = 0 is a valid (if strict) cap; the scheme of base_url is case-insensitive."""
    config = build_config({"limits": {"max_cost_usd": 0}, "endpoint": {"base_url": "HTTP://127.0.0.1:8000/v1"}})
    assert config.limits.max_cost_usd == 0


def test_every_numeric_key_has_bounds():
    """A numeric key added later without a line in BOUNDS fails here, so no key escapes range checks."""
    classes = {**SECTIONS, "pricing": Price}
    for section, cls in classes.items():
        for f in dataclasses.fields(cls):
            args = typing.get_args(typing.get_type_hints(cls)[f.name]) or (typing.get_type_hints(cls)[f.name],)
            if int in args or float in args:
                assert f"{section}.{f.name}" in BOUNDS, f"{section}.{f.name} has no bounds"


@settings(max_examples=60, deadline=None)
@given(
    key=st.sampled_from(sorted(k for k in BOUNDS if not k.startswith("pricing."))),
    value=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(min_value=-(2**70), max_value=2**70)),
)
def test_any_number_is_either_refused_or_finite_and_in_bounds(key, value):
    """Fuzz: whatever number a key gets, the config either refuses it or holds a finite in-range value."""
    section, name = key.split(".")
    try:
        config = build_config({section: {name: value}}, pricing={})
    except ConfigError as exc:
        assert key in str(exc)
        return
    held = getattr(getattr(config, section), name)
    assert math.isfinite(held) and BOUNDS[key].admits(held) and abs(held) < 2**63


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--timeout", "nan"], "command line --timeout: key 'endpoint.timeout_s'"),
        (["--max-cost", "nan"], "command line --max-cost: key 'limits.max_cost_usd'"),
        (["--concurrency", "100000000"], "command line --concurrency: key 'limits.concurrency'"),
        (["--extra-body", '{"model": 5, "messages": null}'], "must not set 'model'"),
    ],
)
def test_cli_refuses_bad_overrides_with_exit_2_and_sends_nothing(simulator, tmp_path, capsys, flags, words):
    """`caption run` with a hostile override exits 2, blames the flag, and the endpoint sees no request."""
    config = write_config(tmp_path / "c.toml", FAST_CONFIG)
    manifest = write_csv(tmp_path / "m.csv", remote_rows(3))
    code = main(run_args(manifest, tmp_path / "out", config, simulator.base_url, *flags))
    err = capsys.readouterr().err
    assert code == 2 and words in err and str(config) not in err
    assert simulator.app.stats()["requests"] == 0
    assert not (tmp_path / "out" / "results.parquet").exists()


def test_cli_refuses_credentials_in_the_base_url_without_printing_them(simulator, tmp_path, capsys, monkeypatch):
    """A base_url with user:pass@ in the file exits 2 with one line that says where the key belongs."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")  # so the refusal is the URL's, not a missing key's
    host = simulator.base_url.split("://", 1)[1]
    config = write_config(tmp_path / "c.toml", FAST_CONFIG + f"\n[endpoint]\nbase_url = 'http://me:sk-hush@{host}'\n")
    manifest = write_csv(tmp_path / "m.csv", remote_rows(3))
    code = main(["run", str(manifest), "--out", str(tmp_path / "out"), "--config", str(config), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "environment variable" in err and str(config) in err and "sk-hush" not in err
    assert simulator.app.stats()["requests"] == 0
