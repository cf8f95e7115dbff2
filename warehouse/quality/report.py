"""Readable output of a quality run: a self-contained HTML page (no scripts, no network) and a plain-text summary.

The HTML is our own rather than GX data docs: data docs need a file-backed GX project and render one validation
per page, while a run here covers several suites over one window and should be one page a person can open.
"""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flywheel.warehouse.quality.gates import ExpectationResult, QualityRun

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;width:100%;margin-bottom:2em}th,td{border:1px solid #ddd;padding:4px 8px;
text-align:left;vertical-align:top}th{background:#f4f4f4}.fail td{background:#fde8e8}.warn td{background:#fff6dd}
.badge{padding:2px 8px;border-radius:4px;color:#fff}.ok{background:#2e7d32}.bad{background:#c62828}
code{font-size:12px}
"""


def observed(r: "ExpectationResult") -> str:
    """What was seen, in words: the observed value, or how many rows were unexpected."""
    if r.exception:
        return f"error: {r.exception}"
    if r.unexpected_count is not None:
        pct = f" ({r.unexpected_percent:.3g}%)" if r.unexpected_percent else ""
        return f"{r.unexpected_count:,} of {r.element_count or 0:,} unexpected{pct}"
    return "observed " + json.dumps(r.observed_value, default=str)


def summary(run: "QualityRun", verbose: bool = False) -> str:
    """A few lines per suite: the verdict, then every failed expectation (all results with `verbose`)."""
    lines = [f"quality run {run.run_id}"]
    for s in run.suites:
        n_crit, n_warn = len(s.failed("critical")), len(s.failed("warning"))
        verdict = "passed" if s.gate_success else "FAILED: window marked suspect"
        lines.append(f"{s.table}: {s.rows:,} rows landed {s.window_start.isoformat()} .. {s.window_end.isoformat()}"
                     f" - {verdict} ({n_crit} critical, {n_warn} warning failures of {len(s.results)} expectations)")
        for r in s.results:
            if r.success and not verbose:
                continue
            mark = "ok  " if r.success else "FAIL"
            failed_sample = r.sample[:5] if r.sample and not r.success else None
            sample = f" e.g. {json.dumps(failed_sample, default=str, ensure_ascii=False)}" if failed_sample else ""
            lines.append(f"  {mark} {r.spec.severity:8s} {r.spec.type}({r.spec.column}): {observed(r)}{sample}")
    if run.report:
        lines.append(f"report: {run.report}")
    return "\n".join(lines)


def render_html(run: "QualityRun") -> str:
    e = html.escape
    badge = '<span class="badge ok">passed</span>' if run.success else '<span class="badge bad">failed</span>'
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>flywheel quality {e(run.run_id)}</title>"
             f"<style>{_CSS}</style></head><body><h1>Quality run {e(run.run_id)} {badge}</h1>"
             f"<p>Run at {e(run.run_at.isoformat())}. A failed <b>critical</b> expectation fails the gate and marks "
             "the window suspect; warnings are reported only.</p>"]
    for s in run.suites:
        verdict = "passed" if s.gate_success else "failed (window suspect)"
        parts.append(f"<h2>{e(s.table)}: {verdict}</h2><p>{s.rows:,} rows landed in "
                     f"[{e(s.window_start.isoformat())}, {e(s.window_end.isoformat())})</p>")
        parts.append("<table><tr><th>status</th><th>severity</th><th>expectation</th><th>column</th>"
                     "<th>arguments</th><th>observed</th><th>sample of unexpected values</th><th>notes</th></tr>")
        for r in sorted(s.results, key=lambda r: (r.success, r.spec.severity != "critical")):
            cls = "" if r.success else ' class="fail"' if r.spec.severity == "critical" else ' class="warn"'
            args = {k: v for k, v in r.spec.kwargs.items() if k not in ("column",)}
            parts.append(
                f"<tr{cls}><td>{'ok' if r.success else 'FAIL'}</td><td>{e(r.spec.severity)}</td>"
                f"<td><code>{e(r.spec.type)}</code></td><td>{e(r.spec.column)}</td>"
                f"<td><code>{e(_short(args))}</code></td><td>{e(observed(r))}</td>"
                f"<td><code>{e(_short(r.sample))}</code></td><td>{e(r.spec.notes)}</td></tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "".join(parts)


def write_report(run: "QualityRun", directory: Path) -> Path:
    """Write `<directory>/<run_id>.html` and copy it to `latest.html`; returns the run's page."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{run.run_id}.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(render_html(run), encoding="utf-8")
    tmp.replace(path)
    shutil.copyfile(path, directory / "latest.html.tmp")
    (directory / "latest.html.tmp").replace(directory / "latest.html")
    return path


def _short(v: Any, limit: int = 300) -> str:
    if not v:
        return ""
    text = json.dumps(v, default=str, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit] + "..."
