"""The `curate` flow: one recipe (or every recipe of FLYWHEEL_RECIPES_DIR) becomes a dataset version, as a
Prefect flow that a schedule or a trigger (new feedback, a passed quality gate) can run.

A thin wrapper over `flywheel.warehouse.datasets.curate` (which works without Prefect). Re-running converges: a
recipe whose content did not change writes nothing, and a run killed mid-way leaves no visible version, so its
retry writes the same one. Errors that a retry can help with (`retryable`) are retried. Each version is handed to
the trigger policies as `flywheel curate` hands it (each matching job starts once per version, whoever hands it
over: the `dispatch` flow's catch-up finds it started).

    from flywheel.flows.curate import curate_flow
    curate_flow.serve(name="nightly-datasets", cron="30 2 * * *")   # or curate_flow("support-sft") once
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flywheel.commands.datasets import dispatch_version, recipes_dir
from flywheel.environment import Environment
from flywheel.errors import FlywheelError
from flywheel.flows.retry import retry_if_retryable
from flywheel.warehouse.datasets import (CurationError, CurationResult, Recipe, curate, find_recipe, load_recipe,
                                         recipe_files)
from flywheel.warehouse.jobs.store import Job


@task(retries=2, retry_delay_seconds=30, retry_condition_fn=retry_if_retryable, cache_policy=NO_CACHE)
def curate_one(env: Environment, recipe: Recipe) -> CurationResult:
    """Build one recipe; publishes a version only when the content changed."""
    return curate(env.core, env.datasets, recipe)


@task(retries=2, retry_delay_seconds=10, retry_condition_fn=retry_if_retryable, cache_policy=NO_CACHE)
def start_jobs(env: Environment, res: CurationResult) -> list[Job]:
    """Start the jobs the version triggers (a retry skips what the first attempt claimed)."""
    return dispatch_version(env, res)


@flow(name="curate")
def curate_flow(recipe: str | None = None) -> list[dict[str, Any]]:
    """Curate `recipe` (a path or a name in FLYWHEEL_RECIPES_DIR), or every recipe (eval sets first) when None.
    Returns each run's result: the version, whether it was created, why, and the counts per split and step. A
    recipe that fails is logged and the others still run; the flow then fails naming it. A job a version starts
    that fails is logged and recorded (`flywheel jobs list`), and does not fail the curation."""
    env = Environment.load()  # a flow run is an edge: its settings are read once, here, and passed down
    directory = recipes_dir(env)
    recipes = [find_recipe(recipe, directory)] if recipe else [load_recipe(p) for p in recipe_files(directory)]
    recipes.sort(key=lambda r: r.kind != "eval")
    log = get_run_logger()
    out: list[dict[str, Any]] = []
    failed: list[str] = []
    for r in recipes:  # one recipe failing (an empty window, say) does not keep the others from running
        try:
            res = curate_one(env, r)
        except FlywheelError as exc:
            log.error("%s: %s", r.name, exc)
            out.append({"name": r.name, "error": str(exc)})
            failed.append(r.name)
            continue
        log.info("%s@%s %s: %s", res.name, res.version, "written" if res.created else "unchanged", res.reason)
        out.append(res.to_json())
        try:
            jobs = start_jobs(env, res)
        except FlywheelError as exc:  # a bad policy file: the version is published, the run fails naming it
            log.error("%s@%s: its jobs could not start: %s", res.name, res.version, exc)
            failed.append(f"{res.name} (jobs: {exc})")
            continue
        for j in jobs:
            (log.info if j.status == "succeeded" else log.error)("policy %s started job %s (%s) on %s: %s%s",
                                                                  j.policy, j.id, j.target, j.subject, j.status,
                                                                  f" ({j.error})" if j.error else "")
    if failed:  # the run fails, so a scheduler or a human notices; what succeeded is published
        raise CurationError(f"curation failed for {', '.join(failed)} (the others ran): see the run's log",
                            dataset=failed[0])
    return out
