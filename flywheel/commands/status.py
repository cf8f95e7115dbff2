"""`flywheel status`: the health of the flywheel at a glance, and an exit code a monitor can use.

Each check reads what its stage already records (the broker's offsets and the lake's watermarks, the run tables,
the outbox, the jobs table, the releases); none changes anything.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import click
from confluent_kafka import Consumer, TopicPartition

from flywheel.commands.options import format_option, pass_env
from flywheel.environment import Environment


@dataclass
class Check:
    """One stage's finding. A `warning` is worth a look (e.g. stale datasets) but leaves the exit code at 0."""

    name: str
    healthy: bool
    summary: str
    details: dict[str, object] = field(default_factory=dict)
    warning: bool = False


def _age(t: datetime | None) -> str:
    if t is None:
        return "never"
    s = (datetime.now(timezone.utc) - t).total_seconds()
    return f"{s:.0f} s ago" if s < 120 else f"{s / 60:.0f} min ago" if s < 7200 else f"{s / 3600:.1f} h ago"


def broker_and_lag(env: Environment) -> Check:
    from confluent_kafka import KafkaException

    from flywheel.streams.security import librdkafka_config
    from flywheel.streams.topics import topic_ids
    from flywheel.warehouse.lake import Lake

    from flywheel.infra.broker import reachable

    s = env.core
    hosts = [h.rsplit(":", 1) for h in s.kafka_bootstrap.split(",")]
    if not any(reachable(host, int(port), timeout=2) for host, port in hosts):
        # say it without librdkafka, which would retry and log every failed connection
        return Check("broker", False, f"no broker answers at {s.kafka_bootstrap} (`flywheel broker start`, or "
                                      "set FLYWHEEL_KAFKA_BOOTSTRAP)")
    c = Consumer({"bootstrap.servers": s.kafka_bootstrap, **librdkafka_config(s), "group.id": "flywheel-status",
                  "enable.auto.commit": False,
                  "log_level": 2, "enable.partition.eof": True, "fetch.wait.max.ms": 50})
    try:
        try:
            meta = c.list_topics(timeout=5)
        except KafkaException as exc:
            return Check("broker", False, f"no broker answers at {s.kafka_bootstrap} ({exc})")
        topics = {s.inference_topic: "inferences", s.feedback_topic: "feedback"}
        missing = [t for t in topics if t not in meta.topics]
        if missing:
            return Check("broker", False, f"{s.kafka_bootstrap} is up but has no {', '.join(missing)} "
                                          "(`flywheel broker start` creates them)")
        ids = topic_ids(s, list(topics))
        lake = Lake(s.lake_location)
        lag: dict[str, int] = {}
        for t, table in topics.items():
            tps = [(t, p) for p in meta.topics[t].partitions]
            marks = lake.watermarks(table, tps, ids)
            for (topic, p) in tps:
                lag[f"{topic}[{p}]"] = max(_end(c, topic, p) - (marks[(topic, p)] or 0), 0)
    finally:
        c.close()
    behind = sum(lag.values())
    return Check("broker", True, f"{s.kafka_bootstrap} up; {behind:,} events not landed yet across {len(lag)} "
                                 "partitions" + _lagging(lag), {"lag": lag})


def _lagging(lag: dict[str, int], shown: int = 3) -> str:
    """The partitions behind, most behind first: at most `shown` of them, then how many more (a line, not a
    table: `details["lag"]` has them all)."""
    behind = sorted(((n, tp) for tp, n in lag.items() if n > 0), key=lambda x: (-x[0], x[1]))
    if not behind:
        return ""
    more = f", +{len(behind) - shown} more" if len(behind) > shown else ""
    return " (" + ", ".join(f"{tp} {n:,}" for n, tp in behind[:shown]) + more + ")"


def _end(c: Consumer, topic: str, partition: int) -> int:
    """The partition's end offset. The broker's high watermark can be short of it (the embedded broker answers
    with its last batch's first offset + 1, see STACK-NOTES), so the last batch is read to see its last record."""
    _lo, hi = c.get_watermark_offsets(TopicPartition(topic, partition), timeout=5)
    if hi <= 0:
        return 0
    c.assign([TopicPartition(topic, partition, hi - 1)])
    end, deadline = hi, time.monotonic() + 3
    while time.monotonic() < deadline:
        msgs = c.consume(1000, 0.2)
        good = [m for m in msgs if m.error() is None]
        if good:
            end = max(end, max(m.offset() or 0 for m in good) + 1)
        if any(m.error() is not None for m in msgs) or not msgs:
            break
    c.unassign()
    return end


def landed(env: Environment) -> Check:
    from flywheel.warehouse import tables
    from flywheel.warehouse.lake import Lake

    problem = Lake(env.core.lake_location).write_problem()  # a landing worker holds its offsets until it is fixed
    last: dict[str, str] = {}
    for table in ("inferences", "feedback", "quarantine"):
        t = tables.query(env.core.lake_location, table, "SELECT max(_ingested_at) AS at, count(*) AS n FROM t")
        at = t["at"][0].as_py() if t.num_rows and "at" in t.column_names else None
        last[table] = f"{t['n'][0].as_py():,} rows, last {_age(at)}" if at else "nothing landed"
    summary = "; ".join(f"{k}: {v}" for k, v in last.items())
    return Check("lake", problem is None, f"{problem}; {summary}" if problem else summary,
                 {"tables": last, "problem": problem})


def quality(env: Environment) -> Check:
    from flywheel.warehouse.report.gather import quality_runs

    found = quality_runs(env.core, env.quality)
    if not found:
        return Check("quality", True, "no quality run yet (`flywheel quality run`)")
    last = [r for r in found if r.run_id == found[-1].run_id]
    ok = all(r.gate_success for r in last)
    return Check("quality", ok, f"last run {last[0].run_id} {_age(max(r.run_at for r in last))}: "
                                + ("passed" if ok else "FAILED (`flywheel quality suspects`)"))


def drift(env: Environment) -> Check:
    from flywheel.warehouse.report.gather import drift_runs

    found = drift_runs(env.core)
    if not found:
        return Check("drift", True, "no drift run yet (`flywheel drift run`)")
    last = found[-1]
    return Check("drift", True, f"last run {last.run_id} {_age(last.run_at)}: {last.alerts} alerting checks")


def curation(env: Environment) -> Check:
    from flywheel.warehouse.datasets.registry import Registry

    newest: dict[str, tuple[int, datetime]] = {}
    for v in Registry(env.core, env.datasets).versions():  # by name then version: the last one is the latest
        newest[v.name] = (v.version, v.created_at)
    if not newest:
        return Check("curation", True, "no dataset curated yet (`flywheel curate --all`)", {"datasets": {}},
                     warning=True)
    bound = env.datasets.stale_bound
    now = datetime.now(timezone.utc)
    stale = sorted((n for n, (_v, at) in newest.items() if now - at > bound), key=lambda n: newest[n][1])
    listed = "; ".join(f"{n}@{v} {_age(at)}" for n, (v, at) in newest.items())
    summary = f"{len(newest)} dataset{'s' if len(newest) > 1 else ''}: {listed}"
    if stale:
        fix = f"flywheel curate {stale[0]}" if len(stale) == 1 else "flywheel curate --all"
        summary += (f"; no new version of {', '.join(stale)} in over {env.datasets.stale_after} (`{fix}`; a run "
                    "whose content did not change writes none)")
    return Check("curation", True, summary,
                 {"datasets": {n: {"version": v, "created_at": at.isoformat()} for n, (v, at) in newest.items()},
                  "stale": stale, "stale_after": env.datasets.stale_after}, warning=bool(stale))


def alerts(env: Environment) -> Check:
    from flywheel.warehouse.alerts.outbox import Outbox

    counts = Outbox.from_settings(env.core.home, env.alerts).counts()
    failed = counts.get("failed", 0)
    waiting = counts.get("pending", 0) + counts.get("sending", 0)
    return Check("alerts", failed == 0, f"{waiting} waiting, {failed} failed, {counts.get('delivered', 0)} delivered"
                 + (" (`flywheel alerts list --status failed`)" if failed else ""), {"counts": counts})


def evaluations(env: Environment) -> Check:
    from flywheel.warehouse.report.gather import eval_runs

    found = eval_runs(env.core)
    if not found:
        return Check("evaluation", True, "no evaluation run yet")
    last = found[-1]
    state = "finished" if last.finished else "unfinished (re-run it to resume)"
    return Check("evaluation", True, f"last run {last.run_id} of {last.eval_set} on {last.model}: {state}")


def jobs(env: Environment) -> Check:
    from flywheel.warehouse.report.gather import jobs as listed_jobs

    listed = listed_jobs(env.core, env.jobs, limit=1000)
    if not listed:
        return Check("jobs", True, "no job yet")
    failed = [j.id for j in reversed(listed) if j.status == "failed"]
    return Check("jobs", not failed, f"{len(listed)} jobs, {len(failed)} failed"
                 + (f" (`flywheel jobs show {failed[0]}`)" if failed else ""))


def releases(env: Environment) -> Check:
    from flywheel.warehouse.report.gather import champions

    found = champions(env.core)
    if not found:
        return Check("releases", True, "no champion recorded yet")
    named = {app: f"{r.model} {r.model_version or ''}" for app, r in found.items()}
    return Check("releases", True, "; ".join(f"{a}: {c}" for a, c in named.items()), {"champions": named})


CHECKS = (broker_and_lag, landed, quality, drift, curation, alerts, evaluations, jobs, releases)


@click.command("status")
@format_option("text", "json")
@pass_env
def status(env: Environment, fmt: str) -> None:
    """The health of every stage: the broker and the lag per partition, what landed last, the last quality and
    drift runs, each dataset's latest version, open alerts, evaluation runs, jobs, and the champion per app. Exit
    code 1 when something is unhealthy; a warning (WARN: no dataset yet, or none newer than
    FLYWHEEL_DATASETS_STALE_AFTER) leaves it at 0.

    \b
    Example:
      flywheel status
      flywheel status --format json | jq .checks
    """
    checks = []
    for fn in CHECKS:
        try:
            checks.append(fn(env))
        except Exception as exc:  # one stage's trouble is a finding of status, not its crash
            checks.append(Check(fn.__name__, False, f"could not be checked: {type(exc).__name__}: {exc}"))
    healthy = all(c.healthy for c in checks)
    if fmt == "json":
        click.echo(json.dumps({"healthy": healthy, "checks": [c.__dict__ for c in checks]}, default=str))
    else:
        for c in checks:
            click.echo(f"{'BAD ' if not c.healthy else 'WARN' if c.warning else 'ok  '} {c.name:11s} {c.summary}")
    sys.exit(0 if healthy else 1)


COMMANDS = [status]
