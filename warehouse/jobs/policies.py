"""Trigger policies: reviewable YAML saying which event starts which job, validated on load.

    policies:
      notify-ci:
        when: {dataset: support-sft, min_new_examples: 100}     # a new version with at least 100 new examples
        target: {kind: webhook, url: https://ci.example.com/hooks/flywheel, secret_env: CI_WEBHOOK_SECRET}
      retrain-on-drift:
        when: {drift_alert: {segment: app=support-bot, kind: model-drift}}   # an alert on that segment (prefix)
        target: {kind: shell, command: "python train.py --data $DATASET_PATH", dataset: support-sft}
      fine-tune:
        when: {dataset: support-sft, min_new_examples: 500}
        target: {kind: fine_tune, base_url: https://api.openai.com/v1, model: gpt-4o-mini, key_env: OPENAI_API_KEY,
                 format: openai-chat}
      recurate-on-drift:                             # the flow gets `parameters` and the event's fields it takes
        when: {drift_alert: {segment: app=support-bot}}
        target: {kind: prefect, deployment: curate/curate, parameters: {recipe: support-sft}, timeout_s: 600}
      re-evaluate:                                   # flywheel's own evaluation of the new version, then its gate
        when: {dataset: support-eval}
        target: {kind: eval, targets: [champion, candidate], split: test,
                 gate: {candidate: candidate, baseline: champion}}
      nightly-eval:                                  # on a schedule (cron, UTC), on the dataset's latest version
        when: {schedule: "0 3 * * *", dataset: support-eval}
        target: {kind: eval, targets: [champion], split: test}

Errors name the file, the key and the fix; a policy naming a dataset the registry does not know, or an evaluation
target the targets file does not have, is refused when the caller passes the known names.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from croniter import croniter  # type: ignore[import-untyped]

from flywheel.errors import FileSpecError

KINDS: dict[str, tuple[set[str], set[str]]] = {
    # kind: (required keys, optional keys)
    "webhook": ({"url"}, {"secret_env", "attempts"}),
    "shell": ({"command"}, {"timeout_s", "dataset"}),
    "fine_tune": ({"base_url", "model"}, {"key_env", "format", "poll_s", "dataset"}),
    "prefect": ({"deployment"}, {"timeout_s", "poll_s", "parameters", "dataset"}),
    "eval": ({"targets"}, {"split", "gate", "dataset"}),
}


class PolicyError(FileSpecError):
    """A policy file or entry is malformed; the message names the file, the key and the fix (also `file`, `key`)."""


@dataclass(frozen=True)
class When:
    dataset: str | None = None
    min_new_examples: int = 1
    alert_segment: str | None = None
    """A drift alert fires on a segment starting with this (e.g. `app=support-bot`); `""` matches every segment."""
    alert_kind: str | None = None
    schedule: str | None = None
    """A cron expression (UTC): the job starts once per tick, at the first dispatch at or after it (the `dispatch`
    flow's own schedule, FLYWHEEL_SCHEDULE_DISPATCH, or `flywheel jobs dispatch`), on `dataset`'s latest version
    when the policy names one."""


@dataclass(frozen=True)
class Policy:
    name: str
    when: When
    kind: str
    options: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""


def load_policies(path: Path, known_datasets: Collection[str] | None = None,
                  known_targets: Collection[str] | None = None) -> dict[str, Policy]:
    """Every policy of a YAML file, validated; `known_datasets` (the registry's names) and `known_targets` (the
    evaluation targets file's names), when given, are what a policy may name."""
    src = str(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise PolicyError(f"cannot read policy file {src}: {exc}", file=src) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("policies"), dict) or not doc["policies"]:
        raise PolicyError(f"policy file {src} must be a mapping with a non-empty `policies:` mapping", file=src,
                          key="policies")
    return {str(n): _policy(str(n), spec, src, known_datasets, known_targets) for n, spec in doc["policies"].items()}


def _fail(src: str, key: str, what: str) -> PolicyError:
    return PolicyError(f"{src}: `{key}` {what}", file=src, key=key)


def _policy(name: str, spec: Any, src: str, known: Collection[str] | None,
            known_targets: Collection[str] | None) -> Policy:
    where = f"policies.{name}"
    if not isinstance(spec, dict) or set(spec) - {"when", "target"} or "when" not in spec or "target" not in spec:
        raise _fail(src, where, "must be a mapping with exactly `when` and `target`")
    w, t = spec["when"], spec["target"]
    scheduled = isinstance(w, dict) and "schedule" in w
    if not isinstance(w, dict) or (not scheduled and len({"dataset", "drift_alert"} & set(w)) != 1) \
            or set(w) - ({"schedule", "dataset"} if scheduled else {"dataset", "min_new_examples", "drift_alert"}):
        raise _fail(src, f"{where}.when", "must name one trigger: `dataset: NAME` (with optional "
                    "`min_new_examples: N`), `drift_alert: {segment: PREFIX, kind: model-drift|data-drift}` or "
                    "`schedule: CRON` (with optional `dataset: NAME`, whose latest version the job gets)")
    when = When()
    if scheduled:
        cron = w["schedule"]
        if not isinstance(cron, str) or not croniter.is_valid(cron):
            raise _fail(src, f"{where}.when.schedule", f"must be a cron expression such as \"0 3 * * *\" (UTC), "
                        f"got {cron!r}")
        dataset = w.get("dataset")
        if dataset is not None and (not isinstance(dataset, str) or not dataset):
            raise _fail(src, f"{where}.when.dataset", "must be a dataset name")
        if dataset is not None and known is not None and dataset not in known:
            raise _fail(src, f"{where}.when.dataset", f"names {dataset!r}, which the registry does not have "
                        f"(datasets: {', '.join(sorted(known)) or 'none yet'}); curate it first or fix the name")
        when = When(schedule=cron, dataset=dataset)
    elif "dataset" in w:
        if not isinstance(w["dataset"], str) or not w["dataset"]:
            raise _fail(src, f"{where}.when.dataset", "must be a dataset name")
        if known is not None and w["dataset"] not in known:
            raise _fail(src, f"{where}.when.dataset", f"names {w['dataset']!r}, which the registry does not have "
                        f"(datasets: {', '.join(sorted(known)) or 'none yet'}); curate it first or fix the name")
        n = w.get("min_new_examples", 1)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise _fail(src, f"{where}.when.min_new_examples", f"must be a positive integer, got {n!r}")
        when = When(dataset=w["dataset"], min_new_examples=n)
    else:
        a = w["drift_alert"]
        if not isinstance(a, dict) or set(a) - {"segment", "kind"}:
            raise _fail(src, f"{where}.when.drift_alert", "must be a mapping of `segment` (prefix) and `kind`")
        kind, segment = a.get("kind"), a.get("segment", "")
        if not isinstance(segment, str):
            raise _fail(src, f"{where}.when.drift_alert.segment", f"must be a segment prefix such as "
                        f"app=support-bot, got {segment!r}")
        if kind is not None and kind not in ("model-drift", "data-drift"):
            raise _fail(src, f"{where}.when.drift_alert.kind", f"must be model-drift or data-drift, got {kind!r}")
        when = When(alert_segment=segment, alert_kind=kind)
    if not isinstance(t, dict) or not isinstance(t.get("kind"), str) or t["kind"] not in KINDS:
        raise _fail(src, f"{where}.target.kind", f"must be one of {', '.join(KINDS)}, got "
                    f"{t.get('kind') if isinstance(t, dict) else t!r}")
    required, optional = KINDS[t["kind"]]
    options = {k: v for k, v in t.items() if k != "kind"}
    missing, unknown = required - set(options), set(options) - required - optional
    if missing:
        raise _fail(src, f"{where}.target.{sorted(missing)[0]}", f"is required for a {t['kind']} target")
    if unknown:
        raise _fail(src, f"{where}.target.{sorted(unknown)[0]}", f"is not a key of a {t['kind']} target; the keys "
                    f"are {', '.join(sorted(required | optional))}")
    for key in ("timeout_s", "poll_s", "attempts"):
        v = options.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0):
            raise _fail(src, f"{where}.target.{key}", f"must be a positive number, got {v!r}")
    if "parameters" in options and (not isinstance(options["parameters"], dict)
                                    or not all(isinstance(k, str) and k for k in options["parameters"])):
        raise _fail(src, f"{where}.target.parameters", "must be a mapping of the deployment's parameter names to "
                    f"values, such as {{recipe: support-sft}}, got {options['parameters']!r}")
    if "dataset" in options and (not isinstance(options["dataset"], str) or not options["dataset"]):
        raise _fail(src, f"{where}.target.dataset", f"must be a dataset name, got {options['dataset']!r}")
    if "dataset" in options and known is not None and options["dataset"] not in known:
        raise _fail(src, f"{where}.target.dataset", f"names {options['dataset']!r}, which the registry does not have")
    if t["kind"] == "eval":
        options = _eval_options(src, f"{where}.target", options, when, known_targets)
    return Policy(name, when, t["kind"], options, src)


def _eval_options(src: str, where: str, o: dict[str, Any], when: When,
                  known_targets: Collection[str] | None) -> dict[str, Any]:
    names = [o["targets"]] if isinstance(o["targets"], str) else o["targets"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names) \
            or len(set(names)) != len(names):
        raise _fail(src, f"{where}.targets", "must name one or more evaluation targets (a list of distinct names "
                    "from the targets file, FLYWHEEL_EVAL_TARGETS_FILE)")
    if known_targets is not None:
        unknown = [n for n in names if n not in known_targets]
        if unknown:
            raise _fail(src, f"{where}.targets", f"names {unknown[0]!r}, which the targets file does not have "
                        f"(targets: {', '.join(sorted(known_targets)) or 'none'}); add it there or fix the name")
    if when.dataset is None and "dataset" not in o:
        raise _fail(src, f"{where}.dataset", "is required for an eval target on a drift alert or a schedule "
                    "without a dataset: name the eval set to run (its latest version is evaluated)")
    if "split" in o and (not isinstance(o["split"], str) or not o["split"]):
        raise _fail(src, f"{where}.split", f"must be a split name such as test, got {o['split']!r}")
    gate = o.get("gate")
    if gate is not None:
        if not isinstance(gate, dict) or set(gate) != {"candidate", "baseline"}:
            raise _fail(src, f"{where}.gate", "must be a mapping of exactly `candidate` and `baseline` (two of the "
                        "policy's targets)")
        for role in ("candidate", "baseline"):
            if gate[role] not in names:
                raise _fail(src, f"{where}.gate.{role}", f"must be one of the policy's targets "
                            f"({', '.join(names)}), got {gate[role]!r}")
        if gate["candidate"] == gate["baseline"]:
            raise _fail(src, f"{where}.gate", "gates a target against itself: name two different targets")
    return {**o, "targets": names}
