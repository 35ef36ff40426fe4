"""`caption estimate`: the formula (nothing sent), probing, and the sample with its 95% interval."""

from __future__ import annotations

import json
import random

import polars as pl
import pytest
from PIL import Image

from pipeline.config import build_config
from pipeline.estimate import FormulaTotals, format_estimate, row_formula, summarise
from pipeline.estimate_sample import Reservoir, SampledRow, Stratum, extrapolate, sampled_row
from pipeline.models import Item
from pipeline.tokens import TextCounter, image_tokens
from tests.conftest import run_args, run_cli, write_config, write_csv

SIZES = [(300, 200), (1024, 768), (2000, 1500), (4000, 3000), (640, 640), (800, 1600), (3000, 1000)]


def make_images(folder, count):
    folder.mkdir(exist_ok=True)
    names = []
    for i in range(count):
        w, h = SIZES[i % len(SIZES)]
        name = f"img{i:03d}.png"
        Image.new("RGB", (w, h), (i * 37 % 256, 90, 160)).save(folder / name, format="PNG", optimize=False)
        names.append(f"images/{name}")
    return names


def test_row_formula_uses_the_real_size_and_bounds_unknown_ones():
    """Known size: exact tile tokens; unknown: 512x512 low, 1024x1024 expected, the worst tiling high; max_side saving."""
    config = build_config({"request": {"detail": "high"}, "images": {"max_side": 768}})
    counter = TextCounter()
    known = row_formula(Item("a", "x.png"), config=config, counter=counter, size=(4000, 3000))
    text = known.prompt_expected - image_tokens("gpt-4o", detail="high", width=768, height=576)
    assert known.prompt_low == known.prompt_expected == known.prompt_high and known.size_known
    assert known.resize_saving == image_tokens("gpt-4o", width=4000, height=3000) - image_tokens(
        "gpt-4o", width=768, height=576
    )
    unknown = row_formula(Item("b", "https://x/b.jpg"), config=config, counter=counter, size=None)
    assert (
        unknown.prompt_low == text + 255
        and unknown.prompt_expected == text + 765
        and unknown.prompt_high > unknown.prompt_expected
    )


def test_extrapolation_covers_the_truth_for_a_skewed_population():
    """Rows of very different input sizes and a noisy output: the 95% interval from 50 rows covers the true total
    in most draws, and the point estimate is close."""
    rng = random.Random(3)
    formula_in = [rng.choice([1.0, 2.0, 5.0, 12.0]) for _ in range(1000)]
    actual_in = [f * rng.uniform(0.9, 1.1) for f in formula_in]
    actual_out = [rng.uniform(0.2, 0.8) for _ in range(1000)]
    truth = sum(actual_in) + sum(actual_out)
    covered = 0
    for trial in range(100):
        idx = random.Random(trial).sample(range(1000), 50)
        rows = [SampledRow(formula_in[i], actual_in[i], actual_out[i]) for i in idx]
        point, low, high = extrapolate([Stratum(rows, sum(formula_in), 1000)], rng=random.Random(trial), resamples=500)
        covered += low <= truth <= high
        assert abs(point - truth) / truth < 0.05
    assert covered >= 88


def test_strata_are_estimated_apart_and_an_unsampled_stratum_borrows_the_pooled_figures():
    """Known-size rows (exact input) and unknown-size rows (a guessed input) get their own ratios; output is a mean."""
    exact = Stratum([SampledRow(1.0, 1.0, 0.5)] * 10, 500.0, 500)
    guessed = Stratum([SampledRow(1.0, 3.0, 0.5)] * 10, 500.0, 500)
    point, low, high = extrapolate([exact, guessed], rng=random.Random(0), resamples=200)
    assert point == pytest.approx(500 * 1.0 + 500 * 0.5 + 500 * 3.0 + 500 * 0.5) and low == pytest.approx(point) == high
    point, _, _ = extrapolate([exact, Stratum([], 100.0, 100)], rng=random.Random(0), resamples=50)
    assert point == pytest.approx(500 * 1.0 + 500 * 0.5 + 100 * 1.0 + 100 * 0.5)


def test_reservoir_is_uniform_enough():
    """Every position of the stream is about equally likely to be sampled."""
    hits = [0] * 10
    for seed in range(2000):
        reservoir = Reservoir(k=2, rng=random.Random(seed))
        for i in range(10):
            reservoir.offer(Item(str(i), ""), None)  # type: ignore[arg-type]
        for item, _ in reservoir.items:
            hits[int(item.id)] += 1
    assert min(hits) > 300 and max(hits) < 500


def test_summary_has_the_spec_keys():
    """--json carries rows, input_tokens, output_tokens, cost_usd {low, expected, high} and duration_s."""
    config = build_config({"limits": {"rpm": 600, "tpm": None}})
    totals = FormulaTotals(rows=600, known_sizes=600, input_low=60000, input_expected=60000, input_high=60000)
    result = summarise(config, totals, average_output=40)
    assert set(result) >= {"rows", "input_tokens", "output_tokens", "cost_usd", "duration_s"}
    assert result["output_tokens"] == 600 * 40 and result["duration_s"] == 60.0
    assert result["cost_usd"]["low"] <= result["cost_usd"]["expected"] <= result["cost_usd"]["high"]


def test_formula_matches_the_simulators_counted_tokens_for_inlined_images(simulator, tmp_path):
    """Inlined images of known size: the estimate's input tokens equal what the simulator counted (target: within 2%)."""
    rows = [
        {"id": f"r{i}", "url": u, "topic": "animals" if i % 2 else "a long topic " * (i % 5)}
        for i, u in enumerate(make_images(tmp_path / "images", 21))
    ]
    manifest = write_csv(tmp_path / "m.csv", rows)
    config = write_config(
        tmp_path / "c.toml",
        '[request]\ndetail = "high"\nprompt = "Describe {topic}."\n'
        "[limits]\nrpm = 60000\ntpm = 100000000\nconcurrency = 8\n",
    )
    est = run_cli(["estimate", str(manifest), "--config", str(config), "--json"])
    assert est.returncode == 0, est.stderr
    estimate = json.loads(est.stdout)
    assert estimate["images_with_known_size"] == 21 and simulator.app.stats()["requests"] == 0
    run = run_cli(run_args(manifest, tmp_path / "out", config, simulator.base_url))
    assert run.returncode == 0, run.stderr
    counted = pl.read_parquet(tmp_path / "out" / "results.parquet")["prompt_tokens"].sum()
    assert counted == simulator.app.stats()["prompt_tokens"]
    assert abs(estimate["input_tokens"] - counted) / counted <= 0.02
    assert estimate["input_tokens"] == counted


def test_probe_reads_remote_sizes_from_the_first_bytes(simulator, tmp_path):
    """--probe learns remote images' sizes (served by the simulator on loopback) and prices them exactly."""
    host = simulator.base_url.removesuffix("/v1")
    rows = [{"id": f"p{i}", "url": f"{host}/images/p{i}.png?size={w}x{h}"} for i, (w, h) in enumerate(SIZES)]
    manifest = write_csv(tmp_path / "m.csv", rows)
    config = write_config(tmp_path / "c.toml", '[request]\ndetail = "high"\n')
    blind = json.loads(run_cli(["estimate", str(manifest), "--config", str(config), "--json"]).stdout)
    probed = json.loads(run_cli(["estimate", str(manifest), "--config", str(config), "--json", "--probe"]).stdout)
    assert blind["images_with_known_size"] == 0 and probed["images_with_known_size"] == len(SIZES)
    expected_images = sum(image_tokens("gpt-4o", detail="high", width=w, height=h) for w, h in SIZES)
    assert probed["input_tokens"] - blind["input_tokens"] == expected_images - 765 * len(SIZES)
    assert probed["input_tokens_range"][0] == probed["input_tokens_range"][1]


@pytest.mark.slow
def test_sample_of_50_predicts_the_full_run_of_1000(simulator, tmp_path):
    """--sample 50 --probe on 1,000 mixed rows: the full run's actual cost is inside the 95% interval, the point
    within 5%; the sampled rows, kept in --out, are not sent again; duplicate requests are priced once."""
    local = make_images(tmp_path / "images", 14)
    host = simulator.base_url.removesuffix("/v1")
    rng = random.Random(5)
    rows = []
    for i in range(1000):
        if i % 3 == 0:
            url = local[i % len(local)]
        else:
            w, h = rng.choice(SIZES)
            url = f"{host}/images/s{i}.png?size={w}x{h}"
        rows.append({"id": f"s{i:04d}", "url": url, "note": "x" * rng.randint(0, 120)})
    manifest = write_csv(tmp_path / "m.csv", rows)
    config = write_config(
        tmp_path / "c.toml",
        '[request]\ndetail = "high"\nprompt = "Caption it. Context: {note}"\n'
        "[limits]\nrpm = 60000\ntpm = 100000000\nconcurrency = 16\n",
    )
    out = tmp_path / "out"
    est = run_cli(
        [
            "estimate",
            str(manifest),
            "--config",
            str(config),
            "--sample",
            "50",
            "--out",
            str(out),
            "--base-url",
            simulator.base_url,
            "--json",
            "--seed",
            "1",
            "--probe",
        ]
    )
    assert est.returncode == 0, est.stderr
    estimate = json.loads(est.stdout)
    assert simulator.app.stats()["requests"] == 50 and estimate["images_with_known_size"] == estimate["requests"]
    distinct = len({(r["url"], r["note"]) for r in rows})
    assert estimate["requests"] == distinct and estimate["duplicates"] == 1000 - distinct > 0
    run = run_cli(run_args(manifest, out, config, simulator.base_url))
    assert run.returncode == 0, run.stderr
    assert simulator.app.stats()["requests"] == distinct
    actual = pl.read_parquet(out / "results.parquet")["cost_usd"].sum()
    low, high = estimate["interval_95"]
    assert low <= actual <= high, (low, actual, high)
    assert abs(estimate["cost_usd"]["expected"] - actual) / actual <= 0.05


def test_the_table_says_cost_duration_and_assumptions(tmp_path):
    """Without --json: a short table with rows, cost low/expected/high, duration and the stated assumptions."""
    manifest = write_csv(
        tmp_path / "m.csv", [{"id": f"r{i}", "url": f"https://images.example.com/{i}.jpg"} for i in range(30)]
    )
    out = run_cli(["estimate", str(manifest)]).stdout
    for words in (
        "rows               30 (30 requests after dedup",
        "cost               $",
        "expected (low $",
        "duration",
        "assumption         30 images of unknown size",
    ):
        assert words in out, out


def test_a_sampled_row_is_priced_with_its_cached_tokens_like_a_run_row():
    """A sampled row's input is billed by cost.row_cost_usd: cached prompt tokens at the cached price."""
    config = build_config({})
    formula = row_formula(Item("a", "x.png"), config=config, counter=TextCounter(), size=(512, 512))
    row = {"model": "gpt-4o-2024-08-06", "prompt_tokens": 101, "cached_tokens": 64, "completion_tokens": 20}
    sampled = sampled_row(config, row, formula)
    price = config.pricing["gpt-4o"]
    assert sampled.input_usd == pytest.approx((37 * price.input + 64 * price.cached_input) / 1e6)
    assert sampled.output_usd == pytest.approx(20 * price.output / 1e6)


def test_sample_prices_cached_tokens_and_its_interval_covers_the_actual_run(simulator, tmp_path):
    """On answers with 63% of the prompt cached, --sample's interval contains the full run's actual cost and
    the point is within 5% of it (the plain input price would put it ~+30% off, outside the interval)."""
    simulator.app.update(cached_share=0.63)
    local = make_images(tmp_path / "images", 7)
    rng = random.Random(11)
    rows = [{"id": f"c{i:03d}", "url": local[i % 7], "note": "y" * rng.randint(0, 80)} for i in range(120)]
    manifest = write_csv(tmp_path / "m.csv", rows)
    config = write_config(
        tmp_path / "c.toml",
        '[request]\ndetail = "high"\nprompt = "Caption it. {note}"\n[limits]\nrpm = 60000\ntpm = 100000000\n',
    )
    out = tmp_path / "out"
    args = ["estimate", str(manifest), "--config", str(config), "--sample", "30", "--out", str(out)]
    est = run_cli([*args, "--base-url", simulator.base_url, "--json", "--seed", "2"])
    assert est.returncode == 0, est.stderr
    estimate = json.loads(est.stdout)
    run = run_cli(run_args(manifest, out, config, simulator.base_url))
    assert run.returncode == 0, run.stderr
    results = pl.read_parquet(out / "results.parquet")
    assert (results["cached_tokens"] > 0).all()
    actual = results["cost_usd"].sum()
    low, high = estimate["interval_95"]
    assert low <= actual <= high, (low, actual, high)
    assert abs(estimate["cost_usd"]["expected"] - actual) / actual <= 0.05


def test_an_unpriced_model_says_unpriced_not_zero_dollars():
    """A model the pricing table does not know: the table says 'unpriced' and how to price it, never $."""
    config = build_config({"request": {"model": "my-model"}})
    totals = FormulaTotals(rows=10, known_sizes=10, input_low=1000, input_expected=1000, input_high=1000)
    text = format_estimate(summarise(config, totals, average_output=40), config)
    assert "cost               unpriced (no price for model 'my-model' in the pricing table)" in text
    assert "$" not in text


def test_a_kept_sample_keeps_what_the_folder_said_about_its_run():
    """PURE: the runner wrote run.json as if the sample were the manifest; a folder that had a run.json gets
    its run's status, rows and last run back, and keeps the sample's working time."""
    from pipeline.run_meta import sample_meta

    previous = {
        "status": "stopped",
        "rows_in_manifest": 40,
        "last_run": {"stopped_by": "BudgetExceededError", "rows_in_manifest": 40},
        "manifest": "m.csv",
        "active_s": 2.0,
    }
    written = {"status": "finished", "rows_in_manifest": 3, "last_run": {"stopped_by": None}, "active_s": 2.5}
    meta = sample_meta(previous, written | {"manifest": "other.csv"}, rows_in_manifest=99)
    assert meta == previous | {"active_s": 2.5}


def test_a_sample_kept_in_a_new_folder_says_how_much_of_the_manifest_is_left(simulator, tmp_path):
    """`estimate --sample 3 --out NEW`: the folder is not a finished run of 3 rows but 3 of the manifest's 12
    done; the report says stopped, why, and 9 left, and a run with the same --out sends only those 9."""
    from pipeline.run_meta import SAMPLE_ONLY
    from tests.conftest import FAST_CONFIG, remote_rows

    config = write_config(tmp_path / "c.toml", FAST_CONFIG)
    manifest, out = write_csv(tmp_path / "m.csv", remote_rows(12)), tmp_path / "out"
    argv = ["estimate", str(manifest), "--config", str(config), "--base-url", simulator.base_url]
    assert run_cli([*argv, "--sample", "3", "--out", str(out)]).returncode == 0
    report = json.loads(run_cli(["report", str(out), "--json"]).stdout)
    assert report["state"] == "stopped" and report["run"]["stop_reason"] == SAMPLE_ONLY
    assert report["run"]["rows_in_manifest"] == 12 and report["rows_left"] == 9, report["run"]["headline"]
    assert run_cli(run_args(manifest, out, config, simulator.base_url)).returncode == 0
    assert simulator.app.stats()["requests"] == 12
    assert json.loads(run_cli(["report", str(out), "--json"]).stdout)["state"] == "finished"
