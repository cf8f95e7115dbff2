"""Hostile input for the fuzz tests of flywheel's file loaders (recipes, policies, targets) and settings: Hypothesis
strategies of wrong types, unknown keys, huge and non-finite numbers, path tricks and SQL, and mutations of a
valid document that break it in one place. Needs `hypothesis` (the dev extra); only tests import this module.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

QUICK, DEEP = 12, 150
"""Examples per property: QUICK in `make test` (each file's share of its 15 s), DEEP in the reliability tier."""
BUDGET = pytest.mark.parametrize("examples", [pytest.param(QUICK, id="quick"),
                                              pytest.param(DEEP, id="deep", marks=pytest.mark.reliability)])
"""A fuzz test's `examples` argument: its quick run in `make test`, its deep run in the reliability tier."""

NASTY_STRINGS = ("", " ", "../../etc/passwd", "/etc/passwd", "a\x00b", "' OR 1=1 --", '"; DROP TABLE t; --',
                 "${HOME}", "x" * 20_000, "ℌ𝔢𝔩𝔩𝔬", "2026-13-45T99:99:99", "1e400", "nan", "-1", "0", "\n", "²")
"""Strings that have broken parsers before: traversal, NUL, SQL, huge, non-ASCII digits, look-alike numbers."""

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(NASTY_STRINGS))
"""One YAML scalar of any type (YAML can carry each of these; `.nan` and `.inf` included)."""


def values(keys: tuple[str, ...] = ()) -> st.SearchStrategy[Any]:
    """A YAML value of any shape: scalars, lists and mappings nested a few levels, keyed by `keys` (the loader's
    real keys, so the nesting gets past the first check) or random text."""
    key = st.sampled_from(keys) | st.text(max_size=8) if keys else st.text(max_size=8)
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(key, inner, max_size=3),
                        max_leaves=8)


def _paths(doc: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside `doc` (mapping keys and list indices), the document itself first."""
    out = [at]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*at, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*at, i))
    return out


def _replace(doc: Any, path: tuple[Any, ...], change: Callable[[Any], Any]) -> Any:
    if not path:
        return change(doc)
    head, rest = path[0], path[1:]
    if isinstance(doc, dict):
        return {k: (_replace(v, rest, change) if k == head else v) for k, v in doc.items()}
    return [(_replace(v, rest, change) if i == head else v) for i, v in enumerate(doc)]


@st.composite
def mutations(draw: st.DrawFn, doc: Any, keys: tuple[str, ...] = ()) -> Any:
    """`doc` broken in one place: a value replaced by any other (wrong type, huge, NaN, nested), a key removed,
    or an unknown key added to a mapping."""
    path = draw(st.sampled_from(_paths(doc)))
    how = draw(st.sampled_from(("replace", "drop", "add")))

    def change(value: Any) -> Any:
        if how == "add" and isinstance(value, dict):
            return {**value, draw(st.text(min_size=1, max_size=8)): draw(values(keys))}
        if how == "drop" and isinstance(value, dict) and value:
            gone = draw(st.sampled_from(sorted(value, key=str)))
            return {k: v for k, v in value.items() if k != gone}
        return draw(values(keys))

    return _replace(doc, path, change)


def fuzz(strategy: st.SearchStrategy[Any], check: Callable[[Any], None], examples: int) -> None:
    """Run `check` on `examples` values of `strategy`; a failure is shrunk to its simplest value and re-raised."""
    settings(max_examples=examples, deadline=None, database=None,
             suppress_health_check=list(HealthCheck))(given(strategy)(check))()


__all__ = ["BUDGET", "DEEP", "NASTY_STRINGS", "QUICK", "fuzz", "mutations", "scalars", "values"]


T = TypeVar("T")


def loaded_or_refused(load: Callable[[Path], T], path: Path, error: type[Exception]) -> T | None:
    """What `load(path)` returns, or None when it refused the file with `error` naming the file (`file`, also in the
    message) and the key at fault (`key`); any other exception escaping is the failure these fuzz tests look for."""
    try:
        return load(path)
    except error as exc:
        assert getattr(exc, "file", None) == str(path) and str(path) in str(exc), exc
        assert getattr(exc, "key", None), f"no key named: {exc}"
        return None
    except Exception as exc:  # noqa: BLE001 -- the test is about which exceptions escape
        raise AssertionError(f"{type(exc).__name__} escaped {getattr(load, '__name__', load)}: {exc!r}") from exc
