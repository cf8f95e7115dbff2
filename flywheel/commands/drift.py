"""`flywheel drift run|report` (batch drift detection) and `flywheel signals` (the live-signal worker)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from flywheel.commands.options import (alert_next_steps, dispatch, log_format_option, metrics_port_option,
                                      metrics_served, pass_env)
from flywheel.environment import Environment
from flywheel.schemas.alerts import Alert
from flywheel.warehouse.jobs.store import Job
from flywheel.streams.signals import SignalSettings
from flywheel.config import describe
from flywheel.warehouse.drift.settings import DriftSettings



def _env_help() -> str:
    return "\n".join(f"  {var:34s} {doc}" for var, _default, doc in describe(DriftSettings, "FLYWHEEL_DRIFT_"))


@click.group(help=f"""Detect data drift (what users send) and model drift (outputs, latency, feedback).

Compares a current window with a reference per segment using effect sizes (not bare p-values), stores every
check in the `drift_runs` table, writes Evidently reports and sends alerts to Slack through the outbox
(`flywheel alerts`). Settings:

\b
{_env_help()}

\b
Example:
  flywheel drift run --current 1d --reference 7d
  flywheel drift report --open
""")
def drift() -> None:
    pass


@drift.command("run")
@click.option("--current", metavar="WINDOW", default=None,
              help="START/END (ISO) or a length such as 1h or 1d: the last complete window of that length. "
                   "Default: FLYWHEEL_DRIFT_WINDOW.")
@click.option("--reference", metavar="WINDOW|DATASET", default=None,
              help="A length (the time just before --current), START/END, or a Parquet/Delta dataset path. "
                   "Default: FLYWHEEL_DRIFT_REFERENCE.")
@click.option("--by", metavar="COLUMNS", default=None,
              help="Segment levels, cumulative (app,model,prompt_version = 3 levels). Default: FLYWHEEL_DRIFT_BY.")
@click.option("--no-report", is_flag=True, help="Do not write Evidently HTML reports.")
@click.option("--no-send", is_flag=True, help="Queue alerts in the outbox but do not post them now.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@pass_env
def drift_run(env: Environment, current: str | None, reference: str | None, by: str | None, no_report: bool,
              no_send: bool, fmt: str) -> None:
    """Run drift detection once and store it in `drift_runs`.

    Exit code 0 even when something drifted (that is a finding, not an error); alerts go to the outbox and, when
    FLYWHEEL_SLACK_WEBHOOK_URL is set, to Slack.

    \b
    Example:
      flywheel drift run --current 2026-11-27/2026-11-28 --reference 7d --by app,model
      flywheel drift run --current 1h --reference golden_inputs.parquet --format json
    """
    from flywheel.warehouse.alerts.outbox import Outbox, SlackSender
    from flywheel.warehouse.drift.run import run_drift

    s = env.core
    ds = env.drift
    alerts = env.alerts
    outbox = Outbox.from_settings(s.home, alerts)
    run = run_drift(s, ds, current=current, reference=reference, by=by, reports=not no_report, sink=outbox,
                    next_steps=alert_next_steps(env))
    delivered = None
    if not no_send and alerts.webhook and run.alerts:
        delivered = SlackSender(outbox, alerts).deliver()
    started = dispatch_alerts(env, run.alerts)
    if fmt == "json":
        click.echo(json.dumps(_summary(run, delivered), default=str))
        return
    click.echo(f"drift run {run.run_id}: current {run.window.label} ({run.n_current} inferences) vs reference "
               f"{run.reference} ({run.n_reference})")
    for side, n in (("current window", run.n_current), ("reference", run.n_reference)):
        if n == 0:
            click.echo(f"nothing to compare: no inferences in the {side} (check --current/--reference and "
                       "that `flywheel ingest` has landed events)", err=True)
    segs = {(e.level, e.segment) for e in run.effects}
    click.echo(f"checked {len(run.effects)} feature x segment pairs in {len(segs)} segments; "
               f"{len(run.drifted)} drifted, {len(run.alerts)} alerts")
    for e in sorted(run.drifted, key=lambda e: -e.score / e.threshold)[:15]:
        click.echo(f"  {e.segment:50s} {e.feature:24s} {e.before} -> {e.after}  {e.method} {e.score:.3g} "
                   f"(threshold {e.threshold:g}, p={e.p_value:.1e})")
    for seg, path in run.reports.items():
        click.echo(f"report {seg}: {path}")
    if run.alerts:
        where = ("sent to Slack" if delivered and delivered.delivered == len(run.alerts) else
                 "queued in the outbox (`flywheel alerts list`)")
        click.echo(f"{len(run.alerts)} alerts {where}")
    for job in started:
        click.echo(f"policy {job.policy} started job {job.id} ({job.target}): {job.status}"
                   + (f" -> {job.result}" if job.result else f" ({job.error})" if job.error else ""))


def dispatch_alerts(env: Environment, alerts: list[Alert]) -> list[Job]:
    """Hand a drift run's alerts to the trigger policies: each matching job starts once."""
    return dispatch(env, alerts)


def _summary(run: Any, delivered: Any) -> dict[str, Any]:
    return {"run_id": run.run_id, "window": run.window.label, "reference": run.reference,
            "n_current": run.n_current, "n_reference": run.n_reference, "checks": len(run.effects),
            "drifted": [{"segment": e.segment, "feature": e.feature, "method": e.method, "score": e.score,
                         "threshold": e.threshold, "p_value": e.p_value, "before": e.before, "after": e.after}
                        for e in run.drifted],
            "alerts": [json.loads(a.to_json()) for a in run.alerts], "reports": run.reports, "timings": run.timings,
            "delivered": delivered.delivered if delivered else 0}


@drift.command("report")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the page. Default: $FLYWHEEL_HOME/drift_reports/index.html.")
@click.option("--last", type=int, default=30, show_default=True, help="Windows shown per segment.")
@click.option("--open", "open_", is_flag=True, help="Open the page in a browser.")
@pass_env
def drift_report(env: Environment, output: Path | None, last: int, open_: bool) -> None:
    """Write (and optionally open) the HTML overview: drift scores over time per segment, with links to the
    Evidently reports.

    \b
    Example:
      flywheel drift report --open
      flywheel drift report --output /srv/www/drift.html --last 90
    """
    from flywheel.warehouse.drift.overview import write_overview

    s = env.core
    path = output or env.drift.reports_path(s.home) / "index.html"
    write_overview(s, path, last)
    click.echo(str(path))
    if open_:
        import webbrowser

        webbrowser.open(path.resolve().as_uri())


@click.command("signals", help="""Run the live-signal worker: volume, error rate, latency p95 and thumbs-down rate
per app and model version in tumbling windows, alerting within about a window of a sharp change.

It is its own consumer group (FLYWHEEL_SIGNALS_GROUP), so it never takes partitions from `flywheel ingest`.
Stop with Ctrl-C. Settings:

\b
""" + "\n".join(f"  {v:38s} {d}" for v, _default, d in describe(SignalSettings, "FLYWHEEL_SIGNALS_")) + """

\b
Example:
  FLYWHEEL_SLACK_WEBHOOK_URL=https://hooks.slack.com/services/... flywheel signals
  flywheel signals --metrics-port 9465 --log-format json
""")
@metrics_port_option
@log_format_option
@pass_env
def signals(env: Environment, metrics_port: int | None) -> None:
    import asyncio
    import signal

    from flywheel.errors import BrokerUnavailable
    from flywheel.streams.metrics import SignalMetrics
    from flywheel.streams.signals import make_app
    from flywheel.streams.topics import ensure_topics

    s = env.core
    sig = env.signals
    ensure_topics(s)
    from flywheel.warehouse.alerts.outbox import Outbox

    metrics = SignalMetrics()
    app = make_app(s, sig, env.alerts, Outbox.from_settings(s.home, env.alerts), metrics=metrics)
    click.echo(f"live signals on {s.inference_topic}, {s.feedback_topic} (group {sig.group}, windows of "
               f"{sig.window_s:g} s); Ctrl-C to stop", err=True)

    async def main() -> None:
        # Ctrl-C / SIGTERM end the wait, then the app stops cleanly (leaves its group, commits offsets); letting
        # asyncio cancel the running task instead left faust stopping inside a cancelled task, and it hung.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await app.start()
        try:
            await stop.wait()
        finally:
            await app.stop()

    try:
        with metrics_served(env, metrics_port, metrics.registry, "live-signal"):
            asyncio.run(main())
    except OSError as exc:
        raise BrokerUnavailable(f"live signals could not reach Kafka at {s.kafka_bootstrap}: {exc}",
                                bootstrap=s.kafka_bootstrap) from None
    sys.exit(0)


COMMANDS = [drift, signals]
