"""`flywheel alerts list|send|resend`: the alert outbox and its delivery to Slack."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import click

from flywheel.commands.options import pass_env
from flywheel.environment import Environment
from flywheel.warehouse.alerts.outbox import AlertSettings, Outbox, SlackSender
from flywheel.config import describe


def _outbox(env: Environment) -> tuple[Outbox, AlertSettings]:
    return Outbox.from_settings(env.core.home, env.alerts), env.alerts


@click.group(help="""Alerts from drift runs and live signals: every alert waits in an outbox until Slack has
accepted it, so an outage or rate limit delays alerts but loses none. Settings:

\b
""" + "\n".join(f"  {v:34s} {d}" for v, _default, d in describe(AlertSettings, "FLYWHEEL_ALERTS_")) + """

\b
Example:
  flywheel alerts list --status pending
  flywheel alerts send --wait 60
""")
def alerts() -> None:
    pass


def _ts(t: float | None) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds") if t else ""


@alerts.command("list")
@click.option("--status", type=click.Choice(["pending", "sending", "delivered", "suppressed", "failed"]),
              default=None, help="Only alerts in this state.")
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@pass_env
def alerts_list(env: Environment, status: str | None, limit: int, fmt: str) -> None:
    """List alerts, newest first, with their delivery state.

    \b
    Example:
      flywheel alerts list --status failed
    """
    box, _ = _outbox(env)
    rows = box.rows(status, limit)
    if fmt == "json":
        for r in rows:
            click.echo(json.dumps({"id": r.id, "status": r.status, "kind": r.kind, "segment": r.segment,
                                   "window": r.window, "created_at": _ts(r.created_at), "attempts": r.attempts,
                                   "last_status": r.last_status, "last_error": r.last_error,
                                   "delivered_at": _ts(r.delivered_at), "items": [i.to_dict() for i in r.alert.items],
                                   "report": r.alert.report}, ensure_ascii=False, default=str))
        return
    counts = box.counts()
    click.echo(", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no alerts")
    for r in rows:
        feats = ", ".join(r.alert.features)
        extra = f" (last: {r.last_error})" if r.last_error and r.status != "delivered" else ""
        click.echo(f"{r.id:5d} {r.status:10s} {_ts(r.created_at)} {r.kind:18s} {r.segment} [{feats}] "
                   f"attempts {r.attempts}{extra}")


@alerts.command("send")
@click.option("--wait", type=float, default=0.0, show_default=True, metavar="SECONDS",
              help="Keep retrying (honouring Retry-After and backoff) for up to SECONDS.")
@pass_env
def alerts_send(env: Environment, wait: float) -> None:
    """Deliver the alerts that are due to the Slack webhook.

    \b
    Example:
      FLYWHEEL_SLACK_WEBHOOK_URL=https://hooks.slack.com/services/... flywheel alerts send --wait 120
    """
    from flywheel.errors import ConfigError

    box, settings = _outbox(env)
    if not settings.webhook:
        raise ConfigError("FLYWHEEL_SLACK_WEBHOOK_URL is not set: alerts stay in the outbox until it is")
    sender = SlackSender(box, settings)
    rep = sender.drain(wait) if wait > 0 else sender.deliver()
    click.echo(f"delivered {rep.delivered}, retrying {box.pending()}, failed {rep.failed}"
               + (f" (next attempt {_ts(rep.waiting_until)})" if rep.waiting_until else ""))


@alerts.command("resend")
@click.argument("ids", nargs=-1, type=int)
@click.option("--failed", is_flag=True, help="Queue every failed alert again.")
@pass_env
def alerts_resend(env: Environment, ids: tuple[int, ...], failed: bool) -> None:
    """Queue alerts again (by id, any state, or all failed ones) and try to deliver them now.

    \b
    Example:
      flywheel alerts resend 12 13
      flywheel alerts resend --failed
    """
    from flywheel.errors import ConfigError

    if not ids and not failed:
        raise ConfigError("name alert ids or pass --failed")
    box, settings = _outbox(env)
    n = box.resend(list(ids) or None, failed=failed)
    click.echo(f"queued {n} alerts again")
    if settings.webhook and n:
        rep = SlackSender(box, settings).deliver()
        click.echo(f"delivered {rep.delivered}, retrying {box.pending()}, failed {rep.failed}")


COMMANDS = [alerts]
