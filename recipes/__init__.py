"""Quartet II and NVFP4-baseline recipes (installed as `quartet_te.recipes`)."""
from .config import GEMMS, RECIPE_NAMES, NVFP4Recipe, Quartet2Recipe, Recipe, get_recipe

__all__ = ["GEMMS", "RECIPE_NAMES", "NVFP4Recipe", "Quartet2Recipe", "Recipe", "get_recipe"]
