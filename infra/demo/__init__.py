"""`flywheel demo`: the flywheel end to end on the embedded defaults, on traffic dated relative to now.

1. starts the embedded broker (unless one answers, or FLYWHEEL_KAFKA_BOOTSTRAP points elsewhere);
2. replays real public LLM interactions and feedback (the bundled corpus, see README.md here) as traffic spread
   over the last `DAYS` days, so that the drift windows the README suggests (`--current 1d --reference 7d`) and
   the quality gates' landing-time checks see recent data; in the last day a new model version answers worse
   (more thumbs down), which drift detection finds. A few hostile messages are sent as well;
3. lands it (`flywheel ingest`), runs the quality gates and a drift run (alerts go to the outbox, and to Slack
   when FLYWHEEL_SLACK_WEBHOOK_URL is set; otherwise their Block Kit message is shown here);
4. ends with a summary and the next commands to try.

Re-running it is safe: the views show every event once however often it was sent (ids are stable), and the
quality gates and drift runs pick up where the last ones ended.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from flywheel.config import Settings, env_settings
from flywheel.errors import ConfigError
from flywheel.infra import broker
from flywheel.infra.testing.corpus import BUNDLED, Corpus, generate
from flywheel.schemas.contract import event_type_of
from flywheel.streams.client import FlywheelClient
from flywheel.streams.ingest import IngestWorker
from flywheel.streams.topics import ensure_topics
from flywheel.warehouse.alerts.outbox import AlertSettings, Outbox, SlackSender, slack_message
from flywheel.warehouse.drift.run import run_drift
from flywheel.warehouse.drift.settings import DriftSettings
from flywheel.warehouse.quality.gates import run_quality
from flywheel.warehouse.quality.settings import QualitySettings
from flywheel.warehouse.query import connect

EVENTS = Path(__file__).parent / "events.jsonl"
DAYS = 8
"""Traffic covers the last DAYS days: a complete current day and the seven before it, as the README's drift run
compares."""
SHIFTED_VERSION = "2026-12-rc1"
"""The model version the last day's `support-bot` traffic moves to; its answers get more thumbs down."""

HOSTILE = [
    b'{"inference_id": "demo-bad-1", "timestamp": "2026-11-01T00:00:00Z", "app": "x", "model"',  # truncated
    json.dumps({"inference_id": "demo-bad-2", "timestamp": "yesterday", "app": "x", "model": "m", "input": "q",
                "output": "a", "latency_ms": -5}).encode(),
    b"\xff\xfe not utf-8",
]

QUERIES = [
    ("events per view",
     "SELECT 'inferences' AS view, count(*) AS rows FROM inferences UNION ALL "
     "SELECT 'feedback', count(*) FROM feedback UNION ALL SELECT 'quarantine', count(*) FROM quarantine"),
    ("feedback per model (interactions)",
     "SELECT model, count(*) AS inferences, sum(thumbs_up)::BIGINT AS up, sum(thumbs_down)::BIGINT AS down, "
     "round(avg(rating_mean), 2) AS rating, sum(corrections)::BIGINT AS corrections, sum(flags)::BIGINT AS flags "
     "FROM interactions GROUP BY model ORDER BY inferences DESC LIMIT 8"),
    ("why events were quarantined", "SELECT reason, count(*) AS n FROM quarantine GROUP BY reason ORDER BY n DESC"),
]

NEXT_STEPS = [
    'flywheel sql "SELECT model, model_version, count(*), avg(thumbs_down) FROM interactions GROUP BY ALL"',
    "flywheel quality run",
    "flywheel drift run --current 1d --reference 7d",
    "flywheel drift report --open",
    "flywheel alerts list",
    "flywheel lake stats",
]


@dataclass(frozen=True)
class DemoSettings:
    scale: float = 1.0
    """FLYWHEEL_DEMO_SCALE: how much traffic the demo replays (1.0: 2,500 inferences with their feedback)."""

    def __post_init__(self) -> None:
        if not 0 < self.scale <= 1000:
            raise ConfigError(f"FLYWHEEL_DEMO_SCALE must be in (0, 1000], got {self.scale!r}",
                              variable="FLYWHEEL_DEMO_SCALE")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "DemoSettings":
        return env_settings(cls, "FLYWHEEL_DEMO_", environ)


def _bundled() -> Corpus:
    # Always the bundled sample, never a ../shared checkout: the demo is the same on every machine.
    c = Corpus()
    with open(BUNDLED, encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            getattr(c, rec.pop("kind")).append(rec)
    return c


def traffic(n_inferences: int, now: datetime, seed: int = 1) -> Iterator[dict[str, Any]]:
    """`n_inferences` inferences (and their feedback) from the bundled corpus: 60% spread over the seven days
    before yesterday, 30% over yesterday (UTC), 10% over today so far. Yesterday `support-bot` runs
    `SHIFTED_VERSION`, a lazier model (its answers stop after the first sentence) whose users turn thumbs down
    on most of them. Deterministic for a seed and `now`."""
    rng = random.Random(seed)
    end = now.replace(hour=0, minute=0, second=0, microsecond=0)
    shift_from = end - timedelta(days=1)
    today = max((now - timedelta(minutes=5) - end).total_seconds(), 0.0)

    def when(u: float) -> datetime:
        if u < 0.6:
            return shift_from - timedelta(days=DAYS - 1) + timedelta(days=(DAYS - 1) * u / 0.6)
        if u < 0.9:
            return shift_from + timedelta(days=(u - 0.6) / 0.3)
        return end + timedelta(seconds=today * (u - 0.9) / 0.1)

    shift: dict[str, timedelta] = {}
    moved: set[str] = set()
    for ev in generate(_bundled(), n_inferences, seed=seed, prefix="demo"):
        if "feedback_id" not in ev:
            n = int(ev["inference_id"].rsplit("-", 1)[1])
            at = when((n + rng.random()) / n_inferences)
            shift[ev["inference_id"]] = at - datetime.fromisoformat(ev["timestamp"])
            ev = {**ev, "timestamp": at.isoformat(timespec="milliseconds")}
            if shift_from <= at < end and ev["app"] == "support-bot":
                first = ev["output"].split(". ", 1)[0]
                ev.update(model_version=SHIFTED_VERSION, output=first if first.endswith(".") else first + ".",
                          output_tokens=len(first) // 4 + 1)
                moved.add(ev["inference_id"])
        else:
            t = datetime.fromisoformat(ev["timestamp"]) + shift[ev["inference_id"]]
            ev = {**ev, "timestamp": min(t, now).isoformat(timespec="milliseconds")}
            if ev["inference_id"] in moved and ev["kind"] == "thumbs":
                ev["value"] = -1 if rng.random() < 0.8 else 1
        yield ev


def run(settings: Settings, demo: DemoSettings, quality: QualitySettings, drift: DriftSettings,
        alerts: AlertSettings, echo: Callable[[str], None] = print) -> None:
    started = False
    if settings.uses_embedded_broker:
        st, started = broker.start(settings)
        echo(f"{'started' if started else 'using'} the embedded broker on {st.address}")
    try:
        _run(settings, demo, quality, drift, alerts, echo)
    finally:
        if started:
            broker.stop(settings)
            echo("stopped the embedded broker (the lake keeps the data)")


def _run(settings: Settings, demo: DemoSettings, quality: QualitySettings, drift: DriftSettings,
         alerts: AlertSettings, echo: Callable[[str], None]) -> None:
    ensure_topics(settings)
    now = datetime.now(timezone.utc)
    n = max(20, int(2500 * demo.scale))
    counts = {"inference": 0, "feedback": 0}
    with FlywheelClient(settings) as client:
        for ev in traffic(n, now):
            et = event_type_of(ev)
            assert et is not None
            client.send(ev, et)
            counts[et.name] += 1
        for payload in HOSTILE:
            client.send_raw(settings.inference_topic, payload)
        client.flush()
    echo(f"sent {counts['inference']:,} inferences and {counts['feedback']:,} feedback events of the last {DAYS} "
         f"days, and {len(HOSTILE)} hostile messages, to {settings.kafka_bootstrap}")

    stats = IngestWorker(settings).run(until_idle=2.0)
    echo(f"landed {stats.landed['inferences']:,} inferences, {stats.landed['feedback']:,} feedback, quarantined "
         f"{stats.quarantined} into {settings.lake}")

    gates = run_quality(settings, quality)
    verdicts = ", ".join(f"{s.table} {'passed' if s.gate_success else 'FAILED'} ({s.rows:,} rows)"
                         for s in gates.suites)
    echo(f"quality gates: {verdicts}; report {gates.report}")

    box = Outbox.from_settings(settings.home, alerts)
    found = run_drift(settings, drift, current="1d", reference="7d", sink=box)
    echo(f"drift: {len(found.effects)} checks over the last day ({found.n_current:,} inferences) against the 7 "
         f"days before ({found.n_reference:,}); {len(found.drifted)} drifted, {len(found.alerts)} alerts")
    for a in found.alerts:
        echo(f"  {a.kind} on {a.segment}: " + ", ".join(f"{i.feature} {i.before} -> {i.after}" for i in a.items[:4]))
    if found.alerts and alerts.webhook:
        rep = SlackSender(box, alerts).deliver()
        echo(f"  sent {rep.delivered} alerts to Slack")
    elif found.alerts:
        echo("  no FLYWHEEL_SLACK_WEBHOOK_URL set: the alerts wait in the outbox; the first one's Slack message:")
        echo("  " + json.dumps(slack_message(found.alerts[0]), ensure_ascii=False)[:1500])

    con = connect(settings)
    try:
        for title, sql in QUERIES:
            echo(f"\n-- {title}\n{con.sql(sql)}")
    finally:
        con.close()
    echo("Next, try:\n" + "\n".join(f"  {cmd}" for cmd in NEXT_STEPS))
