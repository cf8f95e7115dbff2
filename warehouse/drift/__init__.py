"""Drift detection: descriptors of every inference (`descriptors`), the features compared (`features`), the windows
compared (`windows`), reading them from the lake (`loading`), effect sizes per segment (`effects`), alert decisions
(`decisions`), the `drift_runs` table (`storage`), Evidently reports (`reports`), the batch run wiring them (`run`),
the HTML overview (`overview`) and the stage's settings (`settings`). Design and measured numbers: DRIFT.md here."""
