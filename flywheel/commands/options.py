"""What every command shares: the settings, read once per invocation at this edge, and common options.

Commands take `env: Environment` through `@pass_env` and hand each library call the settings of its stage; no
command reads the environment on its own.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import click

from flywheel.config import Secret, describe
from flywheel.environment import Environment
from flywheel.schemas.alerts import Alert
from flywheel.warehouse.jobs.dispatch import DatasetVersion, Event, Secrets, Tick
from flywheel.warehouse.jobs.eval_target import EvalContext
from flywheel.warehouse.jobs.policies import Policy
from flywheel.warehouse.jobs.store import Job, JobStore

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


@dataclass(frozen=True)
class JobsRuntime:
    """What starting jobs needs, read once at an edge (a command, a flow run) and passed down."""

    policies: Mapping[str, Policy]
    store: JobStore
    secrets: Secrets
    """Reads the variable a policy or target names (`secret_env`, `key_env`, `api_key_env`) from this process's
    environment, at the moment a job needs it."""
    evaluation: EvalContext
    latest: Callable[[str], DatasetVersion | None]
    """The latest version of a dataset a target names (`dataset:`) when the event is not a version of it."""


def known_datasets(env: Environment) -> set[str]:
    """What a policy may name: the registry's datasets and the recipes' (a recipe not curated yet is known: its
    first version is what the policy waits for). A recipe that does not load is not a name (`flywheel curate`
    reports it)."""
    from flywheel.commands.datasets import recipes_dir  # imports this module: loaded when needed
    from flywheel.warehouse.datasets.recipes import RecipeError, load_recipe, recipe_files
    from flywheel.warehouse.datasets.registry import Registry

    names = {v.name for v in Registry(env.core, env.datasets).versions()}
    try:
        files = recipe_files(recipes_dir(env))
    except RecipeError:
        files = []
    for f in files:
        try:
            names.add(load_recipe(f).name)
        except RecipeError:
            pass
    return names


def _policies(env: Environment) -> tuple[dict[str, Policy], dict[str, Any]] | None:
    """The policy file's policies, validated against the dataset names (`known_datasets`) and the evaluation
    targets file, and those targets; None when there is no policy file (nothing is triggered)."""
    from flywheel.warehouse.evaluation.targets import load_targets
    from flywheel.warehouse.jobs.policies import load_policies

    path = env.jobs.policies_path(env.core.home)
    if not path.is_file():
        return None
    tf = env.evaluation.targets_path(env.core.home)
    targets = load_targets(tf) if tf.is_file() else {}
    return load_policies(path, known_datasets=known_datasets(env), known_targets=set(targets)), targets


def jobs_runtime(env: Environment) -> JobsRuntime | None:
    """The policies (validated against the evaluation targets file), the jobs table and the evaluation context of
    `eval` targets; None when there is no policy file (nothing is triggered)."""
    loaded = _policies(env)
    if loaded is None:
        return None
    policies, targets = loaded

    def examples(ref: str, split: str) -> tuple[Sequence[Any], str]:
        from flywheel.commands.evaluate import dataset_examples  # imports this module: loaded when needed

        return dataset_examples(env, ref, split)

    return JobsRuntime(policies, JobStore(env.jobs.db_path(env.core.home)),
                       lambda name: Secret(os.environ.get(name, "")),
                       EvalContext(env.core.lake_location, env.evaluation, targets, examples),
                       _latest_versions(env))


def _latest_versions(env: Environment) -> Callable[[str], DatasetVersion | None]:
    """The latest published version of a dataset, as a trigger event (None: not curated yet)."""
    from flywheel.commands.datasets import version_event  # imports this module: loaded when needed
    from flywheel.warehouse.datasets.registry import Registry

    registry = Registry(env.core, env.datasets)

    def latest(name: str) -> DatasetVersion | None:
        info = registry.latest(name)
        return version_event(env, info.name, info.version, info.path, info.splits) if info else None

    return latest


def watched_versions(env: Environment, rt: JobsRuntime) -> list[DatasetVersion]:
    """The latest published version of every dataset a `dataset` policy names, as trigger events (a dataset not
    curated yet has none)."""
    latest = _latest_versions(env)
    names = sorted({p.when.dataset for p in rt.policies.values() if p.when.dataset and p.when.schedule is None})
    return [v for v in map(latest, names) if v is not None]


def due_ticks(env: Environment, rt: JobsRuntime, now: datetime | None = None) -> list[Tick]:
    """The latest cron tick of every `schedule` policy, with the latest version of the dataset it names."""
    from flywheel.warehouse.jobs.dispatch import ticks

    return ticks(rt.policies.values(), now or datetime.now(timezone.utc), _latest_versions(env))


def dispatch(env: Environment, events: Sequence[Event]) -> list[Job]:
    """Hand events (new dataset versions, drift alerts) to the trigger policies, when a policy file exists: each
    matching job starts once (`flywheel jobs list`), whoever else (the `dispatch` flow, another command) hands
    the same event over. Secrets are read here, at the edge, by the variable a policy names."""
    from flywheel.warehouse.jobs.dispatch import dispatch as start

    rt = jobs_runtime(env) if events else None
    if rt is None:
        return []
    return start(rt.policies.values(), events, rt.store, rt.secrets, rt.evaluation, rt.latest)


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


def alert_next_steps(env: Environment) -> Callable[[Alert], tuple[str, ...]]:
    """What `dispatch` will start for a drift alert, in words for the alert (`Alert.next_steps`): the matching
    policies of the policy file, or that nothing runs automatically. The file is read once, here."""
    from flywheel.warehouse.jobs.dispatch import NOTHING_RUNS, next_steps

    loaded = _policies(env)
    if loaded is None:
        return lambda _alert: (NOTHING_RUNS,)
    policies = list(loaded[0].values())
    return lambda alert: next_steps(policies, alert)
