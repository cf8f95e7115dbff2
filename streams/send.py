"""Replay a JSONL file of events into Kafka (`flywheel send`)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from flywheel.schemas.contract import INFERENCE, event_type_of
from flywheel.schemas.validation import check_event, parse_payload
from flywheel.streams.client import FlywheelClient


@dataclass
class SendReport:
    sent: dict[str, int] = field(default_factory=lambda: {"inference": 0, "feedback": 0})
    invalid: list[tuple[int, str]] = field(default_factory=list)
    """(line number, reasons) of lines that break the contract; they are still sent and will be quarantined,
    unless `skip_invalid`."""
    skipped: int = 0

    @property
    def total(self) -> int:
        return sum(self.sent.values())


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    # Split on b"\n" only: JSON strings may hold U+2028, which str.splitlines() would break on.
    with open(path, "rb") as fh:
        for n, line in enumerate(fh, 1):
            line = line.rstrip(b"\r\n")
            if line.strip():
                yield n, line


def count_lines(path: Path) -> int:
    return sum(1 for _ in _lines(path))


def send_file(client: FlywheelClient, path: Path, rate: float | None = None, skip_invalid: bool = False,
              progress: Callable[[int], None] | None = None) -> SendReport:
    """Produce every event in `path`. Each line is an inference or feedback event, told apart by a `type` key or
    its fields. Lines that break the contract are reported, and sent anyway (so the worker quarantines them with
    their reason and nothing is silently lost) unless `skip_invalid`."""
    report = SendReport()
    topics = {"inference": client.settings.inference_topic, "feedback": client.settings.feedback_topic}
    start = time.monotonic()
    for i, (n, line) in enumerate(_lines(path)):
        obj, reasons = parse_payload(line, client.settings.max_event_bytes)
        et = (event_type_of(obj) if obj is not None else None) or INFERENCE
        if obj is not None:
            reasons = check_event(et, obj)
        if reasons:
            report.invalid.append((n, "; ".join(reasons)))
            if skip_invalid:
                report.skipped += 1
                continue
        key = obj.get("inference_id") if obj else None
        client.send_raw(topics[et.name], line, key=json.dumps(key).encode() if key is not None else None)
        report.sent[et.name] += 1
        if progress:
            progress(1)
        if rate:
            ahead = (i + 1) / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
    client.flush()
    return report
