"""The `eval` target: a new dataset version starts flywheel's own evaluation against two recorded model versions
(the provider double), the runs land in `eval_runs`, their ids and the gate's verdict in the job row; an endpoint
that answers nothing fails the job with its output, and the retry (endpoint back) succeeds. Once per version."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from flywheel.infra.testing.corpus import BUNDLED
from flywheel.infra.testing.provider import RecordedProvider
from flywheel.warehouse.evaluation.compare import gate
from flywheel.warehouse.evaluation.runs import Example, rows
from flywheel.warehouse.evaluation.settings import EvalSettings
from flywheel.warehouse.evaluation.targets import Secret, Target
from flywheel.warehouse.jobs.dispatch import DatasetVersion, dispatch, retry
from flywheel.warehouse.jobs.eval_target import EvalContext
from flywheel.warehouse.jobs.policies import PolicyError, load_policies
from flywheel.warehouse.jobs.store import JobStore

SETTINGS = EvalSettings(concurrency=8, attempts=2, save_every=10, bootstrap=300)
POLICY = """
policies:
  re-evaluate:
    when: {dataset: edits}
    target: {kind: eval, targets: [champion, candidate], split: test,
             gate: {candidate: candidate, baseline: champion}}
"""


def _edits() -> tuple[list[Example], list[dict[str, str]]]:
    edits = [r for r in (json.loads(line) for line in BUNDLED.read_text(encoding="utf-8").splitlines())
             if r["kind"] == "edits"][:12]
    examples = [Example(f"e{i}", (("user", r["prompt"]),), reference=r["correction"]) for i, r in enumerate(edits)]
    # writer-v2 answers with the professional edit (the reference), writer-v1 with the model's draft: worse
    records = ([{"model": "writer-v1", "prompt": r["prompt"], "output": r["output"]} for r in edits]
               + [{"model": "writer-v2", "prompt": r["prompt"], "output": r["correction"]} for r in edits])
    return examples, records


def _context(lake: Path, url: str, examples: Sequence[Example], asked: list[str]) -> EvalContext:
    def source(ref: str, split: str) -> tuple[Sequence[Example], str]:
        asked.append(f"{ref}/{split}")
        return examples, ref

    targets = {"champion": Target("champion", url, "writer-v2", api_key_env="EVAL_KEY"),
               "candidate": Target("candidate", url, "writer-v1", api_key_env="EVAL_KEY")}
    return EvalContext(lake, SETTINGS, targets, source)


def test_an_eval_job_records_its_runs_and_the_gate_verdict_once_per_version(tmp_path: Path) -> None:
    examples, records = _edits()
    (tmp_path / "p.yaml").write_text(POLICY)
    policies = load_policies(tmp_path / "p.yaml", known_datasets={"edits"}, known_targets={"champion", "candidate"})
    store, lake, asked = JobStore(tmp_path / "jobs.sqlite"), tmp_path / "lake", []
    secrets = {"EVAL_KEY": Secret("sk-eval-DO-NOT-LEAK")}.__getitem__
    with RecordedProvider.from_records(records) as provider:
        ctx = _context(lake, provider.url, examples, asked)
        v3 = DatasetVersion("edits", 3, new_examples=12)
        (job,) = dispatch(policies.values(), [v3], store, secrets, ctx)
        assert dispatch(policies.values(), [v3], store, secrets, ctx) == []  # never twice
        sent = len(provider.requests)
    assert asked == ["edits@3/test"] and sent == 2 * len(examples)
    assert job.status == "succeeded" and job.target == "eval", job.error
    result = json.loads(job.result or "")
    runs = result["runs"]
    assert set(runs) == {"champion", "candidate"} and result["eval_set"] == "edits@3"
    for run_id in runs.values():  # the recorded ids are real runs of eval_runs, every example scored
        assert rows(lake, run_id).num_rows == len(examples)
    # the verdict is the gate's, computed independently here
    want = gate(lake, runs["candidate"], runs["champion"], SETTINGS)
    assert not want.passed
    assert result["gate"] == {"candidate": "candidate", "baseline": "champion", "passed": False,
                              "reasons": list(want.reasons)}
    assert "gate candidate vs champion: blocked" in (job.output_tail or "")
    assert b"DO-NOT-LEAK" not in (tmp_path / "jobs.sqlite").read_bytes()


def test_an_eval_job_whose_endpoint_answers_nothing_fails_with_its_output_and_retries(tmp_path: Path) -> None:
    examples, records = _edits()
    (tmp_path / "p.yaml").write_text(POLICY)
    policies = load_policies(tmp_path / "p.yaml")
    store, lake = JobStore(tmp_path / "jobs.sqlite"), tmp_path / "lake"
    secrets = {"EVAL_KEY": Secret("")}.__getitem__
    with RecordedProvider.from_records(records) as provider:
        url = provider.url
    # the provider has stopped: every request fails with a connection error
    down = _context(lake, url, examples, [])
    (job,) = dispatch(policies.values(), [DatasetVersion("edits", 4, new_examples=12)], store, secrets,
                      EvalContext(lake, EvalSettings(concurrency=4, attempts=1, bootstrap=100), down.targets,
                                  down.examples))
    assert job.status == "failed" and "answered none of the 12 examples" in (job.error or "")
    assert "champion: run " in (job.output_tail or "") and "12 failed" in (job.output_tail or "")
    with RecordedProvider.from_records(records) as provider:
        up = _context(lake, provider.url, examples, [])
        again = retry(store, job.id, policies, secrets, up)
    assert again.status == "succeeded" and again.attempts == 2
    assert json.loads(again.result or "")["gate"]["passed"] is False


def test_eval_policies_are_validated_with_the_file_key_and_fix(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    head = "policies:\n  a:\n    when: {dataset: ds}\n    target: {kind: eval, "
    cases = {
        head + "targets: [nope]}\n": ("targets", "targets file does not have"),
        head + "targets: []}\n": ("targets", "one or more evaluation targets"),
        head + "targets: [x, y], gate: {candidate: x, baseline: z}}\n": ("gate.baseline", "policy's targets"),
        head + "targets: [x, y], gate: {candidate: x}}\n": ("gate", "exactly `candidate` and `baseline`"),
        "policies:\n  a:\n    when: {drift_alert: {segment: app=a}}\n    target: {kind: eval, targets: [x]}\n":
            ("dataset", "required for an eval target on a drift alert"),
    }
    for text, (key, message) in cases.items():
        f.write_text(text)
        with pytest.raises(PolicyError, match=message) as err:
            load_policies(f, known_datasets={"ds"}, known_targets={"x", "y"})
        assert err.value.file == str(f) and err.value.key == f"policies.a.target.{key}"
