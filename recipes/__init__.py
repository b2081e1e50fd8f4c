"""Quartet II and NVFP4-baseline recipes (installed as `quartet_te.recipes`)."""
from .config import DEPRECATED_NAMES, GEMMS, RECIPE_NAMES, NVFP4Recipe, Quartet2Recipe, Recipe, get_recipe

__all__ = ["DEPRECATED_NAMES", "GEMMS", "RECIPE_NAMES", "NVFP4Recipe", "Quartet2Recipe", "Recipe", "get_recipe"]
