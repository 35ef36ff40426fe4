"""CLI conventions: no abbreviated options, --version, help derived from the config schema, one name per
option (old names hidden but working), every config error at once with "did you mean", examples that exist."""

from __future__ import annotations

import re
import shlex
import tomllib
from importlib import metadata

import polars as pl
import pytest

import pipeline
from pipeline.cli_parser import ESTIMATE_EPILOG, RUN_EPILOG, config_overrides, override_help, parse_args
from pipeline.config import build_config, load_config
from pipeline.errors import ConfigError, ConfigErrors
from tests.conftest import ROOT, run_cli, write_config


def test_an_abbreviated_option_is_an_error_not_another_option(tmp_path):
    """`--mode batch` is refused (exit 2, naming the closest option), not read as `--model batch`."""
    result = run_cli(["run", "data/manifest.csv", "--out", str(tmp_path / "o"), "--mode", "batch", "--simulate"])
    assert result.returncode == 2
    assert "unrecognized arguments: --mode batch (did you mean '--model'?)" in result.stderr
    assert not (tmp_path / "o").exists()
    for argv in (["estimate", "m.csv", "--samp", "3"], ["report", "d", "--js"], ["simulate", "--po", "1"]):
        with pytest.raises(SystemExit) as stop:
            parse_args(argv)
        assert stop.value.code == 2, argv


def test_version_comes_from_the_package_metadata_with_a_fallback():
    """`caption --version` prints the installed version; uninstalled, the source tree's own."""
    result = run_cli(["--version"])
    assert result.returncode == 0 and result.stdout.strip() == f"caption {metadata.version('caption')}"
    assert pipeline.version("no-such-distribution-caption") == pipeline.__version__


def test_run_help_shows_types_choices_and_defaults_from_the_schema():
    """run --help: `--detail {low,high,auto}` with its default, types for the rest, one name per option."""
    out = run_cli(["run", "--help"]).stdout
    flat = " ".join(out.split())
    assert "--detail {low,high,auto} request.detail (default: 'auto')" in flat
    assert "--rpm INT limits.rpm (default: 500; none unsets it)" in flat
    assert "--max-cost NUMBER limits.max_cost_usd (default: no cap)" in flat
    assert "--timeout NUMBER endpoint.timeout_s (default: 120.0)" in flat
    assert "--inline-remote {true,false}" in flat and "--extra-body JSON" in flat
    for hidden in ("--max-cost-usd", "--timeout-s", "--chunk-size"):
        assert hidden not in out
    assert override_help("request.reasoning_effort")[0] == "{minimal,low,medium,high,none}"


def test_old_and_long_names_still_work_and_both_at_once_is_refused():
    """--max-cost-usd, --timeout-s and --chunk-size set their keys; a key given under two names is an error."""
    args = parse_args(["run", "m.csv", "--out", "o", "--max-cost-usd", "5", "--timeout-s", "7", "--chunk-size", "9"])
    assert config_overrides(args) == {"limits.max_cost_usd": 5.0, "endpoint.timeout_s": 7.0, "run.part_rows": 9}
    with pytest.raises(ConfigError, match="--max-cost and --max-cost-usd set the same key"):
        config_overrides(parse_args(["run", "m.csv", "--out", "o", "--max-cost", "1", "--max-cost-usd", "2"]))


def test_every_config_error_is_reported_at_once_with_did_you_mean(tmp_path):
    """A file with five problems: five one-line errors, a typo'd key or section names the closest real one."""
    body = '[request]\nmodle = "x"\ndetail = "medium"\n[limits]\nrmp = 5\nconcurrency = 0\n[imgaes]\nmax_side = 1\n'
    with pytest.raises(ConfigErrors) as caught:
        build_config(tomllib.loads(body), path="c.toml")
    messages = [str(e) for e in caught.value.errors]
    assert len(messages) == 5, messages
    assert any("'request.modle': unknown key (did you mean 'model'?)" in m for m in messages)
    assert any("'limits.rmp': unknown key (did you mean 'rpm'?)" in m for m in messages)
    assert any("'imgaes': unknown section (did you mean 'images'?)" in m for m in messages)
    config = write_config(tmp_path / "c.toml", body)
    result = run_cli(["run", "data/manifest.csv", "--out", str(tmp_path / "o"), "--config", str(config)])
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 5 and all(line.startswith("caption: error: ") for line in lines)
    flags = run_cli(["run", "data/manifest.csv", "--out", str(tmp_path / "o"), "--rpm", "x", "--detail", "medium"])
    assert flags.returncode == 2 and len(flags.stderr.strip().splitlines()) == 2


def test_the_help_examples_name_files_that_exist_and_configs_that_load():
    """Every configs/ and data/ path the run and estimate examples name exists; each config loads."""
    named = set(re.findall(r"(?:configs|data)/[\w./-]+", RUN_EPILOG + ESTIMATE_EPILOG))
    assert "configs/labels.toml" in named
    for path in named:
        assert (ROOT / path).exists(), path
        if path.endswith(".toml"):
            load_config(ROOT / path)


def test_the_labels_example_labels_the_demo_manifest(tmp_path):
    """`caption run data/manifest.csv ... --config configs/labels.toml` (the help's example) gives typed
    label columns; run here on the demo's first rows against the simulator."""
    example = next(line for line in RUN_EPILOG.splitlines() if "configs/labels.toml" in line)
    argv = shlex.split(example)[1:]
    lines = (ROOT / "data/manifest.csv").read_text().splitlines()[:13]
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join([lines[0], *(re.sub(",images/", f",{ROOT}/data/images/", x) for x in lines[1:]), ""]))
    argv[1], argv[argv.index("--out") + 1] = str(manifest), str(tmp_path / "labels")
    result = run_cli([*argv, "--simulate", "--no-progress"])
    assert result.returncode == 0, result.stderr
    frame = pl.read_parquet(tmp_path / "labels" / "results.parquet")
    assert frame.height == 12 and frame.schema["count"] == pl.Int64 and frame["subject"].null_count() == 0
