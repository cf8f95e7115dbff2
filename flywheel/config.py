"""All of flywheel's settings, typed and frozen, read from `FLYWHEEL_*` environment variables in this one place.

`Settings.from_env()` is the only reader of the environment; every stage takes a `Settings` (or the part it needs),
so tests build one directly instead of patching the environment.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from flywheel.errors import ConfigError

ENV_PREFIX = "FLYWHEEL_"


@dataclass(frozen=True)
class Settings:
    home: Path = Path(".flywheel")
    """FLYWHEEL_HOME: where the embedded broker's pid file and log, the lake and run state live."""

    lake: str = ""
    """FLYWHEEL_LAKE: root of the lake (a local path). Default: `$FLYWHEEL_HOME/lake`."""

    broker_port: int = 9092
    """FLYWHEEL_BROKER_PORT: port of the embedded broker on 127.0.0.1."""

    kafka_bootstrap: str = ""
    """FLYWHEEL_KAFKA_BOOTSTRAP: `host:port[,host:port]` of any Kafka cluster. Default: the embedded broker."""

    topic_prefix: str = "flywheel"
    """FLYWHEEL_TOPIC_PREFIX: topics are `<prefix>.inference`, `<prefix>.feedback`, `<prefix>.deadletter`."""

    partitions: int = 3
    """FLYWHEEL_PARTITIONS: partition count for topics flywheel creates (existing topics are left alone)."""

    ingest_group: str = "flywheel-ingest"
    """FLYWHEEL_INGEST_GROUP: consumer group of the landing workers; workers in one group share partitions."""

    flush_max_events: int = 100_000
    """FLYWHEEL_FLUSH_MAX_EVENTS: the landing worker commits a batch once it holds this many events ..."""

    flush_max_bytes: int = 64 * 1024 * 1024
    """FLYWHEEL_FLUSH_MAX_BYTES: ... or this many bytes of payload ..."""

    flush_interval_s: float = 1.0
    """FLYWHEEL_FLUSH_INTERVAL_S: ... or when its oldest event has waited this long (bounds freshness)."""

    max_event_bytes: int = 1024 * 1024
    """FLYWHEEL_MAX_EVENT_BYTES: larger payloads are quarantined as oversized (the original bytes are kept)."""

    lake_codec: str = "LZ4_RAW"
    """FLYWHEEL_LAKE_CODEC: Parquet codec of landed files (fast to write; compaction may rewrite them smaller)."""

    kafka_fetch_wait_ms: int = 50
    """FLYWHEEL_KAFKA_FETCH_WAIT_MS: longest a fetch waits for data; low keeps freshness on a quiet stream."""

    kafka_session_timeout_ms: int = 10_000
    """FLYWHEEL_KAFKA_SESSION_TIMEOUT_MS: a worker that stops heartbeating loses its partitions after this long."""

    def __post_init__(self) -> None:
        if not self.lake:
            object.__setattr__(self, "lake", str(self.home / "lake"))
        if not self.kafka_bootstrap:
            object.__setattr__(self, "kafka_bootstrap", f"127.0.0.1:{self.broker_port}")
        for name in ("partitions", "flush_max_events", "flush_max_bytes", "max_event_bytes", "broker_port"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{ENV_PREFIX}{name.upper()} must be positive, got {getattr(self, name)!r}")
        codecs = ("UNCOMPRESSED", "SNAPPY", "GZIP", "BROTLI", "LZ4", "LZ4_RAW", "ZSTD")
        if self.lake_codec.upper() not in codecs:
            raise ConfigError(f"{ENV_PREFIX}LAKE_CODEC={self.lake_codec!r} is not one of {', '.join(codecs)}")
        if self.flush_interval_s <= 0:
            raise ConfigError(f"{ENV_PREFIX}FLUSH_INTERVAL_S must be positive, got {self.flush_interval_s!r}")

    @property
    def inference_topic(self) -> str:
        return f"{self.topic_prefix}.inference"

    @property
    def feedback_topic(self) -> str:
        return f"{self.topic_prefix}.feedback"

    @property
    def deadletter_topic(self) -> str:
        return f"{self.topic_prefix}.deadletter"

    @property
    def uses_embedded_broker(self) -> bool:
        return self.kafka_bootstrap == f"127.0.0.1:{self.broker_port}"

    def replace(self, **changes: Any) -> "Settings":
        """A copy with `changes`; derived defaults (lake, bootstrap) follow a changed home or port."""
        base = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if "home" in changes and "lake" not in changes and self.lake == str(self.home / "lake"):
            base["lake"] = ""
        if "broker_port" in changes and "kafka_bootstrap" not in changes and self.uses_embedded_broker:
            base["kafka_bootstrap"] = ""
        base.update(changes)
        return Settings(**base)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(f, raw)
        return cls(**values)


def _parse(f: dataclasses.Field[Any], raw: str) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if kind == "int":
            return int(raw.replace("_", ""))
        if kind == "float":
            return float(raw)
        if kind == "Path":
            return Path(raw)
        return raw
    except ValueError:
        raise ConfigError(f"{ENV_PREFIX}{f.name.upper()}={raw!r} is not a valid {kind}") from None


def describe() -> list[tuple[str, str, str]]:
    """(variable, default, doc) for every setting, for `--help` texts and the README."""
    out = []
    docs = _field_docs()
    for f in dataclasses.fields(Settings):
        default = f.default if f.default is not dataclasses.MISSING else ""
        out.append((ENV_PREFIX + f.name.upper(), str(default), docs.get(f.name, "")))
    return out


def _field_docs() -> dict[str, str]:
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(Settings))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
                docs[node.target.id] = str(nxt.value.value).split(": ", 1)[-1]
    return docs


