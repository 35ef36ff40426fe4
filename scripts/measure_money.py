"""Issue 10 as a user sees it: requests paid twice and paid rows lost, per case, for any checkout.

    git worktree add /tmp/old-caption b26fd4a                          # the code before the fix
    .venv/bin/python scripts/measure_money.py --checkout /tmp/old-caption
    .venv/bin/python scripts/measure_money.py --checkout .

Columns: requests the simulator got over the case; ids it answered 200 more than once (paid
twice); ids it answered 200 that the folder does not hold as ok afterwards (lost; for a resumed
case, counted before the resume; after a SIGKILL, only answers given while the process lived);
exit codes ("a, b" side by side, "a -> b" then the resume).

The simulator always comes from this repository (the old code has no `slow` rule); only the
`python -m pipeline` subprocess runs the checkout under test (PYTHONPATH=DIR). Everything runs on
127.0.0.1 and stops by itself: every CLI process is bounded by a timeout ("hang"), and one that
prints a traceback shows as "crash(CODE)" (its exception on this script's stderr). Judged on the
simulator's log (one line per request), not on what the pipeline says it did.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Self

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.simulator import SimConfig, SimulatorApp, SimulatorServer  # noqa: E402 - after the path is set

TIMEOUT_S = 120
LIMITS = "[limits]\nrpm = 60000\ntpm = 100000000\nconcurrency = {c}\nmax_attempts = 4\n"
FAST = LIMITS + "[run]\nchunk_size = 20\nflush_interval_s = 0.2\n"
# Nothing flushed on its own during the run: only the stop path can save what was answered.
NO_FLUSH = LIMITS + "[run]\nchunk_size = 100000\nflush_interval_s = 3600\n"


class Case:
    """One folder, one logging simulator, and the CLI of the checkout under test."""

    def __init__(self, checkout: Path, tmp: Path, config: str, **sim: object) -> None:
        self.checkout, self.tmp, self.out = checkout, tmp, tmp / "out"
        self.config = tmp / "c.toml"
        self.config.write_text(config)
        self.log = tmp / "sim.jsonl"
        self.app = SimulatorApp(SimConfig(accept_any_model=True, log_path=str(self.log), **sim))  # type: ignore[arg-type]
        self.server = SimulatorServer(self.app, log_level="critical")
        self.runs = 0

    def __enter__(self) -> Self:
        self.server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__(*exc)

    def start(self, manifest: Path, *extra: str) -> tuple[subprocess.Popen[str], Path]:
        # stderr to a file: a process we do not read while it runs can never block on a full pipe.
        self.runs += 1
        err = self.tmp / f"stderr{self.runs}.txt"
        env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
        env.update(PYTHONPATH=str(self.checkout), PYTHONUNBUFFERED="1")
        args = [
            "run",
            str(manifest),
            "--out",
            str(self.out),
            "--config",
            str(self.config),
            "--base-url",
            self.server.base_url,
            "--no-progress",
            *extra,
        ]
        with open(err, "w") as fh:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pipeline", *args],
                stdout=subprocess.DEVNULL,
                stderr=fh,
                text=True,
                env=env,
                cwd=self.checkout,
            )
        return proc, err

    def run(self, manifest: Path, *extra: str) -> tuple[str, str]:
        return finish(*self.start(manifest, *extra))

    def answers(self) -> list[dict]:
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        return [json.loads(line) for line in lines if line.endswith("}")]


def finish(proc: subprocess.Popen[str], err: Path, timeout_s: float = TIMEOUT_S) -> tuple[str, str]:
    """Wait for a CLI process: its outcome as a word ("0", "130", "SIGKILL", "crash(1)", "hang") and stderr."""
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return "hang", err.read_text(errors="replace")
    stderr = err.read_text(errors="replace")
    if "Traceback" in stderr:
        # The table has no room for it: the exception's last line goes to our stderr.
        said = [line.strip(" |") for line in stderr.splitlines() if "Error" in line or "Exception" in line]
        print(f"crash: {(said or ['?'])[-1]}", file=sys.stderr)
        return f"crash({proc.returncode})", stderr
    if proc.returncode < 0:
        return signal.Signals(-proc.returncode).name, stderr
    return str(proc.returncode), stderr


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("id,url\n" + "".join(f"{i},{u}\n" for i, u in rows))
    return path


def remote(n: int, prefix: str, query: str = "") -> list[tuple[str, str]]:
    return [(f"{prefix}-{i:04d}", f"https://images.example.com/{prefix}/{i:04d}.jpg{query}") for i in range(n)]


def saved_ok(out: Path, *, parts: bool = True) -> set[str]:
    """Ids the folder holds as ok: results.parquet and (unless finalized only) the journal's parts.
    Only the id and status columns are read, so a part damaged elsewhere still counts."""
    files = [out / "results.parquet"] + (sorted((out / "journal").glob("*.parquet")) if parts else [])
    return {i for path in files for i, s in _ids_and_status(path) if s == "ok"}


def _ids_and_status(path: Path) -> list[tuple[str, str]]:
    try:
        table = pq.read_table(path, columns=["id", "status"]).to_pydict()
    except (OSError, pa.ArrowException):  # missing or unreadable: nothing in it the user can get back
        return []
    return list(zip(table["id"], table["status"], strict=True))


def paid(answers: list[dict]) -> Counter[str]:
    return Counter(a["image"] for a in answers if a["status"] == 200)


def twice(answers: list[dict]) -> int:
    return sum(1 for n in paid(answers).values() if n > 1)


def settle(case: Case, wait_s: float = 1.0) -> int:
    """Answers of a killed or cancelled run still land in the log once their latency has passed."""
    time.sleep(wait_s)
    return len(case.answers())


def row(name: str, answers: list[dict], lost: int | str, exits: str, detail: str) -> dict:
    return {
        "case": name,
        "requests": len(answers),
        "paid twice": twice(answers),
        "lost": lost,
        "exit": exits,
        "detail": detail,
    }


def two_runs(co: Path, tmp: Path) -> dict:
    rows = remote(300, "lock")
    manifest = write_csv(tmp / "m.csv", rows)
    with Case(co, tmp, FAST.format(c=4), latency_median_s=0.02, latency_p99_s=0.05) as case:
        first = case.start(manifest)
        time.sleep(0.3)  # a cron overlap, a second terminal
        second = case.start(manifest)
        a, b = finish(*first)[0], finish(*second)[0]
        answers = case.answers()
    by_url = {u: i for i, u in rows}
    lost = {by_url[k] for k in paid(answers)} - saved_ok(case.out, parts=False)
    return row("1 two runs 0.3 s apart", answers, len(lost), f"{a}, {b}", "lost: not in results.parquet")


def signalled(co: Path, tmp: Path, signum: int) -> dict:
    # Every fifth answer is held 3 s: still in flight when a SIGKILL follows the SIGTERM by 1.5 s.
    rows = [(i, u + ("?sim=slow" if n % 5 == 4 else "")) for n, (i, u) in enumerate(remote(60, "sig"))]
    manifest = write_csv(tmp / "m.csv", rows)
    with Case(co, tmp, NO_FLUSH.format(c=8), latency_median_s=0.15, latency_p99_s=0.6, stall_s=3.0) as case:
        proc, err = case.start(manifest)
        if not case.app.wait_until(lambda s: s["accepted"] >= 12 and s["held"] >= 1, timeout_s=60):
            proc.kill()
        signalled_at = time.time()
        proc.send_signal(signum)
        # SIGTERM: the SIGKILL that `timeout -k` and `docker stop` send after a short grace.
        first = finish(proc, err, 1.5 if signum == signal.SIGTERM else TIMEOUT_S)[0]
        if signum == signal.SIGTERM and first == "hang":
            first = "SIGKILL"
        n = settle(case, 3.5)  # the held answers too: billed, whether or not anyone got them
        kept = saved_ok(case.out)
        try:
            status = json.loads((case.out / "run.json").read_text()).get("status")
        except (OSError, ValueError, AttributeError):
            status = "unreadable"
        resumed = case.run(manifest)[0]
        answers = case.answers()
    by_url = {u: i for i, u in rows}
    answered = {a["image"] for a in answers[:n] if a["status"] == 200}
    before = {a["image"] for a in answers[:n] if a["status"] == 200 and a["t"] < signalled_at}
    asked_again = {a["image"] for a in answers[n:]}
    if signum == signal.SIGTERM:
        # A SIGKILL cannot be caught: only what arrived while the process lived counts as lost.
        alive = {a["image"] for a in answers[:n] if a["status"] == 200 and a["t"] < signalled_at + 1.5}
        lost = len({by_url[k] for k in alive} - kept)
        return row(
            "2 SIGTERM, SIGKILL +1.5 s, resume",
            answers,
            lost,
            f"{first} -> {resumed}",
            f"{len(before & asked_again)} of {len(before)} answered before SIGTERM re-sent",
        )
    lost = len({by_url[k] for k in answered} - kept)
    return row(
        "3 SIGHUP, resume",
        answers,
        lost,
        f"{first} -> {resumed}",
        f"run.json {status}; {len(answered & asked_again)} of {len(answered)} answered re-sent",
    )


def quota_stop(co: Path, tmp: Path) -> dict:
    slow = [(f"slow-{i}", f"https://img.example.com/s/{i}.jpg?sim=slow") for i in range(7)]
    rows = [*slow, ("fatal", "https://img.example.com/f.jpg?sim=quotax1"), *remote(30, "rest")]
    manifest = write_csv(tmp / "m.csv", rows)
    config = LIMITS.format(c=8) + "[run]\nchunk_size = 1000\nflush_interval_s = 60\n"
    with Case(co, tmp, config, latency_median_s=0.002, latency_p99_s=0.005, stall_s=0.5) as case:
        first = case.run(manifest)[0]
        n = settle(case)  # the slow answers a cancelled run dropped are still billed
        kept = saved_ok(case.out)
        resumed = case.run(manifest)[0]
        answers = case.answers()
    by_url = {u: i for i, u in rows}
    lost = len({by_url[k] for k in paid(answers[:n])} - kept)
    resent = sum(1 for _, u in slow if sum(a["image"] == u for a in answers) > 1)
    return row(
        "4 quota stop, 7 slow in flight, resume",
        answers,
        lost,
        f"{first} -> {resumed}",
        f"{resent} of 7 slow ids re-sent",
    )


def dedup_across_runs(co: Path, tmp: Path) -> dict:
    images = [f"https://img.example.com/d/{i}.jpg" for i in range(10)]
    first = [(f"a{i:03d}", images[i % 10]) for i in range(50)]
    second = first + [(f"b{i:03d}", images[i % 10]) for i in range(50)]
    with Case(co, tmp, FAST.format(c=16), latency_median_s=0.002, latency_p99_s=0.01) as case:
        a = case.run(write_csv(tmp / "m1.csv", first))[0]
        n = len(case.answers())
        b = case.run(write_csv(tmp / "m2.csv", second))[0]
        answers = case.answers()
    ok = saved_ok(case.out, parts=False)
    lost = len({i for i, _ in second} - ok)  # every id's image was answered at least once
    return row(
        "5 10 images, then 50 more ids of them",
        answers,
        lost,
        f"{a}, {b}",
        f"second run sent {len(answers) - n}; {len(ok)} of 100 rows ok",
    )


def nul_byte(co: Path, tmp: Path) -> dict:
    records = []
    for i in range(20):  # distinct pictures, or dedup would send one request for all
        Image.new("RGB", (8, 8), (200, 10 * i, 30)).save(tmp / f"img{i}.png")
        records.append({"id": f"l{i:02d}", "url": f"img{i}.png"})
    records.insert(10, {"id": "nul", "url": "bad\x00name.png"})
    manifest = tmp / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    with Case(co, tmp, FAST.format(c=4), latency_median_s=0.002, latency_p99_s=0.01) as case:
        code = case.run(manifest)[0]
        answers = case.answers()
    # Local images go inline, so the simulator's keys are digests: count answers, not ids.
    saved = saved_ok(case.out)
    lost = max(0, len(paid(answers)) - len(saved))
    return row("6 NUL byte in one local path", answers, lost, code, f"{len(saved)} of 20 good rows saved")


def garble_column(path: Path, column: str) -> None:
    """As tests/test_journal_damage.py does: bytes inside one column's pages; footer and other columns sound."""
    meta = pq.ParquetFile(path).metadata
    names = [meta.schema.column(i).name for i in range(meta.num_columns)]
    start = meta.row_group(0).column(names.index(column)).data_page_offset + 40
    data = bytearray(path.read_bytes())
    data[start : start + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))


# The part is written by the checkout's own Journal, so it has that checkout's layout and schema.
WRITE_PART = """
import sys
from datetime import UTC, datetime
from pathlib import Path
from pipeline.journal import Journal
from pipeline.models import ResultRow
journal = Journal(Path(sys.argv[1]))
journal.write_rows([ResultRow(id=f"img-{i:04d}", url=f"https://images.example.com/img/{i:04d}.jpg", status="ok",
                              caption=f"caption {i} " * 30, cost_usd=0.001, attempts=1,
                              finished_at=datetime(2026, 1, 1, tzinfo=UTC)) for i in range(20)])
getattr(journal, "close", lambda: None)()
"""


def garbled_part(co: Path, tmp: Path) -> dict:
    rows = remote(60, "img")
    manifest = write_csv(tmp / "m.csv", rows)
    with Case(co, tmp, FAST.format(c=16), latency_median_s=0.002, latency_p99_s=0.01) as case:
        subprocess.run(
            [sys.executable, "-c", WRITE_PART, str(case.out)],
            check=True,
            timeout=60,
            cwd=co,
            env={**os.environ, "PYTHONPATH": str(co)},
        )
        garble_column(next((case.out / "journal").glob("p*.parquet")), "caption")
        # --force: the part has no run.json beside it; it skips only the parameter check.
        code, stderr = case.run(manifest, "--force")
        answers = case.answers()
    by_url = {u: i for i, u in rows}
    lost = len({by_url[k] for k in paid(answers)} - saved_ok(case.out))
    return row(
        "7 part garbled in its captions",
        answers,
        lost,
        code,
        f"{len(answers)} requests before the error; traceback: {'yes' if 'Traceback' in stderr else 'no'}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=Path, default=ROOT, help="the caption checkout whose CLI is measured")
    checkout = parser.parse_args().checkout.resolve()
    cases = [
        two_runs,
        lambda c, t: signalled(c, t, signal.SIGTERM),
        lambda c, t: signalled(c, t, signal.SIGHUP),
        quota_stop,
        dedup_across_runs,
        nul_byte,
        garbled_part,
    ]
    results = []
    for measure in cases:
        with tempfile.TemporaryDirectory() as tmp:
            results.append(measure(checkout, Path(tmp)))
    print(f"checkout: {checkout}")
    columns = list(results[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in results)) for c in columns}
    print(" | ".join(c.ljust(widths[c]) for c in columns))
    print("-+-".join("-" * widths[c] for c in columns))
    for r in results:
        print(" | ".join(str(r[c]).ljust(widths[c]) for c in columns))


if __name__ == "__main__":
    main()
