"""Dispatch: match events (new dataset versions, drift alerts, cron ticks of `schedule` policies) against the
policies, and start each job once.

For every (policy, event) that matches, the job is claimed in the jobs table under (policy, subject) before its
target starts (`JobStore.claim`): a second dispatch of the same event, by this process or another, or after a
crash, finds the claim and starts nothing. The target's outcome is then recorded (succeeded with its result, or
failed with its error and output); secrets come in resolved, from the edge, and never reach the record.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

from croniter import croniter  # type: ignore[import-untyped]

from flywheel.schemas.alerts import Alert
from flywheel.warehouse.evaluation.targets import Secret
from flywheel.warehouse.jobs import targets as T
from flywheel.warehouse.jobs.eval_target import EvalContext, evaluate
from flywheel.warehouse.jobs.policies import Policy
from flywheel.warehouse.jobs.store import Job, JobStore


@dataclass(frozen=True)
class DatasetVersion:
    """A dataset version the registry published: what a `dataset` trigger fires on."""

    name: str
    version: int
    new_examples: int
    path: str = ""
    manifest: str = ""
    """Where the version's manifest is (a path or URI), for the target to fetch."""
    export: str = ""
    """The export file a fine-tune uploads (the recipe's first format), when there is one."""
    counts: Mapping[str, int] | None = None


@dataclass(frozen=True)
class Tick:
    """A tick of a `schedule` policy's cron: what it fires on, once (its subject is the tick's time)."""

    policy: str
    at: datetime
    version: DatasetVersion | None = None
    """The latest version of the dataset the policy names, if it names one and one exists."""


Event = DatasetVersion | Alert | Tick


def ticks(policies: Iterable[Policy], now: datetime,
          latest: Callable[[str], DatasetVersion | None]) -> list[Tick]:
    """The latest tick at or before `now` of every `schedule` policy (older ticks a dispatch missed are not
    replayed: a schedule catches up once, not once per missed tick), with its dataset's latest version; a policy
    whose dataset has no version yet has no tick."""
    out = []
    for p in policies:
        if p.when.schedule is not None:
            at = croniter(p.when.schedule, now.astimezone(timezone.utc)).get_prev(datetime)
            version = latest(p.when.dataset) if p.when.dataset else None
            if p.when.dataset and version is None:
                continue  # nothing to run on yet: the tick fires once the dataset has a version
            out.append(Tick(p.name, at, version))
    return out


def subject(event: Event) -> str:
    if isinstance(event, DatasetVersion):
        return f"dataset:{event.name}@{event.version}"
    if isinstance(event, Tick):
        return f"schedule:{event.at.astimezone(timezone.utc):%Y-%m-%dT%H:%MZ}"
    return f"alert:{event.dedup_key}"


def matches(policy: Policy, event: Event) -> bool:
    w = policy.when
    if isinstance(event, Tick):
        return event.policy == policy.name and w.schedule is not None
    if w.schedule is not None:
        return False
    if isinstance(event, DatasetVersion):
        return w.dataset == event.name and event.new_examples >= w.min_new_examples
    return (w.alert_segment is not None and event.drift_kind is not None
            and event.segment.startswith(w.alert_segment) and (w.alert_kind is None or w.alert_kind == event.kind))


NOTHING_RUNS = "no policy matches: nothing runs automatically"


def describe_target(policy: Policy) -> str:
    """What a policy's target does, in words that carry no secret (a webhook's host, not its URL)."""
    o = policy.options
    if policy.kind == "shell":
        return f"starts its shell job (`{str(o['command'])[:120]}`)"
    if policy.kind == "webhook":
        return f"calls the webhook at {urlsplit(str(o['url'])).hostname or '?'}"
    if policy.kind == "fine_tune":
        return f"starts a fine-tune of {o['model']} at {urlsplit(str(o['base_url'])).hostname or '?'}"
    if policy.kind == "eval":
        gate = o.get("gate")
        return (f"evaluates {o.get('dataset') or 'the dataset'} against {', '.join(o['targets'])}"
                + (f" and gates {gate['candidate']} on {gate['baseline']}" if gate else ""))
    return f"runs the Prefect deployment {o['deployment']}"


def next_steps(policies: Iterable[Policy], alert: Alert) -> tuple[str, ...]:
    """What dispatching `alert` to `policies` will start, one phrase per matching policy, or `NOTHING_RUNS`."""
    steps = tuple(f"policy `{p.name}` {describe_target(p)}" for p in policies if matches(p, alert))
    return steps or (NOTHING_RUNS,)


def params(event: Event) -> dict[str, object]:
    if isinstance(event, Tick):
        return {"schedule": f"{event.at.astimezone(timezone.utc):%Y-%m-%dT%H:%M:%SZ}",
                **(params(event.version) if event.version is not None else {})}
    if isinstance(event, DatasetVersion):
        return {"dataset": event.name, "version": event.version, "new_examples": event.new_examples,
                "path": event.path, "manifest": event.manifest, "export": event.export,
                "counts": dict(event.counts or {})}
    return {"alert": event.kind, "segment": event.segment, "window": event.window, "features": list(event.features),
            "report": event.report}


Secrets = Callable[[str], Secret]
"""Resolves a variable's name (a policy's `secret_env`, `key_env`) into its value: the edge passes its reader."""


def run_target(policy: Policy, p: Mapping[str, object], secrets: Secrets,
               evaluation: EvalContext | None = None, started: T.Started = T.ignore) -> T.Outcome:
    o = policy.options
    if policy.kind == "eval":
        if evaluation is None:
            raise T.TargetFailed("this dispatcher was started without the evaluation settings and targets; "
                                 "dispatch from `flywheel curate`, `flywheel jobs retry` or the `dispatch` flow")
        return evaluate(evaluation, o, p, secrets)
    if o.get("dataset") and p.get("dataset") != o["dataset"]:
        raise T.TargetFailed(f"the target works on dataset {o['dataset']!r}, which has no version yet: curate it "
                             f"first (`flywheel curate {o['dataset']}`), then `flywheel jobs retry`")
    if policy.kind == "webhook":
        secret = secrets(str(o["secret_env"])) if o.get("secret_env") else Secret("")
        return T.webhook(str(o["url"]), p, secret, attempts=int(o.get("attempts", 4)))
    if policy.kind == "shell":
        return T.shell(str(o["command"]), p, float(o.get("timeout_s", 3600.0)), started=started)
    if policy.kind == "fine_tune":
        # from the recorded parameters, so a retry uploads the file the first attempt did
        export = str(p.get("export") or "")
        if not export:
            raise T.TargetFailed("the dataset version has no train-split export to upload (a fine-tune never "
                                 "trains on another split): give its recipe a train split and a JSONL export")
        key = secrets(str(o["key_env"])) if o.get("key_env") else Secret("")
        return T.fine_tune(str(o["base_url"]), str(o["model"]), Path(export), key, float(o.get("poll_s", 5.0)))
    return T.prefect(str(o["deployment"]), p, o.get("parameters"), float(o.get("timeout_s", 0.0)),
                     float(o.get("poll_s", 2.0)), started)


Latest = Callable[[str], DatasetVersion | None]
"""The latest published version of a dataset (None: not curated yet): the edge passes the registry's reader."""


def event_params(policy: Policy, event: Event, latest: Latest | None = None) -> dict[str, object]:
    """What the job of (policy, event) is given, recorded with it (a retry gets the same): the event's fields,
    and, when the target names a `dataset` the event does not carry (a drift alert, a tick, another dataset's
    version), that dataset's latest version, resolved now."""
    p = params(event)
    name = policy.options.get("dataset") if policy.kind != "eval" else None
    if name and p.get("dataset") != name and latest is not None:
        version = latest(str(name))
        if version is not None:
            p = {**p, **params(version)}
    return p


def dispatch(policies: Iterable[Policy], events: Iterable[Event], store: JobStore, secrets: Secrets,
             evaluation: EvalContext | None = None, latest: Latest | None = None) -> list[Job]:
    """Start the job of every matching (policy, event) not started before; returns the jobs this call ran.
    `evaluation` is what `eval` targets run with (the edge builds it when a policy has one); `latest` resolves
    the dataset a target names (`dataset:`) when the event is not a version of it."""
    policies = list(policies)
    store.recover()
    ran = []
    for event in events:
        for policy in policies:
            if not matches(policy, event):
                continue
            p = event_params(policy, event, latest)
            trigger = ("dataset" if isinstance(event, DatasetVersion) else "schedule" if isinstance(event, Tick)
                       else "drift_alert")
            job = store.claim(policy.name, subject(event), trigger, policy.kind, json.dumps(p, default=str))
            if job is None:
                continue  # claimed before: never twice
            ran.append(_run(store, job, policy, p, secrets, evaluation))
    return ran


def retry(store: JobStore, job_id: int, policies: Mapping[str, Policy], secrets: Secrets,
          evaluation: EvalContext | None = None) -> Job:
    """Run a failed (or cancelled) job again with its recorded parameters."""
    job = store.get(job_id)
    policy = policies.get(job.policy)
    if policy is None:
        raise T.TargetFailed(f"job {job_id}'s policy {job.policy!r} is no longer in the policy file")
    job = store.retry(job_id)
    return _run(store, job, policy, json.loads(job.params), secrets, evaluation)


def _run(store: JobStore, job: Job, policy: Policy, p: Mapping[str, object], secrets: Secrets,
         evaluation: EvalContext | None) -> Job:
    try:
        outcome = run_target(policy, p, secrets, evaluation, lambda handle: store.started(job.id, handle))
    except T.TargetFailed as exc:
        store.finish(job.id, False, error=str(exc), output=exc.output)
    except Exception as exc:  # a target's unexpected failure is the job's, never the dispatcher's
        store.finish(job.id, False, error=f"{type(exc).__name__}: {exc}")
    else:
        store.finish(job.id, True, result=outcome.result, output=outcome.output)
    return store.get(job.id)
