"""Figures for the fault suite, run by hand: requests the circuit breaker lets through, re-sends after SIGKILL.

    python scripts/measure_faults.py

Everything runs against the simulator on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.simulator import SimConfig, SimulatorApp, SimulatorServer, image_key  # noqa: E402


def write_manifest(path: Path, rows: int) -> list[tuple[str, str]]:
    items = [(f"r{i:05d}", f"https://images.example.com/m/{i:05d}.jpg") for i in range(rows)]
    path.write_text("id,url\n" + "".join(f"{i},{u}\n" for i, u in items))
    return items


def caption(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )


def breaker(concurrency: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "m.csv"
        write_manifest(manifest, 5000)
        app = SimulatorApp(SimConfig(latency_median_s=0.005, accept_any_model=True, down=True))
        with SimulatorServer(app, log_level="critical") as sim:
            proc = caption(
                [
                    "run",
                    str(manifest),
                    "--out",
                    f"{tmp}/out",
                    "--base-url",
                    sim.base_url,
                    "--concurrency",
                    str(concurrency),
                    "--rpm",
                    "none",
                    "--tpm",
                    "none",
                    "--no-progress",
                ]
            )
            _, err = proc.communicate(timeout=120)
            return {
                "concurrency": concurrency,
                "exit": proc.returncode,
                "requests_before_stop": app.stats()["requests"],
                "manifest_rows": 5000,
            }


def kill_and_resume(seed: int, kills: int = 3) -> dict:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "m.csv"
        items = write_manifest(manifest, 3000)
        app = SimulatorApp(SimConfig(latency_median_s=0.02, latency_p99_s=0.1, accept_any_model=True))
        resends = []
        with SimulatorServer(app, log_level="critical") as sim:
            args = [
                "run",
                str(manifest),
                "--out",
                f"{tmp}/out",
                "--base-url",
                sim.base_url,
                "--concurrency",
                "32",
                "--rpm",
                "none",
                "--tpm",
                "none",
                "--chunk-size",
                "64",
                "--flush-interval-s",
                "0.5",
                "--no-progress",
                "-v",
            ]
            for _ in range(kills):
                before = dict(app.stats(images=True)["images"])
                proc = caption(args)
                target, seen = rng.randint(1, 8), 0
                for line in proc.stderr:
                    if "flushed" in line:
                        seen += 1
                        if seen >= target:
                            break
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                resends.append(
                    {
                        "killed_after_flushes": target,
                        "requests_so_far": app.stats()["requests"],
                        "resent_this_run": sum(
                            1
                            for k, n in app.stats(images=True)["images"].items()
                            if before.get(k, 0) >= 1 and n > before.get(k, 0)
                        ),
                    }
                )
            before = dict(app.stats(images=True)["images"])
            proc = caption(args)
            proc.communicate(timeout=300)
            final_resent = sum(
                1 for k, n in app.stats(images=True)["images"].items() if before.get(k, 0) >= 1 and n > before[k]
            )
            per_image = app.stats(images=True)["images"]
            total_extra = sum(per_image.get(image_key(u), 0) - 1 for _, u in items)
        return {
            "kills": resends,
            "final_run_resent": final_resent,
            "final_exit": proc.returncode,
            "requests_beyond_one_per_row": total_extra,
            "rows": len(items),
        }


if __name__ == "__main__":
    for c in (16, 64):
        print(json.dumps({"breaker": breaker(c)}), flush=True)
    print(json.dumps({"sigkill": kill_and_resume(seed=1)}), flush=True)
