"""Kafka side of flywheel: the application SDK, the file sender and the landing worker."""

from flywheel.streams.client import ClientStats, FlywheelClient, UndeliveredEvents, flush, log_feedback, log_inference

__all__ = ["ClientStats", "FlywheelClient", "UndeliveredEvents", "flush", "log_feedback", "log_inference"]
