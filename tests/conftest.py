"""Shared fixtures: a real simulator on a free loopback port, manifests, the CLI as a subprocess."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.config import EndpointConfig
from pipeline.providers import PROVIDERS
from pipeline.simulator import SimConfig, SimulatorApp, SimulatorServer

ROOT = Path(__file__).resolve().parent.parent
# The variable the default provider reads its key from (tests set the key there).
KEY_ENV = PROVIDERS[EndpointConfig().provider].key_env
PROVIDER_KEY_VARS = {p.key_env for p in PROVIDERS.values()}
SEEDS = ROOT.parent / "shared" / "seeds"


@pytest.fixture
def simulator() -> Iterator[SimulatorServer]:
    """A fast, fault-free simulator; tests change knobs with ``sim.app.update(...)``."""
    app = SimulatorApp(SimConfig(latency_median_s=0.002, latency_p99_s=0.01, accept_any_model=True))
    with SimulatorServer(app, log_level="critical") as server:
        yield server


def write_csv(path: Path, rows: list[dict[str, object]]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def remote_rows(n: int, *, prefix: str = "img", query: str = "") -> list[dict[str, object]]:
    return [
        {"id": f"{prefix}-{i:04d}", "url": f"https://images.example.com/{prefix}/{i:04d}.jpg{query}"} for i in range(n)
    ]


def write_config(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


FAST_CONFIG = """
[limits]
rpm = 60000
tpm = 100000000
concurrency = 16
max_attempts = 4

[run]
chunk_size = 20
flush_interval_s = 0.2
"""


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PROVIDER_KEY_VARS and k != "OPENAI_BASE_URL"}
    env.update(extra)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cli(
    args: list[str], *, env: dict[str, str] | None = None, timeout_s: float = 90
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        capture_output=True,
        text=True,
        env=env or cli_env(),
        timeout=timeout_s,
        cwd=ROOT,
    )


def start_cli(args: list[str], *, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or cli_env(),
        cwd=ROOT,
    )


def run_args(manifest: Path, out: Path, config: Path, base_url: str, *extra: str) -> list[str]:
    """`caption run` against a test server: the arguments nearly every CLI test starts from."""
    return [
        "run",
        str(manifest),
        "--out",
        str(out),
        "--config",
        str(config),
        "--base-url",
        base_url,
        "--no-progress",
        *extra,
    ]
