"""`flywheel demo` end to end on the embedded defaults, twice, and then every command the README suggests after it,
on what the demo left (the demo's traffic is dated relative to now, so the landing-time gates and the README's drift
windows see it). The same run carries every kind of secret (the Slack webhook URL, collector API keys, an eval
endpoint's key, a job webhook's signing secret), each used for real, and none may appear in anything it wrote."""

from __future__ import annotations

import re
import sqlite3
import uuid
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from flywheel.cli import main
from flywheel.config import Settings
from flywheel.infra import broker
from flywheel.environment import Environment
from flywheel.infra.demo import NEXT_STEPS
from flywheel.infra.testing.collector import serving
from flywheel.infra.testing.provider import RecordedProvider
from flywheel.infra.testing.webhook import RecordingWebhook
from flywheel.warehouse.query import connect

SECRETS = {kind: f"{kind}{uuid.uuid4().hex}" for kind in ("slacktoken", "collectorkey", "endpointkey", "hooksecret")}
"""Recognisable values, distinct per run: any byte sequence holding one of them is a leak."""


def _texts(root: Path) -> dict[str, str]:
    """Every file under `root` as text: Parquet files as their rows (their pages may be compressed), SQLite
    databases as their SQL dump, anything else as its bytes."""
    out = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.name.endswith(("-wal", "-shm", "-journal")):
            continue
        if p.suffix == ".parquet":
            out[str(p)] = str(pq.read_table(p).to_pylist())
        elif p.read_bytes()[:16] == b"SQLite format 3\x00":
            con = sqlite3.connect(p)
            out[str(p)] = "\n".join(con.iterdump())
            con.close()
        else:
            out[str(p)] = p.read_bytes().decode("utf-8", "replace")
        out[str(p) + " (raw)"] = p.read_bytes().decode("latin-1")
    return out


def _leaks(where: dict[str, str]) -> list[str]:
    return [f"{kind} in {name}" for name, text in where.items() for kind, value in SECRETS.items() if value in text]


# Two whole demos in subprocesses (~90 s quiet): the longest test, it pinned a `make test` worker; the tour test
# below keeps the README's commands checked there.
@pytest.mark.reliability
@pytest.mark.slow
def test_the_demo_runs_twice_and_the_readme_next_steps_work_on_what_it_left(
        tmp_path: Path, broker_port: int, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    slack = RecordingWebhook()
    # A reduced scale: about 100 support-bot inferences on the shifted day, so segments need fewer samples.
    env = {"FLYWHEEL_HOME": str(home), "FLYWHEEL_BROKER_PORT": str(broker.free_port()), "FLYWHEEL_KAFKA_BOOTSTRAP": "",
           "FLYWHEEL_DEMO_SCALE": "0.4", "FLYWHEEL_DRIFT_MIN_SAMPLES": "50",
           "FLYWHEEL_SLACK_WEBHOOK_URL": slack.url.replace("SECRETTOKEN", SECRETS["slacktoken"]),
           "FLYWHEEL_COLLECTOR_API_KEYS": f"other-{SECRETS['collectorkey']},{SECRETS['collectorkey']}",
           "FW_DEMO_ENDPOINT_KEY": SECRETS["endpointkey"], "FW_DEMO_HOOK_SECRET": SECRETS["hooksecret"]}
    runner = CliRunner()
    outputs = {}
    first = runner.invoke(main, ["demo"], env=env)
    outputs["demo"] = first.output
    assert first.exit_code == 0, first.output
    assert re.search(r"sent [1-9]\d* alerts to Slack", first.output) and slack.received  # the URL was used
    assert "quality gates: inferences passed" in first.output and "feedback passed" in first.output
    assert "model-drift on app=support-bot" in first.output  # the injected shifts are found: the model version ...
    assert "changed in the segment: model_version 2026-11-stable → 2026-12-rc1" in first.output
    language = next(line for line in first.output.splitlines() if "data-drift on app=search-answers:" in line)
    assert "input_script" in language  # ... and the users' language
    assert "injected shift (users' language) on app=search-answers: found as data-drift" in first.output
    assert "curated regression-eval@1" in first.output and "curated support-sft@1" in first.output
    assert "gate: BLOCKED: mean similarity dropped" in first.output  # the re-evaluation decides ...
    assert "release: support-bot rolled back to 2026-11-stable" in first.output  # ... and the release follows
    assert re.search(r"rolled back to .*published to \S+\.releases", first.output)  # the topic acked the change
    # it ends with a summary: the datasets@versions, the gate's verdict, every report it wrote (and they exist)
    summary = first.output.split("\nSummary:\n", 1)[1].split("Next, try:", 1)[0]
    assert "  datasets: regression-eval@1, answers-preference@1, support-sft@1 (in " in summary, summary
    assert ("  evaluation: support-bot 2026-12-rc1 against 2026-11-stable on regression-eval@1: gate BLOCKED"
            in summary and "rolled back to 2026-11-stable" in summary), summary
    reports = re.findall(r"^    (quality|drift app=[\w-]+): (\S+\.html)$", summary, re.M)
    assert {w for w, _ in reports} >= {"quality", "drift app=support-bot", "drift app=search-answers"}, summary
    assert all(Path(p).is_file() and Path(p).is_relative_to(home) for _, p in reports), reports
    second = runner.invoke(main, ["demo"], env=env)  # the broker restarts empty: new topic ids, offsets from 0
    assert second.exit_code == 0, second.output
    assert "curated regression-eval@1 (unchanged)" in second.output  # same events: no new dataset version
    assert "  datasets: regression-eval@1 (unchanged), answers-preference@1 (unchanged)" in second.output

    con = connect(Settings(home=home))
    assert con.execute("SELECT count(*), count(DISTINCT inference_id) FROM inferences").fetchone() == (1000, 1000)
    n_fb = con.execute("SELECT count(*) FROM feedback").fetchone()[0]
    assert n_fb == con.execute("SELECT count(DISTINCT feedback_id) FROM lake_feedback").fetchone()[0] > 0
    assert con.execute("SELECT count(*) FROM quarantine").fetchone()[0] == 6  # each run's 3 hostile messages
    con.close()

    for command in NEXT_STEPS:
        args = command.split(" ", 2)[1:] if command.startswith("flywheel sql") else command.split()[1:]
        if args[0] == "sql":
            args = ["sql", args[1].strip('"')]
        if "--open" in args:
            args.remove("--open")
        res = runner.invoke(main, args, env=env)
        outputs[command] = res.output
        assert res.exit_code == 0, f"`{command}` failed after the demo:\n{res.output}"
    # the overview shows every stage the demo ran (it starts no job: no trigger policy is configured)
    page = (home / "report.html").read_text(encoding="utf-8")
    assert re.findall(r"<section id='(\w+)'><h2>[^<]*</h2><p class=empty>", page) == ["jobs"]
    assert "app=support-bot" in page and "2026-12-rc1" in page and "Evidently report" in page

    # The other secrets, each used: an eval endpoint's key, a job webhook's signing secret, the collector's keys.
    hook = RecordingWebhook()
    (tmp_path / "targets.yaml").write_text("targets:\n  keyed:\n    base_url: {url}\n    model: m\n"
                                           "    api_key_env: FW_DEMO_ENDPOINT_KEY\n")
    (tmp_path / "policies.yaml").write_text(f"policies:\n  notify:\n    when: {{dataset: support-sft}}\n"
                                            f"    target: {{kind: webhook, url: '{hook.url}', "
                                            "secret_env: FW_DEMO_HOOK_SECRET}\n")
    with RecordedProvider([]) as provider:  # answers 404 to every prompt: the key goes out, errors come back
        (tmp_path / "targets.yaml").write_text((tmp_path / "targets.yaml").read_text().format(url=provider.url))
        more = {**env, "FLYWHEEL_EVAL_TARGETS_FILE": str(tmp_path / "targets.yaml"),
                "FLYWHEEL_JOBS_POLICIES_FILE": str(tmp_path / "policies.yaml")}
        for args in (["eval", "run", "--dataset", "regression-eval", "--target", "keyed"], ["jobs", "dispatch"],
                     ["jobs", "list"], ["config"], ["status"]):
            outputs[" ".join(args)] = runner.invoke(main, args, env=more).output
        assert provider.requests, outputs["eval run --dataset regression-eval --target keyed"]
    assert hook.received, outputs["jobs dispatch"]
    cs = Environment.load(env).collector
    with serving(Settings(home=tmp_path / "collector", broker_port=broker_port), cs) as base:
        for key in ("wrong-key", SECRETS["collectorkey"]):
            httpx.post(f"{base}/v1/inference", json={"inference_id": "x"}, headers={"Authorization": f"Bearer {key}"})
        outputs["collector /metrics"] = httpx.get(f"{base}/metrics").text
    captured = capfd.readouterr()
    where = {**_texts(home), **_texts(tmp_path / "collector"), **outputs, "logs": caplog.text,
             "stdout": captured.out, "stderr": captured.err}
    assert _leaks({"probe": f"x{SECRETS['hooksecret']}x"}) == ["hooksecret in probe"]  # the search can fail
    assert not _leaks(where), _leaks(where)


def test_the_readme_tour_suggests_exactly_the_commands_the_demo_test_runs() -> None:
    """The README's five-minute tour is what the test above runs after the demo (and what the demo suggests)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    tour = readme.split("## A five-minute tour", 1)[1].split("\n## ", 1)[0]
    block = tour.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.startswith("flywheel ")]
    assert sorted(commands) == sorted(NEXT_STEPS)
