"""Crashes of the batch commands (issue 14, item 1): `flywheel curate`, `flywheel eval run` and `flywheel drift run`
SIGKILLed mid-way at seeded random points, each kill checked through the commands a user lists results with
(`--format json`), then re-run: nothing half-written is visible after a kill, and the re-run's result equals an
uninterrupted run's on a copy of the same lake.

Each test runs the uninterrupted command first (on its own copy of the lake), which also tells how long a run takes,
so that a kill at a random fraction of that time lands mid-way."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from flywheel.cli import main
from flywheel.config import Settings
from flywheel.infra.testing import scenarios as S
from flywheel.infra.testing.corpus import BUNDLED
from flywheel.infra.testing.land import land
from flywheel.infra.testing.provider import RecordedProvider
from flywheel.warehouse.datasets.registry import sha256_file
from flywheel.warehouse.evaluation.runs import rows as eval_rows
from flywheel.warehouse.lake import Lake

pytestmark = pytest.mark.reliability
SEED = int(os.environ.get("COMMAND_CRASH_SEED", "1401"))
DEMO = Path(__file__).resolve().parents[2] / "infra" / "demo" / "events.jsonl"
CLI = [sys.executable, "-m", "flywheel.cli"]


@dataclass
class Ran:
    rc: int
    out: str
    err: str
    seconds: float

    def json(self) -> dict:
        return json.loads(self.out.splitlines()[-1])

    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.out.splitlines() if line.strip()]


def run(env: dict[str, str], *args: str) -> Ran:
    """The command run to its end, in this process (the kills need a process of their own; nothing else does)."""
    t0 = time.monotonic()
    res = CliRunner().invoke(main, list(args), env=env)
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return Ran(res.exit_code, res.stdout, res.stderr, time.monotonic() - t0)


def kill_when(env: dict[str, str], args: list[str], ready: Callable[[], bool], timeout: float = 120) -> Ran:
    """Run the command and SIGKILL it as soon as `ready()` is true; `rc` is -9 when the kill landed, else the
    command finished first."""
    t0 = time.monotonic()
    proc = subprocess.Popen([*CLI, *args], env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        while proc.poll() is None and not ready() and time.monotonic() - t0 < timeout:
            time.sleep(0.002)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return Ran(proc.returncode, out, err, time.monotonic() - t0)


def alone(env: dict[str, str], *args: str) -> Ran:
    """The command run to its end in a process of its own: how long a killed one would have taken."""
    return kill_when(env, list(args), lambda: False, timeout=600)


def after(seconds: float) -> Callable[[], bool]:
    at = time.monotonic() + seconds
    return lambda: time.monotonic() >= at


def once(first: Callable[[], bool], then_wait: float) -> Callable[[], bool]:
    """True `then_wait` seconds after `first()` was first true."""
    seen: list[float] = []

    def ready() -> bool:
        if not seen and first():
            seen.append(time.monotonic())
        return bool(seen) and time.monotonic() - seen[0] >= then_wait
    return ready


def two_homes(tmp_path: Path, events: Callable[[Settings], object]) -> tuple[Settings, Settings]:
    """The same lake under two homes (a copy, byte for byte): one for the uninterrupted run, one for the kills."""
    clean, killed = Settings(home=tmp_path / "clean"), Settings(home=tmp_path / "killed")
    events(clean)
    shutil.copytree(clean.lake, killed.lake)
    return clean, killed


# ---------------------------------------------------------------------------------------------------- curation


def test_killed_curations_leave_no_half_written_version_and_the_rerun_equals_an_uninterrupted_one(
        tmp_path: Path) -> None:
    rng = random.Random(SEED)
    clean, killed = two_homes(tmp_path, lambda s: land(Lake(s.lake), [
        json.loads(line) for line in DEMO.read_text().splitlines()]))
    envs = []
    for s in (clean, killed):  # a policy on a new version of support-sft: its job must start once, kills or not
        policies = s.home / "policies.yaml"
        policies.write_text("policies:\n  train:\n    when: {dataset: support-sft}\n    target: {kind: shell, "
                            f"command: 'echo \"$DATASET_NAME@$DATASET_VERSION\" >> {s.home / 'trained.txt'}'}}\n")
        envs.append({"FLYWHEEL_HOME": str(s.home), "FLYWHEEL_RECIPES_DIR": "",
                     "FLYWHEEL_JOBS_POLICIES_FILE": str(policies)})
    env_clean, env = envs
    ref = alone(env_clean, "curate", "--all", "--format", "json")
    assert ref.rc == 0, ref.err[-2000:]
    expected = {(r["name"], r["version"], r["content_hash"]) for r in ref.lines()}
    root = Path(killed.lake) / "datasets"

    def drafts() -> set[Path]:
        return {p for d in root.iterdir() if d.is_dir() for p in d.iterdir() if ".tmp-" in p.name} \
            if root.is_dir() else set()

    def registrations() -> int:  # one Delta commit to the registry per published version
        log = root / "_registry" / "_delta_log"
        return len(list(log.glob("*.json"))) if log.is_dir() else 0

    def nth_draft(left: set[Path], n: int) -> Callable[[], bool]:
        """True from when the run's n-th draft (of a recipe; the run may not get that far) is seen."""
        seen: set[str] = set()

        def ready() -> bool:
            seen.update(p.name for p in drafts() - left)
            return len(seen) >= n
        return ready

    kills = []
    for i in range(4):
        left = drafts()  # what the previous kill left, which this run clears before it writes its own

        def writing(left: set[Path] = left) -> bool:  # a version's files are written under its temporary name
            return bool(drafts() - left)

        registered = registrations()

        def published(registered: int = registered) -> bool:  # the last version registered: jobs being dispatched
            return registered < len(expected) <= registrations()
        ready: Callable[[], bool] = writing if i == 0 else published if i == 2 else \
            once(nth_draft(left, rng.randint(1, len(expected))), rng.uniform(0.0, 0.3))
        got = kill_when(env, ["curate", "--all", "--format", "json"], ready)
        assert got.rc in (-signal.SIGKILL, 0), f"seed {SEED}: curation failed by itself: {got.err[-2000:]}"
        listed = run(env, "datasets", "list", "--format", "json")
        assert listed.rc == 0, listed.err
        visible = listed.lines()
        # Whatever a kill left visible is a whole version, the very one an uninterrupted run writes.
        assert {(v["name"], v["version"], v["content_hash"]) for v in visible} <= expected, f"seed {SEED}: {visible}"
        for v in visible:
            manifest = json.loads((Path(v["path"]) / "manifest.json").read_text())
            assert all(sha256_file(Path(v["path"]) / rel) == meta["sha256"]
                       for rel, meta in manifest["files"].items()), f"seed {SEED}: {v['name']}@{v['version']} torn"
        kills.append({"killed": got.rc == -signal.SIGKILL, "at_s": round(got.seconds, 2), "visible": len(visible)})
        if got.rc == 0:
            break
    assert sum(k["killed"] for k in kills) >= 2, f"seed {SEED}: the kills did not land mid-way: {kills}"

    again = run(env, "curate", "--all", "--format", "json")
    assert again.rc == 0, again.err[-2000:]
    final = run(env, "datasets", "list", "--format", "json").lines()
    assert {(v["name"], v["version"], v["content_hash"]) for v in final} == expected, f"seed {SEED}: {kills}"
    for v in final:
        mine = json.loads((Path(v["path"]) / "manifest.json").read_text())["files"]
        theirs = json.loads((Path(clean.lake) / "datasets" / v["name"] / f"v{v['version']}" / "manifest.json")
                            .read_text())["files"]
        assert mine == theirs, f"seed {SEED}: {v['name']}@{v['version']} differs from the uninterrupted run's"
    leftovers = [p.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("_") for p in d.iterdir()
                 if not p.name.startswith(".") and p.name != "v1"]
    assert leftovers == [], f"seed {SEED}: a killed run's files stayed: {leftovers}"
    trained = [(s.home / "trained.txt").read_text().splitlines() if (s.home / "trained.txt").exists() else []
               for s in (clean, killed)]
    assert trained[1] == trained[0] == ["support-sft@1"], f"seed {SEED}: the version's job ran {trained[1]}"
    print(json.dumps({"test": "curation", "seed": SEED, "kills": kills, "versions": len(final),
                      "uninterrupted_s": round(ref.seconds, 1)}))


# ---------------------------------------------------------------------------------------------------- evaluation

_STABLE = ("example_id", "segment", "prompt", "reference", "output", "error", "similarity", "exact_match",
           "json_valid", "refusal", "output_chars", "passed")
"""An eval row's columns that depend on the model's answer only (not on when or how fast it came)."""


def test_killed_eval_runs_are_never_taken_for_results_and_the_resumed_run_equals_an_uninterrupted_one(
        tmp_path: Path) -> None:
    rng = random.Random(SEED)
    edits = [r for r in map(json.loads, BUNDLED.read_text(encoding="utf-8").splitlines()) if r["kind"] == "edits"]
    examples = tmp_path / "golden.jsonl"
    examples.write_text("".join(json.dumps({"id": f"e{i:02d}", "prompt": r["prompt"], "reference": r["correction"],
                                            "segment": f"s{i % 3}"}) + "\n" for i, r in enumerate(edits)))
    records = [{"model": "writer-v1", "prompt": r["prompt"], "output": r["output"]} for r in edits]
    clean, killed = Settings(home=tmp_path / "clean"), Settings(home=tmp_path / "killed")
    with RecordedProvider.from_records(records) as provider:
        targets = tmp_path / "targets.yaml"
        targets.write_text(f"targets:\n  v1: {{base_url: '{provider.url}', model: writer-v1}}\n")
        base = {"FLYWHEEL_EVAL_TARGETS_FILE": str(targets), "FLYWHEEL_EVAL_CONCURRENCY": "2",
                "FLYWHEEL_EVAL_SAVE_EVERY": "4", "FLYWHEEL_EVAL_BOOTSTRAP": "200"}
        env_clean, env = {**base, "FLYWHEEL_HOME": str(clean.home)}, {**base, "FLYWHEEL_HOME": str(killed.home)}
        args = ["eval", "run", "--examples", str(examples), "--target", "v1", "--format", "json"]
        ref = run(env_clean, *args)
        assert ref.rc == 0, ref.err[-2000:]
        provider.delay_s = 0.1  # about 2 s of answers: the kills land while examples are being recorded
        table = Path(killed.lake) / "eval_runs" / "_delta_log"

        def commits() -> int:
            return len(list(table.glob("*.json"))) if table.is_dir() else 0

        kills = []
        for _ in range(2):
            before = commits()

            def committed(before: int = before) -> bool:
                return commits() > before
            got = kill_when(env, args, once(committed, rng.uniform(0.0, 0.5)))
            assert got.rc == -signal.SIGKILL, f"seed {SEED}: the run was not killed mid-way: {got.err[-2000:]}"
            listed = run(env, "eval", "list", "--format", "json").lines()
            assert len(listed) == 1 and listed[0]["summary"] is None, f"seed {SEED}: {listed}"
            recorded = listed[0]["examples"]
            assert 0 < recorded < len(edits), f"seed {SEED}: {listed}"
            # An unfinished run is no result: comparing or gating on it is refused, saying what to do.
            for cmd in (["compare", listed[0]["run_id"], listed[0]["run_id"]],
                        ["gate", listed[0]["run_id"], "--baseline", listed[0]["run_id"]]):
                refused = run(env, "eval", *cmd)
                assert refused.rc == 1 and "unfinished" in refused.err + refused.out, \
                    f"seed {SEED}: eval {cmd[0]} took a killed run for a result: {refused.out[-1000:]}"
            kills.append({"recorded": recorded, "at_s": round(got.seconds, 2)})
        assert kills[1]["recorded"] > kills[0]["recorded"], f"seed {SEED}: the second run did not resume: {kills}"
        provider.delay_s = 0.0
        again = run(env, *args)
    assert again.rc == 0, again.err[-2000:]
    out, want = again.json(), ref.json()
    assert out["resumed"] and out["sent"] == len(edits) - kills[-1]["recorded"], f"seed {SEED}: {out} {kills}"
    listed = run(env, "eval", "list", "--format", "json").lines()
    assert [(r["run_id"], r["examples"]) for r in listed] == [(out["run_id"], len(edits))]
    mine, theirs = eval_rows(killed.lake, out["run_id"]), eval_rows(clean.lake, want["run_id"])
    assert mine.select(list(_STABLE)).to_pylist() == theirs.select(list(_STABLE)).to_pylist(), f"seed {SEED}"

    def stable(summary: dict) -> dict:
        return {k: v for k, v in summary.items() if not k.startswith("latency")}

    assert stable(out["summary"]) == stable(want["summary"]), f"seed {SEED}"
    assert stable(listed[0]["summary"]) == stable(want["summary"])
    print(json.dumps({"test": "evaluation", "seed": SEED, "kills": kills, "examples": len(edits),
                      "resumed_sent": out["sent"], "uninterrupted_s": round(ref.seconds, 1)}))


# ---------------------------------------------------------------------------------------------------- drift

def test_killed_drift_runs_leave_no_run_without_its_alerts_and_the_rerun_equals_an_uninterrupted_one(
        tmp_path: Path) -> None:
    from datetime import timedelta

    from flywheel.warehouse.drift.storage import read_runs

    rng = random.Random(SEED)
    hour = timedelta(hours=1)
    window = f"{(S.T0 + 3 * hour).isoformat()}/{(S.T0 + 4 * hour).isoformat()}"
    reference = f"{S.T0.isoformat()}/{(S.T0 + 3 * hour).isoformat()}"
    clean, killed = two_homes(tmp_path, lambda s: S.land(s, S.model_change(windows_each=3)))
    base = {"FLYWHEEL_SLACK_WEBHOOK_URL": "", "FLYWHEEL_DRIFT_REPORTS": "alerts", "FLYWHEEL_DRIFT_CACHE": "false"}
    env_clean, env = {**base, "FLYWHEEL_HOME": str(clean.home)}, {**base, "FLYWHEEL_HOME": str(killed.home)}
    args = ["drift", "run", "--current", window, "--reference", reference, "--by", "app,model", "--format", "json"]
    ref = alone(env_clean, *args)
    assert ref.rc == 0, ref.err[-2000:]
    want = ref.json()
    assert want["alerts"], "the scenario must alert, or a lost alert could not show"
    want_alerts = sorted((a["kind"], a["segment"], a["window"]) for a in run(env_clean, "alerts", "list", "--format",
                                                                             "json").lines())
    n_rows = read_runs(clean).num_rows
    store_log = Path(killed.lake) / "drift_runs" / "_delta_log"

    def stored() -> bool:  # the moment the run's checks are committed to drift_runs
        return store_log.is_dir() and any(store_log.glob("*.json"))

    kills = []
    for i in range(3):
        ready = stored if i == 0 else after(rng.uniform(0.3, 1.0) * ref.seconds)
        got = kill_when(env, args, ready)
        assert got.rc in (-signal.SIGKILL, 0), f"seed {SEED}: drift run failed by itself: {got.err[-2000:]}"
        runs = read_runs(killed).to_pylist() if store_log.is_dir() else []
        queued = sorted((a["kind"], a["segment"], a["window"])
                        for a in run(env, "alerts", "list", "--format", "json").lines())
        per_run: dict[str, int] = {}
        for r in runs:
            per_run[r["run_id"]] = per_run.get(r["run_id"], 0) + 1
        # A recorded run is a whole one, and its alerts are in the outbox: a kill never leaves one without the other.
        assert all(n == n_rows for n in per_run.values()), f"seed {SEED}: a partial run is visible: {per_run}"
        if per_run:
            assert queued == want_alerts, f"seed {SEED}: run recorded, alerts {queued} instead of {want_alerts}"
        kills.append({"killed": got.rc == -signal.SIGKILL, "at_s": round(got.seconds, 2), "runs": len(per_run),
                      "alerts_queued": len(queued)})
    assert sum(k["killed"] for k in kills) >= 2, f"seed {SEED}: the kills did not land mid-way: {kills}"

    again = run(env, *args)
    assert again.rc == 0, again.err[-2000:]
    out = again.json()
    for key in ("window", "reference", "n_current", "n_reference", "checks", "drifted"):
        assert out[key] == want[key], f"seed {SEED}: {key} differs from the uninterrupted run's"

    def alert_view(alerts: list[dict]) -> list[tuple]:
        return sorted((a["kind"], a["segment"], a["window"], json.dumps(a["items"], sort_keys=True)) for a in alerts)

    assert alert_view(out["alerts"]) == alert_view(want["alerts"]), f"seed {SEED}"
    queued = sorted((a["kind"], a["segment"], a["window"]) for a in run(env, "alerts", "list", "--format",
                                                                        "json").lines())
    assert queued == want_alerts, f"seed {SEED}: each alert once in the outbox"
    print(json.dumps({"test": "drift", "seed": SEED, "kills": kills, "checks": out["checks"],
                      "alerts": len(out["alerts"]), "uninterrupted_s": round(ref.seconds, 1)}))
