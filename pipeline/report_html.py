"""The report as one self-contained HTML page (``caption report --html``).

Offline-safe by default: the chart is inline SVG with its axes, thumbnails of
local images are inlined as small JPEGs, remote images get a placeholder, and
filtering is a few lines of inline JS. With ``remote_thumbnails`` remote images
are lazy ``<img loading="lazy">`` tags instead: the browser fetches them (from
the image hosts, not from us) as they scroll into view, so the page then needs
the network.
At the top: the run's state (finished / stopped (why) / running, N of M), its
model, prompt and endpoint host; below the chart, each error type with example rows.
"""

from __future__ import annotations

import base64
import html
import io
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl
from PIL import Image, UnidentifiedImageError

from .images import is_data_url, is_remote
from .journal import Journal
from .report import cost_text, load_results

_ERROR_EXAMPLES = 3  # rows shown per error type


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


def _clock(iso: str | None) -> str:
    return datetime.fromisoformat(iso).strftime("%H:%M:%S") if iso else ""


def chart_svg(timeline: list[dict[str, Any]], bucket_s: int, *, width: int = 760, height: int = 220) -> str:
    """Rows finished per bucket (bars, left axis) and median latency (line, right axis), over time."""
    if not timeline:
        return "<p>No timed rows.</p>"
    left, right, top, bottom = 48, 56, 24, 34  # room for the axes' labels
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max(m["rows"] for m in timeline) or 1
    peak_latency = max((m["latency_p50_s"] or 0) for m in timeline) or 1
    bar_w = plot_w / len(timeline)
    base_y = top + plot_h
    bars, points = [], []
    for i, m in enumerate(timeline):
        h = plot_h * m["rows"] / peak
        x = left + i * bar_w
        bars.append(
            f'<rect x="{x:.1f}" y="{base_y - h:.1f}" width="{max(1, bar_w - 2):.1f}" height="{h:.1f}" '
            f'fill="#6c8ebf"><title>{html.escape(m["t"] or "")}: {m["rows"]} rows in {bucket_s} s</title></rect>'
        )
        if m["latency_p50_s"] is not None:
            y = base_y - plot_h * m["latency_p50_s"] / peak_latency
            points.append(f"{x + bar_w / 2:.1f},{y:.1f}")
    line = f'<polyline points="{" ".join(points)}" fill="none" stroke="#d6a100" stroke-width="2"/>' if points else ""
    axis = 'stroke="#444" stroke-width="1"'
    axes = (
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{base_y}" {axis}/>'
        f'<line x1="{left}" y1="{base_y}" x2="{left + plot_w}" y2="{base_y}" {axis}/>'
        f'<line x1="{left + plot_w}" y1="{top}" x2="{left + plot_w}" y2="{base_y}" {axis}/>'
        f'<text x="{left - 4}" y="{top + 4}" font-size="11" text-anchor="end">{peak}</text>'
        f'<text x="{left - 4}" y="{base_y}" font-size="11" text-anchor="end">0</text>'
        f'<text x="{left + plot_w + 4}" y="{top + 4}" font-size="11">{peak_latency:.2f} s</text>'
        f'<text x="{left + plot_w + 4}" y="{base_y}" font-size="11">0 s</text>'
        f'<text x="{left}" y="{base_y + 14}" font-size="11">{_clock(timeline[0]["t"])}</text>'
        f'<text x="{left + plot_w}" y="{base_y + 14}" font-size="11" text-anchor="end">'
        f"{_clock(timeline[-1]['t'])}</text>"
        f'<text x="{left + plot_w / 2}" y="{height - 4}" font-size="11" text-anchor="middle">'
        f"time (UTC), one bar per {bucket_s} s</text>"
        f'<text x="12" y="{top + plot_h / 2}" font-size="11" text-anchor="middle" '
        f'transform="rotate(-90 12 {top + plot_h / 2})">rows per {bucket_s} s</text>'
        f'<text x="{width - 6}" y="{top + plot_h / 2}" font-size="11" text-anchor="middle" '
        f'transform="rotate(90 {width - 6} {top + plot_h / 2})">p50 latency (s)</text>'
    )
    label = f"rows finished per {bucket_s} s (bars) and median latency in seconds (line)"
    return (
        f'<svg viewBox="0 0 {width} {height}" width="100%" height="{height}" role="img" aria-label="{label}">'
        f'{axes}{"".join(bars)}{line}<text x="{left}" y="14" font-size="12">rows per {bucket_s} s '
        f"(bars, max {peak}) and p50 latency (line, max {peak_latency:.2f} s)</text></svg>"
    )


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>caption report: {title}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:24px;color:#222}}
.state{{font-size:18px;padding:8px 12px;border-radius:6px;background:#f4f6fa}}
.state-stopped{{background:#fdf1d8}} .state-running{{background:#e3f0fb}} .state-finished{{background:#e6f4e6}}
.config td{{padding:2px 10px 2px 0;vertical-align:top}} .config td:first-child{{color:#666}}
.cards{{display:flex;flex-wrap:wrap;gap:12px}} .stat{{background:#f4f6fa;padding:10px 14px;border-radius:6px}}
.stat b{{display:block;font-size:20px}}
.errors td,.errors th{{text-align:left;padding:3px 10px 3px 0;font-size:13px;vertical-align:top}}
.gallery{{display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:12px;margin-top:12px}}
.card{{border:1px solid #ddd;border-radius:6px;padding:8px;font-size:13px}}
.card img,.card .ph{{width:100%;height:140px;object-fit:contain;background:#eee;display:flex;align-items:center;justify-content:center;word-break:break-all;font-size:11px;color:#666}}
.status-error{{border-color:#c33}} .status-filtered{{border-color:#d6a100}}
.tag{{display:inline-block;background:#eee;border-radius:3px;padding:0 4px;margin:2px 2px 0 0}}
</style></head><body>
<h1>caption report</h1><p>{title}</p>
{state}
<table class="config">{config}</table>
<div class="cards">{stats}</div>
<h2>Throughput and latency</h2>{chart}
{errors}
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


def _image(url: str, base_dir: Path | None, *, remote_thumbnails: bool) -> str:
    thumb = thumbnail_data_url(url, base_dir=base_dir)
    if thumb:
        return f'<img src="{thumb}" alt="">'
    if remote_thumbnails and is_remote(url):
        return f'<img loading="lazy" src="{html.escape(url)}" alt="{html.escape(url[:120])}">'
    return f'<div class="ph">{html.escape(url[:120])}</div>'


def _card(row: dict[str, Any], base_dir: Path | None, *, remote_thumbnails: bool) -> str:
    image = _image(row["url"] or "", base_dir, remote_thumbnails=remote_thumbnails)
    cats = row["flagged_categories"] or []
    text = (
        row["caption"]
        if row["caption"] is not None
        else f"[{row['error_type'] or 'no caption'}] {row['error_message'] or ''}"
    )
    tags = "".join(f'<span class="tag">{html.escape(c)}</span>' for c in cats)
    status = html.escape(row["status"])
    return (
        f'<div class="card status-{status}" data-status="{status}" '
        f'data-cats="{html.escape(" ".join(cats))}">{image}<div><b>{html.escape(row["id"])}</b> · {status}'
        f"</div><div>{html.escape(text)}</div>{tags}</div>"
    )


def _errors_section(out_dir: Path, summary: dict[str, Any]) -> str:
    """Each error type: how many, and a few example rows (id, image, message)."""
    if not summary["errors"]:
        return ""
    examples = (
        load_results(out_dir, ["id", "url", "status", "error_type", "error_message", "http_status", "retryable"])
        .filter(pl.col("status") == "error")
        .sort("id")
        .group_by("error_type", maintain_order=True)
        .head(_ERROR_EXAMPLES)
        .collect()
        .to_dicts()
    )
    parts = ['<h2>Errors by type</h2><table class="errors">']
    for kind, n in summary["errors"].items():
        parts.append(f'<tr><th colspan="4" id="error-{html.escape(kind)}">{html.escape(kind)}: {n:,} rows</th></tr>')
        for row in (r for r in examples if r["error_type"] == kind):
            retry = "retried by a re-run" if row["retryable"] in (True, None) else "not retried (--retry-errors)"
            parts.append(
                f'<tr class="error-example"><td>{html.escape(row["id"])}</td>'
                f"<td>{html.escape((row['url'] or '')[:80])}</td>"
                f"<td>{html.escape(row['error_message'] or '')}</td><td>{retry}</td></tr>"
            )
    return "".join(parts) + "</table>"


def render_html(
    out_dir: Path, summary: dict[str, Any], *, gallery_limit: int = 1000, remote_thumbnails: bool = False
) -> str:
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
        ("cost", cost_text(summary)),
        ("tokens", f"{summary['prompt_tokens'] + summary['completion_tokens']:,}"),
        ("p50 latency", f"{summary['latency_s']['p50']} s"),
        ("p99 latency", f"{summary['latency_s']['p99']} s"),
        ("throughput", f"{summary['throughput']['rows_per_s']} rows/s"),
    ]
    stats += [(status, f"{n:,}") for status, n in summary["by_status"].items()]
    run = summary.get("run") or {}
    config = run.get("config") or {}
    config_rows = [
        ("model", config.get("model")),
        ("prompt", config.get("prompt")),
        ("endpoint", config.get("endpoint_host")),
    ]
    truncated = (
        f" (the first {gallery_limit:,} of {summary['rows']:,} rows by id)" if summary["rows"] > gallery_limit else ""
    )
    state = run.get("state", "")
    return _PAGE.format(
        title=html.escape(f"{out_dir} · {config.get('model') or ''}"),
        state=f'<p class="state state-{html.escape(state)}" id="state">{html.escape(run.get("headline", ""))}</p>',
        config="".join(f"<tr><td>{k}</td><td>{html.escape(str(v))}</td></tr>" for k, v in config_rows if v is not None),
        stats="".join(f'<div class="stat"><b>{html.escape(v)}</b>{html.escape(k)}</div>' for k, v in stats),
        chart=chart_svg(summary["throughput"]["timeline"], summary["throughput"]["bucket_s"]),
        errors=_errors_section(out_dir, summary),
        status_options="".join(
            f'<option value="{html.escape(s)}">{html.escape(s)}</option>' for s in summary["by_status"]
        ),
        category_options="".join(
            f'<option value="{html.escape(c)}">{html.escape(c)}</option>' for c in summary["flagged_categories"]
        ),
        truncated=html.escape(truncated),
        cards="".join(_card(row, base_dir, remote_thumbnails=remote_thumbnails) for row in rows),
    )
