"""`flywheel jobs list|show|retry|cancel`: the jobs that trigger policies started."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import click

from flywheel.commands.options import due_ticks, format_option, jobs_runtime, pass_env, settings_help, watched_versions
from flywheel.environment import Environment
from flywheel.errors import ConfigError
from flywheel.warehouse.jobs.settings import JobSettings


def _store(env: Environment):  # type: ignore[no-untyped-def]
    from flywheel.warehouse.jobs.store import JobStore

    return JobStore(env.jobs.db_path(env.core.home))


def _ts(t: float | None) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds") if t else ""


@click.group(epilog="\b\nSettings:\n" + settings_help(JobSettings, "FLYWHEEL_JOBS_", 34))
def jobs() -> None:
    """Jobs started by trigger policies (a new dataset version, a drift alert): each starts once, is recorded
    with its state, attempts and output, and can be retried or cancelled.

    \b
    Example:
      flywheel jobs list --status failed
      flywheel jobs retry 7
    """


@jobs.command("list")
@click.option("--status", type=click.Choice(["running", "succeeded", "failed", "cancelled"]), default=None)
@click.option("--limit", type=int, default=50, show_default=True)
@format_option("text", "json")
@pass_env
def jobs_list(env: Environment, status: str | None, limit: int, fmt: str) -> None:
    """List jobs, newest first.

    \b
    Example:
      flywheel jobs list --format json
    """
    for j in _store(env).list(status, limit):
        if fmt == "json":
            click.echo(json.dumps({**j.__dict__, "created_at": _ts(j.created_at), "started_at": _ts(j.started_at),
                                   "finished_at": _ts(j.finished_at)}, default=str))
        else:
            click.echo(f"{j.id:5d} {j.status:10s} {_ts(j.created_at)} {j.policy:20s} {j.target:10s} {j.subject} "
                       f"attempts {j.attempts}" + (f" -> {j.result}" if j.result else "")
                       + (f" ({j.error[:80]})" if j.error else ""))


@jobs.command("show")
@click.argument("job_id", type=int)
@pass_env
def jobs_show(env: Environment, job_id: int) -> None:
    """Everything recorded about one job: parameters, result, error and the tail of its output.

    \b
    Example:
      flywheel jobs show 7
    """
    j = _store(env).get(job_id)
    for k, v in j.__dict__.items():
        click.echo(f"{k:12s} {_ts(v) if k.endswith('_at') or k == 'lease_until' else v}")


@jobs.command("dispatch")
@pass_env
def jobs_dispatch(env: Environment) -> None:
    """Hand the latest version of every dataset a policy watches, and the latest cron tick of every `schedule`
    policy, to the policies, as the `dispatch` flow does on its schedule (after a new policy file, say): each
    matching job starts once, whoever else dispatches it.

    \b
    Example:
      flywheel jobs dispatch
    """
    from flywheel.warehouse.jobs.dispatch import Event, dispatch

    rt = jobs_runtime(env)
    if rt is None:
        click.echo(f"no policy file at {env.jobs.policies_path(env.core.home)}: nothing to dispatch")
        return
    events: list[Event] = [*watched_versions(env, rt), *due_ticks(env, rt)]
    for j in dispatch(rt.policies.values(), events, rt.store, rt.secrets, rt.evaluation, rt.latest):
        click.echo(f"policy {j.policy} started job {j.id} ({j.target}) on {j.subject}: {j.status}"
                   + (f" -> {j.result}" if j.result else f" ({j.error})" if j.error else ""))


@jobs.command("retry")
@click.argument("job_id", type=int)
@pass_env
def jobs_retry(env: Environment, job_id: int) -> None:
    """Run a failed or cancelled job again, with its recorded parameters and its policy's target.

    \b
    Example:
      CI_WEBHOOK_SECRET=... flywheel jobs retry 7
    """
    from flywheel.warehouse.jobs.dispatch import retry

    rt = jobs_runtime(env)
    if rt is None:
        raise ConfigError(f"no policy file at {env.jobs.policies_path(env.core.home)}: a job runs its policy's "
                          "target, so retrying needs the file (FLYWHEEL_JOBS_POLICIES_FILE)",
                          variable="FLYWHEEL_JOBS_POLICIES_FILE")
    j = retry(rt.store, job_id, rt.policies, rt.secrets, rt.evaluation)
    click.echo(f"job {j.id}: {j.status}" + (f" -> {j.result}" if j.result else f" ({j.error})"))


@jobs.command("cancel")
@click.argument("job_id", type=int)
@pass_env
def jobs_cancel(env: Environment, job_id: int) -> None:
    """Cancel a job: it is marked cancelled (its runner's late result does not overwrite that, and it is not
    retried unless asked), and a running shell command (its whole process group, on this host) or Prefect flow
    run is stopped. A webhook call, a fine-tune or an evaluation already under way finishes, unrecorded.

    \b
    Example:
      flywheel jobs cancel 7
    """
    from flywheel.warehouse.jobs.targets import stop

    store = _store(env)
    was = store.get(job_id)
    j = store.cancel(job_id)
    stopped = f"; {stop(j.handle)}" if j.handle and was.status == "running" else ""
    click.echo(f"job {j.id}: {j.status}{stopped}")


COMMANDS = [jobs]
