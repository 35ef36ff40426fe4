"""By hand: `caption run` through a real LiteLLM proxy in front of the simulator, read with the litellm
dialect and with the generic (OpenAI) one, side by side. Also re-captures the proxy's answers that
tests/test_dialect_litellm.py reads (--capture).

The proxy is not a test dependency (litellm[proxy] is large); install it in a venv of its own:

    python3.11 -m venv /tmp/ll && /tmp/ll/bin/pip install 'litellm[proxy]==1.80.0'
    python scripts/check_litellm.py --litellm /tmp/ll/bin/litellm [--capture]

Everything listens on 127.0.0.1; both servers are stopped (by pid) when it ends.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import polars as pl

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM_KEY = "sk-upstream-check"
PROXY_KEY = "sk-proxy-master-check"
RUN_TIMEOUT_S = 90
FIXTURE = ROOT / "tests" / "fixtures" / "litellm_proxy_1.80.0.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_up(url: str, *, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.5)
    raise SystemExit(f"{url} did not come up in {timeout_s:.0f} s")


def write_manifest(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "url"])
        writer.writerows(rows)
    return path


def upstream_requests(log: Path) -> int:
    return sum(1 for _ in open(log)) if log.exists() else 0


def run_case(work: Path, name: str, provider: str, manifest: Path, proxy: str, log: Path, *extra: str) -> dict:
    out = work / f"out-{name}-{provider}"
    config = work / f"{provider}.toml"
    config.write_text(
        f'[endpoint]\nprovider = "{provider}"\napi_key_env = "CHECK_KEY"\n[limits]\nconcurrency = 8\nrpm = 6000\n'
    )
    key = "sk-not-a-proxy-key-0000" if name == "wrong key" else PROXY_KEY
    before = upstream_requests(log)
    started = time.monotonic()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pipeline", "run", str(manifest), "--out", str(out), "--config", str(config)]
            + ["--base-url", proxy, "--no-progress", *extra],
            capture_output=True,
            text=True,
            env={**os.environ, "CHECK_KEY": key},
            cwd=ROOT,
            timeout=RUN_TIMEOUT_S,
        )
        code, last = str(result.returncode), (result.stderr.strip().splitlines() or [""])[-1]
    except subprocess.TimeoutExpired:  # the run was still retrying: what the generic reading does with quota
        code, last = f"killed at {RUN_TIMEOUT_S} s", "(still running)"
    rows = pl.read_parquet(out / "results.parquet") if (out / "results.parquet").exists() else None
    return {
        "case": name,
        "dialect": provider,
        "exit": code,
        "upstream requests": upstream_requests(log) - before,
        "rows": {} if rows is None else dict(rows.group_by("status").len().iter_rows()),
        "flagged": 0 if rows is None else int(rows["flagged"].sum()),
        "seconds": round(time.monotonic() - started, 1),
        "last line": re.sub(r"\s+", " ", last)[:160],
    }


def capture(proxy: str) -> None:
    """The proxy's answer to each fault, as the dialect tests read them."""

    def body(sim: str | None = None, model: str = "gpt-4o") -> dict:
        url = "https://img.example.com/a.jpg" + (f"?sim={sim}" if sim else "")
        content = [{"type": "text", "text": "caption"}, {"type": "image_url", "image_url": {"url": url}}]
        return {"model": model, "max_tokens": 50, "messages": [{"role": "user", "content": content}]}

    cases = {
        "ok": (body(), PROXY_KEY),
        "quota": (body("quota"), PROXY_KEY),
        "429": (body("429"), PROXY_KEY),
        "upstream_auth": (body("auth"), PROXY_KEY),
        "wrong_proxy_key": (body(), "sk-wrong-key-123456"),
        "unknown_model": (body(model="gpt-9"), PROXY_KEY),
        "filter_prompt": (body("filter_prompt"), PROXY_KEY),
        "filter_completion": (body("filter_completion"), PROXY_KEY),
        "invalid_image_url": (body("invalid_image_url"), PROXY_KEY),
        "503": (body("503"), PROXY_KEY),
    }
    kept = ("x-ratelimit", "retry-after", "llm_provider-x-ratelimit", "llm_provider-retry")
    answers = json.loads(FIXTURE.read_text())["answers"] if FIXTURE.exists() else {}
    for name, (payload, key) in cases.items():
        r = httpx.post(
            f"{proxy}/chat/completions", json=payload, headers={"Authorization": f"Bearer {key}"}, timeout=60
        )
        headers = {k: v for k, v in r.headers.items() if k.startswith(kept)}
        answers[name] = {"status": r.status_code, "headers": headers, "body": r.json()}
    FIXTURE.write_text(
        json.dumps({"captured_from": "litellm[proxy] in front of `caption simulate`", "answers": answers}, indent=1)
    )
    print(f"captured {len(cases)} answers into {FIXTURE.relative_to(ROOT)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--litellm", required=True, help="the litellm proxy executable")
    parser.add_argument("--capture", action="store_true", help="also re-capture the dialect tests' fixture")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sim_port, proxy_port = free_port(), free_port()
        log = work / "upstream.jsonl"
        proxy_config = work / "proxy.yaml"
        proxy_config.write_text(
            "model_list:\n  - model_name: gpt-4o\n    litellm_params:\n      model: openai/gpt-4o\n"
            f"      api_base: http://127.0.0.1:{sim_port}/v1\n      api_key: {UPSTREAM_KEY}\n"
            "litellm_settings:\n  num_retries: 0\n"
            f"general_settings:\n  master_key: {PROXY_KEY}\nrouter_settings:\n  disable_cooldowns: true\n"
        )
        sim = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "simulate", "--port", str(sim_port), "--api-key-env", "UPSTREAM"]
            + ["--log", str(log), "--latency-median", "0.05", "--latency-p99", "0.2"],
            env={**os.environ, "UPSTREAM": UPSTREAM_KEY},
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        proxy = subprocess.Popen(
            [args.litellm, "--config", str(proxy_config), "--host", "127.0.0.1", "--port", str(proxy_port)],
            env={**os.environ, "LITELLM_LOG": "ERROR"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            base = f"http://127.0.0.1:{proxy_port}/v1"
            wait_until_up(f"http://127.0.0.1:{sim_port}/v1/models")
            wait_until_up(f"http://127.0.0.1:{proxy_port}/health/liveliness")
            if args.capture:
                capture(base)
            img = "https://img.example.com"
            mixed = [(f"r{i}", f"{img}/{i}.jpg") for i in range(30)]
            mixed += [("fc", f"{img}/fc.jpg?sim=filter_completion"), ("fp", f"{img}/fp.jpg?sim=filter_prompt")]
            mixed += [("rl", f"{img}/rl.jpg?sim=429x1")]
            cases = {
                "mixed": (write_manifest(work / "mixed.csv", mixed), ()),
                "quota": (
                    write_manifest(work / "quota.csv", [(f"q{i}", f"{img}/q{i}.jpg?sim=quota") for i in range(30)]),
                    (),
                ),
                "wrong key": (write_manifest(work / "few.csv", mixed[:20]), ()),
                "unknown model": (work / "few.csv", ("--model", "gpt-9")),
            }
            results = [
                run_case(work, name, provider, manifest, base, log, *extra)
                for name, (manifest, extra) in cases.items()
                for provider in ("litellm", "generic")
            ]
        finally:
            for process in (proxy, sim):
                process.terminate()
                process.wait(timeout=20)
    print("| case | dialect | exit | upstream requests | rows | flagged | s | last line |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(" | ".join(["", *(str(r[k]) for k in r), ""]).strip())


if __name__ == "__main__":
    main()
