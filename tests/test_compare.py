"""`caption estimate --models`: the same sampled rows sent to each model, a table per model, the side-by-side
page (escaped, offline unless remote thumbnails are asked for, rendered in headless Chromium)."""

from __future__ import annotations

import json
import re

import polars as pl
import pytest

from pipeline.compare import render_comparison_html
from pipeline.estimate_run import ModelEstimate, model_folder, sample_images
from pipeline.models import Item
from tests.conftest import FAST_CONFIG, ROOT, remote_rows, run_args, run_cli, write_config, write_csv
from tests.test_report import render_in_chromium

MODELS = ["gpt-4o-mini", "my-model"]  # one priced, one the pricing table does not know


@pytest.fixture
def comparison(tmp_path):
    """`estimate --models gpt-4o-mini,my-model --sample 5 --simulate --html --out` on 12 rows (2 local images)."""
    rows = remote_rows(10) + [
        {"id": "local-1", "url": str(ROOT / "data/images/01_sunset.jpg")},
        {"id": "local-2", "url": str(ROOT / "data/images/02_forest.png")},
    ]
    manifest = write_csv(tmp_path / "m.csv", rows)
    config = write_config(tmp_path / "c.toml", FAST_CONFIG)
    page, out = tmp_path / "compare.html", tmp_path / "samples"
    argv = ["estimate", str(manifest), "--config", str(config), "--models", ",".join(MODELS), "--sample", "5"]
    result = run_cli([*argv, "--simulate", "--html", str(page), "--out", str(out), "--seed", "3"])
    assert result.returncode == 0, result.stderr
    return {"stdout": result.stdout, "page": page, "out": out, "manifest": manifest, "config": config}


def test_estimate_models_prints_one_row_per_model_and_writes_the_page(comparison):
    """One table row per model (the unpriced one says so), and a page with each sampled image beside both
    models' captions."""
    lines = comparison["stdout"].splitlines()
    rows = {m: [line for line in lines if line.startswith(m + " ")] for m in MODELS}
    assert all(len(found) == 1 for found in rows.values()), comparison["stdout"]
    assert re.search(r"\$\d+\.\d{4} +\$\d+\.\d{4} - \$\d+\.\d{4} +\d+m\d\ds +5 ok", rows["gpt-4o-mini"][0])
    assert "unpriced  unpriced" in rows["my-model"][0]
    text = comparison["page"].read_text()
    assert text.count('<tr class="sample">') == 5 and text.count('<td class="cap status-ok">') == 10
    assert all(f"<th>{m}</th>" in text for m in MODELS)
    assert not re.search(r'(src|href)="https?://', text)  # offline-safe without --remote-thumbnails


def test_each_models_sample_is_kept_so_its_full_run_does_not_send_it_again(comparison, simulator):
    """With --out, each model's sample sits in OUT/<model>; the full run with that model sends only the rest."""
    kept = model_folder(comparison["out"], "gpt-4o-mini")
    assert pl.read_parquet(kept / "results.parquet").height == 5
    assert (comparison["out"] / "my-model" / "results.parquet").exists()
    argv = run_args(comparison["manifest"], kept, comparison["config"], simulator.base_url, "--model", "gpt-4o-mini")
    result = run_cli(argv)
    assert result.returncode == 0, result.stderr
    assert simulator.app.stats()["requests"] == 12 - 5 and pl.read_parquet(kept / "results.parquet").height == 12


def test_models_json_has_each_models_estimate_for_the_same_ids(tmp_path):
    """--json with --models: the sampled ids once, and one estimate object per model, unpriced as null."""
    manifest = write_csv(tmp_path / "m.csv", remote_rows(8))
    argv = ["estimate", str(manifest), "--models", "gpt-4o,my-model", "--sample", "3", "--simulate", "--json"]
    result = run_cli(argv)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert len(data["sample_ids"]) == 3 and [m["model"] for m in data["models"]] == ["gpt-4o", "my-model"]
    assert data["models"][0]["interval_95"][0] > 0 and data["models"][1]["interval_95"] == [None, None]
    assert data["models"][1]["cost_usd"]["expected"] is None


def test_models_needs_a_sample_and_distinct_names(tmp_path):
    """--models without --sample, or naming a model twice: exit 2 with one line, nothing sent."""
    manifest = write_csv(tmp_path / "m.csv", remote_rows(3))
    for extra in (["--models", "a,b"], ["--models", "a,a", "--sample", "2"]):
        result = run_cli(["estimate", str(manifest), *extra, "--simulate"])
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.startswith("caption: error: ")


def _estimate(model: str, rows: dict[str, dict[str, object]], items: list[Item]) -> ModelEstimate:
    result = {"cost_usd": {"expected": 1.0}, "interval_95": [0.9, 1.1], "duration_s": 60.0}
    result["sample"] = {"by_status": {"ok": 1, "filtered": 0, "error": 0}, "measured_cost_usd": 0.01}
    return ModelEstimate(model=model, result=result, items=items, rows=rows)


def test_the_page_escapes_everything_it_shows():
    """A caption, an id, a URL and a model name holding markup are shown as text, never run."""
    evil = '<script>alert(1)</script>"'
    item = Item(evil, f"https://x.example/{evil}.jpg")
    estimates = [_estimate(evil, {evil: {"status": "ok", "caption": evil, "cost_usd": None}}, [item])]
    page = render_comparison_html(estimates, images={evil: f"https://x.example/{evil}"}, title=evil)
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;&quot;" in page


def test_remote_images_are_shown_by_url_only_when_asked(tmp_path):
    """Local images become inline thumbnails; a remote one is its URL with --remote-thumbnails, else nothing."""
    items = [Item("r", "https://images.example.com/a.jpg"), Item("l", str(ROOT / "data/images/01_sunset.jpg"))]
    manifest = tmp_path / "m.csv"
    offline = sample_images(items, manifest=manifest, remote=False)
    online = sample_images(items, manifest=manifest, remote=True)
    assert offline["r"] is None and online["r"] == "https://images.example.com/a.jpg"
    assert offline["l"] == online["l"] and str(offline["l"]).startswith("data:image/jpeg;base64,")


def test_comparison_page_renders_in_headless_chromium(comparison, tmp_path):
    """A real browser renders the page (as the report's rendering test does): a screenshot, and the live DOM
    holds a row per sampled image with a caption per model."""
    dom = render_in_chromium(comparison["page"], tmp_path)
    assert len(re.findall(r'<tr class="sample">', dom)) == 5
    assert len(re.findall(r'<td class="cap status-ok">', dom)) == 10


def test_the_kept_hint_names_each_models_real_folder(tmp_path):
    """A model name with a slash is kept in a sanitised folder: the hint names that folder, not OUT/<model>."""
    from pipeline.compare import format_comparison

    items = [Item(id="a", url="https://x/a.jpg", row=0)]
    kept = {m: model_folder(tmp_path, m) for m in ("openai/gpt-4o", "gpt-4o-mini")}
    estimates = []
    for model, folder in kept.items():
        estimate = _estimate(model, {}, items)
        estimate.result.update(rows=10, requests=10)
        estimate.result["sample"].update(rows=1, kept_in=str(folder))
        estimates.append(estimate)
    text = format_comparison(estimates)
    assert kept["openai/gpt-4o"].name == "openai_gpt-4o"
    for model, folder in kept.items():
        assert f"--model {model} --out {folder}\n" in text + "\n", text
    assert "<model>" not in text


def test_one_refused_model_costs_one_request_and_the_others_are_kept(simulator, tmp_path):
    """--models with a typo'd model: the good models' samples are sent, shown (table and JSON) and kept;
    the refused one is named on stderr with why, is sent one row only, and the exit code says a model failed."""
    simulator.app.update(accept_any_model=False)
    manifest = write_csv(tmp_path / "m.csv", remote_rows(20))
    config = write_config(tmp_path / "c.toml", FAST_CONFIG)
    out = tmp_path / "samples"
    argv = ["estimate", str(manifest), "--config", str(config), "--base-url", simulator.base_url, "--sample", "4"]
    result = run_cli([*argv, "--models", "gpt-4o,gpt-4o-minii,gpt-4o-mini", "--out", str(out), "--json"])
    assert result.returncode == 3, result.stderr
    data = json.loads(result.stdout)
    assert [m["model"] for m in data["models"]] == ["gpt-4o", "gpt-4o-mini"]
    assert all(m["sample"]["by_status"]["ok"] == 4 for m in data["models"])
    assert list(data["not_estimated"]) == ["gpt-4o-minii"]
    assert "caption: gpt-4o-minii: not estimated:" in result.stderr
    assert simulator.app.stats()["requests"] == 4 + 1 + 4  # the refused model: its first row only
    for model in ("gpt-4o", "gpt-4o-mini"):
        assert pl.read_parquet(model_folder(out, model) / "results.parquet").height == 4


@pytest.mark.parametrize("where", ["missing", "a-file", "is-a-folder"])
def test_html_that_cannot_be_written_is_refused_before_anything_is_sent(simulator, tmp_path, where):
    """--html in a missing folder, under a file, or naming a folder: one line, exit 2, no request sent."""
    manifest = write_csv(tmp_path / "m.csv", remote_rows(6))
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "is-a-folder").mkdir()
    page = {
        "missing": tmp_path / "missing" / "p.html",
        "a-file": tmp_path / "a-file" / "p.html",
        "is-a-folder": tmp_path / "is-a-folder",
    }[where]
    argv = ["estimate", str(manifest), "--base-url", simulator.base_url, "--models", "gpt-4o,gpt-4o-mini"]
    result = run_cli([*argv, "--sample", "2", "--html", str(page)])
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert str(page) in result.stderr
    assert simulator.app.stats()["requests"] == 0
