"""`flywheel serve`: register every stage's Prefect deployment with its schedule, then run them."""

from __future__ import annotations

import click

from flywheel.commands.options import pass_env, settings_help
from flywheel.environment import Environment
from flywheel.flows.settings import ServeSettings


@click.command("serve", help=f"""Register the Prefect deployments (lake-maintenance, quality, drift, curate) with the
schedules below and run their flow runs in this process until Ctrl-C (the deployments are then paused).

Talks to the Prefect API in PREFECT_API_URL: a local `prefect server start` (http://127.0.0.1:4200/api) or
Prefect Cloud (`prefect cloud login`). Each drift alert also starts `curate` through an automation, created
with the deployment. With FLYWHEEL_SERVE_REPORTS it also serves the drift reports, for the links in alerts. A
flow whose module does not import yet is skipped with a warning. To run the same deployments on a work pool
instead, see infra/prefect.yaml. Settings (a cron of `off`: not scheduled):

\b
{settings_help(ServeSettings, "FLYWHEEL_SERVE_")}

\b
Example:
  prefect server start &   # then: prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api
  FLYWHEEL_SCHEDULE_QUALITY='*/15 * * * *' flywheel serve
  flywheel serve --list
  FLYWHEEL_SERVE_REPORTS=0.0.0.0:8765 \\
    FLYWHEEL_DRIFT_REPORT_BASE_URL=http://flywheel.internal:8765/ flywheel serve
""")
@click.option("--list", "list_", is_flag=True, help="Print the deployments and their schedules; serve nothing.")
@pass_env
def serve(env: Environment, list_: bool) -> None:
    import logging

    from flywheel.flows.deployments import DEPLOYMENTS, build
    from flywheel.flows.deployments import serve as serve_deployments

    if list_:
        for d in DEPLOYMENTS:
            cron = env.serve.schedule(d.schedule) or "not scheduled"
            extra = ", and on each drift alert" if d.on_drift_alert else ""
            click.echo(f"{d.name:18s} {d.entrypoint:42s} {cron}{extra}")
        build(env.serve)  # fails like serving would on a flow that does not import; warns on a skipped one
        return
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        click.echo("PREFECT_API_URL is not set: Prefect runs a temporary server that lives only as long as this "
                   "process. Start `prefect server start` and set PREFECT_API_URL to keep runs and schedules.",
                   err=True)
    # Serving is long-lived: say which deployment was skipped and what Prefect registered, whatever -v says.
    logging.getLogger("flywheel.flows").setLevel(logging.INFO)
    if not env.serve.reports:
        serve_deployments(env.serve)
        return
    from flywheel.warehouse.drift.serving import ReportServer

    host, port = env.serve.reports_address()
    with ReportServer(env.drift.reports_path(env.core.home), host, port) as reports:
        click.echo(f"serving the drift reports of {reports.directory} on {reports.url}", err=True)
        if not env.drift.report_base_url:
            click.echo("FLYWHEEL_DRIFT_REPORT_BASE_URL is not set: alerts still link reports as file paths; set it "
                       "to the URL people reach this server at", err=True)
        serve_deployments(env.serve)


COMMANDS = [serve]
