"""The windows a drift run compares: a time window of the lake (`Window`) or a fixed reference dataset
(`Dataset`), parsed from the CLI's and the settings' specs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from flywheel.durations import is_duration, parse_duration
from flywheel.warehouse.drift.features import DriftError

def _parse_time(text: str) -> datetime:
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise DriftError(f"{text!r} is not an ISO date or timestamp (e.g. 2026-11-01 or 2026-11-01T12:00Z)") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class Window:
    """A half-open time window [start, end) in UTC."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise DriftError(f"window {self.label} ends before it starts")

    @property
    def label(self) -> str:
        return f"{self.start.isoformat(timespec='seconds')}/{self.end.isoformat(timespec='seconds')}"

    @property
    def length(self) -> timedelta:
        return self.end - self.start

    def before(self, length: timedelta | None = None) -> "Window":
        length = length or self.length
        return Window(self.start - length, self.start)

    @classmethod
    def parse(cls, spec: str, now: datetime | None = None) -> "Window":
        """`START/END` (ISO dates or timestamps) or a duration `1d`: the last complete window of that length,
        aligned to multiples of it since the epoch (so successive runs see successive windows)."""
        if "/" in spec:
            a, b = spec.split("/", 1)
            return cls(_parse_time(a), _parse_time(b))
        length = parse_duration(spec)
        now = now or datetime.now(timezone.utc)
        step = length.total_seconds()
        end = datetime.fromtimestamp(int(now.timestamp() // step) * step, timezone.utc)
        return cls(end - length, end)


@dataclass(frozen=True)
class Dataset:
    """A fixed reference: a Parquet file or directory, or a Delta table, with the inferences' columns."""

    path: Path

    @property
    def label(self) -> str:
        return f"dataset:{self.path}"


def parse_reference(spec: str, current: Window) -> Window | Dataset:
    """A duration (the time right before `current`), `START/END`, or the path of a dataset."""
    if is_duration(spec):
        return current.before(parse_duration(spec))
    if Path(spec).exists():
        return Dataset(Path(spec))
    if "/" in spec:
        return Window.parse(spec)
    raise DriftError(f"reference {spec!r} is neither a duration, a window START/END nor an existing dataset")

