"""Hostile recipe files: whatever YAML a recipe file holds, loading it returns a valid recipe or fails with a
`RecipeError` naming the file and the key, never a raw KeyError, TypeError, ValueError or AttributeError.
A quick run of each property is in `make test`; a deep one in the reliability tier."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st

from flywheel.infra.testing.hostile import BUDGET, fuzz, mutations, values
from flywheel.warehouse.datasets.recipes import Recipe, RecipeError, load_recipe

RECIPES = Path(__file__).resolve().parents[3] / "infra" / "recipes"
VALID = {p.stem: yaml.safe_load(p.read_text(encoding="utf-8")) for p in sorted(RECIPES.glob("*.yaml"))}
KEYS = ("name", "kind", "source", "feedback", "steps", "splits", "eval", "exports", "since", "until", "app",
        "min_rating", "precedence", "length", "min_chars", "pii", "near_dedupe", "fractions", "by", "train", "test",
        "per_stratum", "failure_share")
_DIR = Path(tempfile.mkdtemp(prefix="recipe-fuzz-"))


def _check(doc: Any) -> None:
    path = _DIR / "recipe.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    try:
        recipe = load_recipe(path)
    except RecipeError as exc:
        assert exc.path == str(path) and str(path) in str(exc), exc
        assert exc.key or not isinstance(doc, dict), f"no key named: {exc}"  # only the whole document has none
        return
    except Exception as exc:  # noqa: BLE001 -- the test is about which exceptions escape
        raise AssertionError(f"{type(exc).__name__} escaped load_recipe: {exc!r}") from exc
    assert isinstance(recipe, Recipe)
    json.dumps(recipe.to_json(), allow_nan=False)  # what the manifest keeps: plain JSON, every number finite
    assert recipe.sha256
    for frac in (recipe.feedback.min_rating, recipe.eval.failure_share, *(f for _, f in recipe.splits.fractions)):
        assert math.isfinite(frac) and 0 <= frac <= 1


def test_the_bundled_recipes_load() -> None:
    assert {load_recipe(p).name for p in RECIPES.glob("*.yaml")} == {d["name"] for d in VALID.values()}


@BUDGET
def test_a_recipe_broken_in_one_place_is_refused_by_file_and_key_or_is_valid(examples: int) -> None:
    fuzz(st.sampled_from(sorted(VALID)).flatmap(lambda n: mutations(VALID[n], KEYS)), _check, examples)


@BUDGET
def test_any_yaml_structure_as_a_recipe_is_refused_by_file_and_key(examples: int) -> None:
    fuzz(values(KEYS), _check, examples)


@BUDGET
def test_any_text_as_a_recipe_file_is_refused_naming_the_file(examples: int) -> None:
    def check(text: str) -> None:
        path = _DIR / "text.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            load_recipe(path)
        except RecipeError as exc:
            assert str(path) in str(exc)

    fuzz(st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")), check, examples)
