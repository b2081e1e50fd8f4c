"""Recipe configurations: frozen dataclasses, validated on construction.

The same objects drive every path: `quartet_te.convert` (plain PyTorch), the TE factory
(`quartet_te.recipes.factories`) and Megatron (`quartet_te.integration.megatron`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

GEMMS = ("fprop", "dgrad", "wgrad")


def _check_gemms(value: tuple[str, ...]) -> tuple[str, ...]:
    value = tuple(value)
    bad = [g for g in value if g not in GEMMS]
    if bad:
        raise ValueError(f"high_precision_gemms: unknown GEMM(s) {bad}; expected a subset of {GEMMS}")
    return value


def _check_seed(seed: int) -> None:
    if not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be a non-negative int below 2**63, got {seed!r}")


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
    """

    four_over_six: bool = True
    forward_rotation: bool = False
    backward_quant: bool = True
    high_precision_gemms: tuple[str, ...] = ()
    seed: int = 0
    name: str = field(default="quartet2", init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "high_precision_gemms", _check_gemms(self.high_precision_gemms))
        _check_seed(self.seed)


@dataclass(frozen=True)
class NVFP4Recipe:
    """NVIDIA's NVFP4 training recipe (TE `NVFP4BlockScaling`), reimplemented for A/B runs on
    any GPU: 1×16 RTN activations, 16×16 2-D weight blocks, element-wise stochastic rounding of
    gradients, a fixed 16-point RHT on the wgrad operands.

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
    name: str = field(default="nvfp4", init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "high_precision_gemms", _check_gemms(self.high_precision_gemms))
        _check_seed(self.seed)


Recipe = Quartet2Recipe | NVFP4Recipe

_PRESETS = {
    "quartet2": lambda **kw: Quartet2Recipe(**kw),
    "quartet2-rot": lambda **kw: Quartet2Recipe(forward_rotation=True, **kw),
    "quartet2-no46": lambda **kw: Quartet2Recipe(four_over_six=False, **kw),
    "nvfp4": lambda **kw: NVFP4Recipe(**kw),
}
RECIPE_NAMES = tuple(_PRESETS)


def get_recipe(recipe: "str | Recipe", **overrides) -> Recipe:
    """A recipe from a preset name ("quartet2", "quartet2-rot", "quartet2-no46", "nvfp4") or
    an existing recipe object (returned as is; overrides are then not allowed)."""
    if isinstance(recipe, (Quartet2Recipe, NVFP4Recipe)):
        if overrides:
            raise ValueError("overrides are only accepted with a recipe name")
        return recipe
    if not isinstance(recipe, str) or recipe not in _PRESETS:
        raise ValueError(f"unknown recipe {recipe!r}; expected one of {RECIPE_NAMES} or a recipe object")
    return _PRESETS[recipe](**overrides)
