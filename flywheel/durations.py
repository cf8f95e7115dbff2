"""The project's one duration grammar: a number and a unit, `45s`, `30m` (or `30min`), `6h`, `1.5d`, `2w`.

A base module: it imports nothing from the stages, so settings, CLI commands and every stage can parse durations
the same way.
"""

from __future__ import annotations

import re
from datetime import timedelta

from flywheel.errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)\s*$")
_SECONDS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


class DurationError(ConfigError):
    """A duration is malformed; `text` is what was given. Terminal: fix the option or setting that held it."""

    def __init__(self, text: str) -> None:
        self.text = text
        super().__init__(f"{text!r} is not a duration like 30m, 6h, 1d or 2w (units: s, m or min, h, d, w)")


def is_duration(text: str) -> bool:
    """Whether `text` follows the grammar (for specs that may be a duration or something else, e.g. a path)."""
    return _DURATION.match(text) is not None


def parse_duration(text: str) -> timedelta:
    """`text` as a timedelta; raises DurationError naming `text` when it does not follow the grammar."""
    m = _DURATION.match(text)
    if not m:
        raise DurationError(text)
    return timedelta(seconds=float(m.group(1)) * _SECONDS[m.group(2)])
