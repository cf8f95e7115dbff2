"""The one base error of flywheel, and the few kinds every stage shares.

Each error says where it happened and what to do next, in its message and, for programs, as attributes (the
table, topic, file or variable concerned: `context` holds them all); `retryable` tells a scheduler (Prefect
retries, the ingest loop) whether trying again can help.
"""

from __future__ import annotations


class FlywheelError(Exception):
    """Base of every error flywheel raises on purpose. The CLI prints it as `Error: <message>` and exits 1."""

    retryable: bool = False

    def __init__(self, message: str = "", **context: object) -> None:
        super().__init__(message)
        self.context: dict[str, object] = {k: v for k, v in context.items() if v is not None}
        """Where it happened (`table`, `topic`, `partition`, `offset`, `path`, `variable`, ...), for programs."""


class ConfigError(FlywheelError):
    """A setting is missing or malformed. Terminal: fix the environment variable named in the message (also in
    `variable`, when one is to blame)."""

    def __init__(self, message: str, *, variable: str | None = None) -> None:
        super().__init__(message, variable=variable)
        self.variable = variable


class FileSpecError(FlywheelError):
    """A reviewable YAML file (targets, policies, ...) or one of its entries is malformed. The message names the
    file, the key and the fix; `file` and `key` say them for programs. Terminal: fix the file."""

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None) -> None:
        super().__init__(message, file=file, key=key)
        self.file, self.key = file, key


class BrokerUnavailable(FlywheelError):
    """No Kafka broker answers at the configured address (`bootstrap`). Retryable: start one or fix
    FLYWHEEL_KAFKA_BOOTSTRAP."""

    retryable = True

    def __init__(self, message: str, *, bootstrap: str | None = None, **context: object) -> None:
        super().__init__(message, bootstrap=bootstrap, **context)
        self.bootstrap = bootstrap


class ContractViolation(FlywheelError):
    """An event does not satisfy the event contract. Carries the event and every reason, not just the first."""

    def __init__(self, event_type: str, reasons: list[str], event: object = None) -> None:
        super().__init__(f"invalid {event_type} event: " + "; ".join(reasons), event_type=event_type)
        self.event_type = event_type
        self.reasons = reasons
        self.event = event
