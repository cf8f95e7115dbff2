"""`flywheel config`: every setting of every stage, its variable, default, current value and meaning."""

from __future__ import annotations

import json

import click

from flywheel.commands.options import format_option, pass_env
from flywheel.environment import GROUPS, Environment


@click.command("config")
@click.option("--stage", type=click.Choice([g.attribute for g in GROUPS]), default=None,
              help="Only the settings of this stage.")
@format_option("text", "json")
@pass_env
def config_cmd(env: Environment, stage: str | None, fmt: str) -> None:
    """Show every setting of every stage: its environment variable, default, current value and meaning.

    Settings are read once per command from FLYWHEEL_* environment variables. Secrets (the Slack webhook URL)
    show only whether they are set.

    \b
    Example:
      FLYWHEEL_HOME=/data/flywheel flywheel config
      flywheel config --stage drift --format json
    """
    for g in GROUPS:
        if stage and g.attribute != stage:
            continue
        rows = g.rows(env)
        if fmt == "json":
            for var, default, value, doc in rows:
                click.echo(json.dumps({"stage": g.attribute, "variable": var, "default": default, "value": value,
                                       "doc": doc}, ensure_ascii=False))
            continue
        click.echo(f"# {g.title}")
        for var, default, value, doc in rows:
            shown = f" (default: {default})" if default not in ("", value) else ""
            click.echo(f"{var:40s} {value:28s} {doc}{shown}")
        click.echo("")


COMMANDS = [config_cmd]
