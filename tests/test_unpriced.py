"""A model with no price reads "unpriced" wherever a cost is shown: run summary, report, estimate."""

from __future__ import annotations

import json

from tests.conftest import FAST_CONFIG, remote_rows, run_args, run_cli, write_config, write_csv


def test_an_unpriced_run_says_unpriced_in_its_summary_and_report(simulator, tmp_path):
    """No [pricing] for the model: the summary line and the report table say "unpriced", never $0.0000."""
    config = write_config(tmp_path / "c.toml", FAST_CONFIG)
    out = tmp_path / "out"
    manifest = write_csv(tmp_path / "m.csv", remote_rows(5))
    result = run_cli(run_args(manifest, out, config, simulator.base_url, "--model", "llava-next"))
    assert result.returncode == 0, result.stderr
    summary_line = result.stderr.strip().splitlines()[-1]
    assert "completion tokens, unpriced; results:" in summary_line and "$0.0000" not in result.stderr
    table = run_cli(["report", str(out)]).stdout
    assert "cost          unpriced" in table and "$0.0000" not in table
    assert json.loads(run_cli(["report", str(out), "--json"]).stdout)["unpriced_rows"] == 5


def test_estimate_of_an_unpriced_model_says_so_once(tmp_path):
    """estimate: one "unpriced" naming the model, not "unpriced expected (low unpriced, high unpriced)"."""
    manifest = write_csv(tmp_path / "m.csv", remote_rows(5))
    out = run_cli(["estimate", str(manifest), "--model", "llava-next"]).stdout
    assert "cost               unpriced (no price for model 'llava-next' in the pricing table)" in out
    assert "expected (low unpriced" not in out
