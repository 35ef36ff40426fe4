"""Images and labeling end to end: mixed folders, resizing, remote inlining, dedup, structured labels, n > 1, gateway extras."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from PIL import Image

from pipeline.simulator import SimConfig, SimulatorApp, SimulatorServer, caption_for
from pipeline.tokens import image_tokens
from tests.conftest import FAST_CONFIG, remote_rows, run_args, run_cli, write_config, write_csv
from tests.test_runner import make_config, run_once


def _run(simulator, manifest: Path, out: Path, config_text: str = FAST_CONFIG, *extra: str):
    config = write_config(out.parent / f"{out.name}.toml", config_text)
    result = run_cli(run_args(manifest, out, config, simulator.base_url, *extra))
    frame = pl.read_parquet(out / "results.parquet") if (out / "results.parquet").exists() else None
    return result, frame


def test_a_folder_of_mixed_images_runs_to_the_end_with_the_right_rows(simulator, tmp_path):
    """JPEG, PNG, WebP and GIF are captioned; a broken, an empty and a bomb image are image_unreadable rows saying why."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, fmt in [("a.jpg", "JPEG"), ("b.png", "PNG"), ("c.webp", "WEBP"), ("d.gif", "GIF")]:
        Image.new("RGB", (320, 240), (10, 200, 30)).save(folder / name, format=fmt)
    good = (folder / "b.png").read_bytes()
    (folder / "broken.png").write_bytes(good[: len(good) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    Image.new("1", (12000, 12000)).save(folder / "bomb.png", format="PNG")  # 144 MP in 17 KB
    result, frame = _run(simulator, folder, tmp_path / "out")
    assert result.returncode == 1, result.stderr
    by_name = {Path(r["url"]).name: r for r in frame.to_dicts()}
    assert len(by_name) == 7
    for name in ("a.jpg", "b.png", "c.webp", "d.gif"):
        assert by_name[name]["status"] == "ok" and by_name[name]["caption"]
    for name, words in [
        ("broken.png", "broken or truncated"),
        ("empty.jpg", "empty (0 bytes)"),
        ("bomb.png", "decompression bomb"),
    ]:
        row = by_name[name]
        assert (row["status"], row["error_type"]) == ("error", "image_unreadable") and words in row["error_message"]
    assert simulator.app.stats()["requests"] == 4


@pytest.mark.parametrize(
    ("model", "full_tokens", "resized_tokens"), [("gpt-4.1-mini", 2406, 700), ("gpt-4o", 765, 765)]
)
def test_max_side_brings_a_large_image_to_the_resized_figure(simulator, tmp_path, model, full_tokens, resized_tokens):
    """4000x3000 with max_side = 768: the simulator counts the resized 768x576 image. Patch models (gpt-4.1-mini:
    1485 patches x 1.62) drop from 2406 to 700 (432 x 1.62) image tokens; the gpt-4o tile rule already scales a
    4:3 image to 1024x768 (4 tiles, 765), so there resizing saves nothing."""
    Image.new("RGB", (4000, 3000), (120, 40, 40)).save(tmp_path / "big.jpg", format="JPEG")
    manifest = write_csv(tmp_path / "m.csv", [{"id": "big", "url": "big.jpg"}])
    high = FAST_CONFIG + f'\n[request]\ndetail = "high"\nmodel = "{model}"\n'
    _, full = _run(simulator, manifest, tmp_path / "full", high)
    _, small = _run(simulator, manifest, tmp_path / "small", high + "\n[images]\nmax_side = 768\n")
    assert image_tokens(model, detail="high", width=4000, height=3000) == full_tokens
    assert image_tokens(model, detail="high", width=768, height=576) == resized_tokens
    assert full["prompt_tokens"][0] - small["prompt_tokens"][0] == full_tokens - resized_tokens
    estimate = json.loads(
        run_cli(["estimate", str(manifest), "--config", str(tmp_path / "small.toml"), "--json"]).stdout
    )
    assert estimate["max_side_saving_tokens"] == full_tokens - resized_tokens
    assert estimate["input_tokens"] == small["prompt_tokens"][0]


def test_100_rows_naming_10_distinct_images_send_10_requests_and_write_100_rows(simulator, tmp_path):
    """Dedup: one request per distinct image; every id gets the caption; copies cost nothing; the report counts them."""
    rows = [{"id": f"r{i:03d}", "url": f"https://images.example.com/d/{i % 10}.jpg"} for i in range(100)]
    result, frame = _run(simulator, write_csv(tmp_path / "m.csv", rows), tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert simulator.app.stats()["requests"] == 10
    assert frame.height == 100 and (frame["status"] == "ok").all()
    for row in frame.to_dicts():
        assert row["caption"] == caption_for(row["url"])
    copies = frame.filter(pl.col("dedup_of").is_not_null())
    assert copies.height == 90 and copies["cost_usd"].sum() == 0 and (copies["attempts"] == 0).all()
    assert frame["cost_usd"].sum() == pytest.approx(frame.filter(pl.col("dedup_of").is_null())["cost_usd"].sum())
    report = json.loads(run_cli(["report", str(tmp_path / "out"), "--json"]).stdout)
    assert report["dedup_saved_requests"] == 90


def test_dedup_can_be_turned_off(simulator, tmp_path):
    """images.dedup = false sends every row."""
    rows = [{"id": f"r{i}", "url": "https://images.example.com/same.jpg"} for i in range(5)]
    _run(simulator, write_csv(tmp_path / "m.csv", rows), tmp_path / "out", FAST_CONFIG + "\n[images]\ndedup = false\n")
    assert simulator.app.stats()["requests"] == 5


LABELS = """
[request]
prompt = "Label this image."
[request.response_format]
type = "json_schema"
json_schema = { name = "labels", strict = true, schema = { type = "object", additionalProperties = false, required = ["subject", "count", "indoor"], properties = { subject = { type = "string" }, count = { type = "integer" }, indoor = { type = "boolean" } } } }
"""


def test_a_three_property_schema_yields_three_typed_columns(simulator, tmp_path):
    """A labeling config: labels JSON validated; results.parquet gets subject (str), count (i64), indoor (bool)."""
    result, frame = _run(
        simulator, write_csv(tmp_path / "m.csv", remote_rows(12)), tmp_path / "out", FAST_CONFIG + LABELS
    )
    assert result.returncode == 0, result.stderr
    assert (
        frame.schema["subject"] == pl.String()
        and frame["count"].dtype == pl.Int64
        and frame["indoor"].dtype == pl.Boolean
    )
    for row in frame.to_dicts():
        labels = json.loads(row["labels"])
        assert (row["subject"], row["count"], row["indoor"]) == (labels["subject"], labels["count"], labels["indoor"])
    assert frame["subject"].null_count() == 0


def test_an_invalid_structured_reply_is_retried_once_then_an_error(simulator, tmp_path):
    """A reply that is not valid JSON for the schema: asked once more; if it is still wrong, invalid_response."""
    rows = [
        {"id": "once", "url": "https://images.example.com/l/1.jpg?sim=badjsonx1"},
        {"id": "always", "url": "https://images.example.com/l/2.jpg?sim=badjson"},
        {"id": "fine", "url": "https://images.example.com/l/3.jpg"},
    ]
    result, frame = _run(simulator, write_csv(tmp_path / "m.csv", rows), tmp_path / "out", FAST_CONFIG + LABELS)
    by_id = {r["id"]: r for r in frame.to_dicts()}
    assert "once" in by_id, result.stderr
    assert by_id["once"]["status"] == "ok" and by_id["once"]["attempts"] == 2 and by_id["once"]["labels"]
    bad = by_id["always"]
    assert (bad["status"], bad["error_type"], bad["attempts"], bad["retryable"]) == (
        "error",
        "invalid_response",
        2,
        False,
    )
    assert "not JSON" in bad["error_message"] and bad["cost_usd"] > 0  # both answers were paid for
    assert by_id["fine"]["attempts"] == 1 and result.returncode == 1


def test_n_greater_than_one_fills_a_captions_list(simulator, tmp_path):
    """n = 2: caption is the first choice, captions holds both."""
    result, frame = _run(
        simulator, write_csv(tmp_path / "m.csv", remote_rows(3)), tmp_path / "out", FAST_CONFIG + "\n[request]\nn = 2\n"
    )
    row = frame.to_dicts()[0]
    assert len(row["captions"]) == 2 and row["captions"][0] == row["caption"] and row["captions"][1] != row["caption"]


def test_inline_remote_downloads_and_inlines_images(simulator, tmp_path):
    """inline_remote: images are fetched (here from the simulator on loopback) and sent as data URLs sized as they are."""
    host = simulator.base_url.removesuffix("/v1")
    rows = [
        {"id": "big", "url": f"{host}/images/big.png?size=2000x1000"},
        {"id": "text", "url": f"{host}/images/page.png?type=text"},
        {"id": "slow", "url": f"{host}/images/slow.png?delay=6"},
        {"id": "huge", "url": f"{host}/images/huge.png?size=4000x4000"},
    ]
    config = (
        FAST_CONFIG
        + '\n[request]\ndetail = "high"\n[images]\ninline_remote = true\ndownload_timeout_s = 3.0\nmax_bytes = 60000\n'
    )
    result, frame = _run(simulator, write_csv(tmp_path / "m.csv", rows), tmp_path / "out", config)
    by_id = {r["id"]: r for r in frame.to_dicts()}
    assert by_id["big"]["status"] == "ok"
    text_tokens = by_id["big"]["prompt_tokens"] - image_tokens("gpt-4o", detail="high", width=2000, height=1000)
    assert 5 < text_tokens < 30  # the simulator measured the inlined 2000x1000 image
    for rid, words in [
        ("text", "not an image"),
        ("slow", "took longer than 3s"),
        ("huge", "larger than images.max_bytes"),
    ]:
        assert by_id[rid]["error_type"] == "image_unreadable" and words in by_id[rid]["error_message"], by_id[rid]
    assert simulator.app.stats()["requests"] == 1


def test_gateway_extras_reach_the_endpoint_and_ocr_models_are_priced(tmp_path):
    """extra_body passes ocr_model through verbatim; a -ocr model costs its base model plus the OCR model."""
    log = tmp_path / "requests.jsonl"
    app = SimulatorApp(SimConfig(latency_median_s=0.002, log_path=str(log), models=("gpt-3.5-turbo",)))
    with SimulatorServer(app, log_level="critical") as sim:
        config = make_config(
            sim.base_url,
            request={"model": "gpt-3.5-turbo-ocr", "extra_body": {"ocr_model": "gpt-4o-mini"}},
            pricing={"gpt-3.5-turbo": {"input": 0.5, "output": 1.5}},
        )
        _, frame = run_once(config, write_csv(tmp_path / "m.csv", remote_rows(2)), tmp_path / "out")
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(entries) == 2 and all(e.get("ocr_model") == "gpt-4o-mini" for e in entries)
    row = frame.to_dicts()[0]
    base = (row["prompt_tokens"] * 0.5 + row["completion_tokens"] * 1.5) / 1e6
    assert row["cost_usd"] == pytest.approx(base + row["prompt_tokens"] * 0.15 / 1e6)


def test_a_malformed_schema_is_refused_before_sending(simulator, tmp_path):
    """A response_format whose JSON schema is invalid: exit 2 naming request.response_format."""
    bad = (
        FAST_CONFIG
        + '\n[request.response_format]\ntype = "json_schema"\njson_schema = { name = "x", schema = { type = 5 } }\n'
    )
    result, _ = _run(simulator, write_csv(tmp_path / "m.csv", remote_rows(2)), tmp_path / "out", bad)
    assert result.returncode == 2 and "request.response_format" in result.stderr
    assert simulator.app.stats()["requests"] == 0
