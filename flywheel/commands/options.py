"""What every command shares: the settings, read once per invocation at this edge, and common options.

Commands take `env: Environment` through `@pass_env` and hand each library call the settings of its stage; no
command reads the environment on its own.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Callable, TypeVar

import click

from flywheel.config import Secret, describe
from flywheel.environment import Environment
from flywheel.schemas.alerts import Alert
from flywheel.warehouse.jobs.dispatch import Event
from flywheel.warehouse.jobs.store import Job

F = TypeVar("F", bound=Callable[..., Any])


def environment(ctx: click.Context) -> Environment:
    """The invocation's settings, loaded on first use (so `--help` works whatever the environment holds)."""
    obj = ctx.find_root().ensure_object(dict)
    if "env" not in obj:
        obj["env"] = Environment.load()
    env: Environment = obj["env"]
    return env


def pass_env(fn: F) -> F:
    """Call the command with `env` (the `Environment`) as its first argument."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(environment(click.get_current_context()), *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def format_option(*choices: str, default: str | None = None) -> Callable[[F], F]:
    """`--format` with the given choices (the first is the default): `json` is what scripts read."""
    return click.option("--format", "fmt", type=click.Choice(list(choices)), default=default or choices[0],
                        show_default=True, help="Output format (json: one object per line, for scripts).")


def settings_help(cls: type, prefix: str, width: int = 40) -> str:
    """The settings of a stage as help text: variable and what it does, one per line."""
    return "\n".join(f"  {var:{width}s} {doc}" for var, _default, doc in describe(cls, prefix))


def dispatch(env: Environment, events: Sequence[Event]) -> list[Job]:
    """Hand events (new dataset versions, drift alerts) to the trigger policies, when a policy file exists: each
    matching job starts once (`flywheel jobs list`). Secrets are read here, at the edge, by the variable a policy
    names."""
    import os

    from flywheel.warehouse.jobs.dispatch import dispatch as start
    from flywheel.warehouse.jobs.policies import load_policies
    from flywheel.warehouse.jobs.store import JobStore

    path = env.jobs.policies_path(env.core.home)
    if not events or not path.is_file():
        return []
    store = JobStore(env.jobs.db_path(env.core.home))
    return start(load_policies(path).values(), events, store, lambda name: Secret(os.environ.get(name, "")))


def alert_next_steps(env: Environment) -> Callable[[Alert], tuple[str, ...]]:
    """What `dispatch` will start for a drift alert, in words for the alert (`Alert.next_steps`): the matching
    policies of the policy file, or that nothing runs automatically."""
    from flywheel.warehouse.jobs.dispatch import NOTHING_RUNS, next_steps
    from flywheel.warehouse.jobs.policies import load_policies

    path = env.jobs.policies_path(env.core.home)
    if not path.is_file():
        return lambda _alert: (NOTHING_RUNS,)
    policies = list(load_policies(path).values())
    return lambda alert: next_steps(policies, alert)
