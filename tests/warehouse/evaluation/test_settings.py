"""The gate's tolerances are checked when the settings load: a value that is no number, or one out of its range
(a negative drop, a latency ratio below 1), is a `ConfigError` naming the variable, the value and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from flywheel.cli import main
from flywheel.errors import ConfigError
from flywheel.warehouse.evaluation.settings import EvalSettings

DROPS = ("FLYWHEEL_EVAL_MAX_SIMILARITY_DROP", "FLYWHEEL_EVAL_MAX_PASS_RATE_DROP", "FLYWHEEL_EVAL_MAX_ERROR_RATE_RISE",
         "FLYWHEEL_EVAL_MAX_REFUSAL_RATE_RISE")


@pytest.mark.parametrize("var", DROPS)
@pytest.mark.parametrize(("raw", "what"), [("0.05x", "'0.05x' is not a finite number"), ("two", "'two' is not a "),
                                           ("nan", "'nan' is not a finite number"), ("-0.01", "-0.01 is negative"),
                                           ("1.5", "1.5 is above 1")])
def test_a_drop_or_rise_tolerance_that_is_no_number_or_out_of_range_fails_on_load(var: str, raw: str,
                                                                                 what: str) -> None:
    with pytest.raises(ConfigError) as err:
        EvalSettings.from_env({var: raw})
    assert str(err.value).startswith(f"{var}={what}"), err.value
    assert err.value.variable == var
    assert "set it to a number from 0 to 1" in str(err.value) and "or unset it for the default 0.0" in str(err.value)


@pytest.mark.parametrize(("raw", "what"), [("fast", "'fast' is not a finite number"), ("0.9", "0.9 is below 1"),
                                           ("-2", "-2.0 is below 1")])
def test_a_latency_ratio_below_one_or_no_number_fails_on_load(raw: str, what: str) -> None:
    var = "FLYWHEEL_EVAL_MAX_LATENCY_P95_RATIO"
    with pytest.raises(ConfigError) as err:
        EvalSettings.from_env({var: raw})
    assert str(err.value).startswith(f"{var}={what}") and err.value.variable == var, err.value
    assert "set it to a number of at least 1" in str(err.value) and "the default 1.5" in str(err.value)


def test_a_tolerance_of_the_wrong_type_in_code_is_refused_too() -> None:
    for value in ("0.02", True, None):
        with pytest.raises(ConfigError, match="FLYWHEEL_EVAL_MAX_SIMILARITY_DROP=.* is not a number: set it to"):
            EvalSettings(max_similarity_drop=value)  # type: ignore[arg-type]


def test_tolerances_in_range_load_and_a_command_stops_on_a_bad_one(tmp_path: Path) -> None:
    s = EvalSettings.from_env({"FLYWHEEL_EVAL_MAX_SIMILARITY_DROP": "0", "FLYWHEEL_EVAL_MAX_PASS_RATE_DROP": "1",
                               "FLYWHEEL_EVAL_MAX_ERROR_RATE_RISE": "0.005",
                               "FLYWHEEL_EVAL_MAX_LATENCY_P95_RATIO": "1"})
    assert (s.max_similarity_drop, s.max_pass_rate_drop, s.max_error_rate_rise, s.max_latency_p95_ratio) == \
        (0.0, 1.0, 0.005, 1.0)
    assert EvalSettings.from_env({}) == EvalSettings()
    # A command reads every setting before it does anything: the error, and nothing written under FLYWHEEL_HOME.
    home = tmp_path / "home"
    res = CliRunner().invoke(main, ["release", "promote", "writer", "--model", "m", "--eval", "run"],
                             env={"FLYWHEEL_HOME": str(home), "FLYWHEEL_EVAL_MAX_REFUSAL_RATE_RISE": "-0.5"})
    assert res.exit_code == 1 and "FLYWHEEL_EVAL_MAX_REFUSAL_RATE_RISE=-0.5 is negative: set it to" in res.output
    assert not (home / "lake").exists()
