"""`eval.output_format` in a recipe file: read from YAML, kept in `to_json()` (what the manifest holds), and a value
other than `text` or `json` refused on load with the file, the key and the values allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from flywheel.warehouse.datasets.recipes import OUTPUT_FORMATS, RecipeError, load_recipe
from flywheel.warehouse.evaluation.metrics import OUTPUT_FORMATS as SCORED_FORMATS

EVAL_RECIPE = """name: orders-eval
kind: eval
eval:
  stratify_by: app
  per_stratum: 20
{line}
"""


def _write(tmp_path: Path, line: str) -> Path:
    path = tmp_path / "orders-eval.yaml"
    path.write_text(EVAL_RECIPE.format(line=line), encoding="utf-8")
    return path


def test_output_format_is_read_and_kept_in_the_manifest_json(tmp_path: Path) -> None:
    recipe = load_recipe(_write(tmp_path, "  output_format: json"))
    assert recipe.eval.output_format == "json"
    assert recipe.to_json()["eval"]["output_format"] == "json"
    default = load_recipe(_write(tmp_path, ""))
    assert default.eval.output_format == "text" and default.to_json()["eval"]["output_format"] == "text"
    assert default.sha256 != recipe.sha256  # the recipe's fingerprint sees the format


@pytest.mark.parametrize("value", ["xml", "JSON", "1", "[json]", "''", "null"])
def test_an_unknown_output_format_names_the_file_the_key_and_the_allowed_values(tmp_path: Path,
                                                                                value: str) -> None:
    path = _write(tmp_path, f"  output_format: {value}")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert err.value.key == "eval.output_format" and err.value.path == str(path)
    assert str(err.value).startswith(f"{path}: `eval.output_format`: ") and "is not one of text, json" in str(err.value)


def test_only_an_eval_recipe_takes_an_output_format(tmp_path: Path) -> None:
    path = tmp_path / "sft.yaml"
    path.write_text("name: s\nkind: sft\neval: {output_format: json}\n", encoding="utf-8")
    with pytest.raises(RecipeError, match="only an eval recipe samples") as err:
        load_recipe(path)
    assert err.value.key == "eval"


def test_the_recipe_and_the_scorer_agree_on_the_formats() -> None:
    # datasets may not import evaluation (tests/test_architecture.py): the two lists are kept equal here
    assert OUTPUT_FORMATS == SCORED_FORMATS
