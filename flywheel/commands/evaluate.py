"""`flywheel eval run|list|show|compare|gate` and `flywheel release promote|rollback|history`."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from flywheel.commands.options import format_option, pass_env, settings_help
from flywheel.environment import Environment
from flywheel.errors import ConfigError
from flywheel.warehouse.evaluation.runs import Example
from flywheel.warehouse.evaluation.settings import EvalSettings

if TYPE_CHECKING:
    from flywheel.warehouse.evaluation.judge import JudgeResult, JudgeSpec
    from flywheel.warehouse.evaluation.targets import Secret


def _targets_file(env: Environment, given: Path | None) -> Path:
    path = given or env.evaluation.targets_path(env.core.home)
    if not path.is_file():
        raise ConfigError(f"no targets file at {path}: write one (see `flywheel eval run --help`) or point "
                          "FLYWHEEL_EVAL_TARGETS_FILE / --targets at it", variable="FLYWHEEL_EVAL_TARGETS_FILE")
    return path


def _judge_options(f: Callable[..., None]) -> Callable[..., None]:
    for option in reversed((
        click.option("--judge", default=None, metavar="TARGET",
                     help="Also judge the answers with this target of the targets file (an LLM judge)."),
        click.option("--judge-mode", type=click.Choice(["pairwise", "rubric"]), default="pairwise",
                     show_default=True, help="pairwise: against --judge-baseline's answers, in both orders; "
                     "rubric: a 1-5 score per answer."),
        click.option("--judge-baseline", default=None, metavar="RUN",
                     help="Pairwise: the run whose answers are the other side of each pair."),
        click.option("--rubric", default=None, help="What the judge values (text, or @FILE to read it from)."),
    )):
        f = option(f)
    return f


def _judge_spec(env: Environment, targets_file: Path | None, judge: str, mode: str, baseline: str | None,
                rubric: str | None) -> tuple[JudgeSpec, Secret]:
    from flywheel.warehouse.evaluation.judge import DEFAULT_RUBRIC, JudgeSpec
    from flywheel.warehouse.evaluation.targets import load_targets, resolve_key

    targets = load_targets(_targets_file(env, targets_file))
    if judge not in targets:
        raise ConfigError(f"no judge target {judge!r} in the targets file; it has {', '.join(sorted(targets))}")
    text = DEFAULT_RUBRIC if rubric is None else (Path(rubric[1:]).read_text(encoding="utf-8")
                                                  if rubric.startswith("@") else rubric)
    spec = JudgeSpec(targets[judge], mode, text.strip(), baseline)
    return spec, resolve_key(spec.target, os.environ)  # the edge, as for the target itself


def _run_judge(env: Environment, run_id: str, spec: JudgeSpec, key: Secret) -> JudgeResult:
    from flywheel.warehouse.evaluation.judge import judge_run

    with click.progressbar(length=0, label=f"judging with {spec.target.name}", file=sys.stderr,
                           hidden=not sys.stderr.isatty()) as bar:
        last = [0]

        def progress(done: int, total: int) -> None:
            bar.length = total
            bar.update(done - last[0])
            last[0] = done

        return judge_run(env.core.lake_location, run_id, spec, key, env.evaluation, progress)


def _judge_text(r: JudgeResult) -> str:
    if r.mode == "rubric":
        mean = "n/a" if r.mean_score is None else f"{r.mean_score:.2f}"
        return f"judged {r.judged} answers, mean score {mean} (1-5), {r.failed} failed judgements ({r.asked} asked now)"
    return (f"judged {r.judged} pairs in both orders: {r.wins} wins, {r.losses} losses, {r.ties} ties, "
            f"{r.failed} failed judgements ({r.asked} asked now)")


@click.group(epilog="\b\nSettings:\n" + settings_help(EvalSettings, "FLYWHEEL_EVAL_", 44))
def evaluate() -> None:
    """Re-evaluate against any OpenAI-compatible endpoint, compare runs, and gate releases on them.

    Results go to the `eval_runs` lake table (`flywheel sql "SELECT * FROM eval_runs"`).

    \b
    Example:
      flywheel eval run --examples golden.jsonl --target candidate
      flywheel eval compare RUN_A RUN_B --format markdown
      flywheel eval gate RUN_B --baseline RUN_A
    """


@evaluate.command("run")
@click.option("--dataset", default=None, metavar="NAME[@V]",
              help="A curated eval set (`flywheel datasets list`); the latest version without @V.")
@click.option("--split", default="test", show_default=True, help="The dataset split to evaluate.")
@click.option("--examples", "examples_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Instead of --dataset: a JSONL of {id, prompt | messages, reference?, segment?}.")
@click.option("--target", required=True, help="A target's name in the targets file.")
@click.option("--targets", "targets_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The targets file (default: FLYWHEEL_EVAL_TARGETS_FILE, else $FLYWHEEL_HOME/targets.yaml).")
@click.option("--name", default=None, help="The eval set's name in eval_runs (default: the file's name).")
@_judge_options
@format_option("text", "json")
@pass_env
def eval_run(env: Environment, dataset: str | None, split: str, examples_file: Path | None, target: str,
             targets_file: Path | None, name: str | None, judge: str | None, judge_mode: str,
             judge_baseline: str | None, rubric: str | None, fmt: str) -> None:
    """Send every example to TARGET, score the answers and record them; a killed run resumes when re-run.

    A targets file (YAML) names OpenAI-compatible endpoints; keys come from the environment variable a target
    names, never from the file:

    \b
      targets:
        candidate:
          base_url: http://127.0.0.1:8000/v1
          model: my-model-v2
          api_key_env: OPENAI_API_KEY
          params: {temperature: 0, max_tokens: 512}

    \b
    Example:
      flywheel eval run --dataset regression-eval --target candidate
      flywheel eval run --examples golden.jsonl --target candidate --format json
    """
    from flywheel.warehouse.evaluation.runs import run_eval
    from flywheel.warehouse.evaluation.targets import load_targets, resolve_key

    targets = load_targets(_targets_file(env, targets_file))
    if target not in targets:
        raise ConfigError(f"no target {target!r} in the targets file; it has {', '.join(sorted(targets))}")
    chosen = targets[target]
    if (dataset is None) == (examples_file is None):
        raise ConfigError("name what to evaluate: --dataset NAME[@V] (a curated eval set) or --examples FILE")
    if dataset is not None:
        examples, set_name = dataset_examples(env, dataset, split)
    else:
        assert examples_file is not None
        examples, set_name = read_examples(examples_file), examples_file.stem
    key = resolve_key(chosen, os.environ)  # the edge: the key leaves the environment only for the request header
    judging = _judge_spec(env, targets_file, judge, judge_mode, judge_baseline, rubric) if judge else None
    with click.progressbar(length=len(examples), label=f"evaluating {chosen.name}", file=sys.stderr,
                           hidden=not sys.stderr.isatty()) as bar:
        last = [0]

        def progress(done: int, _total: int) -> None:
            bar.update(done - last[0])
            last[0] = done

        result = run_eval(env.core.lake_location, name or set_name, examples, chosen, key, env.evaluation, progress)
    judged = _run_judge(env, result.run_id, *judging) if judging else None
    if fmt == "json":
        click.echo(json.dumps({"run_id": result.run_id, "resumed": result.resumed, "examples": result.examples,
                               "sent": result.sent, "failed": result.failed, "summary": result.summary,
                               "judge": judged.__dict__ if judged else None}))
        return
    verb = "resumed" if result.resumed else "ran"
    click.echo(f"{verb} evaluation {result.run_id}: {result.examples} examples ({result.sent} sent now), "
               f"{result.failed} failed")
    for k, v in result.summary.items():
        shown = "n/a" if v is None else f"{v:.4g}" if isinstance(v, float) else v  # n/a: does not apply, or no value
        click.echo(f"  {k:20s} {shown}")
    if judged:
        click.echo(_judge_text(judged))


@evaluate.command("judge")
@click.argument("run_id")
@click.option("--targets", "targets_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The targets file (default: FLYWHEEL_EVAL_TARGETS_FILE, else $FLYWHEEL_HOME/targets.yaml).")
@_judge_options
@format_option("text", "json")
@pass_env
def eval_judge(env: Environment, run_id: str, targets_file: Path | None, judge: str | None, judge_mode: str,
               judge_baseline: str | None, rubric: str | None, fmt: str) -> None:
    """Judge the answers of RUN_ID with an LLM judge (a target of the targets file); resumes where it stopped.

    Pairwise, each answer is compared with the baseline run's answer to the same example in both orders, and
    counts as a win only when both orders agree (a position-biased judge yields ties). Verdicts go to the
    `eval_judgements` table; `flywheel eval compare` shows the judge win rate with its interval.

    \b
    Example:
      flywheel eval judge RUN_B --judge gpt-4o-judge --judge-baseline RUN_A
      flywheel eval judge RUN_B --judge gpt-4o-judge --judge-mode rubric --rubric @rubric.txt
    """
    if not judge:
        raise ConfigError("name the judge: --judge TARGET (a target of the targets file)")
    judged = _run_judge(env, run_id, *_judge_spec(env, targets_file, judge, judge_mode, judge_baseline, rubric))
    click.echo(json.dumps(judged.__dict__) if fmt == "json" else f"{run_id}: {_judge_text(judged)}")


def dataset_examples(env: Environment, ref: str, split: str) -> tuple[list[Example], str]:
    """The examples of a curated dataset version's split, and the eval set's name in eval_runs (`name@version`):
    its conversation up to the answer, the reference (a human correction) where it has one, its stratum, and the
    output format its recipe expects (`eval.output_format` in the manifest; `text` for a version curated before
    recipes had it)."""
    from flywheel.warehouse.datasets.registry import Registry

    info = Registry(env.core, env.datasets).get(ref)
    from flywheel.warehouse.datasets.api import load

    rows = load(f"{info.name}@{info.version}", split, settings=env.core, ds=env.datasets)
    output_format = _output_format(info.manifest(), info.ref)
    out = []
    for r in rows.to_pylist():
        msgs = r.get("messages") or [{"role": "user", "content": r["prompt"]}]
        out.append(Example(str(r["id"]), tuple((m["role"], m["content"]) for m in msgs), r.get("reference"),
                           str(r.get("stratum") or r.get("app") or ""), output_format))
    if not out:
        raise ConfigError(f"{info.name}@{info.version} has no rows in split {split!r}")
    return out, f"{info.name}@{info.version}"


def _output_format(manifest: dict[str, object], ref: str) -> str:
    from flywheel.warehouse.evaluation.metrics import OUTPUT_FORMATS

    recipe = manifest.get("recipe")
    sampling = recipe.get("eval") if isinstance(recipe, dict) else None
    value = sampling.get("output_format", "text") if isinstance(sampling, dict) else "text"
    if value not in OUTPUT_FORMATS:  # a hand-edited manifest: the recipe loader refuses this before curation
        raise ConfigError(f"{ref}: its manifest's recipe.eval.output_format is {value!r}, not one of "
                          f"{', '.join(OUTPUT_FORMATS)}; curate a new version from a valid recipe")
    return str(value)


def read_examples(path: Path) -> list[Example]:
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            messages = tuple((m["role"], m["content"]) for m in d["messages"]) if "messages" in d \
                else (("user", d["prompt"]),)
            out.append(Example(str(d["id"]), messages, d.get("reference"), str(d.get("segment", ""))))
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}:{n}: an example needs `id` and `prompt` or `messages` "
                              f"([{{role, content}}]); {type(exc).__name__}: {exc}") from None
    if not out:
        raise ConfigError(f"{path} holds no examples")
    return out


@evaluate.command("list")
@format_option("text", "json")
@pass_env
def eval_list(env: Environment, fmt: str) -> None:
    """List evaluation runs, oldest first, with their summary (unfinished runs have none).

    \b
    Example:
      flywheel eval list --format json
    """
    from flywheel.warehouse.evaluation.runs import runs

    for r in runs(env.core.lake_location).to_pylist():
        summary = json.loads(r["summary"]) if r["summary"] else None
        if fmt == "json":
            click.echo(json.dumps({**r, "summary": summary}, default=str))
            continue
        s = (f"pass {summary['pass_rate']:.1%}, similarity {summary['similarity_mean'] or 0:.3f}, errors "
             f"{summary['errors']}" if summary else "unfinished (re-run it to resume)")
        click.echo(f"{r['run_id']}  {r['eval_set']:20s} {r['model']:30s} {r['examples']:6d} examples  {s}")


@evaluate.command("compare")
@click.argument("baseline")
@click.argument("candidate")
@format_option("text", "json", "markdown")
@pass_env
def eval_compare(env: Environment, baseline: str, candidate: str, fmt: str) -> None:
    """Compare CANDIDATE against BASELINE: per-metric deltas with 95% paired bootstrap intervals, segments whose
    pass rate fell, examples that flipped from pass to fail, the LLM judge's verdicts where one judged the runs
    (`flywheel eval judge`), and what users said in the lake about each run's model and prompt version (thumbs-up
    rate, mean rating, correction and flag rates, with their sample sizes).

    \b
    Example:
      flywheel eval compare 20261201T100000.000Z-ab12cd34 20261201T110000.000Z-ef56ab78 --format markdown
    """
    import dataclasses

    from flywheel.warehouse.evaluation.compare import compare, markdown, to_json
    from flywheel.warehouse.evaluation.online import for_runs

    c = compare(env.core.lake_location, baseline, candidate, env.evaluation)
    c = dataclasses.replace(c, online=for_runs(env.core, baseline, candidate))
    click.echo(to_json(c) if fmt == "json" else markdown(c))


@evaluate.command("gate")
@click.argument("candidate")
@click.option("--baseline", required=True, help="The run the candidate must not be worse than.")
@format_option("text", "json")
@pass_env
def eval_gate(env: Environment, candidate: str, baseline: str, fmt: str) -> None:
    """Exit 1 when CANDIDATE is worse than the baseline beyond the tolerances (see `flywheel config --stage
    evaluation`), with the reasons, so a release pipeline can block it.

    \b
    Example:
      flywheel eval gate RUN_B --baseline RUN_A || echo "blocked"
    """
    from flywheel.warehouse.evaluation.compare import gate

    g = gate(env.core.lake_location, candidate, baseline, env.evaluation)
    if fmt == "json":
        click.echo(json.dumps({"passed": g.passed, "reasons": list(g.reasons), "comparison": g.comparison.to_dict()},
                              default=str))
    else:
        click.echo(("passed" if g.passed else "FAILED") + f": {candidate} vs {baseline}")
        for r in g.reasons:
            click.echo(f"  {r}")
    sys.exit(0 if g.passed else 1)


@click.group()
def release() -> None:
    """Champions per app: promote on evaluation evidence, roll back, and see the history.

    \b
    Example:
      flywheel release promote support-bot --model gpt-4o --model-version 2024-08-06 --eval RUN
      flywheel release rollback support-bot
    """


@release.command("promote")
@click.argument("app")
@click.option("--model", required=True)
@click.option("--model-version", default=None)
@click.option("--prompt-version", default=None)
@click.option("--eval", "eval_run", required=True, help="The evaluation run that is the evidence.")
@click.option("--force", is_flag=True, help="Promote even if the run fails the gate (needs --reason); never on a run "
              "of another model or version.")
@click.option("--reason", default="", help="Why (recorded in the history).")
@pass_env
def release_promote(env: Environment, app: str, model: str, model_version: str | None, prompt_version: str | None,
                    eval_run: str, force: bool, reason: str) -> None:
    """Make a model (and prompt) version APP's champion, if its evaluation run evaluated that version and passes
    the gate against the current champion's, and the app's traffic has seen that version.

    \b
    Example:
      flywheel release promote support-bot --model gpt-4o --model-version 2024-08-06 --eval RUN
    """
    from flywheel.warehouse.query import connect
    from flywheel.warehouse.releases import promote

    con = connect(env.core)
    try:
        seen = con.execute("SELECT count(*) > 0 FROM inferences WHERE app = ? AND model = ? AND "
                           "(? IS NULL OR model_version = ?)", [app, model, model_version, model_version]).fetchone()
    finally:
        con.close()
    r = promote(env.core.lake_location, app, model, model_version, eval_run, env.evaluation, prompt_version, force,
                reason, seen=bool(seen and seen[0]))
    click.echo(f"{app}: champion is now {r.model} {r.model_version or ''} (release {r.sequence}"
               + (", forced" if r.forced else "") + ")")
    _publish(env, r)


@release.command("rollback")
@click.argument("app")
@click.option("--reason", default="", help="Why (recorded in the history).")
@pass_env
def release_rollback(env: Environment, app: str, reason: str) -> None:
    """Restore APP's previous champion.

    \b
    Example:
      flywheel release rollback support-bot --reason "thumbs down doubled"
    """
    from flywheel.warehouse.releases import rollback

    r = rollback(env.core.lake_location, app, reason)
    click.echo(f"{app}: rolled back to {r.model} {r.model_version or ''} (release {r.sequence})")
    _publish(env, r)


@release.command("publish")
@click.argument("app")
@pass_env
def release_publish(env: Environment, app: str) -> None:
    """Send APP's current champion to the releases topic again (after a publish failed, or to a new cluster).

    \b
    Example:
      flywheel release publish support-bot
    """
    from flywheel.errors import FlywheelError
    from flywheel.warehouse.releases import champion

    current = champion(env.core.lake_location, app)
    if current is None:
        raise FlywheelError(f"{app} has no champion yet (`flywheel release promote {app} ...`)")
    _publish(env, current)


def _publish(env: Environment, r: object) -> None:
    """Tell the releases topic (the table already has the row: a failed publish says how to resend)."""
    from flywheel.streams.releases import champion_of, publish, topic

    publish(env.core, champion_of(r))  # type: ignore[arg-type]
    click.echo(f"published to {topic(env.core)}")


@release.command("history")
@click.argument("app")
@format_option("text", "json")
@pass_env
def release_history(env: Environment, app: str, fmt: str) -> None:
    """APP's releases, oldest first.

    \b
    Example:
      flywheel release history support-bot --format json
    """
    from flywheel.warehouse.releases import history

    for r in history(env.core.lake_location, app):
        if fmt == "json":
            click.echo(json.dumps(r.__dict__, default=str))
        else:
            click.echo(f"{r.sequence:3d} {r.since:%Y-%m-%d %H:%M} {r.action:8s} {r.model} {r.model_version or ''} "
                       f"eval {r.eval_run or '-'}" + (f" FORCED: {r.reason}" if r.forced else
                                                       f" ({r.reason})" if r.reason else ""))


evaluate.name = "eval"
COMMANDS = [evaluate, release]
