"""Triggers start each job once, against real local servers: a webhook that checks the signature, a shell
command, and the provider double's fine-tuning API; a job killed between claim and record is never started again
by itself, and failures are kept with their output for a retry."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from flywheel.infra.testing.provider import RecordedProvider
from flywheel.schemas.alerts import Alert, AlertItem
from flywheel.warehouse.evaluation.targets import Secret
from flywheel.warehouse.jobs.dispatch import DatasetVersion, dispatch, retry
from flywheel.warehouse.jobs.policies import PolicyError, load_policies
from flywheel.warehouse.jobs.store import JobStore

SECRET = "whsec_" + base64.b64encode(b"a-webhook-secret-of-the-test").decode()


class Hook:
    """A webhook receiver that verifies Standard Webhooks signatures and can fail on demand."""

    def __init__(self) -> None:
        self.received: list[dict[str, object]] = []
        self.fail_next = 0
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                mid, ts = self.headers["webhook-id"], self.headers["webhook-timestamp"]
                key = base64.b64decode(SECRET.removeprefix("whsec_"))
                want = "v1," + base64.b64encode(hmac.new(key, f"{mid}.{ts}.".encode() + body,
                                                         hashlib.sha256).digest()).decode()
                ok = hmac.compare_digest(want, self.headers.get("webhook-signature", ""))
                status = 401 if not ok else 503 if outer.fail_next > 0 else 200
                if ok and outer.fail_next > 0:
                    outer.fail_next -= 1
                if status == 200:
                    outer.received.append(json.loads(body))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *a: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook()
    yield h
    h.server.shutdown()
    h.server.server_close()


def _secrets(name: str) -> Secret:
    return Secret({"CI_SECRET": SECRET, "FT_KEY": "sk-ft-DO-NOT-LEAK"}[name])


def _policies(tmp: Path, hook: Hook, provider_url: str) -> Path:
    f = tmp / "policies.yaml"
    f.write_text(f"""
policies:
  notify:
    when: {{dataset: support-sft, min_new_examples: 10}}
    target: {{kind: webhook, url: '{hook.url}', secret_env: CI_SECRET}}
  train:
    when: {{dataset: support-sft}}
    target: {{kind: shell, command: 'echo "training on $DATASET_NAME v$DATASET_VERSION at $DATASET_PATH"'}}
  fine-tune:
    when: {{dataset: support-sft, min_new_examples: 10}}
    target: {{kind: fine_tune, base_url: '{provider_url}', model: base-7b, key_env: FT_KEY, poll_s: 0.05}}
  on-drift:
    when: {{drift_alert: {{segment: app=support-bot, kind: model-drift}}}}
    target: {{kind: shell, command: 'echo "drift on $DATASET_NAME"; exit 3'}}
""")
    return f


def test_each_target_kind_fires_once_per_new_version_and_failures_are_kept(tmp_path: Path, hook: Hook) -> None:
    export = tmp_path / "train.jsonl"
    export.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n')
    store = JobStore(tmp_path / "jobs.sqlite")
    with RecordedProvider([]) as provider:
        policies = load_policies(_policies(tmp_path, hook, provider.url), known_datasets={"support-sft"})
        v4 = DatasetVersion("support-sft", 4, new_examples=25, path="/lake/datasets/support-sft/v4",
                            manifest="/lake/datasets/support-sft/v4/manifest.json", export=str(export))
        alert = Alert("model-drift", "app=support-bot,model=m", "w1", (AlertItem("output_chars"),))
        jobs = dispatch(policies.values(), [v4, alert], store, _secrets)
        again = dispatch(policies.values(), [v4, alert], store, _secrets)  # the same events: nothing starts
    assert again == []
    by = {j.policy: j for j in jobs}
    assert set(by) == {"notify", "train", "fine-tune", "on-drift"}
    assert by["notify"].status == "succeeded" and hook.received == [json.loads(by["notify"].params)]
    assert hook.received[0]["dataset"] == "support-sft" and hook.received[0]["version"] == 4
    assert by["train"].status == "succeeded"
    assert "training on support-sft v4 at /lake/datasets/support-sft/v4" in (by["train"].output_tail or "")
    assert by["fine-tune"].status == "succeeded" and by["fine-tune"].result == "ft:base-7b:flywheel:ftjob-1"
    # uploaded as the Files API takes it (multipart, purpose=fine-tune): the export, byte for byte, by its name
    assert list(provider.files.values()) == [export.read_bytes()]
    assert list(provider.filenames.values()) == ["train.jsonl"]
    failed = by["on-drift"]
    assert failed.status == "failed" and "exited with code 3" in (failed.error or "")
    assert "drift on" in (failed.output_tail or "")
    # a small new version: only the policies without a minimum fire
    small = dispatch(policies.values(), [DatasetVersion("support-sft", 5, new_examples=3)], store, _secrets)
    assert [j.policy for j in small] == ["train"]
    # a failed job is retried on purpose, with its recorded parameters
    hook.fail_next = 10
    bad = dispatch([policies["notify"]], [DatasetVersion("support-sft", 6, new_examples=50)], store, _secrets)
    assert bad[0].status == "failed" and "503" in (bad[0].error or "")
    hook.fail_next = 0
    assert retry(store, bad[0].id, policies, _secrets).status == "succeeded"
    assert store.get(bad[0].id).attempts == 2
    assert b"DO-NOT-LEAK" not in (tmp_path / "jobs.sqlite").read_bytes()
    assert b"a-webhook-secret" not in (tmp_path / "jobs.sqlite").read_bytes()


KILLED = """
import sys, time
from pathlib import Path
from flywheel.warehouse.jobs import dispatch as D
from flywheel.warehouse.jobs.policies import load_policies
from flywheel.warehouse.jobs.store import JobStore
from flywheel.warehouse.evaluation.targets import Secret
policies = load_policies(Path(sys.argv[1]))
store = JobStore(Path(sys.argv[2]))
store_claim = store.claim
def claim(*a, **k):
    job = store_claim(*a, lease_s=0.5, **k)
    print("claimed", flush=True)
    time.sleep(60)   # killed here: claimed, target never started, nothing recorded
    return job
store.claim = claim
D.dispatch(policies.values(), [D.DatasetVersion("support-sft", 9, new_examples=1)], store, lambda n: Secret(""))
"""


def test_a_kill_between_claim_and_record_never_starts_the_job_twice(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    marker = tmp_path / "ran.txt"
    f.write_text(f"policies:\n  train:\n    when: {{dataset: support-sft}}\n"
                 f"    target: {{kind: shell, command: 'echo run >> {marker}'}}\n")
    db = tmp_path / "jobs.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(f), str(db)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "claimed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(0.6)  # the claim's lease runs out
    store = JobStore(db)
    policies = load_policies(f)
    assert dispatch(policies.values(), [DatasetVersion("support-sft", 9, new_examples=1)], store,
                    lambda n: Secret("")) == []
    (job,) = store.list()
    assert job.status == "failed" and "interrupted" in (job.error or "") and not marker.exists()
    assert retry(store, job.id, policies, lambda n: Secret("")).status == "succeeded"
    assert marker.read_text() == "run\n"  # once


def test_policies_are_validated_with_the_file_key_and_fix(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    cases = {
        "policies:\n  a:\n    when: {dataset: nope}\n    target: {kind: shell, command: x}\n": "registry does not have",
        "policies:\n  a:\n    when: {dataset: ds}\n    target: {kind: carrier-pigeon}\n": "must be one of webhook",
        "policies:\n  a:\n    when: {dataset: ds, min_new_examples: many}\n    target: {kind: shell, command: x}\n":
            "min_new_examples` must be a positive integer",
        "policies:\n  a:\n    when: {dataset: ds}\n    target: {kind: webhook}\n": "target.url` is required",
        "policies:\n  a:\n    when: {dataset: ds}\n    target: {kind: shell, command: x, timeout_s: soon}\n":
            "timeout_s` must be a positive number",
    }
    for text, message in cases.items():
        f.write_text(text)
        with pytest.raises(PolicyError, match=message) as err:
            load_policies(f, known_datasets={"ds"})
        assert err.value.file == str(f) and str(err.value.key).startswith("policies.a")


def test_a_schedule_policy_starts_once_per_cron_tick_on_the_datasets_latest_version(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from flywheel.warehouse.jobs.dispatch import Tick, ticks

    marker = tmp_path / "runs.txt"
    f = tmp_path / "policies.yaml"
    f.write_text("policies:\n"
                 "  nightly:\n"
                 "    when: {schedule: '0 3 * * *', dataset: ds}\n"
                 f"    target: {{kind: shell, command: 'echo \"$DATASET_NAME v$DATASET_VERSION\" >> {marker}'}}\n"
                 "  hourly-no-data:\n"
                 "    when: {schedule: '0 * * * *'}\n"
                 f"    target: {{kind: shell, command: 'echo hourly >> {marker}'}}\n"
                 "  waits-for-data:\n"
                 "    when: {schedule: '0 3 * * *', dataset: not-curated-yet}\n"
                 f"    target: {{kind: shell, command: 'echo never >> {marker}'}}\n")
    policies = load_policies(f)
    store = JobStore(tmp_path / "jobs.db")
    versions = {"ds": DatasetVersion("ds", 4, 10, path="/data/ds/v4")}

    def run(now: datetime) -> list[str]:
        due = ticks(policies.values(), now, versions.get)
        assert all(isinstance(t, Tick) for t in due)
        return [j.subject for j in dispatch(policies.values(), due, store, lambda _n: Secret(""))]

    # 14:10: the nightly tick of 03:00 and the hourly one of 14:00 are due, once; a second dispatch starts nothing.
    assert sorted(run(datetime(2026, 12, 1, 14, 10, tzinfo=UTC))) == ["schedule:2026-12-01T03:00Z",
                                                                      "schedule:2026-12-01T14:00Z"]
    assert run(datetime(2026, 12, 1, 14, 50, tzinfo=UTC)) == []
    # An hour later only the hourly policy has a new tick; the next day the nightly one runs on the new version.
    assert run(datetime(2026, 12, 1, 15, 5, tzinfo=UTC)) == ["schedule:2026-12-01T15:00Z"]
    versions["ds"] = DatasetVersion("ds", 5, 12, path="/data/ds/v5")
    assert sorted(run(datetime(2026, 12, 2, 3, 1, tzinfo=UTC))) == ["schedule:2026-12-02T03:00Z",
                                                                    "schedule:2026-12-02T03:00Z"]
    assert marker.read_text().splitlines() == ["ds v4", "hourly", "hourly", "ds v5", "hourly"]
    jobs = store.list()
    assert {j.trigger for j in jobs} == {"schedule"} and all(j.status == "succeeded" for j in jobs)
    assert "never" not in marker.read_text()  # a dataset with no version yet has no tick

    for text, message in {
        "policies:\n  a:\n    when: {schedule: 'every day'}\n    target: {kind: shell, command: x}\n":
            "must be a cron expression",
        "policies:\n  a:\n    when: {schedule: '0 3 * * *', min_new_examples: 3}\n"
        "    target: {kind: shell, command: x}\n":
            "must name one trigger",
        "policies:\n  a:\n    when: {schedule: '0 3 * * *'}\n    target: {kind: eval, targets: [t]}\n":
            "is required for an eval target on a drift alert or a schedule",
    }.items():
        f.write_text(text)
        with pytest.raises(PolicyError, match=message):
            load_policies(f)


def test_the_readmes_policy_file_loads(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Triggers", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    f = tmp_path / "policies.yaml"
    f.write_text(block)
    policies = load_policies(f, known_datasets={"regression-eval", "support-sft"},
                             known_targets={"champion", "candidate"})
    assert {p.kind for p in policies.values()} == {"eval", "webhook", "shell", "fine_tune", "prefect"}


def test_a_targets_dataset_is_its_latest_version_when_the_event_is_an_alert(tmp_path: Path) -> None:
    marker, broken = tmp_path / "trained.txt", tmp_path / "broken"
    f = tmp_path / "policies.yaml"
    f.write_text("policies:\n  retrain-on-drift:\n    when: {drift_alert: {segment: app=support-bot}}\n"
                 f"    target: {{kind: shell, dataset: support-sft, command: 'test ! -f {broken} && echo "
                 f"\"$DATASET_NAME@$DATASET_VERSION $DATASET_PATH\" >> {marker}'}}\n")
    policies = load_policies(f, known_datasets={"support-sft"})
    store = JobStore(tmp_path / "jobs.sqlite")
    versions: dict[str, DatasetVersion] = {}
    first = Alert("model-drift", "app=support-bot,model=m", "w1", (AlertItem("output_chars"),))
    (job,) = dispatch(policies.values(), [first], store, _secrets, latest=versions.get)
    assert job.status == "failed" and "`flywheel curate support-sft`" in (job.error or "") and not marker.exists()
    versions["support-sft"] = DatasetVersion("support-sft", 3, new_examples=7, path="/lake/support-sft/v3")
    second = Alert("model-drift", "app=support-bot,model=m", "w2", (AlertItem("output_chars"),))
    (job,) = dispatch(policies.values(), [second], store, _secrets, latest=versions.get)
    assert job.status == "succeeded" and marker.read_text() == "support-sft@3 /lake/support-sft/v3\n"
    recorded = json.loads(job.params)
    assert (recorded["dataset"], recorded["version"], recorded["segment"]) == ("support-sft", 3,
                                                                              "app=support-bot,model=m")
    # a retry runs the version recorded with the job, not the latest at retry time
    broken.write_text("")
    third = Alert("model-drift", "app=support-bot,model=m", "w3", (AlertItem("output_chars"),))
    (job,) = dispatch(policies.values(), [third], store, _secrets, latest=versions.get)
    assert job.status == "failed"
    versions["support-sft"] = DatasetVersion("support-sft", 4, new_examples=2, path="/lake/support-sft/v4")
    broken.unlink()
    assert retry(store, job.id, policies, _secrets).status == "succeeded"
    assert marker.read_text().splitlines()[-1] == "support-sft@3 /lake/support-sft/v3"


KILLED_RUNNING = """
import sys
from pathlib import Path
from flywheel.warehouse.jobs import dispatch as D
from flywheel.warehouse.jobs.policies import load_policies
from flywheel.warehouse.jobs.store import JobStore
from flywheel.warehouse.evaluation.targets import Secret
store = JobStore(Path(sys.argv[2]))
claim = store.claim
store.claim = lambda *a, **k: claim(*a, **{**k, "lease_s": 0.5})
D.dispatch(load_policies(Path(sys.argv[1])).values(), [D.DatasetVersion("support-sft", 9, new_examples=1)], store,
           lambda n: Secret(""))
"""


def test_a_kill_while_the_target_runs_never_starts_it_again_by_itself(tmp_path: Path) -> None:
    """SIGKILL of the dispatcher after its target started and before its result was recorded."""
    f = tmp_path / "p.yaml"
    started = tmp_path / "started.txt"
    f.write_text(f"policies:\n  train:\n    when: {{dataset: support-sft}}\n"
                 f"    target: {{kind: shell, command: 'echo run >> {started}; sleep 30'}}\n")
    db = tmp_path / "jobs.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUNNING, str(f), str(db)])
    deadline = time.monotonic() + 30
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert started.read_text() == "run\n"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = JobStore(db)
    (job,) = store.list()
    assert job.status == "running" and str(job.handle).startswith("pgid:")
    time.sleep(0.6)  # the lease runs out
    policies = load_policies(f)
    assert dispatch(policies.values(), [DatasetVersion("support-sft", 9, new_examples=1)], store, _secrets) == []
    job = store.get(job.id)
    assert job.status == "failed" and "interrupted" in (job.error or "")
    assert started.read_text() == "run\n"  # not started again by itself
    pgid = int(str(job.handle).removeprefix("pgid:").split("@")[0])
    os.killpg(pgid, signal.SIGTERM)  # the orphaned command: what `flywheel jobs cancel` would stop


def test_a_shell_command_that_ignores_sigterm_is_killed_after_its_timeout(tmp_path: Path) -> None:
    from flywheel.warehouse.jobs import targets as T

    t0 = time.monotonic()
    with pytest.raises(T.TargetFailed, match="timed out after 0.5 s") as err:
        T.shell("trap '' TERM; echo started; sleep 30; echo never", {}, timeout_s=0.5, grace_s=0.5)
    assert time.monotonic() - t0 < 10 and "started" in err.value.output and "never" not in err.value.output
