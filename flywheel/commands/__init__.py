"""Command groups of stages beyond the landing lane, each in its own module, registered on the `flywheel` CLI.

A module here defines click commands or groups over library code and lists them in `COMMANDS`.
"""

from __future__ import annotations

import importlib

import click

MODULES: list[str] = [
    "flywheel.commands.quality", "flywheel.commands.lake",
    "flywheel.commands.drift", "flywheel.commands.alerts",
]


def register(main: click.Group) -> None:
    for name in MODULES:
        module = importlib.import_module(name)
        for cmd in module.COMMANDS:
            main.add_command(cmd)
