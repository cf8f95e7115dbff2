"""`flywheel demo` end to end on the embedded defaults, twice, and then every command the README suggests after it,
on what the demo left (the demo's traffic is dated relative to now, so the landing-time gates and the README's drift
windows see it)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from flywheel.cli import main
from flywheel.config import Settings
from flywheel.infra import broker
from flywheel.infra.demo import NEXT_STEPS
from flywheel.warehouse.query import connect


@pytest.mark.slow
def test_the_demo_runs_twice_and_the_readme_next_steps_work_on_what_it_left(tmp_path: Path) -> None:
    home = tmp_path / "home"
    # A reduced scale: about 100 support-bot inferences on the shifted day, so segments need fewer samples.
    env = {"FLYWHEEL_HOME": str(home), "FLYWHEEL_BROKER_PORT": str(broker.free_port()), "FLYWHEEL_KAFKA_BOOTSTRAP": "",
           "FLYWHEEL_DEMO_SCALE": "0.4", "FLYWHEEL_DRIFT_MIN_SAMPLES": "50", "FLYWHEEL_SLACK_WEBHOOK_URL": ""}
    runner = CliRunner()
    first = runner.invoke(main, ["demo"], env=env)
    assert first.exit_code == 0, first.output
    assert "quality gates: inferences passed" in first.output and "feedback passed" in first.output
    assert "model-drift on app=support-bot" in first.output  # the injected shifts are found: the model version ...
    assert "changed in the segment: model_version 2026-11-stable → 2026-12-rc1" in first.output
    language = next(line for line in first.output.splitlines() if "data-drift on app=search-answers:" in line)
    assert "input_script" in language  # ... and the users' language
    assert "injected shift (users' language) on app=search-answers: found as data-drift" in first.output
    assert "curated regression-eval@1" in first.output and "curated support-sft@1" in first.output
    assert "gate: BLOCKED: mean similarity dropped" in first.output  # the re-evaluation decides ...
    assert "release: support-bot rolled back to 2026-11-stable" in first.output  # ... and the release follows
    second = runner.invoke(main, ["demo"], env=env)  # the broker restarts empty: new topic ids, offsets from 0
    assert second.exit_code == 0, second.output
    assert "curated regression-eval@1 (unchanged)" in second.output  # same events: no new dataset version

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
        assert res.exit_code == 0, f"`{command}` failed after the demo:\n{res.output}"
    # the overview shows every stage the demo ran (it starts no job: no trigger policy is configured)
    page = (home / "report.html").read_text(encoding="utf-8")
    assert re.findall(r"<section id='(\w+)'><h2>[^<]*</h2><p class=empty>", page) == ["jobs"]
    assert "app=support-bot" in page and "2026-12-rc1" in page and "Evidently report" in page


def test_the_readme_tour_suggests_exactly_the_commands_the_demo_test_runs() -> None:
    """The README's five-minute tour is what the test above runs after the demo (and what the demo suggests)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    tour = readme.split("## A five-minute tour", 1)[1].split("\n## ", 1)[0]
    block = tour.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.startswith("flywheel ")]
    assert sorted(commands) == sorted(NEXT_STEPS)
