"""Prefect retry policy shared by flywheel's flows: retry only what `FlywheelError.retryable` says can succeed."""

from __future__ import annotations

from typing import Any


def retry_if_retryable(_task: Any, _task_run: Any, state: Any) -> bool:
    """`retry_condition_fn` for tasks: true when the failure is an error marked `retryable` (a busy table, an
    unreachable broker); terminal errors (a failed gate, a bad setting) fail at once."""
    return bool(getattr(state.result(raise_on_failure=False), "retryable", False))
