"""`flywheel demo`: the flywheel end to end on the embedded defaults, on traffic dated relative to now.

1. starts the embedded broker (unless one answers, or FLYWHEEL_KAFKA_BOOTSTRAP points elsewhere);
2. replays real public LLM interactions and feedback (the bundled corpus, see README.md here) as traffic spread
   over the last `DAYS` days, so that the drift windows the README suggests (`--current 1d --reference 7d`) and
   the quality gates' landing-time checks see recent data; in the last day a new model version answers worse
   (more thumbs down), and half of `search-answers`' users write in other languages (Spanish, Russian, Chinese,
   ...: real multilingual prompts and answers), which drift detection finds. A few hostile messages are sent as
   well;
3. lands it (`flywheel ingest`), runs the quality gates and a drift run (alerts go to the outbox, and to Slack
   when FLYWHEEL_SLACK_WEBHOOK_URL is set; otherwise their Block Kit message is shown here);
4. curates the bundled recipes (an eval set, an SFT set, preference pairs) into versioned datasets;
5. re-evaluates: the previous support-bot version and the shifted one answer the curated eval set through a
   recorded-answers stand-in for an OpenAI-compatible endpoint (`flywheel.infra.testing.provider`); the gate
   compares them, and the release that shipped the shifted version is rolled back on that evidence;
6. ends with a summary (what landed and was flagged, the datasets@versions it curated, the gate's verdict, the
   reports it wrote) and the next commands to try.

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
from flywheel.infra.testing.corpus import generate, load_corpus
from flywheel.infra.testing.scenarios import multilingual_answers
from flywheel.schemas.contract import event_type_of
from flywheel.streams.client import FlywheelClient
from flywheel.streams.ingest import IngestWorker
from flywheel.streams.topics import ensure_topics
from flywheel.schemas.alerts import shift_lines
from flywheel.warehouse.alerts.outbox import AlertSettings, Outbox, SlackSender, slack_message
from flywheel.warehouse.drift.run import run_drift
from flywheel.warehouse.datasets.settings import DatasetSettings
from flywheel.warehouse.drift.settings import DriftSettings
from flywheel.warehouse.evaluation.settings import EvalSettings
from flywheel.warehouse.quality.gates import run_quality
from flywheel.warehouse.quality.settings import QualitySettings
from flywheel.warehouse.query import connect

EVENTS = Path(__file__).parent / "events.jsonl"
RECIPES = Path(__file__).resolve().parents[1] / "recipes"
DAYS = 8
"""Traffic covers the last DAYS days: a complete current day and the seven before it, as the README's drift run
compares."""
SUPPORT_MODEL = "support-model"
PREVIOUS_VERSION = "2026-11-stable"
"""The version of support-bot's model until yesterday (its release history starts there) ..."""
SHIFTED_VERSION = "2026-12-rc1"
"""... and the one it moves to yesterday: its answers stop after the first sentence and get more thumbs down."""
LANGUAGE_APP = "search-answers"
LANGUAGE_SHARE = 0.5
"""Yesterday this share of `LANGUAGE_APP`'s users write in another language (and are answered in it)."""

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

@dataclass(frozen=True)
class Outcome:
    """What the curation, evaluation and release step left, for the demo's closing summary."""

    datasets: tuple[tuple[str, bool], ...] = ()
    """(name@version, whether this run created it), in curation order."""
    verdict: str = "nothing evaluated"
    """The gate's verdict on the shifted version against the previous one, and what the release did."""


def _curate_evaluate_release(settings: Settings, datasets: DatasetSettings, evaluation: EvalSettings,
                             echo: Callable[[str], None]) -> Outcome:
    """Curate every bundled recipe, evaluate the previous and the shifted support-bot versions on the curated eval
    set, and let the gate's verdict roll the shifted release back."""
    from flywheel.infra.testing.provider import Answer, RecordedProvider
    from flywheel.warehouse.datasets import curate, load, load_recipe, recipe_files
    from flywheel.warehouse.evaluation.compare import gate
    from flywheel.warehouse.evaluation.online import for_runs
    from flywheel.warehouse.evaluation.runs import Example, run_eval
    from flywheel.warehouse.evaluation.targets import Secret, Target
    from flywheel.streams.releases import champion_of, publish
    from flywheel.streams.releases import topic as release_topic
    from flywheel.warehouse.releases import champion, promote, rollback

    directory = datasets.recipes_dir or str(RECIPES)
    recipes = sorted((load_recipe(p) for p in recipe_files(directory)), key=lambda r: r.kind != "eval")
    made = {}
    for r in recipes:
        res = curate(settings, datasets, r)
        made[r.name] = res
        echo(f"curated {res.name}@{res.version} ({'new: ' + res.reason if res.created else 'unchanged'}): "
             + ", ".join(f"{k} {v}" for k, v in res.splits))
    curated = tuple((f"{res.name}@{res.version}", res.created) for res in made.values())
    evals = [n for n, r in made.items() if next(x for x in recipes if x.name == n).kind == "eval"]
    if not evals:
        return Outcome(curated, "nothing evaluated: no eval recipe")
    ref = f"{evals[0]}@{made[evals[0]].version}"
    rows = load(ref, "test", settings=settings, ds=datasets).to_pylist()
    if not rows:
        echo(f"  {ref} has no test rows yet: nothing to evaluate")
        return Outcome(curated, f"nothing evaluated: {ref} has no test rows")
    examples = [Example(str(r["id"]), tuple((m["role"], m["content"]) for m in r["messages"]), r.get("reference"),
                        str(r.get("stratum") or "")) for r in rows]
    # A stand-in provider per version answers as that version would: the previous one with the accepted answer
    # (the writer's correction where there is one), the shifted one with its first sentence only (as the lazier
    # model did in the traffic). Each target names the model and version as the app logs them, so `flywheel eval
    # compare` finds what users said about each in the lake next to the offline scores.
    recorded: dict[str, list[Answer]] = {PREVIOUS_VERSION: [], SHIFTED_VERSION: []}
    for e, r in zip(examples, rows):
        good = r.get("reference") or r.get("output") or ""
        first = good.split(". ", 1)[0]
        recorded[PREVIOUS_VERSION].append(Answer(SUPPORT_MODEL, e.prompt, good))
        recorded[SHIFTED_VERSION].append(Answer(SUPPORT_MODEL, e.prompt, first if first.endswith(".") else first + "."))
    with RecordedProvider(recorded[PREVIOUS_VERSION]) as before, RecordedProvider(recorded[SHIFTED_VERSION]) as after:
        urls = {PREVIOUS_VERSION: before.url, SHIFTED_VERSION: after.url}
        runs = {v: run_eval(settings.lake_location, ref, examples,
                            Target(v, urls[v], SUPPORT_MODEL, model_version=v), Secret(""), evaluation)
                for v in (PREVIOUS_VERSION, SHIFTED_VERSION)}
    verdict = gate(settings.lake_location, runs[SHIFTED_VERSION].run_id, runs[PREVIOUS_VERSION].run_id, evaluation)
    for v, run in runs.items():
        s = run.summary
        echo(f"evaluated support-bot {v} on {ref}: pass {s['pass_rate'] or 0:.0%}, similarity "
             f"{s['similarity_mean'] or 0:.3f} over {s['with_reference']} references (run {run.run_id})")
    for o in for_runs(settings, *(runs[v].run_id for v in (PREVIOUS_VERSION, SHIFTED_VERSION))):
        up = f"{o.thumbs_up_rate:.0%} thumbs up of {o.thumbs_n}" if o.thumbs_up_rate is not None else "no thumbs"
        echo(f"users of support-bot {o.model_version}: {o.inferences} answers in the lake, {up}")
    echo("gate: " + ("passed" if verdict.passed else "BLOCKED: " + "; ".join(verdict.reasons)))
    # The release history: the previous version was the champion; yesterday's shift shipped without evidence.
    con = connect(settings)
    try:
        seen = {v for (v,) in con.execute("SELECT DISTINCT model_version FROM inferences WHERE app = 'support-bot' "
                                          "AND model = ?", [SUPPORT_MODEL]).fetchall()}
    finally:
        con.close()
    # Each change goes to the releases topic too, as `flywheel release` sends it: what an app's SDK follows.
    if champion(settings.lake_location, "support-bot") is None:
        publish(settings, champion_of(promote(settings.lake_location, "support-bot", SUPPORT_MODEL, PREVIOUS_VERSION,
                                              runs[PREVIOUS_VERSION].run_id, evaluation,
                                              seen=PREVIOUS_VERSION in seen)))
    current = champion(settings.lake_location, "support-bot")
    if current is not None and current.model_version != SHIFTED_VERSION:
        publish(settings, champion_of(promote(settings.lake_location, "support-bot", SUPPORT_MODEL, SHIFTED_VERSION,
                                              runs[SHIFTED_VERSION].run_id, evaluation, force=True,
                                              reason="shipped yesterday before its evaluation",
                                              seen=SHIFTED_VERSION in seen)))
    said = (f"support-bot {SHIFTED_VERSION} against {PREVIOUS_VERSION} on {ref}: gate "
            + ("passed" if verdict.passed else f"BLOCKED ({len(verdict.reasons)} reasons)"))
    if not verdict.passed:
        back = rollback(settings.lake_location, "support-bot", reason="the gate blocked " + SHIFTED_VERSION)
        publish(settings, champion_of(back))
        echo(f"release: support-bot rolled back to {back.model_version} (release {back.sequence}; "
             f"`flywheel release history support-bot`), published to {release_topic(settings)}")
        said += f", rolled back to {back.model_version}"
    return Outcome(curated, said)


NEXT_STEPS = [
    'flywheel sql "SELECT model, model_version, count(*), avg(thumbs_down) FROM interactions GROUP BY ALL"',
    "flywheel quality run",
    "flywheel drift run --current 1d --reference 7d",
    "flywheel drift report --open",
    "flywheel alerts list",
    "flywheel datasets list",
    "flywheel eval list",
    "flywheel release history support-bot",
    "flywheel lake stats",
    "flywheel report --open",
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


def traffic(n_inferences: int, now: datetime, seed: int = 1) -> Iterator[dict[str, Any]]:
    """`n_inferences` inferences (and their feedback) from the bundled corpus: 60% spread over the seven days
    before yesterday, 30% over yesterday (UTC), 10% over today so far. Yesterday `support-bot` runs
    `SHIFTED_VERSION`, a lazier model (its answers stop after the first sentence) whose users turn thumbs down
    on most of them, and `LANGUAGE_SHARE` of `LANGUAGE_APP`'s requests are in other languages (real multilingual
    prompts with their answers, from the test fixtures). Deterministic for a seed and `now`."""
    rng = random.Random(seed)
    lang_rng = random.Random(f"language-{seed}")  # its own draws: the rest of the traffic is as without the shift
    foreign = multilingual_answers()
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
    # The bundled sample, never a ../shared checkout: the demo is the same on every machine.
    for ev in generate(load_corpus(), n_inferences, seed=seed, prefix="demo"):
        if "feedback_id" not in ev:
            n = int(ev["inference_id"].rsplit("-", 1)[1])
            at = when((n + rng.random()) / n_inferences)
            shift[ev["inference_id"]] = at - datetime.fromisoformat(ev["timestamp"])
            ev = {**ev, "timestamp": at.isoformat(timespec="milliseconds")}
            if ev["app"] == "support-bot":  # one model, whose version moves yesterday
                ev.update(model=SUPPORT_MODEL, model_version=PREVIOUS_VERSION)
            if shift_from <= at and ev["app"] == "support-bot":
                first = ev["output"].split(". ", 1)[0]
                ev.update(model_version=SHIFTED_VERSION, output=first if first.endswith(".") else first + ".",
                          output_tokens=len(first) // 4 + 1)
                moved.add(ev["inference_id"])
            if shift_from <= at and ev["app"] == LANGUAGE_APP and lang_rng.random() < LANGUAGE_SHARE:
                prompt, output = lang_rng.choice(foreign)
                ev.update(input=prompt, output=output, input_tokens=len(prompt) // 4 + 1,
                          output_tokens=len(output) // 4 + 1)
        else:
            t = datetime.fromisoformat(ev["timestamp"]) + shift[ev["inference_id"]]
            ev = {**ev, "timestamp": min(t, now).isoformat(timespec="milliseconds")}
            if ev["inference_id"] in moved and ev["kind"] == "thumbs":
                ev["value"] = -1 if rng.random() < 0.8 else 1
        yield ev


def run(settings: Settings, demo: DemoSettings, quality: QualitySettings, drift: DriftSettings,
        alerts: AlertSettings, datasets: DatasetSettings, evaluation: EvalSettings,
        echo: Callable[[str], None] = print) -> None:
    started = False
    if settings.uses_embedded_broker:
        st, started = broker.start(settings)
        echo(f"{'started' if started else 'using'} the embedded broker on {st.address}")
    try:
        _run(settings, demo, quality, drift, alerts, datasets, evaluation, echo)
    finally:
        if started:
            broker.stop(settings)
            echo("stopped the embedded broker (the lake keeps the data)")


def _run(settings: Settings, demo: DemoSettings, quality: QualitySettings, drift: DriftSettings,
         alerts: AlertSettings, datasets: DatasetSettings, evaluation: EvalSettings,
         echo: Callable[[str], None]) -> None:
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
    found = run_drift(settings, drift, current="1d", reference="7d", sink=box,
                      next_steps=lambda _alert: ("the demo curates its datasets and re-evaluates support-bot",))
    echo(f"drift: {len(found.effects)} checks over the last day ({found.n_current:,} inferences) against the 7 "
         f"days before ({found.n_reference:,}); {len(found.drifted)} drifted, {len(found.alerts)} alerts")
    for a in found.alerts:
        echo(f"  {a.kind} on {a.segment}: " + ", ".join(f"{i.feature} {i.before} -> {i.after}" for i in a.items[:4]))
        for line in shift_lines(a.shifts)[:3]:
            echo(f"    changed in the segment: {line.replace('`', '')}")
    flagged = {(a.kind, a.segment) for a in found.alerts}
    for kind, segment, what in (("model-drift", "app=support-bot", f"model version {SHIFTED_VERSION}"),
                                ("data-drift", f"app={LANGUAGE_APP}", "users' language")):
        hit = any(k == kind and s.startswith(segment) for k, s in flagged)
        echo(f"  injected shift ({what}) on {segment}: {'found' if hit else 'NOT found'} as {kind}")
    if found.alerts and alerts.webhook:
        rep = SlackSender(box, alerts).deliver()
        echo(f"  sent {rep.delivered} alerts to Slack")
    elif found.alerts:
        shown = max(found.alerts, key=lambda a: len(a.shifts))  # the one whose likely cause the message names
        echo(f"  no FLYWHEEL_SLACK_WEBHOOK_URL set: the alerts wait in the outbox; the Slack message of {shown.kind} "
             f"on {shown.segment}:")
        echo("  " + json.dumps(slack_message(shown), ensure_ascii=False)[:1500])

    outcome = _curate_evaluate_release(settings, datasets, evaluation, echo)

    con = connect(settings)
    try:
        for title, sql in QUERIES:
            echo(f"\n-- {title}\n{con.sql(sql)}")
    finally:
        con.close()
    reports = [("quality", str(gates.report))] if gates.report else []
    reports += [(f"drift {segment}", path) for segment, path in sorted(found.reports.items())]
    echo("\n".join([
        "\nSummary:",
        f"  landed: {stats.landed['inferences']:,} inferences, {stats.landed['feedback']:,} feedback, "
        f"{stats.quarantined} quarantined",
        f"  flagged: {len(found.alerts)} drift alerts"
        + (" (" + ", ".join(f"{a.kind} on {a.segment}" for a in found.alerts) + ")" if found.alerts else ""),
        "  datasets: " + (", ".join(f"{ref}{'' if new else ' (unchanged)'}" for ref, new in outcome.datasets)
                          or "none curated") + f" (in {datasets.root_path(settings)})",
        f"  evaluation: {outcome.verdict}",
        "  reports:" + ("" if reports else " none written"),
        *(f"    {what}: {path}" for what, path in reports)]))
    echo("Next, try:\n" + "\n".join(f"  {cmd}" for cmd in NEXT_STEPS))
