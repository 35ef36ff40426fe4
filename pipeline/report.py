"""What a run did: the summary (`caption report --json`), its table, and a self-contained HTML page.

Aggregates are lazy polars queries over only the columns they need, so a
results file of a million rows is summarised in seconds and a few hundred MB.
The HTML page needs no network: the chart is inline SVG, thumbnails of local
images are inlined as small JPEGs (remote images get a placeholder: fetching
them would break "no network"), and filtering is a few lines of inline JS.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import polars as pl
import pyarrow as pa
from PIL import Image, UnidentifiedImageError

from .errors import FolderChangedError
from .images import is_data_url, is_remote
from .journal import Journal

T = TypeVar("T")
# A report on a live run can list a part the run merges away before it is read: read again.
_READ_ATTEMPTS = 5
_SUMMARY_COLUMNS = [
    "id",
    "status",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "latency_s",
    "flagged_categories",
    "error_type",
    "finished_at",
    "attempts",
    "dedup_of",
]


def load_results(out_dir: Path, columns: list[str] | None = None) -> pl.LazyFrame:
    """The latest row per id: results.parquet, plus any parts a running or killed run left."""
    return Journal.reader(out_dir).scan(columns)


def summarise(frame: pl.LazyFrame) -> dict[str, Any]:
    """PURE (given a frame): counts, tokens, cost, latency percentiles, throughput, flags and errors."""
    totals = (
        frame.select(
            pl.len().alias("rows"),
            pl.col("prompt_tokens").sum().alias("prompt_tokens"),
            pl.col("completion_tokens").sum().alias("completion_tokens"),
            pl.col("cost_usd").sum().alias("cost_usd"),
            pl.col("attempts").sum().alias("requests"),
            pl.col("dedup_of").is_not_null().sum().alias("dedup_saved"),
            pl.col("latency_s").quantile(0.5, "linear").alias("p50"),
            pl.col("latency_s").quantile(0.9, "linear").alias("p90"),
            pl.col("latency_s").quantile(0.99, "linear").alias("p99"),
            pl.col("finished_at").min().alias("first"),
            pl.col("finished_at").max().alias("last"),
        )
        .collect()
        .row(0, named=True)
    )
    by_status = _counts(frame, "status")
    errors = _counts(frame.filter(pl.col("status") == "error"), "error_type")
    flagged = _counts(frame.select(pl.col("flagged_categories").explode()).drop_nulls(), "flagged_categories")
    span_s = (totals["last"] - totals["first"]).total_seconds() if totals["first"] and totals["last"] else 0.0
    bucket_s = timeline_bucket_s(span_s)
    timeline = (
        frame.drop_nulls("finished_at")
        .group_by(pl.col("finished_at").dt.truncate(f"{bucket_s}s").alias("t"))
        .agg(pl.len().alias("rows"), pl.col("latency_s").median().alias("latency_p50_s"))
        .sort("t")
        .collect()
    )

    def rounded(value: float | None, digits: int = 3) -> float | None:
        return None if value is None else round(value, digits)

    return {
        "rows": totals["rows"],
        "by_status": by_status,
        "requests": totals["requests"] or 0,
        "dedup_saved_requests": totals["dedup_saved"] or 0,
        "prompt_tokens": totals["prompt_tokens"] or 0,
        "completion_tokens": totals["completion_tokens"] or 0,
        "cost_usd": round(totals["cost_usd"] or 0.0, 6),
        "latency_s": {"p50": rounded(totals["p50"]), "p90": rounded(totals["p90"]), "p99": rounded(totals["p99"])},
        "throughput": {
            "first_finished_at": _iso(totals["first"]),
            "last_finished_at": _iso(totals["last"]),
            "rows_per_s": round(totals["rows"] / span_s, 3) if span_s > 0 else None,
            "bucket_s": bucket_s,
            "timeline": [
                {"t": _iso(t), "rows": n, "latency_p50_s": rounded(lat)} for t, n, lat in timeline.iter_rows()
            ],
        },
        "flagged_categories": flagged,
        "errors": errors,
    }


_BUCKETS_S = (1, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400)


def timeline_bucket_s(span_s: float, *, max_buckets: int = 120) -> int:
    """The finest bucket that shows the run in at most ``max_buckets`` bars."""
    return next((b for b in _BUCKETS_S if span_s / b <= max_buckets), _BUCKETS_S[-1])


def _counts(frame: pl.LazyFrame, column: str) -> dict[str, int]:
    counted = frame.group_by(column).agg(pl.len().alias("n")).sort(["n", column], descending=[True, False]).collect()
    return {str(key): n for key, n in counted.iter_rows() if key is not None}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def format_table(summary: dict[str, Any]) -> str:
    lat = summary["latency_s"]
    lines = [
        f"rows          {summary['rows']:,}",
        "status        " + ", ".join(f"{k} {v:,}" for k, v in summary["by_status"].items()),
        f"requests      {summary['requests']:,} ({summary['dedup_saved_requests']:,} saved by dedup)",
        f"tokens        {summary['prompt_tokens']:,} prompt + {summary['completion_tokens']:,} completion",
        f"cost          ${summary['cost_usd']:,.4f}",
        f"latency       p50 {lat['p50']} s, p90 {lat['p90']} s, p99 {lat['p99']} s",
        f"throughput    {summary['throughput']['rows_per_s']} rows/s",
    ]
    if summary["flagged_categories"]:
        lines.append("flagged       " + ", ".join(f"{k} {v:,}" for k, v in summary["flagged_categories"].items()))
    if summary["errors"]:
        lines.append("errors        " + ", ".join(f"{k} {v:,}" for k, v in summary["errors"].items()))
    return "\n".join(lines)


# -- HTML ----------------------------------------------------------------------------


def thumbnail_data_url(url: str, *, base_dir: Path | None, side: int = 160) -> str | None:
    """A small inline JPEG of a local image, or None (remote, shortened data URL, unreadable)."""
    if is_remote(url) or is_data_url(url) or not url:
        return None
    path = Path(url.removeprefix("file://"))
    if not path.is_absolute():
        if base_dir is None:
            return None
        path = base_dir / path
    try:
        with Image.open(path) as im:
            if im.width * im.height > 50_000_000:
                return None
            im.thumbnail((side, side))
            out = io.BytesIO()
            im.convert("RGB").save(out, format="JPEG", quality=80)
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode()


def _chart_svg(timeline: list[dict[str, Any]], bucket_s: int, *, width: int = 760, height: int = 180) -> str:
    if not timeline:
        return "<p>No timed rows.</p>"
    peak = max(m["rows"] for m in timeline) or 1
    peak_latency = max((m["latency_p50_s"] or 0) for m in timeline) or 1
    bar_w = width / len(timeline)
    bars, points = [], []
    for i, m in enumerate(timeline):
        h = (height - 20) * m["rows"] / peak
        bars.append(
            f'<rect x="{i * bar_w:.1f}" y="{height - h:.1f}" width="{max(1, bar_w - 2):.1f}" height="{h:.1f}" '
            f'fill="#6c8ebf"><title>{html.escape(m["t"] or "")}: {m["rows"]} rows</title></rect>'
        )
        if m["latency_p50_s"] is not None:
            y = height - (height - 20) * m["latency_p50_s"] / peak_latency
            points.append(f"{i * bar_w + bar_w / 2:.1f},{y:.1f}")
    line = f'<polyline points="{" ".join(points)}" fill="none" stroke="#d6a100" stroke-width="2"/>' if points else ""
    return (
        f'<svg viewBox="0 0 {width} {height}" width="100%" height="{height}" role="img" '
        f'aria-label="rows per minute and median latency">{"".join(bars)}{line}'
        f'<text x="4" y="14" font-size="12">rows per {bucket_s} s (bars, max {peak}) and p50 latency '
        f"(line, max {peak_latency:.2f} s)</text></svg>"
    )


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>caption report: {title}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:24px;color:#222}}
.cards{{display:flex;flex-wrap:wrap;gap:12px}} .stat{{background:#f4f6fa;padding:10px 14px;border-radius:6px}}
.stat b{{display:block;font-size:20px}}
.gallery{{display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:12px;margin-top:12px}}
.card{{border:1px solid #ddd;border-radius:6px;padding:8px;font-size:13px}}
.card img,.card .ph{{width:100%;height:140px;object-fit:contain;background:#eee;display:flex;align-items:center;justify-content:center;word-break:break-all;font-size:11px;color:#666}}
.status-error{{border-color:#c33}} .status-filtered{{border-color:#d6a100}}
.tag{{display:inline-block;background:#eee;border-radius:3px;padding:0 4px;margin:2px 2px 0 0}}
</style></head><body>
<h1>caption report</h1><p>{title}</p>
<div class="cards">{stats}</div>
<h2>Throughput and latency</h2>{chart}
<h2>Rows</h2>
<label>status <select id="f-status"><option value="">all</option>{status_options}</select></label>
<label>flagged <select id="f-cat"><option value="">all</option>{category_options}</select></label>
<span id="shown"></span>{truncated}
<div class="gallery" id="gallery">{cards}</div>
<script>
function apply(){{var s=document.getElementById('f-status').value,c=document.getElementById('f-cat').value,n=0;
document.querySelectorAll('.card').forEach(function(el){{var ok=(!s||el.dataset.status===s)&&(!c||(' '+el.dataset.cats+' ').indexOf(' '+c+' ')>=0);
el.style.display=ok?'':'none';n+=ok?1:0;}});document.getElementById('shown').textContent=' showing '+n;}}
document.getElementById('f-status').onchange=apply;document.getElementById('f-cat').onchange=apply;apply();
</script></body></html>
"""


def _card(row: dict[str, Any], base_dir: Path | None) -> str:
    thumb = thumbnail_data_url(row["url"] or "", base_dir=base_dir)
    image = f'<img src="{thumb}" alt="">' if thumb else f'<div class="ph">{html.escape((row["url"] or "")[:120])}</div>'
    cats = row["flagged_categories"] or []
    text = (
        row["caption"]
        if row["caption"] is not None
        else f"[{row['error_type'] or 'no caption'}] {row['error_message'] or ''}"
    )
    tags = "".join(f'<span class="tag">{html.escape(c)}</span>' for c in cats)
    return (
        f'<div class="card status-{html.escape(row["status"])}" data-status="{html.escape(row["status"])}" '
        f'data-cats="{html.escape(" ".join(cats))}">{image}<div><b>{html.escape(row["id"])}</b> · {html.escape(row["status"])}'
        f"</div><div>{html.escape(text)}</div>{tags}</div>"
    )


def render_html(out_dir: Path, summary: dict[str, Any], *, gallery_limit: int = 1000) -> str:
    meta = Journal.reader(out_dir).read_meta() or {}
    base_dir = Path(meta["base_dir"]) if meta.get("base_dir") else None
    rows = (
        load_results(out_dir, ["id", "url", "status", "caption", "error_type", "error_message", "flagged_categories"])
        .sort("id")
        .head(gallery_limit)
        .collect()
        .to_dicts()
    )
    stats = [
        ("rows", f"{summary['rows']:,}"),
        ("cost", f"${summary['cost_usd']:,.4f}"),
        ("tokens", f"{summary['prompt_tokens'] + summary['completion_tokens']:,}"),
        ("p50 latency", f"{summary['latency_s']['p50']} s"),
        ("p99 latency", f"{summary['latency_s']['p99']} s"),
    ]
    stats += [(status, f"{n:,}") for status, n in summary["by_status"].items()]
    stats += [(f"error: {kind}", f"{n:,}") for kind, n in summary["errors"].items()]
    truncated = (
        f" (the first {gallery_limit:,} of {summary['rows']:,} rows by id)" if summary["rows"] > gallery_limit else ""
    )
    return _PAGE.format(
        title=html.escape(f"{out_dir} · {meta.get('request', {}).get('model', '')}"),
        stats="".join(f'<div class="stat"><b>{html.escape(v)}</b>{html.escape(k)}</div>' for k, v in stats),
        chart=_chart_svg(summary["throughput"]["timeline"], summary["throughput"]["bucket_s"]),
        status_options="".join(
            f'<option value="{html.escape(s)}">{html.escape(s)}</option>' for s in summary["by_status"]
        ),
        category_options="".join(
            f'<option value="{html.escape(c)}">{html.escape(c)}</option>' for c in summary["flagged_categories"]
        ),
        truncated=html.escape(truncated),
        cards="".join(_card(row, base_dir) for row in rows),
    )


def report(out_dir: Path) -> dict[str, Any]:
    return reading(out_dir, lambda: summarise(load_results(out_dir, _SUMMARY_COLUMNS)))


def reading(out_dir: Path, read: Callable[[], T]) -> T:
    """``read()`` with a damaged file of the folder named in a one-line error, not a traceback."""
    for attempt in range(_READ_ATTEMPTS):
        folder = Journal.reader(out_dir)
        try:
            folder.check_files()
            return read()
        except FolderChangedError:
            if attempt == _READ_ATTEMPTS - 1:
                raise
        except FileNotFoundError:  # listed, then merged away by the live run before it was read
            if attempt == _READ_ATTEMPTS - 1:
                raise FolderChangedError(f"{out_dir} keeps changing while being read; try again") from None
        except (pl.exceptions.PolarsError, pa.ArrowException, OSError) as exc:
            raise folder.explain(exc, doing="cannot read the results") from None
    raise AssertionError("unreachable")


def to_json(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=2)
