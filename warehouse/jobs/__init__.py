"""Triggers and jobs: policies (`policies`) say which event (a new dataset version, a drift alert) starts which
target (`targets`: webhook, shell command, fine-tune, Prefect deployment); `dispatch` starts each job once and
records it in the jobs table (`store`)."""
