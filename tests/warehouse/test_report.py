"""`flywheel report`: the overview page, on a fresh home (every section says what to run) and on a home with every
stage's record, rendered in real headless Chromium (Debian's package) to check that each plot drew its marks.

The lake is filled the way each stage leaves it: landed events (the demo's traffic, through the contract
validator), evaluation runs against the recorded-answers provider, jobs through the job store; the quality and
drift run tables get rows of their own schemas (their producers are tested in their rooms and end to end by the
demo test, which runs `flywheel report` too)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pytest
from click.testing import CliRunner

from flywheel.cli import main
from flywheel.config import Settings
from flywheel.infra.demo import PREVIOUS_VERSION, SHIFTED_VERSION, traffic
from flywheel.infra.testing.land import land
from flywheel.infra.testing.provider import Answer, RecordedProvider
from flywheel.warehouse import tables
from flywheel.warehouse.datasets.registry import Registry, VersionInfo
from flywheel.warehouse.datasets.settings import DatasetSettings
from flywheel.warehouse.drift.settings import DriftSettings
from flywheel.warehouse.drift.storage import RUNS_SCHEMA as DRIFT_SCHEMA
from flywheel.warehouse.evaluation.runs import Example, run_eval
from flywheel.warehouse.evaluation.settings import EvalSettings
from flywheel.warehouse.evaluation.targets import Secret, Target
from flywheel.warehouse.jobs.settings import JobSettings
from flywheel.warehouse.jobs.store import JobStore
from flywheel.warehouse.lake import Lake
from flywheel.warehouse.quality.gates import RUNS_SCHEMA as QUALITY_SCHEMA
from flywheel.warehouse.quality.settings import QualitySettings
from flywheel.warehouse.releases import promote, rollback
from flywheel.warehouse.report.gather import gather
from flywheel.warehouse.report.page import SECTIONS

NOW = datetime.now(timezone.utc).replace(microsecond=0)


def _env(home: Path) -> dict[str, str]:
    return {"FLYWHEEL_HOME": str(home), "FLYWHEEL_KAFKA_BOOTSTRAP": ""}


def _report(home: Path, out: Path) -> str:
    res = CliRunner().invoke(main, ["report", "--out", str(out)], env=_env(home))
    assert res.exit_code == 0, res.output
    return out.read_text(encoding="utf-8")


def test_the_report_of_a_fresh_home_says_what_to_run_in_every_section(tmp_path: Path) -> None:
    page = _report(tmp_path / "home", tmp_path / "out" / "report.html")
    empties = re.findall(r"<p class=empty>.*?run <code>(.*?)</code>", page)
    assert len(empties) == len(SECTIONS)  # one per section
    assert "flywheel demo" in empties and "flywheel quality run" in empties and "flywheel curate" in empties
    assert "<svg" not in page and "<script" not in page


def _fill(s: Settings) -> None:
    """Every stage's record, as each stage leaves it."""
    land(Lake(s.lake), traffic(400, NOW))
    # quality: two runs of two suites, the second with a failed critical expectation on feedback
    qrows = []
    for i, run_at in enumerate((NOW - timedelta(hours=5), NOW - timedelta(hours=1))):
        for table in ("inferences", "feedback"):
            failed = i == 1 and table == "feedback"
            qrows.append({"run_id": f"q{i}", "run_at": run_at, "suite": table, "table_name": table,
                          "window_start": run_at - timedelta(hours=4), "window_end": run_at, "rows": 100 + i,
                          "expectation": "expect_column_values_to_not_be_null", "column_name": "app",
                          "severity": "critical", "success": not failed, "gate_success": not failed,
                          "suspect": failed})
    tables.append(s.lake, "quality_runs", pa.Table.from_pylist(qrows, QUALITY_SCHEMA))
    qdir = Path(s.home) / "quality"
    qdir.mkdir(parents=True)
    (qdir / "q1.html").write_text("<p>quality run q1</p>")
    (qdir / "latest.html").write_text("<p>quality run q1</p>")
    # drift: six daily windows of two segments; the last one of support-bot alerts, with its Evidently report
    evidently = Path(s.home) / "drift_reports" / "d5" / "app=support-bot.html"
    evidently.parent.mkdir(parents=True)
    evidently.write_text("<p>evidently</p>")
    drows = []
    for d in range(6):
        start = NOW - timedelta(days=6 - d)
        for seg, score in (("app=support-bot", 0.02 + 0.05 * d * d), ("app=writer", 0.03)):
            alert = seg == "app=support-bot" and d == 5
            drows.append({"run_id": f"d{d}", "run_at": start + timedelta(days=1), "window_start": start,
                          "window_end": start + timedelta(days=1), "reference": "7d", "level": "app",
                          "segment": seg, "feature": "output_chars", "drift_kind": "model", "method": "wasserstein",
                          "score": score, "threshold": 0.5, "p_value": 0.01, "drifted": score > 0.5, "alert": alert,
                          "n_reference": 500, "n_current": 80, "before": "120", "after": "40",
                          "report_path": str(evidently) if alert else None})
    tables.append(s.lake, "drift_runs", pa.Table.from_pylist(drows, DRIFT_SCHEMA))
    # datasets: two versions of an eval set and one of an SFT set
    reg = Registry(s, DatasetSettings())
    for name, version, n, kind in (("regression-eval", 1, 40, "eval"), ("regression-eval", 2, 55, "eval"),
                                   ("support-sft", 1, 120, "sft")):
        reg.register(VersionInfo(name, version, kind, NOW - timedelta(hours=3 - version), f"h{version}", "r", n,
                                 (("train", n - 10), ("test", 10)), (), "new rows", reg.root / name / f"v{version}"))
    # evaluations: the previous and the shifted support-bot versions (one model, two versions, as the demo's
    # targets name them) against a recorded-answers provider each
    examples = [Example(f"e{i}", (("user", f"How do I reset password {i}?"),), f"Open settings. Then press {i}.")
                for i in range(12)]
    ev = EvalSettings()
    with RecordedProvider([Answer("support-model", e.prompt, e.reference or "") for e in examples]) as before, \
            RecordedProvider([Answer("support-model", e.prompt, "Open settings.") for e in examples]) as after:
        urls = {PREVIOUS_VERSION: before.url, SHIFTED_VERSION: after.url}
        runs = {v: run_eval(s.lake, "regression-eval@2", examples,
                            Target(v, urls[v], "support-model", model_version=v), Secret(""), ev)
                for v in (PREVIOUS_VERSION, SHIFTED_VERSION)}
    promote(s.lake, "support-bot", "support-model", PREVIOUS_VERSION, runs[PREVIOUS_VERSION].run_id, ev)
    promote(s.lake, "support-bot", "support-model", SHIFTED_VERSION, runs[SHIFTED_VERSION].run_id, ev, force=True,
            reason="shipped before its evaluation")
    rollback(s.lake, "support-bot", reason="the gate blocked it")
    store = JobStore(JobSettings().db_path(s.home))
    for i, ok in enumerate((True, False)):
        job = store.claim("retrain-on-drift", f"alert-{i}", "drift", "command", "{}")
        assert job is not None
        store.finish(job.id, ok, result="done" if ok else "", error="" if ok else "exit 2")


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """One home with every stage's record, shared by the tests that only read it."""
    s = Settings(home=tmp_path_factory.mktemp("report") / "home")
    _fill(s)
    return s


def _chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        pytest.skip("chromium is not installed (`make test` installs it where apt-get runs as root)")
    return found


BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--hide-scrollbars"]

# Run by Chromium on a copy of the page: per plot, how many marks the browser laid out with a size.
PROBE = """<script>
const out = [...document.querySelectorAll('svg.plot')].map(svg => {
  const marks = [...svg.querySelectorAll('.mark')];
  const box = svg.getBoundingClientRect();
  return {section: svg.closest('section').id, marks: marks.length, width: box.width, height: box.height,
          drawn: marks.filter(m => { const b = m.getBoundingClientRect();
            return (b.width > 0 || b.height > 0) && b.left >= box.left - 1 && b.right <= box.right + 1; }).length};
});
const pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(out);
document.body.appendChild(pre);
</script>"""


def _browser(binary: str, tmp: Path, *args: str) -> str:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    profile.mkdir()
    res = subprocess.run([binary, *BROWSER_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


@pytest.mark.cannot_run_here(reason="needs Debian's chromium package, which `make test` installs only where "
                                    "apt-get runs as root")
def test_the_report_draws_every_plot_in_headless_chromium(filled: Settings, tmp_path: Path) -> None:
    binary = _chromium()
    s = filled
    out = tmp_path / "site" / "report.html"
    page = _report(Path(s.home), out)

    # self-contained: nothing to fetch, no script of its own
    assert "<script" not in page
    assert not re.findall(r"""(?:src|href)=['"]?(?:https?:)?//""", page)
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    # every section has content, and the links reach the Evidently and quality reports from the page's folder
    assert "<p class=empty>" not in page
    hrefs = re.findall(r"href='([^'#]+)'", page)
    assert {Path(h).name for h in hrefs} >= {"app=support-bot.html", "q1.html", "latest.html"}
    assert all((out.parent / h).resolve().is_file() for h in hrefs), hrefs
    assert "<span class=bad>blocked</span> mean similarity dropped" in page  # the gate's verdict on the forced one

    probe = out.with_name("probe.html")
    probe.write_text(page.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = _browser(binary, tmp_path, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri())
    found = re.search(r"<pre id=\"probe\">(.*?)</pre>", dom, re.S)
    assert found, dom[-2000:]
    plots = json.loads(found.group(1).replace("&quot;", '"'))
    per_section: dict[str, int] = {}
    for p in plots:
        assert p["width"] > 300 and p["height"] > 20, p
        assert p["marks"] > 0 and p["drawn"] == p["marks"], p  # every mark laid out with a size, inside its plot
        per_section[p["section"]] = per_section.get(p["section"], 0) + 1
    # every plot of the page was laid out: per app its volume (and its rates where a day has enough inferences),
    # drift's latest window and its windows over time, one per other section, and one per comparison
    assert len(plots) == page.count("<svg class='plot'")
    assert per_section["traffic"] >= 3 and per_section["evaluation"] == 2, per_section
    assert {k: v for k, v in per_section.items() if k not in ("traffic", "evaluation")} == {
        "drift": 2, "quality": 1, "datasets": 1, "jobs": 1, "releases": 1}, per_section
    traffic_marks = sum(p["marks"] for p in plots if p["section"] == "traffic")
    assert traffic_marks > 3 * 8  # a line and a dot per day for each app and version

    shot = tmp_path / "report.png"
    _browser(binary, tmp_path, "--window-size=1100,4200", f"--screenshot={shot}", out.as_uri())
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000
    keep = Path("/tmp/flywheel-report-test.png")  # for a person to look at after a local run
    shutil.copyfile(shot, keep)


def test_gather_reads_each_stage_into_its_records(filled: Settings) -> None:
    s = filled
    o = gather(s, QualitySettings(), DriftSettings(), DatasetSettings(), EvalSettings(), JobSettings())
    assert sum(p.inferences for p in o.traffic.points) == 400 and o.traffic.grain == "day"
    versions = {p.model_version for p in o.traffic.points if p.app == "support-bot"}
    assert versions == {f"support-model {PREVIOUS_VERSION}", f"support-model {SHIFTED_VERSION}"}
    shifted = [p for p in o.traffic.points if p.model_version.endswith(SHIFTED_VERSION)]
    assert sum(p.thumbs_down for p in shifted) > sum(p.thumbs_up for p in shifted)  # the demo's injected shift
    assert [(w.segment, w.alerts) for w in o.drift if w.alerts] == [("app=support-bot", 1)]
    assert max(o.drift, key=lambda w: w.worst_ratio).worst_ratio == pytest.approx((0.02 + 0.05 * 25) / 0.5)
    assert [(q.run_id, q.table, q.gate_success, q.report is not None) for q in o.quality] == [
        ("q0", "feedback", True, False), ("q0", "inferences", True, False), ("q1", "feedback", False, True),
        ("q1", "inferences", True, True)]
    assert [v.ref for v in o.datasets] == ["regression-eval@1", "regression-eval@2", "support-sft@1"]
    assert [r.version for r in o.evals] == [f"support-model {PREVIOUS_VERSION}", f"support-model {SHIFTED_VERSION}"]
    assert all(r.finished for r in o.evals)
    (c,) = o.comparisons
    assert c.baseline == o.evals[0].run_id and c.delta("similarity").delta < 0
    assert [j.status for j in o.jobs] == ["succeeded", "failed"]
    assert [(r.action, r.model_version) for r in o.releases] == [
        ("promote", PREVIOUS_VERSION), ("promote", SHIFTED_VERSION), ("rollback", PREVIOUS_VERSION)]
    assert o.drift_overview is None and o.quality_latest is not None
