"""`flywheel curate` and `flywheel datasets ...` as a user runs them on the demo's events (landed directly: the
broker adds nothing here): JSON output for scripts, clear errors with exit code 1, nothing written on a bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from flywheel.cli import main
from flywheel.config import Settings
from flywheel.infra.testing.land import land
from flywheel.warehouse.lake import Lake

DEMO = Path(__file__).resolve().parents[2] / "infra" / "demo" / "events.jsonl"


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    s = Settings(home=tmp_path / "home")
    land(Lake(s.lake), [json.loads(line) for line in DEMO.read_text().splitlines()])
    return {"FLYWHEEL_HOME": str(s.home), "FLYWHEEL_RECIPES_DIR": ""}


def _run(env: dict[str, str], *args: str) -> tuple[int, str]:
    res = CliRunner().invoke(main, list(args), env=env)
    return res.exit_code, res.output


def test_curate_all_then_list_show_diff_pull(home: dict[str, str], tmp_path: Path) -> None:
    code, out = _run(home, "curate", "--all", "--format", "json")
    assert code == 0, out
    runs = [json.loads(line) for line in out.splitlines()]
    assert [r["name"] for r in runs] == ["regression-eval", "answers-preference", "support-sft"]  # eval first
    assert all(r["created"] and r["version"] == 1 for r in runs)
    sft = runs[2]
    assert any(s["step"] == "decontaminate" and s["reasons"] for s in sft["steps"])  # against regression-eval@1
    code, out = _run(home, "curate", "support-sft")
    assert code == 0 and out.startswith("support-sft@1: unchanged"), out
    code, out = _run(home, "datasets", "list", "--format", "json")
    listed = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and sorted(v["name"] for v in listed) == ["answers-preference", "regression-eval", "support-sft"]
    code, out = _run(home, "datasets", "show", "support-sft@1", "--format", "json")
    manifest = json.loads(out)
    assert code == 0 and manifest["rows"] == sum(manifest["splits"].values()) == sft["splits"]["train"] + \
        sft["splits"]["test"]
    code, out = _run(home, "datasets", "show", "support-sft")
    assert code == 0 and "# support-sft@1" in out and "sha256" in out
    code, out = _run(home, "datasets", "diff", "support-sft@1", "support-sft@1", "--format", "json")
    assert code == 0 and all(json.loads(line)["added"] == 0 for line in out.splitlines())
    dest = tmp_path / "pulled"
    code, out = _run(home, "datasets", "pull", "support-sft", "--format", "openai_chat", "--out", str(dest))
    assert code == 0 and (dest / "openai_chat" / "train.jsonl").is_file(), out
    code, out = _run(home, "datasets", "pull", "support-sft", "--format", "trl", "--out", str(dest))
    assert code == 1 and "is not empty" in out and "--force" in out


def test_bad_input_exits_1_with_a_clear_error_and_writes_nothing(home: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nkind: sft\nexports: [csv]\n")
    for args, message in (
            (["curate", str(bad)], f"Error: {bad}: `exports`: 'csv' is not one of"),
            (["curate", "no-such-recipe"], "no recipe named 'no-such-recipe'"),
            (["curate", "../etc/passwd"], "is not a dataset name"),
            (["datasets", "show", "nope@1"], "Error: no dataset named 'nope'"),
            (["datasets", "pull", "a/b", "--format", "trl", "--out", str(tmp_path / "o")], "is not a dataset name")):
        code, out = _run(home, *args)
        assert code == 1 and message in out, (args, out)
    assert not (Path(home["FLYWHEEL_HOME"]) / "lake" / "datasets").exists()
    assert not (tmp_path / "o").exists()
    code, out = _run(home, "curate")
    assert code == 2 and "give one recipe" in out
