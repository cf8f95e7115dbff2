"""`flywheel demo`: the flywheel end to end on the embedded defaults."""

from __future__ import annotations

import click

from flywheel.commands.options import pass_env
from flywheel.environment import Environment


@click.command()
@pass_env
def demo(env: Environment) -> None:
    """Run the flywheel end to end on the embedded defaults, on real feedback data dated relative to now.

    Starts the embedded broker (unless one answers), replays the last 8 days of traffic (a model version gets
    worse yesterday), lands it, runs the quality gates and drift detection, curates the bundled recipes,
    evaluates both model versions again and rolls the release back on the gate's verdict. It ends with a summary
    (what landed and was flagged, the datasets@versions, the verdict, the reports it wrote) and the next commands
    to try. Safe to re-run: the views show each event once. FLYWHEEL_DEMO_SCALE makes it larger or smaller.

    \b
    Example:
      flywheel demo
      FLYWHEEL_HOME=/tmp/fw FLYWHEEL_DEMO_SCALE=0.2 flywheel demo
    """
    from flywheel.infra.demo import run

    run(env.core, env.demo, env.quality, env.drift, env.alerts, env.datasets, env.evaluation, echo=click.echo)


COMMANDS = [demo]
