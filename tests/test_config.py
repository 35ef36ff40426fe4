"""Config loading: defaults, validation that names key and file, command-line overrides."""

from __future__ import annotations

import pytest

from pipeline.config import Config, load_config, parse_override
from pipeline.errors import ConfigError


def test_defaults_fill_an_empty_file(tmp_path):
    """An empty file gives SPEC's defaults and the shipped pricing table."""
    path = tmp_path / "c.toml"
    path.write_text("")
    config = load_config(path)
    assert config.endpoint.base_url == "https://api.302.ai/v1"
    assert config.request.model == "gpt-4o" and config.limits.concurrency == 64
    assert config.pricing["gpt-4o"].input == 2.50


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("[limits]\nrmp = 5\n", "limits.rmp", "unknown key"),
        ("[limits]\nrpm = 'fast'\n", "limits.rpm", "expected int"),
        ("[request]\ndetail = 'ultra'\n", "request.detail", "expected 'low' | 'high' | 'auto'"),
        ("[limits]\nconcurrency = 0\n", "limits.concurrency", "greater than 0"),
        ("[endpoint]\nbase_url = 'api.302.ai'\n", "endpoint.base_url", "http"),
        ("[request]\nmodel = 5\n", "request.model", "expected str"),
        ("[nonsense]\nx = 1\n", "nonsense", "unknown section"),
        ("[pricing.my-model]\ninput = 'cheap'\noutput = 1\n", "pricing.my-model.input", "expected float"),
    ],
)
def test_bad_values_name_the_key_and_the_file(tmp_path, text, key, words):
    """Every validation error says which key in which file, and what is wrong."""
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and key in message and words in message


def test_invalid_toml_and_missing_file_are_config_errors(tmp_path):
    """Broken TOML and a missing file are refused with the path."""
    broken = tmp_path / "broken.toml"
    broken.write_text("[limits\nrpm = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml")


def test_overrides_use_key_names_and_types():
    """--rpm, --max-cost, --detail, --extra-body are coerced to the key's type."""
    assert parse_override("rpm", "600") == ("limits.rpm", 600)
    assert parse_override("max-cost", "2.5") == ("limits.max_cost_usd", 2.5)
    assert parse_override("rpm", "none") == ("limits.rpm", None)
    assert parse_override("extra-body", '{"ocr_model": "gpt-4o-mini"}') == (
        "request.extra_body",
        {"ocr_model": "gpt-4o-mini"},
    )
    assert parse_override("dedup", "false") == ("images.dedup", False)
    with pytest.raises(ConfigError, match="request.detail"):
        parse_override("detail", "ultra")
    with pytest.raises(ConfigError, match="limits.rpm"):
        parse_override("rpm", "lots")


def test_override_beats_file_and_is_validated(tmp_path):
    """A command-line value wins over the file and is checked like one."""
    path = tmp_path / "c.toml"
    path.write_text("[request]\nmodel = 'gpt-4o'\n")
    assert load_config(path, overrides={"request.model": "gpt-4o-mini"}).request.model == "gpt-4o-mini"
    with pytest.raises(ConfigError, match="limits.rpm"):
        load_config(path, overrides={"limits.rpm": -1})


def test_config_pricing_adds_to_the_shipped_table(tmp_path):
    """[pricing.X] in a config adds or overrides a model price."""
    path = tmp_path / "c.toml"
    path.write_text("[pricing.my-vlm]\ninput = 1.0\noutput = 2.0\n[pricing.gpt-4o]\ninput = 9.0\noutput = 9.0\n")
    config = load_config(path)
    assert config.pricing["my-vlm"].output == 2.0 and config.pricing["gpt-4o"].input == 9.0
    assert "gpt-4o-mini" in config.pricing


def test_fingerprint_changes_with_request_parameters_only():
    """Changing the prompt changes the fingerprint; changing rpm does not."""
    from pipeline.config import build_config

    base = build_config({})
    assert base.request_fingerprint() == build_config({"limits": {"rpm": 5}}).request_fingerprint()
    assert base.request_fingerprint() != build_config({"request": {"prompt": "other"}}).request_fingerprint()
    assert isinstance(base, Config)


@pytest.mark.parametrize(
    "text",
    [
        "[limits]\nmax_wait_s = nan\n",
        "[limits]\nmax_wait_s = inf\n",
        "[limits]\nmax_wait_s = 0\n",
        "[endpoint]\nmax_response_bytes = -1\n",
    ],
)
def test_caps_must_be_finite_and_positive(tmp_path, text):
    """limits.max_wait_s and endpoint.max_response_bytes: NaN, inf and <= 0 would switch the cap off."""
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="must be a finite number|must be greater than 0"):
        load_config(path)


def test_caps_have_defaults_and_flags():
    """300 s and 8 MB by default; --max-wait-s and --max-response-bytes set them."""
    config = load_config(None)
    assert config.limits.max_wait_s == 300 and config.endpoint.max_response_bytes == 8_000_000
    assert parse_override("max-wait-s", "60") == ("limits.max_wait_s", 60.0)


def test_chunk_size_is_read_as_the_old_name_of_part_rows(tmp_path):
    """run.part_rows is rows per journal part; files and flags that say chunk_size keep working."""
    path = tmp_path / "c.toml"
    path.write_text("[run]\nchunk_size = 32\n")
    assert load_config(path).run.part_rows == 32
    assert load_config(None, overrides={"run.chunk_size": 7}).run.part_rows == 7
    path.write_text("[run]\nchunk_size = 32\npart_rows = 64\n")
    with pytest.raises(ConfigError, match="old name of run.part_rows"):
        load_config(path)
