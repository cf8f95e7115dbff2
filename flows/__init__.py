"""flywheel.flows."""
