"""Logs as one JSON object per line, configured once at the CLI edge (FLYWHEEL_LOG_FORMAT or --log-format)."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from flywheel.cli import main
from flywheel.logs import JsonFormatter, coords


@pytest.fixture
def root_logging() -> Iterator[logging.Logger]:
    """The root logger, given back as it was (the CLI reconfigures it)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield root
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_a_json_line_carries_the_message_coordinates_and_the_traceback() -> None:
    log = logging.getLogger("flywheel.test")
    try:
        raise ValueError("boom")
    except ValueError:
        record = log.makeRecord("flywheel.test", logging.ERROR, __file__, 1, "bad %s", ("event",),
                                exc_info=sys.exc_info(), extra=coords("t.inference", 2, 41, table="quarantine"))
    line = JsonFormatter().format(record)
    assert "\n" not in line
    got = json.loads(line)
    assert {k: got[k] for k in ("level", "logger", "message", "topic", "partition", "offset", "table")} == {
        "level": "error", "logger": "flywheel.test", "message": "bad event", "topic": "t.inference",
        "partition": 2, "offset": 41, "table": "quarantine"}
    assert "ValueError: boom" in got["exception"] and got["time"].endswith("+00:00")


@pytest.mark.parametrize("how", ["env", "option"])
def test_the_cli_sets_up_json_logs_from_the_setting_or_the_option(root_logging: logging.Logger, how: str) -> None:
    args, env = (["config"], {"FLYWHEEL_LOG_FORMAT": "json"}) if how == "env" else (
        ["--log-format", "json", "config"], {})
    res = CliRunner().invoke(main, args, env=env)
    assert res.exit_code == 0, res.output
    assert [type(h.formatter) for h in root_logging.handlers] == [JsonFormatter]


def test_an_unknown_log_format_is_a_clear_error(root_logging: logging.Logger) -> None:
    res = CliRunner().invoke(main, ["config"], env={"FLYWHEEL_LOG_FORMAT": "xml"})
    assert res.exit_code == 1 and "FLYWHEEL_LOG_FORMAT='xml' is not one of text, json" in res.output
