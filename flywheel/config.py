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
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, TypeVar
from urllib.parse import urlsplit

from flywheel.errors import ConfigError
from flywheel.storage import LakeLocation, s3_options

ENV_PREFIX = "FLYWHEEL_"


@dataclass(frozen=True)
class Settings:
    home: Path = Path(".flywheel")
    """FLYWHEEL_HOME: where the embedded broker's pid file and log, the lake and run state live."""

    lake: str = ""
    """FLYWHEEL_LAKE: root of the lake: a local path, or `s3://BUCKET/PREFIX` on AWS S3 or an S3-compatible store
    (MinIO, R2, ...; credentials from the standard AWS_* variables or role, see README "Object storage").
    Default: `$FLYWHEEL_HOME/lake`."""

    lake_s3_endpoint: str = ""
    """FLYWHEEL_LAKE_S3_ENDPOINT: with an `s3://` lake on a store other than AWS S3, its URL (e.g.
    `http://127.0.0.1:9000` for MinIO). Default: AWS S3 (or AWS_ENDPOINT_URL)."""

    lake_s3_region: str = ""
    """FLYWHEEL_LAKE_S3_REGION: with an `s3://` lake, the bucket's region. Default: AWS_REGION or the AWS
    configuration."""

    lake_s3_allow_http: bool = False
    """FLYWHEEL_LAKE_S3_ALLOW_HTTP: allow an `http://` FLYWHEEL_LAKE_S3_ENDPOINT (a store on this host or a trusted
    network: keys and data then travel unencrypted)."""

    broker_port: int = 9092
    """FLYWHEEL_BROKER_PORT: port of the embedded broker on 127.0.0.1."""

    broker_storage: str = "memory://tansu/"
    """FLYWHEEL_BROKER_STORAGE: where the embedded broker keeps topics, messages and group offsets: `memory://tansu/`
    (all lost when it stops) or `s3://BUCKET/` on an S3-compatible store, which keeps them across restarts; Tansu
    reads the store's address and keys from its environment (AWS_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    AWS_DEFAULT_REGION, and AWS_ALLOW_HTTP=true for an http:// endpoint). Slower: see docs/PRODUCTION.md."""

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

    kafka_security_protocol: str = "PLAINTEXT"
    """FLYWHEEL_KAFKA_SECURITY_PROTOCOL: how every Kafka client flywheel builds (SDK, landing worker, collector,
    signals, releases, status) talks to the brokers: PLAINTEXT, SSL (TLS), SASL_PLAINTEXT or SASL_SSL (SASL over
    TLS, what managed clusters use)."""

    kafka_sasl_mechanism: str = ""
    """FLYWHEEL_KAFKA_SASL_MECHANISM: with SASL_PLAINTEXT or SASL_SSL: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 (with
    FLYWHEEL_KAFKA_SASL_USERNAME and _PASSWORD) or OAUTHBEARER (an OIDC client-credentials token from
    FLYWHEEL_KAFKA_SASL_OAUTH_TOKEN_URL)."""

    kafka_sasl_username: str = ""
    """FLYWHEEL_KAFKA_SASL_USERNAME: SASL user (PLAIN, SCRAM); the API key on Confluent Cloud."""

    kafka_sasl_password: Secret | str = field(default="", repr=False)
    """FLYWHEEL_KAFKA_SASL_PASSWORD: SASL password (PLAIN, SCRAM); the API secret on Confluent Cloud. A secret:
    never shown in logs, errors or `flywheel config`."""

    kafka_sasl_oauth_token_url: str = ""
    """FLYWHEEL_KAFKA_SASL_OAUTH_TOKEN_URL: with OAUTHBEARER, the OIDC token endpoint flywheel asks for a token
    (client-credentials grant) before each one expires."""

    kafka_sasl_oauth_client_id: str = ""
    """FLYWHEEL_KAFKA_SASL_OAUTH_CLIENT_ID: with OAUTHBEARER, the client id sent to the token endpoint."""

    kafka_sasl_oauth_client_secret: Secret | str = field(default="", repr=False)
    """FLYWHEEL_KAFKA_SASL_OAUTH_CLIENT_SECRET: with OAUTHBEARER, the client secret sent to the token endpoint
    (a secret)."""

    kafka_sasl_oauth_scope: str = ""
    """FLYWHEEL_KAFKA_SASL_OAUTH_SCOPE: with OAUTHBEARER, the scope asked for (none by default)."""

    kafka_ssl_ca_file: str = ""
    """FLYWHEEL_KAFKA_SSL_CA_FILE: with SSL or SASL_SSL, a PEM file of the CA certificates that signed the
    brokers' certificates. Default: the system's trusted CAs (enough for most managed clusters)."""

    kafka_ssl_cert_file: str = ""
    """FLYWHEEL_KAFKA_SSL_CERT_FILE: for mutual TLS, the client's certificate (PEM); needs
    FLYWHEEL_KAFKA_SSL_KEY_FILE."""

    kafka_ssl_key_file: str = ""
    """FLYWHEEL_KAFKA_SSL_KEY_FILE: for mutual TLS, the client's private key (PEM)."""

    kafka_ssl_key_password: Secret | str = field(default="", repr=False)
    """FLYWHEEL_KAFKA_SSL_KEY_PASSWORD: the password of an encrypted FLYWHEEL_KAFKA_SSL_KEY_FILE (a secret)."""

    kafka_ssl_check_hostname: bool = True
    """FLYWHEEL_KAFKA_SSL_CHECK_HOSTNAME: check that a broker's certificate names the host connected to. Turn it
    off only for a certificate that names no address clients use; the certificate is verified either way."""

    drain_timeout_s: float = 120.0
    """FLYWHEEL_DRAIN_TIMEOUT_S: with `ingest --until-idle`, how long an idle worker waits for partitions it does not
    own, or has not landed up to the broker's end, before it exits non-zero."""

    ingest_reread_gaps: str = "auto"
    """FLYWHEEL_INGEST_REREAD_GAPS: what the landing worker does when a partition's offsets jump: `on` reads the
    partition again until the skipped offsets come back (or stay away for a second: a transaction marker), `off`
    takes the jump as Kafka's (transaction markers, compaction). `auto` (the default) is `on` with the embedded
    broker, which can skip a batch under concurrent producers, and `off` with any other cluster."""

    def __post_init__(self) -> None:
        if not self.lake:
            object.__setattr__(self, "lake", str(self.home / "lake"))
        _check_lake(self)
        if not self.broker_storage.startswith(("memory://", "s3://")):
            raise ConfigError(f"{ENV_PREFIX}BROKER_STORAGE={self.broker_storage!r}: the embedded broker stores in "
                              "memory:// or s3://BUCKET/ only", variable=f"{ENV_PREFIX}BROKER_STORAGE")
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
        for name in ("kafka_sasl_password", "kafka_sasl_oauth_client_secret", "kafka_ssl_key_password"):
            if not isinstance(getattr(self, name), Secret):
                object.__setattr__(self, name, Secret(str(getattr(self, name))))
        object.__setattr__(self, "kafka_security_protocol", self.kafka_security_protocol.strip().upper())
        object.__setattr__(self, "kafka_sasl_mechanism", self.kafka_sasl_mechanism.strip().upper())
        _check_kafka_security(self)
        object.__setattr__(self, "ingest_reread_gaps", self.ingest_reread_gaps.strip().lower())
        if self.ingest_reread_gaps not in ("auto", "on", "off"):
            raise ConfigError(f"{ENV_PREFIX}INGEST_REREAD_GAPS={self.ingest_reread_gaps!r} is not one of auto, on, "
                              "off", variable=f"{ENV_PREFIX}INGEST_REREAD_GAPS")

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
    def lake_location(self) -> LakeLocation:
        """Where the lake is, with the storage options its readers and writers need: what library code takes."""
        if self.lake.startswith("s3://"):
            return LakeLocation(self.lake.rstrip("/"), s3_options(self.lake_s3_endpoint, self.lake_s3_region,
                                                                  self.lake_s3_allow_http))
        return LakeLocation(self.lake)

    @property
    def uses_embedded_broker(self) -> bool:
        return self.kafka_bootstrap == f"127.0.0.1:{self.broker_port}"

    @property
    def rereads_gaps(self) -> bool:
        """Whether the landing worker reads a partition again when its offsets jump (`ingest_reread_gaps`)."""
        return self.ingest_reread_gaps == "on" or (self.ingest_reread_gaps == "auto" and self.uses_embedded_broker)

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


def _check_lake(s: Settings) -> None:
    """Refuse a lake location that cannot work, naming the variable: Path() would take `gs://b/lake` for the local
    directory `gs:/b/lake`."""
    def fail(variable: str, message: str) -> None:
        raise ConfigError(f"{ENV_PREFIX}{variable}: {message}", variable=ENV_PREFIX + variable)

    if "://" in s.lake and not s.lake.startswith("s3://"):
        fail("LAKE", f"{s.lake!r}: the lake is a local path or an s3://BUCKET/PREFIX URI (other object stores are "
                     "not supported; an S3-compatible one is, with FLYWHEEL_LAKE_S3_ENDPOINT)")
    if s.lake.startswith("s3://") and not urlsplit(s.lake).netloc:
        fail("LAKE", f"{s.lake!r} names no bucket: use s3://BUCKET/PREFIX")
    if s.lake_s3_endpoint and not s.lake_s3_endpoint.startswith(("https://", "http://")):
        fail("LAKE_S3_ENDPOINT", f"{s.lake_s3_endpoint!r} is not an http(s) URL")
    if s.lake_s3_endpoint.startswith("http://") and not s.lake_s3_allow_http:
        fail("LAKE_S3_ALLOW_HTTP", f"the endpoint {s.lake_s3_endpoint} is plain http: set "
                                   "FLYWHEEL_LAKE_S3_ALLOW_HTTP=true if that is intended (keys and data travel "
                                   "unencrypted), or use https")


PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER")


def _check_kafka_security(s: Settings) -> None:
    """Refuse a Kafka security setting that cannot work, at the edge and naming the variable to fix, rather than
    leave every client to retry a handshake that fails the same way forever."""
    def fail(variable: str, message: str) -> None:
        raise ConfigError(f"{ENV_PREFIX}{variable}: {message}", variable=ENV_PREFIX + variable)

    protocol, mechanism = s.kafka_security_protocol, s.kafka_sasl_mechanism
    if protocol not in PROTOCOLS:
        fail("KAFKA_SECURITY_PROTOCOL", f"{protocol!r} is not one of {', '.join(PROTOCOLS)}")
    sasl, tls = protocol.startswith("SASL_"), protocol.endswith("SSL")
    if sasl and not mechanism:
        fail("KAFKA_SASL_MECHANISM", f"{protocol} needs a mechanism: set it to one of {', '.join(MECHANISMS)}")
    if mechanism and not sasl:
        fail("KAFKA_SECURITY_PROTOCOL", f"{protocol} does not use SASL, but FLYWHEEL_KAFKA_SASL_MECHANISM is "
                                        f"{mechanism}: set the protocol to SASL_SSL (or SASL_PLAINTEXT), or unset "
                                        "the mechanism")
    if mechanism and mechanism not in MECHANISMS:
        fail("KAFKA_SASL_MECHANISM", f"{mechanism!r} is not one of {', '.join(MECHANISMS)} (GSSAPI/Kerberos and "
                                     "AWS IAM are not supported, see docs/PRODUCTION.md)")
    if mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
        if not s.kafka_sasl_username:
            fail("KAFKA_SASL_USERNAME", f"SASL {mechanism} needs a user name: set FLYWHEEL_KAFKA_SASL_USERNAME")
        if not s.kafka_sasl_password:
            fail("KAFKA_SASL_PASSWORD", f"SASL {mechanism} needs a password: set FLYWHEEL_KAFKA_SASL_PASSWORD")
    if mechanism == "OAUTHBEARER":
        for variable, value in (("KAFKA_SASL_OAUTH_TOKEN_URL", s.kafka_sasl_oauth_token_url),
                                ("KAFKA_SASL_OAUTH_CLIENT_ID", s.kafka_sasl_oauth_client_id),
                                ("KAFKA_SASL_OAUTH_CLIENT_SECRET", s.kafka_sasl_oauth_client_secret)):
            if not value:
                fail(variable, f"SASL OAUTHBEARER gets its token from an OIDC endpoint: set {ENV_PREFIX}{variable}")
        if not s.kafka_sasl_oauth_token_url.startswith(("https://", "http://")):
            fail("KAFKA_SASL_OAUTH_TOKEN_URL", f"{s.kafka_sasl_oauth_token_url!r} is not an http(s) URL")
    files = (("KAFKA_SSL_CA_FILE", s.kafka_ssl_ca_file), ("KAFKA_SSL_CERT_FILE", s.kafka_ssl_cert_file),
             ("KAFKA_SSL_KEY_FILE", s.kafka_ssl_key_file))
    for variable, path in files:
        if path and not tls:
            fail(variable, f"is set but {protocol} does not use TLS: set FLYWHEEL_KAFKA_SECURITY_PROTOCOL to SSL or "
                           "SASL_SSL, or unset it")
        if path and not Path(path).is_file():
            fail(variable, f"{path!r} is not a readable file: point it at the PEM file")
    if bool(s.kafka_ssl_cert_file) != bool(s.kafka_ssl_key_file):
        fail("KAFKA_SSL_KEY_FILE" if s.kafka_ssl_cert_file else "KAFKA_SSL_CERT_FILE",
             "mutual TLS needs both FLYWHEEL_KAFKA_SSL_CERT_FILE and FLYWHEEL_KAFKA_SSL_KEY_FILE")


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
                if not math.isfinite(values[f.name]):  # "nan" or "inf" as a timeout or a threshold is a mistake
                    raise ValueError(raw)
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
            raise ConfigError(f"{var}={raw!r} is not a valid {kind}: {_fix(kind, f)}", variable=var) from None
    return cls(**values)


_FORMS = {"int": "a whole number", "float": "a finite number", "bool": "1/true/yes/on or 0/false/no/off"}


def _fix(kind: str, f: dataclasses.Field[Any]) -> str:
    """What to set a variable to: its form, and that unsetting it restores the default (shown)."""
    default = f.default if f.default is not dataclasses.MISSING else None
    return (f"set it to {_FORMS.get(kind, 'a ' + kind)}, or unset it for the default"
            + (f" ({default!r})" if default is not None else "") + "; `flywheel config` lists every setting")


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
