"""The event contract (`contract`) and what is derived from it: validators, Arrow schemas, docs."""

from flywheel.schemas.contract import EVENT_TYPES, FEEDBACK, INFERENCE, SCHEMA_VERSION, EventType, Field

__all__ = ["EVENT_TYPES", "FEEDBACK", "INFERENCE", "SCHEMA_VERSION", "EventType", "Field"]
