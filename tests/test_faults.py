"""The fault and crash suite: every fault class at realistic rates, run-stopping answers, a dead endpoint.

Judged on what the simulator saw (its JSONL request log), not on what the client believes.
"""

from __future__ import annotations

import json
import socket
from collections import defaultdict
from pathlib import Path

import polars as pl

from pipeline.simulator import SimConfig, SimulatorApp, SimulatorServer, image_key
from tests.conftest import FAST_CONFIG, remote_rows, run_args, run_cli, write_config, write_csv
from tests.test_runner import make_config, run_once

TRANSIENT = {
    "500": 0.02,
    "502": 0.02,
    "503": 0.02,
    "429": 0.02,
    "reset": 0.01,
    "stall": 0.005,
    "truncated": 0.01,
    "nonjson": 0.01,
    "nochoices": 0.01,
}
PERMANENT = {"invalid_image_url": 0.01, "filter_prompt": 0.01, "filter_completion": 0.01}
EXPECTED_PERMANENT = {
    "invalid_image_url": {"status": "error", "error_type": "bad_request", "http_status": 400, "flagged": False},
    "filter_prompt": {
        "status": "filtered",
        "error_type": "content_filter",
        "http_status": 400,
        "flagged": True,
        "flagged_categories": ["violence"],
        "max_severity": "medium",
    },
    "filter_completion": {
        "status": "filtered",
        "error_type": "content_filter",
        "http_status": 200,
        "flagged": True,
        "flagged_categories": ["violence"],
        "max_severity": "high",
        "finish_reason": "content_filter",
    },
}


def test_every_fault_class_at_realistic_rates(tmp_path):
    """500 rows under every transient and permanent fault: each id once, transients retried to success, permanents recorded once."""
    log = tmp_path / "requests.jsonl"
    app = SimulatorApp(
        SimConfig(
            latency_median_s=0.003,
            latency_p99_s=0.02,
            accept_any_model=True,
            seed=11,
            fault_rates={**TRANSIENT, **PERMANENT},
            stall_s=2.0,
            fault_wait_s=0.2,  # each 429 pauses the whole run for its wait: 1 s each would double the test
            log_path=str(log),
        )
    )
    rows = remote_rows(500, prefix="f")
    with SimulatorServer(app, log_level="critical") as sim:
        config = make_config(sim.base_url, endpoint={"timeout_s": 0.5}, limits={"concurrency": 32, "max_attempts": 8})
        totals, frame = run_once(config, write_csv(tmp_path / "m.csv", rows), tmp_path / "out")
    assert frame.height == 500 and frame["id"].n_unique() == 500

    requests_by_image: dict[str, list[str | None]] = defaultdict(list)
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        requests_by_image[entry["image"]].append(entry["fault"])
    by_id = {r["id"]: r for r in frame.to_dicts()}
    seen_transient = seen_permanent = 0
    for row in rows:
        faults = requests_by_image[image_key(row["url"])]
        result = by_id[row["id"]]
        assert result["attempts"] == len(faults), (row, faults)
        last = faults[-1]
        assert all(f is None or f in TRANSIENT for f in faults[:-1]), "a permanent fault was retried"
        seen_transient += sum(f in TRANSIENT for f in faults)
        if last in PERMANENT:
            seen_permanent += 1
            expected = EXPECTED_PERMANENT[last]
            assert {k: result[k] for k in expected} == expected, (row, faults, result)
            assert result["retryable"] is False
        else:
            assert last is None, (row, faults)
            assert result["status"] == "ok" and result["caption"], (row, faults, result)
    assert seen_transient >= 40 and seen_permanent >= 5
    stats = sum(len(f) for f in requests_by_image.values())
    assert totals.requests == stats


def _cli_against(app: SimulatorApp, tmp_path: Path, rows: int = 300) -> tuple[int, str, int]:
    config = write_config(tmp_path / "c.toml", FAST_CONFIG)
    manifest = write_csv(tmp_path / "m.csv", remote_rows(rows))
    with SimulatorServer(app, log_level="critical") as sim:
        result = run_cli(run_args(manifest, tmp_path / "out", config, sim.base_url))
        sent = app.stats()["requests"]
    return result.returncode, result.stderr, sent


def test_insufficient_quota_exits_3_after_at_most_concurrency_requests(tmp_path):
    """429 insufficient_quota is not retried: exit 3, a message about quota, ≤ concurrency requests."""
    code, stderr, sent = _cli_against(
        SimulatorApp(SimConfig(latency_median_s=0.002, accept_any_model=True, fault_rates={"quota": 1.0})), tmp_path
    )
    assert code == 3 and "no quota or credit left" in stderr and sent <= 16


def test_unknown_model_exits_3_naming_the_model(tmp_path):
    """404 model_not_found: exit 3, the message names the model, ≤ concurrency requests."""
    app = SimulatorApp(SimConfig(latency_median_s=0.002, models=("gpt-4o-mini",)))
    code, stderr, sent = _cli_against(app, tmp_path)
    assert code == 3 and "does not serve model 'gpt-4o'" in stderr and sent <= 16


def test_endpoint_down_trips_the_breaker_then_a_rerun_finishes(tmp_path):
    """Every request 503: exit 3 from the breaker well before the manifest is used up; back up, the rerun exits 0."""
    app = SimulatorApp(SimConfig(latency_median_s=0.002, accept_any_model=True, down=True))
    code, stderr, sent = _cli_against(app, tmp_path, rows=1000)
    assert code == 3 and "the endpoint looks down" in stderr
    assert sent <= 100, sent
    app.update(down=False)
    code, stderr, _ = _cli_against(app, tmp_path, rows=1000)
    assert code == 0, stderr
    assert pl.read_parquet(tmp_path / "out" / "results.parquet").height == 1000


def test_connections_refused_trip_the_breaker(tmp_path):
    """Nothing listening on the port: connection errors, exit 3 from the breaker, no error rows written."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = write_config(tmp_path / "c.toml", FAST_CONFIG)
    manifest = write_csv(tmp_path / "m.csv", remote_rows(1000))
    result = run_cli(
        [
            "run",
            str(manifest),
            "--out",
            str(tmp_path / "out"),
            "--config",
            str(config),
            "--base-url",
            f"http://127.0.0.1:{port}/v1",
            "--no-progress",
        ]
    )
    assert result.returncode == 3 and "the endpoint looks down" in result.stderr
    assert pl.read_parquet(tmp_path / "out" / "results.parquet").filter(pl.col("status") == "error").height == 0
