"""The drift overview: one self-contained HTML page of drift scores over time per segment, linking to the Evidently
report of each run. Built from `drift_runs` only (no Evidently import, so it is fast on any history)."""

from __future__ import annotations

import html
import os
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from flywheel.config import Settings
from flywheel.warehouse.drift.storage import read_runs

_CSS = """
body{font:14px system-ui,sans-serif;margin:24px;color:#222}h1{font-size:20px}h2{font-size:16px;margin-top:28px}
table{border-collapse:collapse;margin:6px 0 14px}td,th{border:1px solid #ddd;padding:3px 6px;text-align:right}
th{background:#f6f6f6}td.f{text-align:left;font-family:monospace}.k{color:#666;font-size:12px}
td.ok{background:#eef7ee}td.warn{background:#fff3cd}td.bad{background:#f8d7da;font-weight:600}
td.alert{background:#dc3545;color:#fff;font-weight:700}a{color:inherit}svg{vertical-align:middle}
"""


def _cls(score: float, threshold: float, drifted: bool, alert: bool) -> str:
    if alert:
        return "alert"
    if drifted:
        return "bad"
    return "warn" if threshold and score >= 0.5 * threshold else "ok"


def _spark(values: list[float], width: int = 240, height: int = 36) -> str:
    """An inline SVG line of max(score / threshold) per window, with the threshold (1.0) dashed."""
    if not values:
        return ""
    top = max(max(values), 1.5)
    n = len(values)
    pts = " ".join(f"{(i / max(n - 1, 1)) * (width - 4) + 2:.1f},{height - 2 - v / top * (height - 4):.1f}"
                   for i, v in enumerate(values))
    y1 = height - 2 - 1 / top * (height - 4)
    return (f'<svg width="{width}" height="{height}"><line x1="0" x2="{width}" y1="{y1:.1f}" y2="{y1:.1f}" '
            f'stroke="#dc3545" stroke-dasharray="3,3"/><polyline fill="none" stroke="#0d6efd" stroke-width="1.5" '
            f'points="{pts}"/></svg>')


def overview(settings: Settings, last: int = 30) -> str:
    """The HTML page: per segment, a sparkline of its worst feature and a features x windows table of scores."""
    runs = read_runs(settings).to_pylist()
    by_seg: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        by_seg[(r["level"], r["segment"])].append(r)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    out = [f"<!doctype html><meta charset='utf-8'><title>flywheel drift</title><style>{_CSS}</style>",
           "<h1>flywheel drift overview</h1>",
           f"<p class=k>{len(runs)} feature checks in {len({r['run_id'] for r in runs})} runs; generated {now}. "
           "Cells: effect size (method in the row), colored against its threshold; red = alert. "
           "Window headers link to the Evidently report of that run.</p>"]
    if not runs:
        out.append("<p>No drift runs yet: run <code>flywheel drift run</code>.</p>")
    for (level, segment), rows in sorted(by_seg.items(), key=lambda kv: (kv[0][0].count(","), kv[0][1])):
        windows = sorted({(r["window_start"], r["window_end"]) for r in rows})[-last:]
        cells: dict[tuple[str, Any], dict[str, Any]] = {}
        reports: dict[Any, str] = {}
        for r in rows:
            key = (r["feature"], r["window_start"])
            if key not in cells or r["run_at"] > cells[key]["run_at"]:  # a re-run of a window replaces it
                cells[key] = r
            if r["report_path"]:
                reports[r["window_start"]] = r["report_path"]
        features = sorted({r["feature"] for r in rows}, key=lambda f: (cells_kind(rows, f), f))
        worst = [max((c["score"] / c["threshold"] for (f, w), c in cells.items() if w == ws and c["threshold"]),
                     default=0.0) for ws, _ in windows]
        alerts = sum(1 for c in cells.values() if c["alert"])
        out.append(f"<h2>{html.escape(segment)} <span class=k>level {html.escape(level or 'all')}; "
                   f"{alerts} alerts</span> {_spark(worst)}</h2>")
        head = "".join(
            f"<th>{_link(reports.get(ws), ws.strftime('%m-%d %H:%M'), settings)}</th>" for ws, _ in windows)
        out.append(f"<table><tr><th>feature (method, threshold)</th>{head}</tr>")
        for f in features:
            sample = next(c for (ff, _), c in cells.items() if ff == f)
            tds = []
            for ws, _ in windows:
                c = cells.get((f, ws))
                if c is None:
                    tds.append("<td></td>")
                    continue
                title = html.escape(f"{c['before']} -> {c['after']}; p={c['p_value']:.2g}; "
                                    f"n={c['n_reference']}/{c['n_current']}; {c['alert_reason'] or ''}")
                tds.append(f"<td class={_cls(c['score'], c['threshold'], c['drifted'], c['alert'])} "
                           f"title='{title}'>{c['score']:.3g}</td>")
            out.append(f"<tr><td class=f>{html.escape(f)} <span class=k>({sample['drift_kind']}, "
                       f"{sample['method']} {sample['threshold']:g})</span></td>{''.join(tds)}</tr>")
        out.append("</table>")
    return "\n".join(out)


def cells_kind(rows: list[dict[str, Any]], feature: str) -> str:
    return next((r["drift_kind"] for r in rows if r["feature"] == feature), "")


def _link(path: str | None, text: str, settings: Settings) -> str:
    if not path:
        return html.escape(text)
    return f"<a href='{html.escape(Path(path).resolve().as_uri())}'>{html.escape(text)}</a>"


def write_overview(settings: Settings, path: Path, last: int = 30) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(overview(settings, last), encoding="utf-8")
    os.replace(tmp, path)  # readers never see half a page
    return path
