"""Quality gates end to end on real Delta tables, DuckDB and Great Expectations: a clean window passes, a window
with injected defects fails exactly the expectations it should, with the counts it should."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from flywheel.config import Settings
from flywheel.infra.testing.land import to_rows
from flywheel.warehouse.quality.settings import QualitySettings
from flywheel.warehouse.lake import Lake
from flywheel.warehouse.quality.gates import (QualityError, run_quality, suspect_windows, last_window_end)
from flywheel.warehouse.query import connect
from flywheel.warehouse.quality.suites import SuiteError, load_suites

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)
N_INF, N_FB = 200, 150
VALID_CARD = "4539 5787 6362 1486"  # passes Luhn
INVALID_CARD = "4539 5787 6362 1487"  # one digit off: fails Luhn, must not count


def _events(prefix: str, landed: datetime) -> list[dict[str, Any]]:
    evs: list[dict[str, Any]] = []
    for n in range(N_INF):
        ts = (landed - timedelta(minutes=5, seconds=n)).isoformat()
        evs.append({"inference_id": f"{prefix}-{n}", "timestamp": ts, "app": "support-bot", "model": "gpt-4o",
                    "input": f"How do I reset my password, attempt {n}?",
                    "output": f"Open Settings, choose Security and follow step {n}.",
                    "latency_ms": 800.0 + n, "input_tokens": 12, "output_tokens": 20, "cost_usd": 0.0002})
    for n in range(N_FB):
        ts = (landed - timedelta(minutes=1, seconds=n)).isoformat()
        if n % 3 == 0:
            fb: dict[str, Any] = {"kind": "rating", "value": 1 + n % 5}
        else:
            fb = {"kind": "thumbs", "value": 1 if n % 2 else -1}
        evs.append({"feedback_id": f"{prefix}-fb-{n}", "inference_id": f"{prefix}-{n}", "timestamp": ts, **fb})
    return evs


def _set(table: pa.Table, column: str, values: dict[int, Any]) -> pa.Table:
    i = table.column_names.index(column)
    col = table.column(column).to_pylist()
    for row, v in values.items():
        col[row] = v
    return table.set_column(i, table.schema.field(i), pa.array(col, table.schema.field(i).type))


def _land(settings: Settings, tables: dict[str, pa.Table]) -> None:
    lake = Lake(settings.lake)
    lake.ensure()
    for name, rows in tables.items():
        lake.commit(name, rows, {}, keep_ingested_at=True)  # the rows are placed in windows by landing time


def _clean(prefix: str, landed: datetime, offset: int) -> dict[str, pa.Table]:
    return to_rows(_events(prefix, landed), ingested_at=landed, start_offset=offset, topic_prefix=prefix)


def _defective(landed: datetime) -> dict[str, pa.Table]:
    rows = _clean("bad", landed, 10_000)
    inf, fb = rows["inferences"], rows["feedback"]
    future = landed + timedelta(days=1)
    inf = _set(inf, "latency_ms", {0: None, 1: None, 2: None,  # nulls
                                   10: -5.0, 11: -1.0, 12: 10_000_000.0, 13: 9e9, 14: 600_001.0})  # out of range
    inf = _set(inf, "timestamp", {20: future, 21: future, 22: future, 23: future})  # future timestamps
    refusals = {40 + k: "I'm sorry, but I can't help with that request." for k in range(12)}
    inf = _set(inf, "output", {**refusals, 52: "",
                               60: "Write to jane.doe@example.com for a refund.",
                               61: "Call our desk on +1 415-555-0133 any day.",
                               62: f"Your card {VALID_CARD} was charged.",
                               63: f"The card {INVALID_CARD} was declined.",
                               64: "Use the key sk-proj-Abcdefghijklmnopqrstuvwx12 in the header."})
    inf = _set(inf, "input", {65: "My server at 192.168.10.24 rejects the login, why?"})
    dup = inf.take([70, 71])  # the same events landed again (new Kafka messages)
    inf = pa.concat_tables([inf, _set(_set(dup, "_offset", {0: 20_000, 1: 20_001}), "_partition", {0: 1, 1: 1})])
    fb = _set(fb, "kind", {4: "emoji", 5: "emoji", 7: "emoji"})  # unknown kinds (4, 5, 7 are thumbs rows)
    fb = _set(fb, "value", {0: 7.0, 3: 0.0})  # ratings off their 1-5 scale
    fb = _set(fb, "inference_id", {100 + k: f"never-{k}" for k in range(10)})  # orphans
    fb = pa.concat_tables([fb, _set(fb.take([120]), "_offset", {0: 30_000})])  # a duplicate feedback id
    return {"inferences": inf, "feedback": fb}


EXPECTED_FAILURES = {
    # (table, expectation, column): (severity, unexpected_count)
    ("inferences", "expect_column_values_to_not_be_null", "latency_ms"): ("warning", 3),
    ("inferences", "expect_column_values_to_be_between", "latency_ms"): ("critical", 5),
    ("inferences", "expect_column_values_to_be_between", "ingest_lag_s"): ("critical", 4),
    ("inferences", "expect_column_values_to_be_unique", "inference_id"): ("critical", 4),
    ("inferences", "expect_column_values_to_be_between", "output_length"): ("warning", 1),
    ("inferences", "expect_column_values_to_be_in_set", "empty_or_refusal"): ("critical", 13),
    ("inferences", "expect_column_values_to_be_in_set", "pii_email_in_output"): ("warning", 1),
    ("inferences", "expect_column_values_to_be_in_set", "pii_phone_in_output"): ("warning", 1),
    ("inferences", "expect_column_values_to_be_in_set", "pii_credit_card_in_output"): ("warning", 1),
    ("inferences", "expect_column_values_to_be_in_set", "pii_secret_in_output"): ("warning", 1),
    ("inferences", "expect_column_values_to_be_in_set", "pii_ip_address_in_input"): ("warning", 1),
    ("feedback", "expect_column_values_to_be_in_set", "kind"): ("critical", 3),
    ("feedback", "expect_column_values_to_be_between", "rating_position"): ("critical", 2),
    ("feedback", "expect_column_values_to_be_unique", "feedback_id"): ("critical", 2),
}


@pytest.fixture(scope="module")
def two_windows(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, Any, Any]:
    """A clean window landed at T0 and a defective one at T0 + 1h, each validated once."""
    settings = Settings(home=tmp_path_factory.mktemp("quality") / "home")
    _land(settings, _clean("good", T0, 0))
    _land(settings, _defective(T0 + timedelta(hours=1)))
    q = QualitySettings()
    clean = run_quality(settings, q, since=T0 - timedelta(minutes=30), until=T0 + timedelta(minutes=30))
    bad = run_quality(settings, q, since=T0 + timedelta(minutes=30), until=T0 + timedelta(minutes=90))
    return settings, clean, bad


def test_clean_window_passes_every_expectation(two_windows: tuple[Settings, Any, Any]) -> None:
    _settings, clean, _bad = two_windows
    assert clean.success
    for suite in clean.suites:
        assert suite.rows == {"inferences": N_INF, "feedback": N_FB}[suite.table]
        failed = [(r.spec.type, r.spec.column, r.unexpected_count) for r in suite.results if not r.success]
        assert failed == []


def test_injected_defects_fail_exactly_the_expected_expectations(two_windows: tuple[Settings, Any, Any]) -> None:
    _settings, _clean, bad = two_windows
    assert not bad.success
    failed = {(s.table, r.spec.type, r.spec.column): (r.spec.severity, r.unexpected_count)
              for s in bad.suites for r in s.results if not r.success}
    assert failed == EXPECTED_FAILURES
    assert bad.suite("inferences").rows == N_INF + 2 and bad.suite("feedback").rows == N_FB + 1
    assert not bad.suite("inferences").gate_success and not bad.suite("feedback").gate_success


def test_results_carry_counts_samples_and_rates(two_windows: tuple[Settings, Any, Any]) -> None:
    _settings, _clean, bad = two_windows
    inf, fb = bad.suite("inferences"), bad.suite("feedback")
    lat = inf.result("expect_column_values_to_be_between", "latency_ms")
    assert sorted(lat.sample) == [-5.0, -1.0, 600_001.0, 10_000_000.0, 9e9]
    assert sorted(fb.result("expect_column_values_to_be_in_set", "kind").sample) == ["emoji"] * 3
    # Referential integrity is a rate: 10 of 151 feedback rows point at inferences that never landed.
    known = fb.result("expect_column_values_to_be_in_set", "inference_known")
    assert known.success and known.unexpected_count == 10 and known.element_count == N_FB + 1
    # PII is counted, never sampled verbatim.
    card = inf.result("expect_column_values_to_be_in_set", "pii_credit_card_in_output")
    assert card.sample == [True]


def test_runs_are_stored_and_failed_windows_are_suspect(two_windows: tuple[Settings, Any, Any]) -> None:
    settings, clean, bad = two_windows
    suspects = suspect_windows(settings)
    assert [(s.table, s.window_start, s.run_id) for s in suspects] == [
        ("feedback", T0 + timedelta(minutes=30), bad.run_id), ("inferences", T0 + timedelta(minutes=30), bad.run_id)]
    assert "expect_column_values_to_be_in_set(kind)" in suspects[0].failed
    con = connect(settings)  # quality_runs is a lake table: a view of that name appears
    rows = con.sql("SELECT run_id, table_name, count(*), bool_and(gate_success), sum(unexpected_count) "
                   "FROM quality_runs GROUP BY ALL ORDER BY run_id, table_name").fetchall()
    assert [(r[0], r[1], r[3]) for r in rows] == [(clean.run_id, "feedback", True), (clean.run_id, "inferences", True),
                                                 (bad.run_id, "feedback", False), (bad.run_id, "inferences", False)]
    sample = con.sql("SELECT unexpected_sample FROM quality_runs WHERE run_id = $r AND column_name = 'kind' "
                     "AND expectation = 'expect_column_values_to_be_in_set'", params={"r": bad.run_id}).fetchall()
    assert json.loads(sample[0][0]) == ["emoji"] * 3
    assert last_window_end(settings, "inferences") == T0 + timedelta(minutes=90)
    assert bad.report is not None and "expect_column_values_to_be_unique" in Path(bad.report).read_text()
    assert (Path(bad.report).parent / "latest.html").read_text() == Path(bad.report).read_text()


def test_a_passing_rerun_clears_a_suspect_window(settings: Settings) -> None:
    rows = _clean("r", T0, 0)
    refusals = {k: "I am sorry, I cannot help with that." for k in range(12)}  # 6% of the window
    _land(settings, {"inferences": _set(rows["inferences"], "output", refusals)})
    window = dict(since=T0 - timedelta(hours=1), until=T0 + timedelta(hours=1), tables=["inferences"], report=False)
    first = run_quality(settings, QualitySettings(), **window)  # type: ignore[arg-type]
    assert [r.spec.column for r in first.suite("inferences").failed()] == ["empty_or_refusal"]
    assert [s.run_id for s in suspect_windows(settings)] == [first.run_id]
    # The team decides 10% is acceptable for this product (FLYWHEEL_QUALITY_MAX_EMPTY_OR_REFUSAL_SHARE=0.1).
    second = run_quality(settings, QualitySettings.from_env({"FLYWHEEL_QUALITY_MAX_EMPTY_OR_REFUSAL_SHARE": "0.1"}),
                         **window)  # type: ignore[arg-type]
    assert second.success and suspect_windows(settings) == []


def test_teams_add_expectations_in_their_own_files(settings: Settings, tmp_path: Path) -> None:
    suites_dir = tmp_path / "team"
    suites_dir.mkdir()
    (suites_dir / "support.yaml").write_text(
        "table: inferences\n"
        "derive:\n  answer_words: len(string_split(output, ' '))\n"
        "expectations:\n"
        "  - {type: expect_column_values_to_be_between, column: answer_words, max_value: 5}\n"
        "  - {type: expect_column_values_to_be_in_set, column: app, value_set: [support-bot], severity: info}\n")
    _land(settings, _clean("t", T0, 0))
    run = run_quality(settings, QualitySettings(suites_dir=str(suites_dir)), since=T0 - timedelta(hours=1),
                      until=T0 + timedelta(hours=1), tables=["inferences"], report=False)
    words = run.suite("inferences").result("expect_column_values_to_be_between", "answer_words")
    assert not words.success and words.unexpected_count == N_INF
    assert run.suite("inferences").result("expect_column_values_to_be_in_set", "app").success


@pytest.mark.parametrize("content, message", [
    ("table: inferences\nexpectations:\n  - {type: expect_column_values_to_be_purple, column: app}\n",
     "is not a Great Expectations expectation"),
    ("table: inferences\nexpectations:\n  - {type: expect_column_values_to_be_between, column: x, "
     "max_value: '${nope}'}\n", "unknown parameter ${nope}"),
    ("table: inferences\nexpectations:\n  - {type: expect_column_values_to_be_unique, column: app, "
     "severity: fatal}\n", "severity must be one of"),
])
def test_bad_suite_files_name_the_file_and_the_problem(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "mine.yaml").write_text(content)
    with pytest.raises(SuiteError, match="mine.yaml") as err:
        load_suites(QualitySettings().params(), tmp_path)
    assert message in str(err.value)


def test_an_empty_window_passes_and_unknown_tables_are_refused(settings: Settings) -> None:
    Lake(settings.lake).ensure()
    run = run_quality(settings, QualitySettings(), since=T0, until=T0 + timedelta(hours=1), report=False)
    assert run.success and [s.rows for s in run.suites] == [0, 0]
    with pytest.raises(QualityError, match="no expectation suite for quarantine"):
        run_quality(settings, QualitySettings(), tables=["quarantine"], report=False)
    (settings.home / "suites").mkdir()
    (settings.home / "suites" / "runs.yaml").write_text(
        "table: quality_runs\nexpectations:\n  - {type: expect_column_values_to_not_be_null, column: run_id}\n")
    with pytest.raises(QualityError, match="apply to the landed tables"):
        run_quality(settings, QualitySettings(suites_dir=str(settings.home / "suites")), tables=["quality_runs"])


def test_quality_settings_come_from_the_environment_and_are_checked() -> None:
    from flywheel.errors import ConfigError

    q = QualitySettings.from_env({"FLYWHEEL_QUALITY_FUTURE_SKEW_S": "60", "FLYWHEEL_QUALITY_HORIZON_DAYS": "2",
                                  "FLYWHEEL_QUALITY_PII_MAX_SHARE": "0.01"})
    params = q.params()
    assert (params["min_ingest_lag_s"], params["horizon_s"], params["pii_mostly"]) == (-60.0, 172_800.0, 0.99)
    assert "rating" in params["feedback_kinds"]  # the sets come from the event contract, not a copy
    with pytest.raises(ConfigError, match="FLYWHEEL_QUALITY_PII_MAX_SHARE must lie in"):
        QualitySettings.from_env({"FLYWHEEL_QUALITY_PII_MAX_SHARE": "5"})
    with pytest.raises(ConfigError, match="FLYWHEEL_QUALITY_SAMPLE_SIZE='many' is not a valid int"):
        QualitySettings.from_env({"FLYWHEEL_QUALITY_SAMPLE_SIZE": "many"})


def test_pii_family_can_be_narrowed_to_some_kinds(tmp_path: Path) -> None:
    (tmp_path / "notes.yaml").write_text("table: feedback\npii:\n  columns: [reason]\n  kinds: [email, secret]\n")
    suite = load_suites(QualitySettings().params(), tmp_path)["feedback"]
    assert {k: v for k, v in suite.pii_flags.items() if v[1] == "reason"} == {
        "pii_email_in_reason": ("email", "reason"), "pii_secret_in_reason": ("secret", "reason")}
