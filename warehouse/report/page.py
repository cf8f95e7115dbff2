"""The overview as one self-contained HTML page: the records of `gather` as inline SVG charts and tables.

Guarantees: the page loads nothing (no script, stylesheet, font or image from elsewhere); links to the Evidently
and quality reports are relative to the page's own folder, so the page and the flywheel home can be opened from
disk or served together; every section that has no data yet says which command fills it. Written atomically.
"""

from __future__ import annotations

import html
import json
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

from flywheel.warehouse.evaluation.compare import Comparison
from flywheel.warehouse.report.charts import (BAD, MUTED, OK, WARN, Bar, Interval, Mark, Series, bar_chart, color,
                                              interval_chart, legend, line_chart, timeline)
from flywheel.warehouse.report.gather import DriftWindow, Overview, TrafficPoint

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1000px;color:#222;padding:0 16px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin:34px 0 6px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:14px;margin:16px 0 4px}.k{color:#666;font-size:12px}code{font-size:12px;background:#f4f4f4;padding:1px 4px}
table{border-collapse:collapse;margin:6px 0 12px;font-size:12px}td,th{border:1px solid #ddd;padding:3px 7px;
text-align:left;vertical-align:top}th{background:#f6f6f6}td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#2e7d32;font-weight:600}.bad{color:#c62828;font-weight:600}.empty{color:#666;background:#fafafa;
border:1px dashed #ccc;padding:8px 12px}.legend{font-size:12px;margin:2px 0 10px 56px;max-width:900px}
.legend span{margin-right:14px;white-space:nowrap}
.legend i{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:-1px}
nav a{margin-right:12px}.cards{display:flex;gap:10px;flex-wrap:wrap;margin:12px 0}.card{border:1px solid #ddd;
border-radius:6px;padding:6px 12px;min-width:130px}.card b{display:block;font-size:18px}svg.plot{display:block}
.row{display:flex;gap:8px;flex-wrap:wrap}figure{margin:0}figcaption{font-size:12px;color:#555;margin-left:56px}
"""

SECTIONS = (("traffic", "Traffic and feedback"), ("drift", "Drift"), ("quality", "Quality gates"),
            ("datasets", "Datasets"), ("evaluation", "Evaluations"), ("jobs", "Jobs"), ("releases", "Releases"))


def _e(s: object) -> str:
    return html.escape("" if s is None else str(s), quote=True)


def _t(t: datetime | float | None) -> str:
    if t is None:
        return ""
    if isinstance(t, (int, float)):
        t = datetime.fromtimestamp(t, timezone.utc)
    return t.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M")


def _pct(v: float | None) -> str:
    return "" if v is None else f"{v:.0%}"


def _num(v: float | None, digits: int = 3) -> str:
    return "" if v is None else f"{v:.{digits}g}"


def _empty(what: str, command: str) -> str:
    return f"<p class=empty>{_e(what)}: run <code>{_e(command)}</code>.</p>"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], numeric: set[int] | None = None) -> str:
    numeric = numeric or set()
    out = ["<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    for r in rows:
        out.append("<tr>" + "".join(f"<td class=n>{c}</td>" if i in numeric else f"<td>{c}</td>"
                                    for i, c in enumerate(r)) + "</tr>")
    return "".join(out) + "</table>"


class _Links:
    """Links from the page's folder to files of the home: relative, so the pair can move or be served together."""

    def __init__(self, page: Path) -> None:
        self.base = page.resolve().parent

    def __call__(self, target: str | Path | None, text: str) -> str:
        if not target:
            return _e(text)
        href = os.path.relpath(Path(target).resolve(), self.base)
        return f"<a href='{_e(Path(href).as_posix())}'>{_e(text)}</a>"


TOP_VERSIONS = 4
"""Model versions drawn per app; the app's other versions are drawn summed as one line."""
MIN_FOR_RATE = 5
"""A rate is drawn for a bucket with at least this many inferences (fewer swing between 0 and 100%)."""


def _merge(app: str, label: str, points: Sequence[TrafficPoint]) -> list[TrafficPoint]:
    """`points` of several versions summed per bucket, as one series named `label`."""
    by: dict[datetime, list[TrafficPoint]] = defaultdict(list)
    for p in points:
        by[p.bucket].append(p)
    return [TrafficPoint(app, label, b, sum(p.inferences for p in ps), sum(p.with_feedback for p in ps),
                         sum(p.thumbs_up for p in ps), sum(p.thumbs_down for p in ps)) for b, ps in sorted(by.items())]


def _series(shown: Sequence[tuple[str, Sequence[TrafficPoint]]], value: Callable[[TrafficPoint], float | None],
            rate: bool) -> list[Series]:
    return [Series(v, tuple((p.bucket, x) for p in ps if (not rate or p.inferences >= MIN_FOR_RATE)
                            and (x := value(p)) is not None), color(i)) for i, (v, ps) in enumerate(shown)]


def _traffic(o: Overview) -> str:
    pts = o.traffic.points
    if not pts:
        return _empty("No inferences landed yet", "flywheel demo") + \
            "<p class=k>or send events (<code>flywheel send</code>, the SDK, <code>flywheel collect</code>) and " \
            "land them with <code>flywheel ingest</code>.</p>"
    by_app: dict[str, dict[str, list[TrafficPoint]]] = defaultdict(lambda: defaultdict(list))
    for p in pts:
        by_app[p.app][p.model_version].append(p)
    total, fb = sum(p.inferences for p in pts), sum(p.with_feedback for p in pts)
    out = [f"<p class=k>{total:,} inferences, {fb / total:.0%} with feedback, per {o.traffic.grain} (UTC); per app, "
           f"its {TOP_VERSIONS} busiest model versions (the others summed); rates where a {o.traffic.grain} has at "
           f"least {MIN_FOR_RATE} inferences. The last {o.traffic.grain} is the one so far.</p>"]
    rows = []
    for app in sorted(by_app, key=lambda a: -sum(p.inferences for v in by_app[a].values() for p in v)):
        versions = sorted(by_app[app].items(), key=lambda kv: -sum(p.inferences for p in kv[1]))
        shown: list[tuple[str, Sequence[TrafficPoint]]] = [(v, ps) for v, ps in versions[:TOP_VERSIONS]]
        rest = [p for _, ps in versions[TOP_VERSIONS:] for p in ps]
        if rest:
            label = f"{len(versions) - TOP_VERSIONS} other versions"
            shown.append((label, _merge(app, label, rest)))

        volume = _series(shown, lambda p: float(p.inferences), False)
        charts = [("inferences", line_chart(volume, y_label="inferences", width=320, height=170)),
                  ("with any feedback", line_chart(_series(shown, lambda p: p.feedback_rate, True),
                                                   y_label="feedback rate", fmt="{:.0%}".format, y_max=1.0, width=320,
                                                   height=170)),
                  ("thumbs down of thumbs", line_chart(_series(shown, lambda p: p.thumbs_down_rate, True),
                                                       y_label="thumbs down", fmt="{:.0%}".format, y_max=1.0,
                                                       width=320, height=170))]
        out.append(f"<h3>{_e(app)}</h3><div class=row>" + "".join(
            f"<figure><figcaption>{_e(t)}</figcaption>{c or '<p class=k>too few to draw</p>'}</figure>"
            for t, c in charts) + "</div>" + legend(volume))
        for v, ps in versions:
            rows.append([_e(app), _e(v), f"{sum(p.inferences for p in ps):,}",
                         _pct(sum(p.with_feedback for p in ps) / max(sum(p.inferences for p in ps), 1)),
                         _pct(_down(ps)), _t(ps[0].bucket), _t(ps[-1].bucket)])
    head = ["app", "model version", "inferences", "with feedback", "thumbs down", f"first {o.traffic.grain}",
            f"last {o.traffic.grain}"]
    more = f"<p class=k>and {len(rows) - 15} more versions (<code>flywheel sql</code> over <code>interactions</code>)" \
           "</p>" if len(rows) > 15 else ""
    return "".join(out) + _table(head, rows[:15], {2, 3, 4}) + more


def _down(points: Sequence[TrafficPoint]) -> float | None:
    up, down = sum(p.thumbs_up for p in points), sum(p.thumbs_down for p in points)
    return down / (up + down) if up + down else None


def _drift(o: Overview, link: _Links) -> str:
    if not o.drift:
        return _empty("No drift run yet", "flywheel drift run --current 1d --reference 7d")
    by: dict[str, list[DriftWindow]] = defaultdict(list)
    for w in o.drift:
        by[w.segment].append(w)
    # the segments that moved most, so a page of many segments stays readable
    top = sorted(by, key=lambda s: (-max(w.worst_ratio for w in by[s]), s))[:8]
    lines = [Series(s, tuple((w.window_start, w.worst_ratio) for w in by[s]), color(i)) for i, s in enumerate(top)]
    n_windows = len({w.window_start for w in o.drift})
    over_time = ("<h3>Over time</h3>" + line_chart(lines, y_label="score / threshold", fmt="{:.1f}".format,
                                                    threshold=1.0) + legend(lines)) if n_windows > 1 else \
        "<p class=k>One window checked so far: scores over time appear from the second drift run on.</p>"
    latest = sorted((ws[-1] for ws in by.values()), key=lambda w: (-w.worst_ratio, w.segment))[:12]
    bars = [Bar(w.segment, w.worst_ratio, BAD if w.alerts else WARN if w.drifted else OK,
                f"{w.segment}: {w.worst_feature} at {w.worst_ratio:.2f}x its threshold; {w.drifted} drifted, "
                f"{w.alerts} alerts of {w.checks} checks") for w in latest]
    rows = []
    for s in sorted(by, key=lambda s: (s.count(","), s)):
        w = by[s][-1]
        verdict = f"<span class=bad>{w.alerts} alerts</span>" if w.alerts else \
            f"{w.drifted} drifted" if w.drifted else "<span class=ok>stable</span>"
        rows.append([_e(s), _e(f"{_t(w.window_start)} .. {_t(w.window_end)}"), str(w.checks), verdict,
                     _e(w.worst_feature), f"{w.worst_ratio:.2f}", link(w.report_path, "Evidently report")
                     if w.report_path else "<span class=k>none written</span>"])
    overview = (f"<p>Scores per window and feature: {link(o.drift_overview, 'the drift overview')}.</p>"
                if o.drift_overview else
                "<p class=k>Scores per window and feature: <code>flywheel drift report</code>.</p>")
    return ("<p class=k>Each segment's worst effect relative to its threshold (above 1.0 a check may drift: "
            "it drifts when its p-value is small and the shift sustained or large); red alerted, yellow drifted, "
            f"green stable. {len(by)} segments, {n_windows} windows.</p>"
            "<h3>Latest window, the segments that moved most</h3>"
            + bar_chart(bars, fmt="{:.2f}x".format, reference=1.0)
            + over_time + "<h3>Latest window per segment</h3>"
            + _table(["segment", "window", "checks", "verdict", "worst feature", "score / threshold", "report"], rows,
                     {2, 5})
            + overview)


def _quality(o: Overview, link: _Links) -> str:
    if not o.quality:
        return _empty("No quality run yet", "flywheel quality run")
    marks = [Mark(r.table, r.run_at, OK if r.gate_success else BAD,
                  f"{r.run_id} {r.table}: {'passed' if r.gate_success else 'FAILED'}; {r.rows:,} rows; "
                  f"{r.failed_critical} critical, {r.failed_warning} warning failures of {r.expectations}")
             for r in o.quality]
    rows = [[link(r.report, r.run_id) if r.report else _e(r.run_id), _t(r.run_at), _e(r.table), f"{r.rows:,}",
             _e(f"{_t(r.window_start)} .. {_t(r.window_end)}"), str(r.failed_critical), str(r.failed_warning),
             "<span class=ok>passed</span>" if r.gate_success else "<span class=bad>FAILED</span>"]
            for r in reversed(o.quality[-20:])]
    failed = sum(not r.gate_success for r in o.quality)
    latest = f" Latest run's page: {link(o.quality_latest, 'quality report')}." if o.quality_latest else ""
    return (f"<p class=k>{len({r.run_id for r in o.quality})} runs, {failed} failed suite verdicts (green passed, red "
            f"failed; a failed critical expectation marks the window suspect: <code>flywheel quality suspects"
            f"</code>).{latest}</p>" + timeline(marks)
            + _table(["run (report)", "at", "table", "rows", "window", "critical failed", "warning failed",
                      "gate"], rows, {3, 5, 6}))


def _datasets(o: Overview) -> str:
    if not o.datasets:
        return _empty("No curated dataset yet", "flywheel curate")
    names = list(dict.fromkeys(v.name for v in o.datasets))
    bars = [Bar(v.ref, float(v.rows), color(names.index(v.name)),
                f"{v.ref}: {v.rows:,} rows ({', '.join(f'{k} {n:,}' for k, n in v.splits)}); {v.reason}")
            for v in o.datasets]
    rows = [[_e(v.ref), _e(v.kind), _t(v.created_at), f"{v.rows:,}", _e(", ".join(f"{k} {n:,}" for k, n in v.splits)),
             _e(v.reason)] for v in reversed(o.datasets)]
    return (f"<p class=k>{len(names)} datasets, {len(o.datasets)} versions: rows per version.</p>" + bar_chart(bars)
            + _table(["version", "kind", "created", "rows", "splits", "why this version"], rows, {3}))


def _evaluation(o: Overview) -> str:
    if not o.evals:
        return _empty("No evaluation run yet", "flywheel eval run --dataset NAME --target TARGET")
    done = [r for r in o.evals if r.finished]
    models = list(dict.fromkeys(r.version or r.model for r in done))
    bars = [Bar(f"{r.version or r.model} · {r.eval_set}", r.pass_rate or 0.0, color(models.index(r.version or r.model)),
                f"{r.run_id}: pass {_pct(r.pass_rate)}, similarity {_num(r.similarity_mean)}") for r in done[-12:]]
    rows = [[_e(r.run_id), _e(r.eval_set), _e(r.version or r.model), str(r.examples), _t(r.started_at),
             _pct(r.pass_rate) if r.finished else "<span class=k>unfinished</span>", _num(r.similarity_mean),
             _pct(r.error_rate), _pct(r.refusal_rate), _num(r.latency_p95_ms, 4)] for r in reversed(o.evals[-20:])]
    out = [f"<p class=k>{len(o.evals)} runs ({len(done)} finished). Pass rate per finished run:</p>",
           bar_chart(bars, fmt="{:.0%}".format),
           _table(["run", "eval set", "model", "examples", "started", "pass rate", "similarity", "errors",
                   "refusals", "latency p95 ms"], rows, {3, 5, 6, 7, 8, 9})]
    out.append("<h3>Comparisons</h3>")
    if not o.comparisons:
        out.append(_empty("No two finished runs of one eval set to compare yet",
                          "flywheel eval run --dataset NAME --target ANOTHER"))
    for c in o.comparisons:
        out.append(_comparison(c, {r.run_id: r.version or r.model for r in o.evals}))
    return "".join(out)


_HIGHER_IS_BETTER = {"pass_rate", "similarity", "exact_match_rate", "json_valid_rate", "judge_score"}
_OFF_SCALE = ("output_chars", "cost_usd")
"""Metrics in characters or dollars: said in words, not drawn on the chart of rates."""


def _comparison(c: Comparison, models: dict[str, str]) -> str:
    rows = [Interval(d.metric, d.delta, d.low, d.high,
                     f"{d.metric}: {_num(d.baseline)} -> {_num(d.candidate)} ({d.delta:+.3f}; 95% CI "
                     f"{_num(d.low)} .. {_num(d.high)})",
                     MUTED if abs(d.delta) < 1e-12 else OK if (d.delta > 0) == (d.metric in _HIGHER_IS_BETTER) else BAD)
            for d in c.deltas if d.delta is not None and not d.metric.startswith(_OFF_SCALE)]
    chars = next((d for d in c.deltas if d.metric == "output_chars" and d.delta is not None), None)
    regress = "; ".join(f"{s.segment} {s.baseline_pass_rate:.0%} -> {s.candidate_pass_rate:.0%}"
                        for s in c.regressions[:5])
    return (f"<p><b>{_e(models.get(c.candidate, c.candidate))}</b> ({_e(c.candidate)}) against "
            f"<b>{_e(models.get(c.baseline, c.baseline))}</b> ({_e(c.baseline)}) over {c.matched} matched examples: "
            f"candidate minus baseline, 95% intervals ({_e(c.method)}).</p>" + interval_chart(rows)
            + "<p class=k>" + (f"output length {chars.delta:+.0f} chars; " if chars else "")
            + (f"latency p95 {c.latency_p95_ratio:.2f}x; " if c.latency_p95_ratio else "")
            + f"{len(c.flipped)} examples flipped from pass to fail"
            + (f"; segments that regressed: {_e(regress)}" if regress else "") + "</p>")


def _jobs(o: Overview) -> str:
    if not o.jobs:
        return _empty("No job yet (trigger policies start them on a drift alert or a new dataset version)",
                      "flywheel jobs list")
    status_color = {"succeeded": OK, "failed": BAD, "running": WARN}
    marks = [Mark(j.policy, datetime.fromtimestamp(j.created_at, timezone.utc), status_color.get(j.status, MUTED),
                  f"#{j.id} {j.policy} on {j.subject}: {j.status} after {j.attempts} attempts")
             for j in o.jobs]
    rows = [[str(j.id), _e(j.policy), _e(j.subject), _e(j.target), _t(j.created_at),
             f"{j.finished_at - j.started_at:.1f}" if j.finished_at and j.started_at else "",
             f"<span class={'bad' if j.status == 'failed' else 'ok' if j.status == 'succeeded' else 'k'}>"
             f"{_e(j.status)}</span>", str(j.attempts), _e((j.error or j.result or "")[:160])]
            for j in reversed(o.jobs[-20:])]
    return ("<p class=k>Jobs per policy over time (green succeeded, red failed, yellow running; "
            "<code>flywheel jobs show ID</code>).</p>" + timeline(marks)
            + _table(["id", "policy", "subject", "target", "created", "seconds", "status", "attempts",
                      "result or error"], rows, {0, 5, 7}))


def _releases(o: Overview) -> str:
    if not o.releases:
        return _empty("No release recorded yet", "flywheel release promote APP --model MODEL --eval RUN")
    marks = [Mark(r.app, r.since, BAD if r.action == "rollback" else WARN if r.forced else OK,
                  f"{r.app} release {r.sequence}: {r.action} to {r.model} {r.model_version or ''}"
                  + (f" (forced: {r.reason})" if r.forced else f" ({r.reason})" if r.reason else ""),
                  f"{r.sequence}: {r.model_version or r.model}") for r in o.releases]
    rows = []
    for r in reversed(o.releases):
        verdict = json.loads(r.gate) if r.gate else None
        gate = "" if verdict is None else ("<span class=ok>passed</span>" if verdict.get("passed") else
                                           "<span class=bad>blocked</span> " + _e("; ".join(verdict["reasons"])))
        rows.append([_e(r.app), str(r.sequence), _e(r.action), _e(f"{r.model} {r.model_version or ''}"),
                     _t(r.since), _e(r.eval_run), "forced" if r.forced else "", gate, _e(r.reason)])
    champs = {r.app: r for r in o.releases}
    return ("<p class=k>Champion now: " + "; ".join(f"<b>{_e(a)}</b> {_e(r.model)} {_e(r.model_version or '')}"
                                                     for a, r in champs.items())
            + ". Green promoted on evidence, yellow forced, red rolled back.</p>" + timeline(marks)
            + _table(["app", "#", "action", "champion", "since", "eval run", "forced", "gate", "reason"], rows, {1}))


def render(o: Overview, page: Path) -> str:
    """The page for `o`, its links relative to where `page` will be written."""
    link = _Links(page)
    n_inf = sum(p.inferences for p in o.traffic.points)
    last_drift = o.drift[-1].run_id if o.drift else None
    alerts = sum(w.alerts for w in o.drift if w.run_id == last_drift)
    q_last = [r for r in o.quality if r.run_id == o.quality[-1].run_id] if o.quality else []
    cards = [("inferences", f"{n_inf:,}"), ("drift alerts (last run)", str(alerts) if o.drift else "no run"),
             ("quality (last run)", ("passed" if all(r.gate_success for r in q_last) else "FAILED") if q_last
              else "no run"),
             ("dataset versions", str(len(o.datasets))), ("evaluation runs", str(len(o.evals))),
             ("jobs", str(len(o.jobs))), ("releases", str(len(o.releases)))]
    body = {"traffic": _traffic(o), "drift": _drift(o, link), "quality": _quality(o, link),
            "datasets": _datasets(o), "evaluation": _evaluation(o), "jobs": _jobs(o), "releases": _releases(o)}
    out = [f"<!doctype html><html lang=en><head><meta charset='utf-8'><title>flywheel overview</title>"
           f"<style>{_CSS}</style></head><body><h1>flywheel overview</h1>",
           f"<p class=k>{_e(o.home)} · generated {_t(o.generated_at)} UTC by <code>flywheel report</code></p>",
           "<nav>" + "".join(f"<a href='#{k}'>{_e(t)}</a>" for k, t in SECTIONS) + "</nav>",
           "<div class=cards>" + "".join(f"<div class=card><b>{_e(v)}</b><span class=k>{_e(k)}</span></div>"
                                         for k, v in cards) + "</div>"]
    for key, title in SECTIONS:
        out.append(f"<section id='{key}'><h2>{_e(title)}</h2>{body[key]}</section>")
    out.append("</body></html>")
    return "\n".join(out)


def write(o: Overview, page: Path) -> Path:
    page.parent.mkdir(parents=True, exist_ok=True)
    tmp = page.with_name(page.name + ".tmp")
    tmp.write_text(render(o, page), encoding="utf-8")
    os.replace(tmp, page)  # readers never see half a page
    return page
