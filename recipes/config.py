"""Recipe configurations: frozen dataclasses, validated on construction.

The same objects drive every path: `quartet_te.convert` (plain PyTorch), the TE factory
(`quartet_te.recipes.factories`) and Megatron (`quartet_te.integration.megatron`), under the
same preset names everywhere (`RECIPE_NAMES`).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field, fields

GEMMS = ("fprop", "dgrad", "wgrad")

# Renamed presets: old name -> (new name, the release that removes the old one).
DEPRECATED_NAMES = {"nvfp4": ("nvfp4-sr", "0.2.0")}


def _check_gemms(value: tuple[str, ...]) -> tuple[str, ...]:
    if isinstance(value, str):
        raise TypeError(f"high_precision_gemms must be a tuple of GEMM names, not the str {value!r}; "
                        f"e.g. ({value!r},)")
    value = tuple(value)
    bad = [g for g in value if g not in GEMMS]
    if bad:
        raise ValueError(f"high_precision_gemms: unknown GEMM(s) {bad}; expected a subset of {GEMMS}")
    return value


def _check_seed(seed: int, owner: str) -> None:
    # bool is an int subclass: seed=True would silently mean seed 1
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"{owner}.seed must be an int, got {type(seed).__name__} {seed!r}")
    if not 0 <= seed < 2**63:
        raise ValueError(f"{owner}.seed must be a non-negative int below 2**63, got {seed!r}")


def _check_flags(recipe: object) -> None:
    """Every bool-typed field must hold a real bool ("false" is truthy; 0/1 hide typos)."""
    for f in fields(recipe):
        value = getattr(recipe, f.name)
        if f.type in ("bool", bool) and not isinstance(value, bool):
            raise TypeError(
                f"{type(recipe).__name__}.{f.name} must be True or False, got {type(value).__name__} {value!r}"
            )


def _validate(recipe: "Recipe") -> None:
    """Shared `__post_init__` checks; also sets the derived `name` (frozen: via object.__setattr__)."""
    _check_flags(recipe)
    object.__setattr__(recipe, "high_precision_gemms", _check_gemms(recipe.high_precision_gemms))
    _check_seed(recipe.seed, type(recipe).__name__)
    object.__setattr__(recipe, "name", recipe.preset_name())


@dataclass(frozen=True)
class Quartet2Recipe:
    """Quartet II (arXiv 2601.22813): NVFP4 forward by RTN with "Four over Six" block scales,
    backward by MS-EDEN (random Hadamard rotation + EDEN correction + stochastic scale rounding),
    re-quantizing the saved FP4 weight and input.

    Args:
        four_over_six: choose per block between mapping the max to 6 or to 4 (forward).
        forward_rotation: rotate x and W along K by a fixed RHT-128 before the forward quantizer.
        backward_quant: quantize the backward GEMMs with MS-EDEN (False: BF16/FP32 backward from
            the saved FP4 operands).
        high_precision_gemms: GEMMs (subset of "fprop", "dgrad", "wgrad") kept in high precision.
        seed: base seed; each layer derives its own from it and the layer's name.

    `name` (derived, not an argument) is the preset the technique flags match: "quartet2",
    "quartet2-rot" (forward_rotation), "quartet2-no46" (no four_over_six), "quartet2-rot-no46".
    """

    four_over_six: bool = True
    forward_rotation: bool = False
    backward_quant: bool = True
    high_precision_gemms: tuple[str, ...] = ()
    seed: int = 0
    name: str = field(default="quartet2", init=False, compare=False)

    def __post_init__(self) -> None:
        _validate(self)

    def preset_name(self) -> str:
        """The preset name of this recipe's technique flags (see the class docstring)."""
        return "quartet2" + ("-rot" if self.forward_rotation else "") + ("" if self.four_over_six else "-no46")

    def __setstate__(self, state: dict) -> None:  # pickles from before `name` was derived
        self.__dict__.update(state)
        object.__setattr__(self, "name", self.preset_name())


@dataclass(frozen=True)
class NVFP4Recipe:
    """NVIDIA's NVFP4 training recipe (TE `NVFP4BlockScaling`), reimplemented for A/B runs on
    any GPU: 1×16 RTN activations, 16×16 2-D weight blocks, element-wise stochastic rounding of
    gradients, a fixed 16-point RHT on the wgrad operands. Preset name "nvfp4-sr" on every path
    (Megatron's own "nvfp4" is TE's `NVFP4BlockScaling`, which needs Blackwell).

    Args:
        weight_2d: 16×16 block scales for weights (else 1×16 RTN re-quantized for dgrad).
        stochastic_rounding: SR for gradients (else RTN).
        wgrad_rht: the fixed 16-point random Hadamard transform along the tokens in wgrad.
        high_precision_gemms: GEMMs kept in high precision.
        seed: base seed, as for Quartet II.
    """

    weight_2d: bool = True
    stochastic_rounding: bool = True
    wgrad_rht: bool = True
    high_precision_gemms: tuple[str, ...] = ()
    seed: int = 0
    name: str = field(default="nvfp4-sr", init=False, compare=False)

    def __post_init__(self) -> None:
        _validate(self)

    def preset_name(self) -> str:
        """Always "nvfp4-sr" (the options show in the repr)."""
        return "nvfp4-sr"

    def __setstate__(self, state: dict) -> None:  # pickles that still say name="nvfp4"
        self.__dict__.update(state)
        object.__setattr__(self, "name", self.preset_name())


Recipe = Quartet2Recipe | NVFP4Recipe

_PRESETS = {
    "quartet2": lambda **kw: Quartet2Recipe(**kw),
    "quartet2-rot": lambda **kw: Quartet2Recipe(forward_rotation=True, **kw),
    "quartet2-no46": lambda **kw: Quartet2Recipe(four_over_six=False, **kw),
    "nvfp4-sr": lambda **kw: NVFP4Recipe(**kw),
}
RECIPE_NAMES = tuple(_PRESETS)


def get_recipe(recipe: "str | Recipe", **overrides) -> Recipe:
    """A recipe from a preset name (`RECIPE_NAMES`: "quartet2", "quartet2-rot", "quartet2-no46",
    "nvfp4-sr") or an existing recipe object (returned as is; overrides are then not allowed).

    The old name "nvfp4" still gives `NVFP4Recipe`, with a FutureWarning: it is removed in
    quartet-te 0.2.0 (`DEPRECATED_NAMES`).
    """
    if isinstance(recipe, (Quartet2Recipe, NVFP4Recipe)):
        if overrides:
            raise ValueError("overrides are only accepted with a recipe name")
        return recipe
    if not isinstance(recipe, str):
        raise TypeError(
            f"recipe must be a preset name {RECIPE_NAMES} or a Quartet2Recipe / NVFP4Recipe, "
            f"got {type(recipe).__name__} {recipe!r}"
        )
    if recipe in DEPRECATED_NAMES:
        new, removal = DEPRECATED_NAMES[recipe]
        warnings.warn(
            f"recipe name {recipe!r} is deprecated and will be removed in quartet-te {removal}: use {new!r} "
            f"(the name on every path; Megatron's own fp4_recipe={recipe!r} is TE's NVFP4BlockScaling)",
            FutureWarning,
            stacklevel=3,
        )
        recipe = new
    if recipe not in _PRESETS:
        raise ValueError(f"unknown recipe {recipe!r}; expected one of {RECIPE_NAMES} or a recipe object")
    return _PRESETS[recipe](**overrides)
