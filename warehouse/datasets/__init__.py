"""Curation and the versioned dataset registry: landed inferences and feedback become SFT, preference, KTO and
eval datasets (recipes -> kinds -> steps -> versions -> exports). See the README's "Datasets" section."""

from flywheel.warehouse.datasets.api import diff, load, pull, to_hf
from flywheel.warehouse.datasets.curation import CurationError, CurationResult, curate
from flywheel.warehouse.datasets.recipes import Recipe, RecipeError, find_recipe, load_recipe, recipe_files
from flywheel.warehouse.datasets.registry import DatasetNotFound, Registry, VersionInfo
from flywheel.warehouse.datasets.settings import DatasetSettings

__all__ = ["CurationError", "CurationResult", "DatasetNotFound", "DatasetSettings", "Recipe", "RecipeError",
           "Registry", "VersionInfo", "curate", "diff", "find_recipe", "load", "load_recipe", "pull",
           "recipe_files", "to_hf"]
