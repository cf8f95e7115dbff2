"""Alert delivery: the outbox that never loses an alert, and its delivery to a Slack incoming webhook. Producers
(drift runs, live signals) build `flywheel.schemas.alerts.Alert` records and hand them to an `AlertSink`."""
