"""The `flywheel` command: a thin layer over the library. Library errors become `Error: ...` and exit code 1.

Each command lives in `flywheel.commands` (one module per stage) and gets its settings through
`flywheel.commands.options.pass_env`, read once per invocation.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from flywheel.commands import (alerts, collect, config, datasets, demo, drift, evaluate, jobs, lake, lane, quality,
                               report, serve, status)
from flywheel.errors import FlywheelError
from flywheel.logs import FORMATS, LogSettings, configure


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FlywheelError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("-v", "--verbose", is_flag=True, help="Log what the workers do.")
@click.option("--log-format", type=click.Choice(FORMATS), default=None,
              help="Logs as readable lines or one JSON object per line (default: FLYWHEEL_LOG_FORMAT, text).")
@click.version_option(package_name="flywheel")
def main(verbose: bool, log_format: str | None) -> None:
    """flywheel: the feedback data flywheel for LLM products.

    Settings come from FLYWHEEL_* environment variables (`flywheel config` lists them).

    \b
    Example:
      flywheel broker start && flywheel send events.jsonl && flywheel ingest --until-idle 5
      flywheel sql "SELECT app, count(*) FROM interactions GROUP BY app"
    """
    # The one place logging is set up (a long-running command's own --log-format only changes the format); only
    # this setting is read here, so that `--help` works whatever else the environment holds.
    configure(logging.INFO if verbose else logging.WARNING, log_format or LogSettings.from_env().log_format)


for _module in (config, lane, collect, demo, quality, lake, drift, alerts, evaluate, jobs, status, serve, datasets,
                report):
    for _command in _module.COMMANDS:
        main.add_command(_command)

if __name__ == "__main__":  # pragma: no cover
    main()
