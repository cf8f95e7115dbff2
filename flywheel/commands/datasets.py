"""`flywheel curate ...` and `flywheel datasets ...`: build dataset versions from recipes, list, show, diff and
pull them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import click

from flywheel.commands.options import dispatch, format_option, pass_env, settings_help
from flywheel.environment import Environment
from flywheel.warehouse.datasets.curation import CurationResult
from flywheel.warehouse.jobs.dispatch import DatasetVersion
from flywheel.warehouse.jobs.store import Job
from flywheel.errors import FlywheelError
from flywheel.warehouse.datasets.settings import DatasetSettings

_SETTINGS = "\b\nSettings:\n" + settings_help(DatasetSettings, "FLYWHEEL_DATASETS_")


def recipes_dir(env: Environment) -> Path:
    """FLYWHEEL_RECIPES_DIR, or the bundled example recipes when it is unset."""
    return Path(env.datasets.recipes_dir) if env.datasets.recipes_dir else _bundled()


def _bundled() -> Path:
    import flywheel.infra

    return Path(flywheel.infra.__file__).resolve().parent / "recipes"


@click.command("curate", epilog=_SETTINGS)
@click.argument("recipe", required=False)
@click.option("--all", "run_all", is_flag=True, help="Run every recipe of FLYWHEEL_RECIPES_DIR (eval sets first, so "
                                                     "training sets are decontaminated against them).")
@format_option("text", "json")
@pass_env
def curate_cmd(env: Environment, recipe: str | None, run_all: bool, fmt: str) -> None:
    """Build a dataset version from a recipe (a path, or a name in FLYWHEEL_RECIPES_DIR).

    A run whose content equals the latest version's writes nothing and says so.

    \b
    Example:
      flywheel curate support-sft
      flywheel curate infra/recipes/answers-preference.yaml --format json
      flywheel curate --all
    """
    from flywheel.warehouse.datasets import curate, find_recipe, load_recipe, recipe_files

    if bool(recipe) == run_all:
        raise click.UsageError("give one recipe (a path or a name) or --all")
    directory = recipes_dir(env)
    recipes = [find_recipe(recipe, directory)] if recipe else [load_recipe(p) for p in recipe_files(directory)]
    recipes.sort(key=lambda r: r.kind != "eval")  # stable: eval sets first, then the files' order
    failed = 0
    for r in recipes:
        try:
            res = curate(env.core, env.datasets, r)
        except FlywheelError as exc:
            if not run_all:
                raise
            failed += 1
            click.echo(json.dumps({"name": r.name, "error": str(exc)}) if fmt == "json" else f"{r.name}: {exc}",
                       err=fmt != "json")
            continue
        # An unchanged version is dispatched too: a run killed after registering a version and before its jobs
        # started left them unstarted, and this is the run that finds it; a job already claimed never starts again.
        started = dispatch_version(env, res)
        if fmt == "json":
            click.echo(json.dumps({**res.to_json(), "jobs": [j.id for j in started]}))
            continue
        for job in started:
            click.echo(f"policy {job.policy} started job {job.id} ({job.target}): {job.status}"
                       + (f" -> {job.result}" if job.result else f" ({job.error})" if job.error else ""))
        what = f"wrote {res.name}@{res.version}" if res.created else f"{res.name}@{res.version}"
        click.echo(f"{what}: {res.reason}")
        click.echo("  splits: " + ", ".join(f"{k} {v}" for k, v in res.splits))
        for s in res.steps:
            why = "; ".join(f"{k}: {v}" for k, v in s.reasons) or s.detail
            click.echo(f"  {s.step:14s} {s.rows_in:>8} -> {s.rows_out:<8} {why}")
    if failed:
        raise click.exceptions.Exit(1)


def dispatch_version(env: Environment, res: CurationResult) -> list[Job]:
    """Hand a dataset version, new or unchanged, to the trigger policies (when a policy file exists): each matching
    job starts once per version (`flywheel jobs list`), however often it is handed over."""
    if not env.jobs.policies_path(env.core.home).is_file():
        return []
    return dispatch(env, [version_event(env, res.name, res.version, res.path, res.splits)])


def version_event(env: Environment, name: str, version: int, path: Path,
                  splits: Sequence[tuple[str, int]]) -> DatasetVersion:
    """The `dataset` trigger's event for a published version. New examples are the rows no split of the previous
    version had (all of them for a first version)."""
    from flywheel.warehouse.datasets.api import diff
    if version > 1:
        new = sum(len(d.added) for d in diff(f"{name}@{version - 1}", f"{name}@{version}", settings=env.core,
                                              ds=env.datasets))
    else:
        new = sum(n for _, n in splits)
    # the export a fine-tune uploads: the train split's OpenAI chat file when the recipe writes one, else the
    # train split's first JSONL; never another split (the test split is what the tuned model is evaluated on:
    # a version without a train split has no export, and its fine-tune fails saying so)
    exports = sorted((p for p in path.rglob("train.jsonl") if p.parent.name != "data"),
                     key=lambda p: (p.parent.name != "openai_chat", str(p)))
    return DatasetVersion(name, version, new, str(path), str(path / "manifest.json"),
                          str(exports[0]) if exports else "", dict(splits))


@click.group("datasets", epilog=_SETTINGS)
def datasets() -> None:
    """Published dataset versions: list, show, diff and pull them (versions never change).

    \b
    Example:
      flywheel datasets list
      flywheel datasets pull support-sft@1 --format openai_chat --out ./support-sft
    """


@datasets.command("list")
@click.argument("name", required=False)
@format_option("table", "json")
@pass_env
def list_cmd(env: Environment, name: str | None, fmt: str) -> None:
    """List every published version (of NAME, or of every dataset).

    \b
    Example:
      flywheel datasets list
      flywheel datasets list support-sft --format json
    """
    from flywheel.warehouse.datasets import Registry
    from flywheel.warehouse.datasets.recipes import check_name

    versions = Registry(env.core, env.datasets).versions(check_name(name, key="name") if name else None)
    for v in versions:
        if fmt == "json":
            click.echo(json.dumps({"name": v.name, "version": v.version, "kind": v.kind, "rows": v.rows,
                                   "splits": dict(v.splits), "created_at": v.created_at.isoformat(),
                                   "content_hash": v.content_hash, "reason": v.reason, "path": str(v.path)}))
        else:
            click.echo(f"{v.ref:32s} {v.kind:10s} {v.rows:>8} rows  {v.created_at:%Y-%m-%d %H:%M}  {v.reason}")
    if not versions and fmt != "json":
        click.echo("no dataset version yet: run `flywheel curate --all`")


@datasets.command("show")
@click.argument("ref")
@format_option("text", "json")
@pass_env
def show_cmd(env: Environment, ref: str, fmt: str) -> None:
    """Show a version's manifest: counts per split and per step, files, recipe, lake versions, why it exists.

    \b
    Example:
      flywheel datasets show support-sft@1
      flywheel datasets show support-sft --format json
    """
    from flywheel.warehouse.datasets import Registry

    info = Registry(env.core, env.datasets).get(ref)
    manifest = info.manifest()
    if fmt == "json":
        click.echo(json.dumps(manifest))
        return
    click.echo((info.path / "README.md").read_text(encoding="utf-8"))
    click.echo(f"files ({info.path}):")
    for rel, meta in manifest["files"].items():  # type: ignore[attr-defined]
        click.echo(f"  {rel:40s} {meta['bytes']:>10} B  sha256 {meta['sha256']}")


@datasets.command("diff")
@click.argument("a")
@click.argument("b")
@click.option("--ids", is_flag=True, help="List the ids of the rows added and removed.")
@format_option("text", "json")
@pass_env
def diff_cmd(env: Environment, a: str, b: str, ids: bool, fmt: str) -> None:
    """Rows added and removed per split between two versions.

    \b
    Example:
      flywheel datasets diff support-sft@1 support-sft@2
    """
    from flywheel.warehouse.datasets import diff

    for d in diff(a, b, settings=env.core, ds=env.datasets):
        if fmt == "json":
            click.echo(json.dumps({"split": d.split, "added": len(d.added), "removed": len(d.removed),
                                   **({"added_ids": d.added, "removed_ids": d.removed} if ids else {})}))
            continue
        click.echo(f"{d.split}: +{len(d.added)} -{len(d.removed)}")
        if ids:
            for i in d.added:
                click.echo(f"  + {i}")
            for i in d.removed:
                click.echo(f"  - {i}")


@datasets.command("pull")
@click.argument("ref")
@click.option("--format", "export_format", required=True,
              type=click.Choice(["parquet", "jsonl", "openai_chat", "openai_dpo", "trl", "hf"]),
              help="What to write (a format the dataset's kind has).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory to write into.")
@click.option("--force", is_flag=True, help="Write into a non-empty directory (files of the same names are replaced).")
@pass_env
def pull_cmd(env: Environment, ref: str, export_format: str, out: str, force: bool) -> None:
    """Write a version in a trainer's format under --out (plus its manifest.json and README.md).

    \b
    Example:
      flywheel datasets pull support-sft --format trl --out ./data/support-sft
      flywheel datasets pull answers-preference@2 --format openai_dpo --out ./dpo
      flywheel datasets pull support-sft@1 --format hf --out ./hf   # datasets.load_dataset("./hf/hf")
    """
    from flywheel.warehouse.datasets import pull

    for rel in pull(ref, export_format, out, force=force, settings=env.core, ds=env.datasets):
        click.echo(str(Path(out) / rel))


COMMANDS = [curate_cmd, datasets]
