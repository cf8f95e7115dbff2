"""The collector's settings (`FLYWHEEL_COLLECTOR_*`), read once by `flywheel collect` and passed down."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field

from flywheel.config import env_settings
from flywheel.errors import ConfigError
from flywheel.warehouse.alerts.outbox import Secret

PREFIX = "FLYWHEEL_COLLECTOR_"


@dataclass(frozen=True)
class CollectorSettings:
    host: str = "127.0.0.1"
    """FLYWHEEL_COLLECTOR_HOST: address the collector listens on (0.0.0.0 to accept other machines)."""

    port: int = 4318
    """FLYWHEEL_COLLECTOR_PORT: its port; 4318 is OTLP/HTTP's, so OpenTelemetry exporters find it unconfigured."""

    api_keys: Secret | str = field(default="", repr=False)
    """FLYWHEEL_COLLECTOR_API_KEYS: comma-separated API keys a request may present as `Authorization: Bearer
    <key>` or `X-API-Key: <key>` (secrets: never logged). Required unless ALLOW_ANONYMOUS is on."""

    allow_anonymous: bool = False
    """FLYWHEEL_COLLECTOR_ALLOW_ANONYMOUS: accept requests without a key (for a laptop only: anyone who can
    reach the port can then write events)."""

    max_body_bytes: int = 16 * 1024 * 1024
    """FLYWHEEL_COLLECTOR_MAX_BODY_BYTES: larger request bodies (after gzip decoding) are refused with 413."""

    max_batch_events: int = 10_000
    """FLYWHEEL_COLLECTOR_MAX_BATCH_EVENTS: an NDJSON batch or OTLP export with more events is refused with 413."""

    delivery_timeout_s: float = 10.0
    """FLYWHEEL_COLLECTOR_DELIVERY_TIMEOUT_S: longest a request waits for the broker's acknowledgement of its
    events; past it the answer is 503 (the events may or may not have landed: retry with the same ids)."""

    validate_threads: int = 2
    """FLYWHEEL_COLLECTOR_VALIDATE_THREADS: large batches validated at once, each on a thread of its own with
    validators of its own (Arrow and DuckDB let go of the GIL); more requests wait for a free one."""

    retry_after_s: int = 5
    """FLYWHEEL_COLLECTOR_RETRY_AFTER_S: the Retry-After of a 503 while the broker is unreachable."""

    linger_ms: int = 5
    """FLYWHEEL_COLLECTOR_LINGER_MS: how long the producer gathers events into one broker request; adds at most
    this to each answer's latency."""

    compression: str = "none"
    """FLYWHEEL_COLLECTOR_COMPRESSION: codec of the collector's produce requests (none, lz4, zstd, gzip, snappy).
    None by default: the collector runs next to the broker, and lz4 doubled its producing CPU (bench/collect.py:
    about 14-19 against 6-9 us per event); take lz4 or zstd when the broker is across a slow link."""

    def __post_init__(self) -> None:
        if not isinstance(self.api_keys, Secret):
            object.__setattr__(self, "api_keys", Secret(str(self.api_keys)))
        for name in ("port", "max_body_bytes", "max_batch_events", "delivery_timeout_s", "retry_after_s",
                     "validate_threads"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{PREFIX}{name.upper()} must be positive, got {getattr(self, name)!r}",
                                  variable=f"{PREFIX}{name.upper()}")
        if self.compression not in ("none", "lz4", "zstd", "gzip", "snappy"):
            raise ConfigError(f"{PREFIX}COMPRESSION={self.compression!r} is not one of none, lz4, zstd, gzip, snappy",
                              variable=f"{PREFIX}COMPRESSION")
        if self.linger_ms < 0:
            raise ConfigError(f"{PREFIX}LINGER_MS must not be negative", variable=f"{PREFIX}LINGER_MS")

    @property
    def keys(self) -> ApiKeys:
        assert isinstance(self.api_keys, Secret)
        return ApiKeys(self.api_keys)

    def check_startable(self) -> None:
        """Refuse to serve an open door by accident: no key and no explicit anonymous mode is a `ConfigError`."""
        if not self.keys and not self.allow_anonymous:
            raise ConfigError(f"the collector needs API keys: set {PREFIX}API_KEYS=<key>[,<key>...] (clients send "
                              f"`Authorization: Bearer <key>`), or {PREFIX}ALLOW_ANONYMOUS=true on a trusted "
                              "network", variable=f"{PREFIX}API_KEYS")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> CollectorSettings:
        return env_settings(cls, PREFIX, environ)


class ApiKeys:
    """The configured keys, kept only as SHA-256 digests; `accepts` compares in constant time."""

    __slots__ = ("_digests",)

    def __init__(self, keys: Secret) -> None:
        self._digests = tuple(hashlib.sha256(k.strip().encode()).digest()
                              for k in keys.reveal().split(",") if k.strip())

    def __bool__(self) -> bool:
        return bool(self._digests)

    def __repr__(self) -> str:
        return f"ApiKeys({len(self._digests)} keys)"

    def accepts(self, presented: str | None) -> bool:
        """Whether `presented` is one of the keys. Digests of equal length are compared with
        `hmac.compare_digest`, against every key (no early exit), so the time taken tells nothing about a key."""
        if presented is None:
            return False
        digest = hashlib.sha256(presented.encode()).digest()
        found = False
        for known in self._digests:
            found |= hmac.compare_digest(digest, known)
        return found
