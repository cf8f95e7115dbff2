"""flywheel.infra."""
