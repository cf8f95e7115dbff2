"""All of flywheel's settings, typed and frozen, read from `FLYWHEEL_*` environment variables in this one place.

`env_settings()` is the one reader of the environment, for these core settings and for every stage's own
(`flywheel.environment` gathers them). It is called at the edges only (a CLI command, a flow run, a worker start,
the SDK's constructor): library code takes a `Settings` (or its stage's settings) as an argument, so callers and
tests build one directly instead of patching the environment.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, TypeVar

from flywheel.errors import ConfigError

ENV_PREFIX = "FLYWHEEL_"


@dataclass(frozen=True)
class Settings:
    home: Path = Path(".flywheel")
    """FLYWHEEL_HOME: where the embedded broker's pid file and log, the lake and run state live."""

    lake: str = ""
    """FLYWHEEL_LAKE: root of the lake, a local path (a URL such as `s3://...` is refused: object storage is not
    supported yet). Default: `$FLYWHEEL_HOME/lake`."""

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

    flush_max_bytes: int = 32 * 1024 * 1024
    """FLYWHEEL_FLUSH_MAX_BYTES: ... or this many bytes of payload ..."""

    flush_interval_s: float = 1.0
    """FLYWHEEL_FLUSH_INTERVAL_S: ... or when its oldest event has waited this long (bounds freshness)."""

    max_event_bytes: int = 1024 * 1024
    """FLYWHEEL_MAX_EVENT_BYTES: larger payloads are quarantined as oversized (the original bytes are kept)."""

    lake_codec: str = "UNCOMPRESSED"
    """FLYWHEEL_LAKE_CODEC: Parquet codec of landed files. Uncompressed by default: LZ4 took about a tenth of the
    worker's CPU (bench/ingest.py: ~10% more events/s without it); `flywheel lake compact` rewrites landed files
    below its target size as ZSTD. LZ4_RAW or ZSTD trade landing speed for smaller files until then."""

    kafka_fetch_wait_ms: int = 50
    """FLYWHEEL_KAFKA_FETCH_WAIT_MS: longest a fetch waits for data; low keeps freshness on a quiet stream."""

    kafka_session_timeout_ms: int = 10_000
    """FLYWHEEL_KAFKA_SESSION_TIMEOUT_MS: a worker that stops heartbeating loses its partitions after this long."""

    drain_timeout_s: float = 120.0
    """FLYWHEEL_DRAIN_TIMEOUT_S: with `ingest --until-idle`, how long an idle worker waits for partitions it does not
    own, or has not landed up to the broker's end, before it exits non-zero."""

    def __post_init__(self) -> None:
        if not self.lake:
            object.__setattr__(self, "lake", str(self.home / "lake"))
        if "://" in self.lake:  # Path() would take `s3://b/lake` for the local directory `s3:/b/lake`
            raise ConfigError(f"{ENV_PREFIX}LAKE={self.lake!r} is a URL: the lake is a local path today (object "
                              "storage is not supported yet, see docs/PRODUCTION.md)", variable=f"{ENV_PREFIX}LAKE")
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
        return env_settings(cls, ENV_PREFIX, environ)


class Secret:
    """A string that does not show itself in reprs, logs or tracebacks' locals: webhook URLs, API keys, secrets.
    `reveal()` is the one way to its value, for the header or request that needs it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


T = TypeVar("T")


def env_settings(cls: type[T], prefix: str, environ: Mapping[str, str] | None = None) -> T:
    """Build the frozen settings dataclass `cls` from `<prefix><FIELD>` variables (or the names in its
    `ENV_NAMES`): the one reader of the environment that every stage's settings use. Fields typed int, float,
    bool and Path are parsed; a value that does not parse is a `ConfigError` naming the variable."""
    env = os.environ if environ is None else environ
    names: dict[str, str] = getattr(cls, "ENV_NAMES", {})
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not f.init:
            continue
        var = names.get(f.name, prefix + f.name.upper())
        raw = env.get(var)
        if raw is None or raw == "":
            continue
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        try:
            if kind == "int":
                values[f.name] = int(raw.replace("_", ""))
            elif kind == "float":
                values[f.name] = float(raw)
            elif kind == "bool":
                values[f.name] = parse_bool(raw)
            elif kind == "Path":
                values[f.name] = Path(raw)
            else:
                values[f.name] = raw
        except ValueError:
            if "Secret" in kind:  # a secret's value never goes into a message
                raise ConfigError(f"{var} is not a valid {kind} (its value is a secret: not shown)",
                                  variable=var) from None
            raise ConfigError(f"{var}={raw!r} is not a valid {kind}", variable=var) from None
    return cls(**values)


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_bool(raw: str) -> bool:
    """`1/true/yes/on` or `0/false/no/off` (any case); anything else is a mistake, not False: ValueError."""
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{raw!r} is not a boolean (use one of {', '.join(_TRUE + _FALSE)})")


def describe(cls: type, prefix: str = ENV_PREFIX) -> list[tuple[str, str, str]]:
    """(variable, default, doc) per field of a settings dataclass, from the docstring under each field (which
    starts with the variable's name and a colon), for `--help` texts and `flywheel config`."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
                docs[node.target.id] = " ".join(str(nxt.value.value).split(": ", 1)[-1].split())
    names: dict[str, str] = getattr(cls, "ENV_NAMES", {})
    out = []
    for f in dataclasses.fields(cls):
        if f.init and f.name in docs:
            default = f.default if f.default is not dataclasses.MISSING else ""
            out.append((names.get(f.name, prefix + f.name.upper()), str(default), docs[f.name]))
    return out
