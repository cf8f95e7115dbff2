"""Hostile target files: whatever YAML a targets file holds, loading it returns valid targets or fails with a
`TargetError` naming the file and the key, never a raw KeyError, TypeError or AttributeError.
A quick run of each property is in `make test`; a deep one in the reliability tier."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st

from flywheel.infra.testing.hostile import BUDGET, fuzz, loaded_or_refused, mutations, values
from flywheel.warehouse.evaluation import targets
from flywheel.warehouse.evaluation.targets import Target, TargetError, load_targets

assert targets.__doc__
VALID = yaml.safe_load(targets.__doc__.split("\n\n", 2)[1].replace("    # targets.yaml\n", ""))
KEYS = ("targets", *sorted(targets.KEYS), *sorted(targets.PARAMS))
_DIR = Path(tempfile.mkdtemp(prefix="target-fuzz-"))


def _write(doc: Any) -> Path:
    path = _DIR / "targets.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return path


def _check(doc: Any) -> None:
    loaded = loaded_or_refused(load_targets, _write(doc), TargetError)
    for t in (loaded or {}).values():
        assert isinstance(t, Target) and t.base_url.startswith(("http://", "https://"))
        assert isinstance(t.model_version, str) and isinstance(t.prompt_version, str)
        for number in (t.timeout_s, t.price_per_1k_input_usd, t.price_per_1k_output_usd):
            assert number is None or math.isfinite(number), t


def test_the_worked_example_loads() -> None:
    """The module's example as written: YAML reads `model_version: 2023-05-02` as a date."""
    loaded = load_targets(_write(VALID))
    assert loaded["candidate"].model_version == "2023-05-02"


@BUDGET
def test_a_target_file_broken_in_one_place_is_refused_by_file_and_key_or_is_valid(examples: int) -> None:
    fuzz(mutations(VALID, KEYS), _check, examples)


@BUDGET
def test_any_yaml_structure_as_a_target_file_is_refused_by_file_and_key(examples: int) -> None:
    docs = st.fixed_dictionaries({"targets": st.dictionaries(st.text(max_size=6), values(KEYS), max_size=3)})
    fuzz(docs | values(KEYS), _check, examples)
