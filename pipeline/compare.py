"""PURE: the same sample sent to several models, side by side: the table `estimate --models` prints,
its JSON, and a self-contained HTML page with each sampled image beside every model's caption.

The page is for a person choosing the cheapest good-enough model by looking: every
value is escaped, images are data URLs given by the caller (local thumbnails) or,
only when the caller opted in, remote URLs loaded lazily; nothing else leaves the page.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from .config import Config
from .estimate import duration_text, format_estimate, money_text
from .images import is_remote
from .models import Item


class Compared(Protocol):
    """One model's estimate, as ``estimate_run.ModelEstimate`` holds it."""

    @property
    def model(self) -> str: ...
    @property
    def result(self) -> dict[str, Any]: ...
    @property
    def items(self) -> list[Item]: ...
    @property
    def rows(self) -> dict[str, dict[str, Any]]: ...


def _interval(result: Mapping[str, Any]) -> str:
    low, high = result.get("interval_95", [None, None])
    if low is None or high is None:
        return "unpriced"
    return f"{money_text(low)} - {money_text(high)}"


def _sample_text(result: Mapping[str, Any]) -> str:
    sample = result["sample"]
    by_status = sample["by_status"]
    paid = sample["measured_cost_usd"]
    return f"{by_status['ok']} ok, {by_status['filtered']} filtered, {by_status['error']} error; " + (
        "unpriced" if paid is None else f"{money_text(paid)} paid"
    )


def comparison_rows(estimates: Sequence[Compared]) -> list[dict[str, str]]:
    """PURE: one row of text per model: full-run cost, its 95% interval, duration, what the sample did."""
    return [
        {
            "model": e.model,
            "cost": money_text(e.result["cost_usd"]["expected"]),
            "interval": _interval(e.result),
            "duration": duration_text(e.result["duration_s"]),
            "sample": _sample_text(e.result),
        }
        for e in estimates
    ]


def format_comparison(estimates: Sequence[Compared], *, html_path: str | None = None) -> str:
    """PURE: the table `caption estimate --models` prints (the cheapest model first is the caller's order)."""
    first = estimates[0].result
    header = {"model": "model", "cost": "full run", "interval": "95% interval", "duration": "duration"}
    rows = [header | {"sample": "sample"}, *comparison_rows(estimates)]
    widths = {k: max(len(r[k]) for r in rows) for k in header}
    lines = [
        f"rows {first['rows']:,} ({first['requests']:,} requests after dedup); "
        f"the same {first['sample']['rows']} sampled rows sent to each model"
    ]
    lines += ["  ".join([*(r[k].ljust(widths[k]) for k in header), r["sample"]]).rstrip() for r in rows]
    # Each folder by its real name: a model name is made safe for a folder (openai/gpt-4o → openai_gpt-4o).
    kept = [(e.model, e.result["sample"]["kept_in"]) for e in estimates if e.result["sample"].get("kept_in")]
    if kept:
        lines.append("samples kept: a full run with the same --model and --out does not send those rows again")
        lines += [f"  caption run ... --model {model} --out {folder}" for model, folder in kept]
    if html_path:
        lines.append(f"captions side by side: {html_path}")
    return "\n".join(lines)


def comparison_json(estimates: Sequence[Compared]) -> dict[str, Any]:
    """PURE: `--json` with --models: the sampled ids and each model's estimate object."""
    return {
        "rows": estimates[0].result["rows"],
        "sample_ids": [item.id for item in estimates[0].items],
        "models": [e.result for e in estimates],
    }


def estimate_output(
    estimates: Sequence[Compared],
    config: Config,
    *,
    compared: bool,
    as_json: bool,
    html: Path | None,
    not_estimated: Mapping[str, str] | None = None,
) -> str:
    """PURE: what `caption estimate` prints: one model's table or JSON, or the comparison's.

    ``not_estimated``: each model whose sample stopped, and why (the CLI also says it on stderr);
    in the comparison's JSON, so a script sees which of its models are missing.
    """
    page = str(html) if html is not None else None
    if not compared:
        result = estimates[0].result
        return json.dumps(result, indent=2) if as_json else format_estimate(result, config)
    if as_json:
        extra = {"html": page, "not_estimated": dict(not_estimated or {})}
        return json.dumps(comparison_json(estimates) | extra, indent=2)
    return format_comparison(estimates, html_path=page)


def _caption_cell(row: Mapping[str, Any] | None) -> str:
    if row is None:
        return '<td class="missing">not sent</td>'
    status = str(row.get("status") or "")
    if row.get("caption") is not None:
        text = str(row["caption"])
    else:
        text = f"[{row.get('error_type') or 'no caption'}] {row.get('error_message') or ''}"
    # One request costs fractions of a cent: four decimals would show cheap models as $0.0000.
    cost = "unpriced" if row.get("cost_usd") is None else f"${row['cost_usd']:.6f}"
    return (
        f'<td class="cap status-{html.escape(status)}"><div>{html.escape(text)}</div>'
        f"<small>{html.escape(status)} · {html.escape(cost)} · "
        f"{html.escape(str(row.get('completion_tokens') or 0))} tokens</small></td>"
    )


def _image_cell(item: Item, src: str | None) -> str:
    if src is None:
        return f'<td class="img"><div class="ph">{html.escape(item.url[:160])}</div></td>'
    # Remote sources (opt-in) load lazily and send no referrer; data URLs are inline.
    return (
        f'<td class="img"><img src="{html.escape(src)}" alt="{html.escape(item.id)}" '
        f'loading="lazy" referrerpolicy="no-referrer"><div class="id">{html.escape(item.id)}</div></td>'
    )


def render_comparison_html(estimates: Sequence[Compared], *, images: Mapping[str, str | None], title: str) -> str:
    """PURE: the page: the cost table, then one table row per sampled image with every model's caption.

    ``images`` maps an item id to the image's ``src`` (a data URL, or a remote URL when opted in), or None
    for a placeholder naming the image.
    """
    summary_rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(r[k])}</td>" for k in ("model", "cost", "interval", "duration", "sample"))
        for r in comparison_rows(estimates)
    )
    heads = "".join(f"<th>{html.escape(e.model)}</th>" for e in estimates)
    body = "".join(
        f'<tr class="sample">{_image_cell(item, images.get(item.id))}'
        + "".join(_caption_cell(e.rows.get(item.id)) for e in estimates)
        + "</tr>"
        for item in estimates[0].items
    )
    hidden = sum(1 for item in estimates[0].items if images.get(item.id) is None and is_remote(item.url))
    note = (
        f"<p>{hidden} remote images are named, not shown, so the page loads nothing from the network: "
        "add --remote-thumbnails to show them.</p>"
        if hidden
        else ""
    )
    return _PAGE.format(
        title=html.escape(title),
        note=note,
        count=len(estimates[0].items),
        models=len(estimates),
        summary=summary_rows,
        heads=heads,
        body=body,
    )


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data: http: https:; style-src 'unsafe-inline'">
<title>{title}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }}
table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #ddd; padding: 6px 8px; vertical-align: top; text-align: left; }}
th {{ background: #f4f4f4; }}
.side td.cap {{ width: 280px; }}
.img img {{ max-width: 160px; max-height: 160px; display: block; }}
.ph {{ width: 160px; height: 100px; background: #eee; font-size: 11px; overflow: hidden; word-break: break-all; }}
.id {{ font-size: 11px; color: #666; }}
small {{ color: #666; }}
.status-error {{ background: #fff2f2; }}
.status-filtered {{ background: #fff8e6; }}
</style></head><body>
<h1>{title}</h1>
<p>The same {count} sampled images sent to each of {models} models: pick the cheapest whose captions are good enough.</p>
<table class="costs"><tr><th>model</th><th>full run</th><th>95% interval</th><th>duration</th><th>sample</th></tr>
{summary}</table>
<h2>Captions side by side</h2>
{note}
<table class="side"><tr><th>image</th>{heads}</tr>
{body}</table>
</body></html>
"""
