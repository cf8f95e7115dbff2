"""Hostile settings: any value of any `FLYWHEEL_*` variable gives settings or a `ConfigError` naming that
variable, never a raw ValueError, TypeError or OverflowError; a number setting is finite.
A quick run is in `make test`; a deep one in the reliability tier."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import strategies as st

from flywheel.environment import GROUPS
from flywheel.errors import ConfigError
from flywheel.infra.testing.hostile import DEEP, NASTY_STRINGS, QUICK, fuzz

NUMBERS = ("nan", "NaN", "inf", "-inf", "Infinity", "1e400", "-0", "0", "-1", "1_000", "0x10", "١٢", "9" * 5000)
VARIABLES = sorted((getattr(g.cls, "ENV_NAMES", {}).get(f.name, g.prefix + f.name.upper()), g.attribute, f.name,
                    f.type if isinstance(f.type, str) else f.type.__name__)
                   for g in GROUPS for f in dataclasses.fields(g.cls) if f.init)
CLASSES = {g.attribute: g.cls for g in GROUPS}


def _check(case: tuple[tuple[str, str, str, str], str]) -> None:
    (var, group, name, kind), raw = case
    try:
        built = CLASSES[group].from_env({var: raw})
    except ConfigError as exc:
        assert exc.variable == var or var in str(exc), f"{var}={raw!r}: the error does not name it: {exc}"
        return
    except Exception as exc:  # noqa: BLE001 -- the test is about which exceptions escape
        raise AssertionError(f"{var}={raw!r}: {type(exc).__name__} escaped: {exc!r}") from exc
    if kind == "float":
        assert math.isfinite(getattr(built, name)), f"{var}={raw!r} was taken as {getattr(built, name)!r}"


@pytest.mark.parametrize("examples", [pytest.param(QUICK * 4, id="quick"),
                                      pytest.param(DEEP * 4, id="deep", marks=pytest.mark.reliability)])
def test_any_value_of_any_variable_gives_settings_or_a_config_error_naming_it(examples: int) -> None:
    raws = st.sampled_from(NUMBERS + NASTY_STRINGS) | st.text(min_size=1, max_size=30)
    fuzz(st.tuples(st.sampled_from(VARIABLES), raws), _check, examples)


@pytest.mark.parametrize("raw", ["nan", "inf", "-inf", "1e400"])
def test_a_float_setting_refuses_what_is_not_a_finite_number(raw: str) -> None:
    for var, group, _name, kind in VARIABLES:
        if kind == "float":
            with pytest.raises(ConfigError) as err:
                CLASSES[group].from_env({var: raw})
            assert err.value.variable == var or var in str(err.value)
