"""The `eval` target: flywheel's own evaluation (`flywheel.warehouse.evaluation`) of a dataset version against one or
more named targets of the targets file, and optionally the gate of a candidate against a baseline.

    re-evaluate:
      when: {dataset: support-eval}
      target: {kind: eval, targets: [champion, candidate], split: test,
               gate: {candidate: candidate, baseline: champion}}

Guarantees:
- One evaluation run per named target over the version's split (`run_eval`: resumable, so a retry of a job that
  was interrupted resumes its runs and scores no example twice). The job's result is JSON with the eval set, the
  run id per target and, with `gate`, the verdict and its reasons; its output holds each run's summary line.
- A gate that blocks is a verdict, recorded as such (`"passed": false`): the job succeeded in finding it out.
- The job fails, with what is known as its output, when the dataset cannot be read, when a target's run scored
  no example at all (every request failed: an endpoint down, a wrong key), or when the gate cannot be computed;
  `flywheel jobs retry` runs it again.
- Keys come from the caller's `secrets` by the variable the target names; they never reach a result or output.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from flywheel.errors import FlywheelError
from flywheel.warehouse import tables
from flywheel.warehouse.evaluation.compare import gate as gate_runs
from flywheel.warehouse.evaluation.runs import Example, RunResult, run_eval
from flywheel.warehouse.evaluation.settings import EvalSettings
from flywheel.warehouse.evaluation.targets import Secret, Target
from flywheel.warehouse.jobs.targets import Outcome, TargetFailed

ExampleSource = Callable[[str, str], tuple[Sequence[Example], str]]
"""(dataset reference `name@version`, or `name` for its latest version; split) -> the split's examples and the
eval set's name in `eval_runs` (`name@version`). The edge passes a reader of the dataset registry."""


@dataclass(frozen=True)
class EvalContext:
    """What an `eval` job needs besides its policy, built once at the edge."""

    lake: tables.Where
    settings: EvalSettings
    targets: Mapping[str, Target]
    """The targets file's entries, by name (policies were validated against these names)."""
    examples: ExampleSource


def evaluate(ctx: EvalContext, options: Mapping[str, object], params: Mapping[str, object],
             secrets: Callable[[str], Secret]) -> Outcome:
    """Run the policy's targets over the dataset version of `params` (or the latest of `options["dataset"]`)."""
    if "version" in params and "dataset" in params:
        ref = f"{params['dataset']}@{params['version']}"
    else:
        ref = str(options["dataset"])  # validated on load: a drift-alert policy names its eval set
    split = str(options.get("split", "test"))
    try:
        examples, eval_set = ctx.examples(ref, split)
    except FlywheelError as exc:
        raise TargetFailed(f"cannot read the eval set {ref} (split {split}): {exc}") from exc
    names = [str(n) for n in options["targets"]]  # type: ignore[attr-defined]
    missing = [n for n in names if n not in ctx.targets]
    if missing:
        raise TargetFailed(f"evaluation target {missing[0]!r} is not in the targets file (FLYWHEEL_EVAL_TARGETS_FILE)")
    lines: list[str] = []
    runs: dict[str, RunResult] = {}
    for name in names:
        target = ctx.targets[name]
        key = secrets(target.api_key_env) if target.api_key_env else Secret("")
        res = run_eval(ctx.lake, eval_set, examples, target, key, ctx.settings)
        runs[name] = res
        lines.append(f"{name}: run {res.run_id}{' (resumed)' if res.resumed else ''}, {res.examples} examples, "
                     f"{res.failed} failed, pass rate {_fmt(res.summary.get('pass_rate'))}, similarity "
                     f"{_fmt(res.summary.get('similarity_mean'))}")
    result: dict[str, object] = {"eval_set": eval_set, "split": split,
                                 "runs": {n: r.run_id for n, r in runs.items()}}
    dead = [n for n, r in runs.items() if r.examples and r.failed == r.examples]
    if dead:
        raise TargetFailed(f"evaluation target {dead[0]!r} answered none of the {runs[dead[0]].examples} examples "
                           f"of {eval_set} (run {runs[dead[0]].run_id} in `flywheel eval list` holds each error)",
                           "\n".join(lines + [json.dumps(result)]))
    g = options.get("gate")
    if isinstance(g, Mapping):
        cand, base = runs[str(g["candidate"])], runs[str(g["baseline"])]
        try:
            verdict = gate_runs(ctx.lake, cand.run_id, base.run_id, ctx.settings)
        except FlywheelError as exc:
            raise TargetFailed(f"gating {g['candidate']} against {g['baseline']} failed: {exc}",
                               "\n".join(lines)) from exc
        result["gate"] = {"candidate": g["candidate"], "baseline": g["baseline"], "passed": verdict.passed,
                          "reasons": list(verdict.reasons)}
        lines.append(f"gate {g['candidate']} vs {g['baseline']}: {'passed' if verdict.passed else 'blocked'}"
                     + "".join(f"\n  {r}" for r in verdict.reasons))
    return Outcome(json.dumps(result), "\n".join(lines))


def _fmt(v: object) -> str:
    return f"{v:.3f}" if isinstance(v, float) else "n/a"
