"""Every command is documented: help text with an example (the README points users at --help)."""

from __future__ import annotations

import re

import click
from click.testing import CliRunner

from flywheel.cli import main


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    """Every command, the groups (and `flywheel` itself) included."""
    out: list[tuple[tuple[str, ...], click.Command]] = [(prefix, group)]
    for name, cmd in group.commands.items():
        path = (*prefix, name)
        if isinstance(cmd, click.Group):
            out += _commands(cmd, path)
        else:
            out.append((path, cmd))
    return out


def test_every_command_has_help_with_an_example_that_runs_it() -> None:
    """The convention: an `Example:` block (after a `\\b` line, so click keeps its lines) whose lines run the
    command itself, e.g. `flywheel drift run --current 1d` for `flywheel drift run`."""
    commands = _commands(main)
    assert len(commands) >= 40
    missing = []
    for path, _ in commands:
        res = CliRunner().invoke(main, [*path, "--help"])
        assert res.exit_code == 0, path
        block = re.search(r"^ *Examples?:\n((?:[ \t]+\S.*\n?)+)", res.output, re.M)
        command = " ".join(("flywheel", *path))
        if block is None or not re.search(rf"{re.escape(command)}(\s|$)", block.group(1)):
            missing.append(f"`{command} --help`")
    assert missing == [], f"no Example: block running the command in {', '.join(missing)}"


def test_config_lists_every_setting() -> None:
    res = CliRunner().invoke(main, ["config"], env={"FLYWHEEL_PARTITIONS": "7"})
    assert res.exit_code == 0
    assert "FLYWHEEL_HOME" in res.output and "FLYWHEEL_KAFKA_BOOTSTRAP" in res.output
    line = next(ln for ln in res.output.splitlines() if ln.startswith("FLYWHEEL_PARTITIONS"))
    assert " 7 " in line


def test_a_bad_setting_is_a_clear_error() -> None:
    res = CliRunner().invoke(main, ["config"], env={"FLYWHEEL_PARTITIONS": "many"})
    assert res.exit_code == 1
    assert "Error: FLYWHEEL_PARTITIONS='many' is not a valid int" in res.output
