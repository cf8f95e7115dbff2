"""Drift detection: descriptors of every inference (`descriptors`), effect sizes per segment (`effects`), the batch
run that compares windows and decides alerts (`run`), the HTML overview (`overview`) and the stage's settings
(`settings`). Design and measured numbers: DRIFT.md here."""
