"""Hostile policy files: whatever YAML a policy file holds, loading it returns valid policies or fails with a
`PolicyError` naming the file and the key, never a raw KeyError, TypeError or AttributeError.
A quick run of each property is in `make test`; a deep one in the reliability tier."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st

from flywheel.infra.testing.hostile import BUDGET, fuzz, loaded_or_refused, mutations, values
from flywheel.warehouse.jobs import policies
from flywheel.warehouse.jobs.policies import Policy, PolicyError, load_policies

assert policies.__doc__
VALID = yaml.safe_load(policies.__doc__.split("\n\n", 2)[1])  # the module's worked example
KEYS = ("policies", "when", "target", "dataset", "min_new_examples", "drift_alert", "segment", "kind", "schedule",
        "url", "secret_env", "attempts", "command", "timeout_s", "base_url", "model", "key_env", "format", "poll_s",
        "deployment", "targets", "split", "gate", "candidate", "baseline", "webhook", "shell", "eval")
KNOWN_DATASETS = {"support-sft", "support-eval"}
KNOWN_TARGETS = {"champion", "candidate"}
_DIR = Path(tempfile.mkdtemp(prefix="policy-fuzz-"))


def _write(doc: Any) -> Path:
    path = _DIR / "policies.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return path


def _check(case: tuple[Any, bool]) -> None:
    doc, known = case

    def load_policies_here(path: Path) -> dict[str, Policy]:
        return load_policies(path, KNOWN_DATASETS if known else None, KNOWN_TARGETS if known else None)

    loaded = loaded_or_refused(load_policies_here, _write(doc), PolicyError)
    for p in (loaded or {}).values():
        assert isinstance(p, Policy) and p.kind in policies.KINDS
        assert p.when.dataset is None or isinstance(p.when.dataset, str)
        assert p.when.alert_segment is None or isinstance(p.when.alert_segment, str)
        if known and p.when.dataset is not None:
            assert p.when.dataset in KNOWN_DATASETS


def test_the_worked_example_loads() -> None:
    assert set(load_policies(_write(VALID), KNOWN_DATASETS, KNOWN_TARGETS)) == set(VALID["policies"])


@BUDGET
def test_a_policy_file_broken_in_one_place_is_refused_by_file_and_key_or_is_valid(examples: int) -> None:
    fuzz(st.tuples(mutations(VALID, KEYS), st.booleans()), _check, examples)


@BUDGET
def test_any_yaml_structure_as_a_policy_file_is_refused_by_file_and_key(examples: int) -> None:
    docs = st.fixed_dictionaries({"policies": st.dictionaries(st.text(max_size=6), values(KEYS), max_size=3)})
    fuzz(st.tuples(docs | values(KEYS), st.booleans()), _check, examples)
