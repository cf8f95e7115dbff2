"""What every command shares: the settings, read once per invocation at this edge, and common options.

Commands take `env: Environment` through `@pass_env` and hand each library call the settings of its stage; no
command reads the environment on its own.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import click

from flywheel.config import Secret, describe
from flywheel.environment import Environment
from flywheel.warehouse.jobs.dispatch import Event
from flywheel.warehouse.jobs.store import Job

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

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


def log_format_option(fn: F) -> F:
    """`--log-format text|json` for a long-running command: changes the format `flywheel` set up, keeps its level."""

    def switch(_ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
        if value is not None:
            import logging

            from flywheel.logs import configure

            configure(logging.getLogger().level, value)

    return click.option("--log-format", type=click.Choice(["text", "json"]), default=None, expose_value=False,
                        callback=switch, help="text or json: one object per line with time, level, logger, "
                        "message, topic, partition, offset (default: FLYWHEEL_LOG_FORMAT).")(fn)


def metrics_port_option(fn: F) -> F:
    """`--metrics-port PORT`, defaulting to FLYWHEEL_METRICS_PORT (0: no metrics endpoint)."""
    return click.option("--metrics-port", type=int, default=None, metavar="PORT",
                        help="Serve Prometheus metrics at http://FLYWHEEL_METRICS_HOST:PORT/metrics (default: "
                        "FLYWHEEL_METRICS_PORT; 0: not served).")(fn)


@contextlib.contextmanager
def metrics_served(env: Environment, port: int | None, registry: CollectorRegistry, what: str) -> Iterator[None]:
    """Serve `registry` on `port` (or FLYWHEEL_METRICS_PORT) while the block runs; nothing when that is 0."""
    from flywheel.streams.metrics import MetricsServer

    port = env.metrics.metrics_port if port is None else port
    if not port:
        yield
        return
    server = MetricsServer(registry, env.metrics.metrics_host, port)
    click.echo(f"{what} metrics at {server.url}", err=True)
    try:
        yield
    finally:
        server.close()
