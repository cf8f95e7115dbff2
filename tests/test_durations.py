"""The project's one duration grammar (`flywheel.durations`): what the drift windows and the quality CLI accept."""

from __future__ import annotations

from datetime import timedelta

import pytest

from flywheel.durations import DurationError, is_duration, parse_duration
from flywheel.errors import ConfigError


@pytest.mark.parametrize("text, expected", [
    ("45s", timedelta(seconds=45)), ("30m", timedelta(minutes=30)), ("30min", timedelta(minutes=30)),
    ("6h", timedelta(hours=6)), ("1.5h", timedelta(minutes=90)), ("1d", timedelta(days=1)),
    ("2w", timedelta(weeks=2)), (" 7 d ", timedelta(days=7)),
])
def test_units(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected
    assert is_duration(text)


@pytest.mark.parametrize("text", ["", "7", "d", "1y", "-1d", "1d2h", "2026-11-01", "0.5.5h"])
def test_malformed_durations_name_the_input(text: str) -> None:
    assert not is_duration(text)
    with pytest.raises(DurationError) as info:
        parse_duration(text)
    assert isinstance(info.value, ConfigError)  # the CLI prints it and exits 1, like any bad setting
    assert info.value.text == text and repr(text) in str(info.value)
    assert "30m" in str(info.value)  # says what a valid one looks like


def test_drift_windows_use_the_shared_grammar() -> None:
    from flywheel.warehouse.drift import windows

    assert windows.parse_duration is parse_duration
    with pytest.raises(DurationError):
        windows.Window.parse("1y")
