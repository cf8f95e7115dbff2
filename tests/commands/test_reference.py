"""docs/CLI.md and docs/CONFIGURATION.md are what the code gives: the first is every command's --help, verbatim (as a
terminal of 110 columns or more prints it), the second every setting of every stage with its variable and default."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from flywheel.cli import main
from flywheel.commands import reference
from flywheel.environment import GROUPS, variables


def test_the_committed_references_are_what_the_code_generates() -> None:
    stale = reference.stale(main)
    assert stale == [], (f"docs/{', docs/'.join(stale)} differ from the code: run `{reference.REGENERATE}` "
                         "(or `make docs`) and commit the result")


def test_the_cli_reference_is_what_help_prints_for_every_command_and_subcommand() -> None:
    text = reference.cli_reference(main)
    commands = list(reference.walk(main))
    assert len(commands) >= 40 and commands[0][0] == ("flywheel",)
    runner = CliRunner()
    for path, _cmd, _ctx in commands:
        # CliRunner lays help out at 80 columns unless told the terminal's width
        res = runner.invoke(main, [*path[1:], "--help"], prog_name="flywheel", terminal_width=reference.WIDTH)
        assert res.exit_code == 0, res.output
        block = f"## {' '.join(path)}\n\n```text\n{res.output.rstrip()}\n```"
        assert block in text, f"the CLI reference does not hold `{' '.join(path)} --help` as it prints"


def test_the_reference_width_is_what_a_wide_terminal_shows(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """`flywheel drift run --help` in a terminal of 200 columns (in process, without CliRunner's fixed width)
    prints what the reference holds."""
    monkeypatch.setenv("COLUMNS", "200")
    assert main.main(["drift", "run", "--help"], prog_name="flywheel", standalone_mode=False) == 0
    shown = capsys.readouterr().out
    assert f"## flywheel drift run\n\n```text\n{shown.rstrip()}\n```" in reference.cli_reference(main)


def test_the_cli_reference_leaves_no_command_out() -> None:
    def names(group: object, prefix: str) -> set[str]:
        out = {prefix}
        for name, cmd in getattr(group, "commands", {}).items():
            if not cmd.hidden:
                out |= names(cmd, f"{prefix} {name}")
        return out

    headings = set(re.findall(r"^## (.+)$", reference.cli_reference(main), re.M))
    assert headings == names(main, "flywheel")


def test_the_configuration_reference_gives_every_setting_with_its_default() -> None:
    text = reference.configuration_reference()
    for g in GROUPS:
        assert f"## {g.title}\n" in text
        for var, default, _value, _doc in g.rows():
            row = next((ln for ln in text.splitlines() if ln.startswith(f"| `{var}` |")), None)
            assert row is not None, f"{var} is missing from the configuration reference"
            assert (f"| `{default}` |" if default else "| *(empty)* |") in row, row
    assert {m for m in re.findall(r"^\| `(FLYWHEEL_\w+)` \|", text, re.M)} == variables()


def test_check_says_which_command_regenerates_a_stale_file(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert reference.main(["--docs", str(tmp_path), "--check"]) == 1
    assert f"run `{reference.REGENERATE}`" in capsys.readouterr().err
    assert reference.main(["--docs", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CLI.md", "CONFIGURATION.md"]
    assert reference.main(["--docs", str(tmp_path), "--check"]) == 0
