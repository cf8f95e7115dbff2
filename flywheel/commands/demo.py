"""`flywheel demo`: the flywheel end to end on the embedded defaults."""

from __future__ import annotations

import click

from flywheel.commands.options import pass_env
from flywheel.environment import Environment


@click.command()
@pass_env
def demo(env: Environment) -> None:
    """Run the flywheel end to end on the embedded defaults with bundled real feedback data.

    Starts the embedded broker (unless one answers), sends events, lands them and queries the views. Safe to
    re-run: the views show each event once.

    \b
    Example:
      FLYWHEEL_HOME=/tmp/fw flywheel demo
    """
    from flywheel.infra.demo import run

    run(env.core, echo=click.echo)


COMMANDS = [demo]
