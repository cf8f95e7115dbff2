"""`flywheel report`: the overview page of every stage (`flywheel.warehouse.report`)."""

from __future__ import annotations

from pathlib import Path

import click

from flywheel.commands.options import pass_env
from flywheel.environment import Environment


@click.command("report")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the page. Default: $FLYWHEEL_HOME/report.html.")
@click.option("--open", "open_", is_flag=True, help="Open the page in a browser.")
@pass_env
def report(env: Environment, out: Path | None, open_: bool) -> None:
    """Write one self-contained HTML overview: traffic and feedback rates per app and model version, drift
    scores, quality gates, dataset versions, evaluations and their comparisons, jobs and releases, with links to
    the Evidently and quality reports. The page loads nothing from the network.

    \b
    Example:
      flywheel report --open
      flywheel report --out /srv/www/flywheel.html
    """
    from flywheel.warehouse.report.gather import gather
    from flywheel.warehouse.report.page import write

    path = out or Path(env.core.home) / "report.html"
    write(gather(env.core, env.quality, env.drift, env.datasets, env.evaluation, env.jobs), path)
    click.echo(str(path))
    if open_:
        import webbrowser

        webbrowser.open(path.resolve().as_uri())


COMMANDS = [report]
