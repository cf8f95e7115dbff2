"""Releases: which model and prompt version is each app's champion, since when, and on which evidence.

The `releases` lake table is an append-only log: every promotion or rollback is one row stating the champion it
leaves in place (app, model, model version, prompt version, the evaluation run behind it, who forced it and why).
The current champion of an app is its latest row; `rollback` appends a row that restores the champion before it,
so the history keeps everything and a rollback can itself be rolled back. Appends are atomic (Delta).

Promotion is refused unless the evidence holds: the evaluation run must be finished and must have evaluated what is
promoted (its target's model, or the version when the endpoint serves it under that name, and its model version
and prompt version where the target named them), and when the
app already has a champion with an evaluation run, the candidate's run must pass the gate against it
(`flywheel.warehouse.evaluation.compare.gate`); the model version must have served the app in the lake. `force`
(with a reason) overrides the gate only, never the checks on the run (it exists, finished, and evaluated what is
promoted) or on the version (the lake saw it): a failed gate is still evidence, of a regression someone accepted,
while a run of another model is no evidence about this one at all.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa

from flywheel.errors import FlywheelError
from flywheel.warehouse import tables
from flywheel.warehouse.evaluation.compare import Gate, gate
from flywheel.warehouse.evaluation.runs import RunTarget, run_target, runs
from flywheel.warehouse.evaluation.settings import EvalSettings

TABLE = "releases"
SCHEMA = pa.schema([
    ("app", pa.string()), ("action", pa.string()), ("model", pa.string()), ("model_version", pa.string()),
    ("prompt_version", pa.string()), ("eval_run", pa.string()), ("since", pa.timestamp("us", tz="UTC")),
    ("forced", pa.bool_()), ("reason", pa.string()), ("gate", pa.string()), ("sequence", pa.int64()),
])


class ReleaseError(FlywheelError):
    """A promotion or rollback was refused; the message says why and what to do (also `app`)."""

    def __init__(self, message: str, *, app: str, eval_run: str | None = None) -> None:
        super().__init__(message, app=app, eval_run=eval_run)
        self.app = app
        self.eval_run = eval_run
        """The evaluation run concerned, when the refusal is about it."""


@dataclass(frozen=True)
class Release:
    app: str
    action: str
    """`promote` or `rollback`."""
    model: str
    model_version: str | None
    prompt_version: str | None
    eval_run: str | None
    since: datetime
    forced: bool
    reason: str
    gate: str
    """The gate's verdict and reasons at promotion, as JSON (empty for a first release or a rollback)."""
    sequence: int
    """Position in the app's history (1, 2, ...)."""


def history(lake: tables.Where, app: str) -> list[Release]:
    """The app's releases, oldest first."""
    t = tables.query(lake, TABLE, "SELECT * FROM t WHERE app = $a ORDER BY sequence", {"a": app}, empty=SCHEMA)
    return [Release(**r) for r in t.to_pylist()]


def champion(lake: tables.Where, app: str) -> Release | None:
    h = history(lake, app)
    return h[-1] if h else None


def promote(lake: tables.Where, app: str, model: str, model_version: str | None, eval_run: str,
            settings: EvalSettings, prompt_version: str | None = None, force: bool = False, reason: str = "",
            seen: bool | None = None) -> Release:
    """Make (model, model_version, prompt_version) the app's champion on the evidence of `eval_run`.

    `seen`: whether the lake saw this app served by that model version (the caller checks it with a query); a
    version never seen is refused."""
    if force and not reason:
        raise ReleaseError(f"--force needs a reason (--reason '...'): it is recorded in the history of {app}", app=app)
    if seen is False:
        raise ReleaseError(f"{app} was never served by {model} {model_version or ''} in the lake: promote a version "
                           "its traffic has seen (`flywheel sql \"SELECT DISTINCT model, model_version FROM "
                           f"inferences WHERE app = '{app}'\"`)", app=app)
    finished = {r["run_id"]: r for r in runs(lake).to_pylist()}
    run = finished.get(eval_run)
    if run is None or run["summary"] is None:
        raise ReleaseError(f"evaluation run {eval_run!r} does not exist or has not finished (`flywheel eval list`)",
                           app=app, eval_run=eval_run)
    _check_evaluated(app, run_target(lake, eval_run), model, model_version, prompt_version)
    current = champion(lake, app)
    verdict: Gate | None = None
    if current is not None and current.eval_run and current.eval_run != eval_run:
        verdict = gate(lake, eval_run, current.eval_run, settings)
        if not verdict.passed and not force:
            raise ReleaseError(f"{eval_run} does not pass the gate against the champion's run {current.eval_run}: "
                               + "; ".join(verdict.reasons) + " (fix the candidate, or --force --reason '...')",
                               app=app, eval_run=eval_run)
    gate_json = json.dumps({"passed": verdict.passed, "reasons": list(verdict.reasons),
                            "baseline": current.eval_run if current else None}) if verdict else ""
    return _append(lake, app, "promote", model, model_version, prompt_version, eval_run, force, reason, gate_json)


def _check_evaluated(app: str, evaluated: RunTarget, model: str, model_version: str | None,
                     prompt_version: str | None) -> None:
    """Refuse evidence about something else than what is promoted. A version the run's target did not name was not
    pinned (the run evaluated whatever the endpoint served as that model), so any version matches it. An endpoint
    may also serve each version under the version's own name (vLLM's --served-model-name, a LiteLLM alias; the demo
    does): a target whose model is the promoted version, naming no model_version, evaluated that version."""
    served_as_version = evaluated.model_version is None and model_version is not None \
        and evaluated.model == model_version
    wrong = [f"{what} {got!r} (promoting {repr(want) if want else 'none'})" for what, got, want in (
        ("model", None if served_as_version else evaluated.model, model),
        ("model version", evaluated.model_version, model_version),
        ("prompt version", evaluated.prompt_version, prompt_version)) if got is not None and got != want]
    if not wrong:
        return
    as_run = f"--model {evaluated.model}" + "".join(
        f" {flag} {v}" for flag, v in (("--model-version", evaluated.model_version),
                                        ("--prompt-version", evaluated.prompt_version)) if v)
    raise ReleaseError(f"evaluation run {evaluated.run_id} evaluated {', '.join(wrong)}: it is no evidence about "
                       f"what you promote. Cite a run of it (`flywheel eval run --target T`, T a target of model "
                       f"{model!r} with these versions, then `--eval` its run), or promote what this run evaluated "
                       f"({as_run}); --force does not override this", app=app, eval_run=evaluated.run_id)


def rollback(lake: tables.Where, app: str, reason: str = "") -> Release:
    """Restore the champion before the current one (the row before the latest)."""
    h = history(lake, app)
    if len(h) < 2:
        raise ReleaseError(f"{app} has {'no champion' if not h else 'only one release'}: nothing to roll back to "
                           "(`flywheel release history " + app + "`)", app=app)
    prev = h[-2]
    return _append(lake, app, "rollback", prev.model, prev.model_version, prev.prompt_version, prev.eval_run,
                   False, reason or f"rollback of release {h[-1].sequence}", "")


def _append(lake: tables.Where, app: str, action: str, model: str, model_version: str | None,
            prompt_version: str | None, eval_run: str | None, forced: bool, reason: str, gate_json: str) -> Release:
    # Serialized per host, so two changes at once cannot both take the same place in the history (a lake on
    # object storage has no lock across hosts: change releases from one host).
    where = tables.location(lake)
    with nullcontext() if where.remote else _file_lock(Path(where.uri) / "_locks" / f"{TABLE}.lock"):
        h = history(lake, app)
        r = Release(app, action, model, model_version, prompt_version, eval_run, datetime.now(timezone.utc),
                    forced, reason, gate_json, (h[-1].sequence if h else 0) + 1)
        tables.append(lake, TABLE, pa.Table.from_pylist([r.__dict__], SCHEMA))
    return r


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
