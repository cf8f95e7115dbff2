"""Evaluation runs end to end against the provider double: two recorded model versions over the same eval set (real
LAMP paragraphs: the model's draft, and the professional writer's edit of it), compared, and the gate blocks the
worse one; a killed run resumes without scoring an example twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from flywheel.infra.testing.corpus import BUNDLED
from flywheel.infra.testing.provider import RecordedProvider
from flywheel.warehouse import tables
from flywheel.warehouse.evaluation.compare import EvalError, compare, gate, markdown
from flywheel.warehouse.evaluation.metrics import chrf
from flywheel.warehouse.evaluation.runs import TABLE, Example, rows, run_eval, runs
from flywheel.warehouse.evaluation.settings import EvalSettings
from flywheel.warehouse.evaluation.targets import Secret, Target

SETTINGS = EvalSettings(concurrency=8, attempts=3, save_every=5, bootstrap=500)


def _edits() -> list[dict[str, str]]:
    rows_ = [json.loads(line) for line in BUNDLED.read_text(encoding="utf-8").splitlines()]
    return [r for r in rows_ if r["kind"] == "edits"]


def _setup() -> tuple[list[Example], list[dict[str, str]]]:
    edits = _edits()
    examples = [Example(f"e{i}", (("user", r["prompt"]),), reference=r["correction"], segment=f"seg{i % 3}")
                for i, r in enumerate(edits)]
    records = ([{"model": "writer-v1", "prompt": r["prompt"], "output": r["output"]} for r in edits]
               + [{"model": "writer-v2", "prompt": r["prompt"], "output": r["correction"]} for r in edits])
    return examples, records


def test_chrf_matches_a_hand_computed_value() -> None:
    assert chrf("abc", "abc") == 1.0 and chrf("abc", "xyz") == 0.0
    # unigrams: P = 2/3, R = 2/2; bigrams: h {ab, bc}, r {ab}: P = 1/2, R = 1; n >= 3: no reference n-grams
    p, r = (2 / 3 + 1 / 2) / 2, 1.0
    assert chrf("abc", "ab") == pytest.approx(5 * p * r / (4 * p + r))


def test_two_versions_compared_and_the_gate_blocks_the_worse(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    examples, records = _setup()
    with RecordedProvider.from_records(records) as provider:
        provider.script = [(429, {"Retry-After": "0"}), (500, {})]
        good = run_eval(lake, "edits@1", examples, Target("v2", provider.url, "writer-v2"), Secret(""), SETTINGS)
        bad = run_eval(lake, "edits@1", examples, Target("v1", provider.url, "writer-v1"), Secret(""), SETTINGS)
    assert (good.examples, good.sent, good.failed, bad.failed) == (len(examples), len(examples), 0, 0)
    assert good.summary["similarity_mean"] == pytest.approx(1.0)
    # Independently of the harness: the same numbers from the stored rows, with SQL.
    con = duckdb.connect()
    files = ", ".join(f"'{f}'" for f in tables.files(lake, TABLE))
    sims = dict(con.execute(f"SELECT run_id, avg(similarity) FROM read_parquet([{files}]) WHERE row_kind = 'example' "
                            "GROUP BY run_id").fetchall())
    direct = sum(chrf(" ".join(r["output"].split()), " ".join(r["correction"].split())) for r in _edits()) / len(examples)
    assert sims[bad.run_id] == pytest.approx(direct) and sims[good.run_id] == pytest.approx(1.0)

    c = compare(lake, good.run_id, bad.run_id, SETTINGS)
    d = c.delta("similarity")
    assert c.matched == len(examples) and d.delta == pytest.approx(direct - 1.0)
    assert d.low <= d.delta <= d.high < 0
    blocked = gate(lake, bad.run_id, good.run_id, SETTINGS)
    assert not blocked.passed and any("mean similarity dropped" in r for r in blocked.reasons)
    assert gate(lake, good.run_id, good.run_id, SETTINGS).passed
    assert "| similarity |" in markdown(c)
    assert {r["run_id"] for r in runs(lake).to_pylist()} == {good.run_id, bad.run_id}
    with pytest.raises(EvalError, match="no recorded examples"):
        compare(lake, good.run_id, "nope", SETTINGS)


WORKER = """
import json, sys
from pathlib import Path
from flywheel.warehouse.evaluation.runs import Example, run_eval
from flywheel.warehouse.evaluation.settings import EvalSettings
from flywheel.warehouse.evaluation.targets import Secret, Target
spec = json.loads(sys.argv[1])
examples = [Example(e["id"], (("user", e["prompt"]),), e["reference"]) for e in spec["examples"]]
r = run_eval(Path(spec["lake"]), "edits@1", examples, Target("v1", spec["url"], "writer-v1"), Secret(""),
             EvalSettings(concurrency=2, save_every=3))
print(json.dumps({"run_id": r.run_id, "resumed": r.resumed, "sent": r.sent}))
"""


@pytest.mark.slow
def test_a_killed_run_resumes_and_scores_no_example_twice(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    examples, records = _setup()
    with RecordedProvider.from_records(records) as provider:
        provider.delay_s = 0.15
        spec = json.dumps({"lake": str(lake), "url": provider.url, "examples": [
            {"id": e.example_id, "prompt": e.prompt, "reference": e.reference} for e in examples]})
        proc = subprocess.Popen([sys.executable, "-c", WORKER, spec], stdout=subprocess.PIPE, text=True,
                                env={**os.environ})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(tables.files(lake, TABLE)) < 2:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        before = tables.query(lake, TABLE, "SELECT count(*) AS n FROM t")["n"][0].as_py()
        assert 0 < before < len(examples)
        provider.delay_s = 0.0
        done = subprocess.run([sys.executable, "-c", WORKER, spec], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout)
    assert out["resumed"] and out["sent"] == len(examples) - before
    got = rows(lake, out["run_id"])
    assert sorted(got["example_id"].to_pylist()) == sorted(e.example_id for e in examples)  # each once
