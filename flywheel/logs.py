"""How flywheel's processes log: readable lines for a terminal, or one JSON object per line for a log shipper.

`configure()` is called once, at the CLI edge (`flywheel ...`, and again by a long-running command given
`--log-format`). Library code only logs; where something goes wrong with a message it passes the message's
coordinates as structured fields, `log.warning("...", extra=coords(topic, partition, offset))`, which the JSON
format emits as keys of their own (`topic`, `partition`, `offset`) and the text format leaves to the message.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

from flywheel.config import env_settings
from flywheel.errors import ConfigError

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FIELDS = ("topic", "partition", "offset", "offsets", "table", "count", "topic_id", "deadletter_topic", "route",
          "status")
"""The structured fields a log call may pass in `extra`: the JSON format emits each one present as a key."""


@dataclass(frozen=True)
class LogSettings:
    log_format: str = "text"
    """FLYWHEEL_LOG_FORMAT: `text` (one readable line per record) or `json` (one object per line: time, level,
    logger, message and the record's fields: topic, partition, offset where a message is concerned)."""

    def __post_init__(self) -> None:
        if self.log_format not in FORMATS:
            raise ConfigError(f"FLYWHEEL_LOG_FORMAT={self.log_format!r} is not one of {', '.join(FORMATS)}",
                              variable="FLYWHEEL_LOG_FORMAT")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LogSettings:
        return env_settings(cls, "FLYWHEEL_", environ)


def coords(topic: str | None, partition: int | None = None, offset: int | str | None = None,
           **more: object) -> dict[str, object]:
    """The `extra` of a log call about a message (or a range of offsets: pass `offsets="12..40"`)."""
    out: dict[str, object] = {"topic": topic}
    if partition is not None:
        out["partition"] = partition
    if offset is not None:
        out["offset"] = offset
    out.update(more)
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object per record: `time` (UTC, ISO 8601), `level`, `logger`, `message`, the `FIELDS` the call
    passed, and `exception` (the formatted traceback) when there is one. Never raises on odd field values: what
    JSON cannot hold is written as its `str()`."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            if name in record.__dict__:
                out[name] = record.__dict__[name]
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def configure(level: int, log_format: str = "text") -> None:
    """(Re)configure the root logger: one stderr handler in `log_format`, at `level`."""
    if log_format not in FORMATS:
        raise ConfigError(f"log format {log_format!r} is not one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
