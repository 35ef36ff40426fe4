"""The spending cap: reservations for what is in flight, settlement with the real cost, and the run stopping under the cap."""

from __future__ import annotations

import polars as pl
import pytest

from pipeline.budget import Budget
from pipeline.errors import BudgetExceededError
from tests.conftest import FAST_CONFIG, remote_rows, run_args, run_cli, write_config, write_csv
from tests.test_runner import make_config, run_once


def test_reservations_count_against_the_cap_until_settled():
    """In-flight worst cases are reserved; a request that would pass the cap is refused; settling frees the rest."""
    budget = Budget(max_cost_usd=1.0)
    assert budget.try_reserve(0.4) and budget.try_reserve(0.4)
    assert not budget.try_reserve(0.4)
    budget.settle(0.4, 0.1)
    assert budget.try_reserve(0.4)
    assert budget.spent_usd == pytest.approx(0.1) and budget.reserved_usd == pytest.approx(0.8)


def test_no_cap_always_reserves():
    """Without max_cost_usd nothing is refused, and spend is still counted."""
    budget = Budget(max_cost_usd=None)
    assert all(budget.try_reserve(100.0) for _ in range(10))
    budget.settle(100.0, 2.5)
    assert budget.spent_usd == 2.5


def test_run_stops_before_the_cap_and_resumes_with_a_higher_one(simulator, tmp_path):
    """The spend never passes max_cost_usd; the stop is resumable; a higher cap finishes the job."""
    manifest = write_csv(tmp_path / "m.csv", remote_rows(300))
    out = tmp_path / "out"
    cap = 0.25  # a gpt-4o row here costs ~0.0023 (765 image tokens + text + ~13 completion tokens)
    config = make_config(simulator.base_url, limits={"max_cost_usd": cap, "concurrency": 8})
    result, frame = run_once(config, manifest, out)
    assert isinstance(result, BudgetExceededError) and result.exit_code == 3
    spent = frame["cost_usd"].sum()
    assert 0.8 * cap < spent <= cap
    assert 0 < frame.height < 300 and (frame["status"] == "ok").all()
    again, frame = run_once(config, manifest, out)  # the same cap: only what still fits under it
    assert isinstance(again, BudgetExceededError) and frame["cost_usd"].sum() <= cap
    bigger = make_config(simulator.base_url, limits={"max_cost_usd": 10.0})
    totals, frame = run_once(bigger, manifest, out)
    assert frame.height == 300 and frame["cost_usd"].sum() <= 10.0


def test_cli_budget_stop_exits_3_and_says_what_was_spent(simulator, tmp_path):
    """--max-cost: exit 3 and a last line with the spend against the cap and the rows left."""
    config = write_config(tmp_path / "c.toml", FAST_CONFIG)
    manifest = write_csv(tmp_path / "m.csv", remote_rows(200))
    result = run_cli(run_args(manifest, tmp_path / "out", config, simulator.base_url, "--max-cost", "0.1"))
    assert result.returncode == 3
    last = result.stderr.strip().splitlines()[-2:]
    assert any("of $0.1000 in this folder" in line and "left" in line for line in last), result.stderr
    assert "raise --max-cost" in result.stderr
    spent = pl.read_parquet(tmp_path / "out" / "results.parquet")["cost_usd"].sum()
    assert spent <= 0.1


def test_a_cap_on_an_unpriced_model_is_refused_before_sending(simulator, tmp_path):
    """max_cost_usd with a model the table cannot price: exit 2 naming the model, nothing sent."""
    config = write_config(tmp_path / "c.toml", FAST_CONFIG)
    manifest = write_csv(tmp_path / "m.csv", remote_rows(5))
    result = run_cli(
        [
            "run",
            str(manifest),
            "--out",
            str(tmp_path / "out"),
            "--config",
            str(config),
            "--base-url",
            simulator.base_url,
            "--model",
            "llava-next",
            "--max-cost",
            "1",
        ]
    )
    assert result.returncode == 2 and "llava-next" in result.stderr and simulator.app.stats()["requests"] == 0
