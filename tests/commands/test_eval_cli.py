"""`flywheel eval` and `flywheel release` through the CLI, against the provider double."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from flywheel.cli import main
from flywheel.infra.testing.corpus import BUNDLED
from flywheel.infra.testing.provider import RecordedProvider


def test_run_compare_gate_promote_rollback_and_the_key_never_shows(tmp_path: Path) -> None:
    edits = [r for r in map(json.loads, BUNDLED.read_text(encoding="utf-8").splitlines()) if r["kind"] == "edits"]
    examples = tmp_path / "golden.jsonl"
    examples.write_text("".join(json.dumps({"id": f"e{i}", "prompt": r["prompt"], "reference": r["correction"],
                                            "segment": "writing"}) + "\n" for i, r in enumerate(edits)))
    records = ([{"model": "writer-v1", "prompt": r["prompt"], "output": r["output"]} for r in edits]
               + [{"model": "writer-v2", "prompt": r["prompt"], "output": r["correction"]} for r in edits])
    runner = CliRunner()
    with RecordedProvider.from_records(records) as p:
        targets = tmp_path / "targets.yaml"
        targets.write_text(f"targets:\n  v1: {{base_url: '{p.url}', model: writer-v1, api_key_env: FW_TEST_KEY}}\n"
                           f"  v2: {{base_url: '{p.url}', model: writer-v2, api_key_env: FW_TEST_KEY}}\n")
        env = {"FLYWHEEL_HOME": str(tmp_path / "home"), "FLYWHEEL_EVAL_TARGETS_FILE": str(targets),
               "FW_TEST_KEY": "sk-test-DO-NOT-LEAK", "FLYWHEEL_EVAL_BOOTSTRAP": "300",
               # both targets are the same local double: their latencies differ only by the machine's load
               "FLYWHEEL_EVAL_MAX_LATENCY_P95_RATIO": "1000"}
        out = {}
        for name in ("v2", "v1"):
            res = runner.invoke(main, ["eval", "run", "--examples", str(examples), "--target", name,
                                       "--format", "json"], env=env)
            assert res.exit_code == 0, res.output
            out[name] = json.loads(res.output)
        missing = runner.invoke(main, ["eval", "run", "--examples", str(examples), "--target", "v1"],
                                env={**env, "FW_TEST_KEY": ""})
        assert missing.exit_code == 1 and "$FW_TEST_KEY, which is not set" in missing.output
    good, bad = out["v2"]["run_id"], out["v1"]["run_id"]
    listed = runner.invoke(main, ["eval", "list"], env=env)
    assert listed.exit_code == 0 and good in listed.output and bad in listed.output
    md = runner.invoke(main, ["eval", "compare", good, bad, "--format", "markdown"], env=env)
    assert md.exit_code == 0 and "| similarity |" in md.output
    blocked = runner.invoke(main, ["eval", "gate", bad, "--baseline", good], env=env)
    assert blocked.exit_code == 1 and "mean similarity dropped" in blocked.output
    assert runner.invoke(main, ["eval", "gate", good, "--baseline", bad], env=env).exit_code == 0

    # The lake has never seen these models serve an app: promotion is refused, with the query to check.
    refused = runner.invoke(main, ["release", "promote", "writer", "--model", "writer-v2", "--eval", good], env=env)
    assert refused.exit_code == 1 and "never served by" in refused.output
    # Nothing written anywhere holds the key.
    for path in (tmp_path / "home").rglob("*"):
        if path.is_file():
            assert b"sk-test-DO-NOT-LEAK" not in path.read_bytes(), path


def test_judge_through_the_cli_and_its_key_never_shows(tmp_path: Path) -> None:
    from flywheel.infra.testing.corpus import load_corpus

    pairs = [p for p in load_corpus().pairs if len(str(p["a"])) > 40 and len(str(p["b"])) > 40][:10]
    examples = tmp_path / "panda.jsonl"
    examples.write_text("".join(json.dumps({"id": f"p{i}", "prompt": p["prompt"]}) + "\n"
                                for i, p in enumerate(pairs)))
    records = ([{"model": "r1", "prompt": str(p["prompt"]), "output": str(p["a"])} for p in pairs]
               + [{"model": "r2", "prompt": str(p["prompt"]), "output": str(p["b"])} for p in pairs])
    runner = CliRunner()
    with RecordedProvider.from_records(records) as p:
        p.add_judge("judge-human", pairs)
        targets = tmp_path / "targets.yaml"
        targets.write_text(f"targets:\n  r1: {{base_url: '{p.url}', model: r1}}\n"
                           f"  r2: {{base_url: '{p.url}', model: r2, model_version: '2', prompt_version: v3}}\n"
                           f"  judge: {{base_url: '{p.url}', model: judge-human, api_key_env: FW_JUDGE_KEY}}\n")
        env = {"FLYWHEEL_HOME": str(tmp_path / "home"), "FLYWHEEL_EVAL_TARGETS_FILE": str(targets),
               "FW_JUDGE_KEY": "sk-judge-DO-NOT-LEAK", "FLYWHEEL_EVAL_BOOTSTRAP": "200"}
        base = runner.invoke(main, ["eval", "run", "--examples", str(examples), "--target", "r1", "--format", "json"],
                             env=env)
        assert base.exit_code == 0, base.output
        base_id = json.loads(base.output)["run_id"]
        # A pairwise judge with nothing to compare against is refused before anything is sent.
        sent = len(p.requests)
        bad = runner.invoke(main, ["eval", "run", "--examples", str(examples), "--target", "r2", "--judge", "judge"],
                            env=env)
        assert bad.exit_code == 1 and "--judge-baseline" in bad.output and len(p.requests) == sent
        cand = runner.invoke(main, ["eval", "run", "--examples", str(examples), "--target", "r2", "--judge", "judge",
                                    "--judge-baseline", base_id, "--format", "json"], env=env)
        assert cand.exit_code == 0, cand.output
        got = json.loads(cand.output)
        want = sum(q["preference"] == -1 for q in pairs), sum(q["preference"] == 1 for q in pairs)
        assert (got["judge"]["wins"], got["judge"]["losses"]) == want and got["judge"]["failed"] == 0
        rubric = runner.invoke(main, ["eval", "judge", got["run_id"], "--judge", "judge", "--judge-mode", "rubric",
                                      "--rubric", "Is it correct?"], env=env)
        assert rubric.exit_code == 0 and "judged 10 answers" in rubric.output, rubric.output
    md = runner.invoke(main, ["eval", "compare", base_id, got["run_id"], "--format", "markdown"], env=env)
    assert md.exit_code == 0 and "judge win rate" in md.output and f"{want[0]} wins" in md.output
    assert "| 2 | v3 | 0 |" in md.output  # no inference in the lake yet for r2 version 2, prompt v3: n = 0
    for path in (tmp_path / "home").rglob("*"):
        if path.is_file():
            assert b"sk-judge-DO-NOT-LEAK" not in path.read_bytes(), path


def test_an_eval_sets_output_format_flows_from_its_recipe_to_each_example_and_its_scores(tmp_path: Path) -> None:
    """`eval.output_format` of a recipe reaches the manifest, each Example of `dataset_examples` (what `eval run
    --dataset` and `eval` jobs read) and the scores: JSON validity is a rate for the JSON set, n/a for the text one."""
    from datetime import datetime, timezone

    from flywheel.commands.evaluate import dataset_examples
    from flywheel.config import Settings
    from flywheel.environment import Environment
    from flywheel.errors import ConfigError
    from flywheel.infra.demo import traffic
    from flywheel.infra.testing.land import land
    from flywheel.warehouse.lake import Lake

    home, recipes = tmp_path / "home", tmp_path / "recipes"
    recipes.mkdir()
    land(Lake(Settings(home=home).lake), traffic(300, datetime.now(timezone.utc)))
    for name, line in (("orders-json", "\n  output_format: json"), ("orders-text", "")):
        (recipes / f"{name}.yaml").write_text(f"name: {name}\nkind: eval\neval:\n  per_stratum: 5{line}\n")
    env = {"FLYWHEEL_HOME": str(home), "FLYWHEEL_RECIPES_DIR": str(recipes),
           "FLYWHEEL_JOBS_POLICIES_FILE": str(tmp_path / "no-policies.yaml"), "FLYWHEEL_EVAL_BOOTSTRAP": "100"}
    runner = CliRunner()
    for name in ("orders-json", "orders-text"):
        res = runner.invoke(main, ["curate", name], env=env)
        assert res.exit_code == 0 and f"wrote {name}@1" in res.output, res.output
    examples = {name: dataset_examples(Environment.load(env), name, "test")[0]
                for name in ("orders-json", "orders-text")}
    assert examples["orders-json"] and {e.output_format for e in examples["orders-json"]} == {"json"}
    assert examples["orders-text"] and {e.output_format for e in examples["orders-text"]} == {"text"}

    # One model answering every prompt with a JSON object: valid JSON, which counts only where it is expected.
    records = [{"model": "j", "prompt": e.prompt, "output": json.dumps({"answer": e.reference or "ok"})}
               for es in examples.values() for e in es]
    with RecordedProvider.from_records(records) as p:
        targets = tmp_path / "targets.yaml"
        targets.write_text(f"targets:\n  j: {{base_url: '{p.url}', model: j}}\n")
        env["FLYWHEEL_EVAL_TARGETS_FILE"] = str(targets)
        got = {}
        for name in ("orders-json", "orders-text"):
            res = runner.invoke(main, ["eval", "run", "--dataset", name, "--target", "j", "--format", "json"],
                                env=env)
            assert res.exit_code == 0, res.output
            got[name] = json.loads(res.output)["summary"]
        text = runner.invoke(main, ["eval", "run", "--dataset", "orders-text", "--target", "j"], env=env)
    assert got["orders-json"]["json_valid_rate"] == 1.0 and got["orders-text"]["json_valid_rate"] is None
    assert text.exit_code == 0 and any(line.split() == ["json_valid_rate", "n/a"] for line in text.output.splitlines())

    # A version curated before recipes had the key is a text set; a hand-edited value is refused, naming it.
    from flywheel.warehouse.datasets.registry import Registry

    loaded = Environment.load(env)
    manifest_path = Registry(loaded.core, loaded.datasets).get("orders-json").path / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    del manifest["recipe"]["eval"]["output_format"]
    manifest_path.write_text(json.dumps(manifest), encoding="utf-8")
    assert {e.output_format for e in dataset_examples(Environment.load(env), "orders-json", "test")[0]} == {"text"}
    manifest["recipe"]["eval"]["output_format"] = "xml"
    manifest_path.write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"orders-json@1: its manifest's recipe.eval.output_format is 'xml'"):
        dataset_examples(Environment.load(env), "orders-json", "test")
