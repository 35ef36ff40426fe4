"""`caption run` against a server that refuses every row with the same words: the run stops after
about concurrency + 10 requests (exit 3), instead of burning the manifest into error rows. A refusal
that names its row is that row's error, and the run goes on."""

from __future__ import annotations

import polars as pl

from tests.conftest import FAST_CONFIG, cli_env, remote_rows, run_args, run_cli, write_config, write_csv
from tests.hostile_server import Handler, HostileServer, json_answer

ROWS = 300
CONCURRENCY = 16  # FAST_CONFIG's


def _refuse_all(message_for) -> dict[str, Handler]:
    return {
        f"{i:04d}": json_answer(400, {"error": {"message": message_for(i), "type": "invalid_request_error"}})
        for i in range(ROWS)
    }


def _run(tmp_path, answers):
    config = write_config(tmp_path / "c.toml", FAST_CONFIG + '\n[endpoint]\nprovider = "generic"\napi_key_env = "K"\n')
    manifest = write_csv(tmp_path / "m.csv", remote_rows(ROWS))
    with HostileServer() as server:
        server.answers = answers
        result = run_cli(run_args(manifest, tmp_path / "out", config, server.base_url), env=cli_env(K="sk-test"))
        return result, server.requests


def test_the_same_refusal_for_every_row_stops_the_run(tmp_path):
    """A gateway's policy refusal with a trace id that changes: the same words otherwise."""
    result, requests = _run(
        tmp_path, _refuse_all(lambda i: f"Blocked by the gateway policy engine (trace 4f9a{i:04d}c2e77).")
    )
    assert result.returncode == 3, result.stderr
    assert "refused alike" in result.stderr and "Blocked by the gateway policy engine" in result.stderr
    assert "--retry-errors" in result.stderr  # the refused rows are recorded: a plain re-run skips them
    assert requests <= CONCURRENCY + 10, requests
    # What was refused before the stop is recorded, so a resume moves past it.
    rows = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert 1 <= rows.height <= requests and (rows["error_type"] == "bad_request").all()


def test_refusals_that_name_their_row_do_not_stop_the_run(tmp_path):
    result, requests = _run(
        tmp_path, _refuse_all(lambda i: f"Invalid image: https://images.example.com/img/{i:04d}.jpg is not an image.")
    )
    assert result.returncode == 1, result.stderr
    assert requests == ROWS
    assert pl.read_parquet(tmp_path / "out" / "results.parquet").height == ROWS
