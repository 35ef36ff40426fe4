"""`caption report`: the summary a user reads (table, --json), and the self-contained HTML page in a real browser."""

from __future__ import annotations

import http.server
import io
import json
import os
import re
import shutil
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.journal import Journal
from pipeline.models import ResultRow
from pipeline.report import summarise, timeline_bucket_s
from tests.conftest import FAST_CONFIG, ROOT, remote_rows, run_args, run_cli, write_config, write_csv

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture
def finished_run(simulator, tmp_path):
    """A run with ok rows, local images, a bad image, a 400 and filtered rows: the shape of a real night."""
    rows = remote_rows(12) + [
        {"id": "local-1", "url": str(ROOT / "data/images/01_sunset.jpg")},
        {"id": "local-2", "url": str(ROOT / "data/images/02_forest.png")},
        {"id": "gone", "url": "missing.png"},
        {"id": "bad-url", "url": "https://images.example.com/x.jpg?sim=invalid_image_url"},
        {"id": "cut", "url": "https://images.example.com/y.jpg?sim=filter_completion"},
        {"id": "blocked", "url": "https://images.example.com/z.jpg?sim=filter_prompt"},
    ]
    config = write_config(tmp_path / "c.toml", FAST_CONFIG)
    out = tmp_path / "out"
    result = run_cli(run_args(write_csv(tmp_path / "m.csv", rows), out, config, simulator.base_url))
    assert result.returncode == 1, result.stderr
    return out


def test_json_report_has_the_spec_keys_and_the_right_counts(finished_run):
    """--json: rows, by_status, tokens, cost, latency p50/p90/p99, flagged categories, errors, as the run produced them."""
    result = run_cli(["report", str(finished_run), "--json"])
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["rows"] == 18
    assert report["by_status"] == {"ok": 14, "error": 2, "filtered": 2}
    assert report["errors"] == {"bad_request": 1, "image_unreadable": 1}
    assert report["flagged_categories"] == {"violence": 2}
    frame = pl.read_parquet(finished_run / "results.parquet")
    assert (
        report["prompt_tokens"] == frame["prompt_tokens"].sum()
        and report["completion_tokens"] == frame["completion_tokens"].sum()
    )
    assert report["cost_usd"] == pytest.approx(frame["cost_usd"].sum(), abs=1e-6)  # the report rounds to 6 places
    assert (
        set(report["latency_s"]) == {"p50", "p90", "p99"} and report["latency_s"]["p50"] <= report["latency_s"]["p99"]
    )
    assert sum(b["rows"] for b in report["throughput"]["timeline"]) == 18


def test_table_report_reads_like_a_summary(finished_run):
    """The default output is a short table naming statuses, cost, latency, flags and errors."""
    out = run_cli(["report", str(finished_run)]).stdout
    for words in ("rows          18", "ok 14", "error 2", "filtered 2", "cost", "p99", "violence 2", "bad_request 1"):
        assert words in out


def test_report_reads_a_run_that_has_not_finished(tmp_path):
    """A running or killed run (parts only, no results.parquet) is reported from its journal, untouched."""
    journal = Journal(tmp_path)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    journal.write_rows(
        [
            ResultRow(id=f"k{i}", url="u", status="ok", latency_s=0.1 * i, finished_at=now + timedelta(seconds=i))
            for i in range(5)
        ]
    )
    in_progress = tmp_path / "journal" / ".p0000000002-0000000002.parquet.tmp-4242"
    in_progress.write_bytes(b"a part the running writer has not renamed yet")
    report = json.loads(run_cli(["report", str(tmp_path), "--json"]).stdout)
    assert report["rows"] == 5 and report["by_status"] == {"ok": 5}
    assert in_progress.exists()  # reading a live run must not tidy it


def test_report_on_a_folder_that_is_not_a_run_is_refused(tmp_path):
    """A folder without results: exit 2 and a message saying what was expected."""
    result = run_cli(["report", str(tmp_path)])
    assert result.returncode == 2 and "no results here" in result.stderr


def test_timeline_buckets_fit_the_run():
    """Short runs are bucketed by the second, overnight runs by the quarter hour or hour."""
    assert timeline_bucket_s(30) == 1 and timeline_bucket_s(3600) == 30 and timeline_bucket_s(8 * 3600) == 300


def test_summary_of_an_empty_frame():
    """No rows: zeros and nulls, not a crash."""
    from pipeline.models import RESULT_SCHEMA

    summary = summarise(pl.DataFrame(schema=RESULT_SCHEMA).lazy())
    assert summary["rows"] == 0 and summary["by_status"] == {} and summary["latency_s"]["p50"] is None


def test_html_page_is_self_contained_with_one_card_per_row(finished_run, tmp_path):
    """--html: no external resources; local images inlined as thumbnails; one card per row."""
    page = tmp_path / "report.html"
    assert run_cli(["report", str(finished_run), "--html", str(page)]).returncode == 0
    text = page.read_text()
    assert len(re.findall(r'<div class="card ', text)) == 18
    assert not re.search(r'(src|href)="https?://', text)
    assert text.count('src="data:image/jpeg;base64,') == 2
    assert "<svg" in text and 'id="f-status"' in text


def test_html_page_says_the_state_config_units_and_errors(finished_run, tmp_path):
    """--html: the run's state and config at the top, axes with units, the aria-label in the bars' unit, errors by type."""
    page = tmp_path / "report.html"
    assert run_cli(["report", str(finished_run), "--html", str(page)]).returncode == 0
    text = page.read_text()
    assert 'id="state">finished: 18 of 18 rows done; 2 error rows are not retried' in text
    assert "<td>model</td><td>gpt-4o</td>" in text and "<td>endpoint</td><td>127.0.0.1:" in text
    bucket_s = re.search(r'aria-label="rows finished per (\d+) s \(bars\) and median latency in seconds', text)
    assert bucket_s is not None and "per minute" not in text
    assert f"rows per {bucket_s.group(1)} s</text>" in text and "time (UTC), one bar per" in text
    assert "p50 latency (s)" in text
    assert 'id="error-bad_request">bad_request: 1 rows' in text and 'id="error-image_unreadable"' in text
    assert text.count('<tr class="error-example">') == 2


def test_remote_thumbnails_are_lazy_images_only_when_asked(finished_run, tmp_path):
    """--remote-thumbnails: each remote image is a lazy <img>; without it the page loads nothing from the network."""
    page = tmp_path / "report.html"
    assert run_cli(["report", str(finished_run), "--html", str(page), "--remote-thumbnails"]).returncode == 0
    text = page.read_text()
    lazy = re.findall(r'<img loading="lazy" src="(https://images\.example\.com/[^"]+)"', text)
    assert len(lazy) == 15 and text.count('src="data:image/jpeg;base64,') == 2
    assert 'src="https://images.example.com/x.jpg?sim=invalid_image_url"' in text


def chromium_flags(tmp_path):
    if CHROMIUM is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed, and CI must render the report (.ci/run installs Debian's chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1200,1600",
    ]


def render_in_chromium(page: Path, tmp_path: Path) -> str:
    """Headless Chromium renders ``page``: a screenshot must come out, and the live DOM is returned."""
    flags = chromium_flags(tmp_path)
    shot = tmp_path / "shot.png"
    subprocess.run(
        [CHROMIUM, *flags, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=90, check=False
    )
    assert shot.exists() and shot.stat().st_size > 20_000
    return subprocess.run(
        [CHROMIUM, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=90
    ).stdout


def test_html_page_renders_in_headless_chromium(finished_run, tmp_path):
    """A real browser renders the page: a screenshot is taken and the live DOM holds one card per row."""
    page = tmp_path / "report.html"
    run_cli(["report", str(finished_run), "--html", str(page)])
    dom = render_in_chromium(page, tmp_path)
    assert len(re.findall(r'<div class="card ', dom)) == 18
    assert "showing 18" in dom  # the page's own script ran over every card
    # The sections above the gallery are in the live DOM too: state, config, chart axes, errors by type.
    assert "finished: 18 of 18 rows done" in dom and "<td>prompt</td>" in dom
    assert "time (UTC), one bar per" in dom and "Errors by type" in dom
    assert dom.count('<tr class="error-example">') == 2


class _ImageHost(http.server.BaseHTTPRequestHandler):
    """A loopback image host that counts what a browser fetches from it."""

    fetched: list[str]

    def do_GET(self) -> None:
        self.fetched.append(self.path)
        buffer = io.BytesIO()
        Image.new("RGB", (64, 48), (200, 80, 40)).save(buffer, format="PNG")
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(buffer.getvalue())))
        self.end_headers()
        self.wfile.write(buffer.getvalue())

    def log_message(self, *_: object) -> None:
        pass


def test_remote_thumbnails_load_in_chromium_only_when_asked(tmp_path):
    """In a real browser: the default page fetches nothing; with --remote-thumbnails the visible images are fetched."""
    flags = chromium_flags(tmp_path)
    fetched: list[str] = []
    handler = type("Host", (_ImageHost,), {"fetched": fetched})
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as host:
        threading.Thread(target=host.serve_forever, daemon=True).start()
        try:
            _render_with_and_without_remote_thumbnails(host, fetched, flags, tmp_path)
        finally:
            host.shutdown()


def _render_with_and_without_remote_thumbnails(host, fetched, flags, tmp_path):
    """Render the page without, then with, --remote-thumbnails; count the images the browser fetched."""
    base = f"http://127.0.0.1:{host.server_address[1]}"
    out = tmp_path / "out"
    with Journal(out) as journal:
        now = datetime(2026, 1, 1, tzinfo=UTC)
        journal.write_rows(
            [ResultRow(id=f"r{i}", url=f"{base}/{i}.png", status="ok", caption="c", finished_at=now) for i in range(4)]
        )
        journal.finalize()
    for option, expected in (([], 0), (["--remote-thumbnails"], 4)):
        page = tmp_path / f"report{len(option)}.html"
        assert run_cli(["report", str(out), "--html", str(page), *option]).returncode == 0
        fetched.clear()
        subprocess.run([CHROMIUM, *flags, "--dump-dom", page.as_uri()], capture_output=True, timeout=90)
        assert len(set(fetched)) == expected, (option, fetched)


@pytest.mark.parametrize("folder_exists", [True, False], ids=["a-run-folder", "an-empty-folder"])
def test_report_html_into_a_missing_folder_is_a_one_line_error(tmp_path, capsys, folder_exists, request):
    """--html MISSING/page.html: exit 2, one line naming the missing folder, checked before the report
    is computed (an empty folder would otherwise fail first with 'no results here'); nothing written."""
    out = request.getfixturevalue("finished_run") if folder_exists else tmp_path / "empty"
    out.mkdir(exist_ok=True)
    page = tmp_path / "missing" / "page.html"
    capsys.readouterr()
    code = main(["report", str(out), "--html", str(page)])
    said, err = capsys.readouterr()
    assert code == 2 and said == ""
    assert err == f"caption: error: key '--html': {page.parent}: no such folder to write the page in\n"
    assert not page.parent.exists()


def test_report_html_naming_a_folder_is_a_one_line_error(tmp_path, capsys):
    """--html naming an existing folder (the file name forgotten): exit 2, one line, not IsADirectoryError."""
    out = tmp_path / "empty"
    out.mkdir()
    capsys.readouterr()
    assert main(["report", str(out), "--html", str(tmp_path)]) == 2
    assert (
        capsys.readouterr().err == f"caption: error: key '--html': {tmp_path}: is a folder; give the page's file name\n"
    )
