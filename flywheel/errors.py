"""The one base error of flywheel, and the few kinds every stage shares.

Each error says where it happened and what to do next; `retryable` tells a scheduler (Prefect retries, the ingest
loop) whether trying again can help.
"""

from __future__ import annotations


class FlywheelError(Exception):
    """Base of every error flywheel raises on purpose. The CLI prints it as `Error: <message>` and exits 1."""

    retryable: bool = False


class ConfigError(FlywheelError):
    """A setting is missing or malformed. Terminal: fix the environment variable named in the message (and in
    `variable`, when the raiser knows it)."""

    def __init__(self, message: str, variable: str | None = None) -> None:
        self.variable = variable
        super().__init__(message)


class BrokerUnavailable(FlywheelError):
    """No Kafka broker answers at the configured address. Retryable: start one or fix FLYWHEEL_KAFKA_BOOTSTRAP."""

    retryable = True


class ContractViolation(FlywheelError):
    """An event does not satisfy the event contract. Carries the event and every reason, not just the first."""

    def __init__(self, event_type: str, reasons: list[str], event: object = None) -> None:
        self.event_type = event_type
        self.reasons = reasons
        self.event = event
        super().__init__(f"invalid {event_type} event: " + "; ".join(reasons))
