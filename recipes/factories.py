"""Transformer Engine `CustomRecipe` quantizer factories for the Quartet II and NVFP4 recipes.

TE calls a factory once per tensor slot of every module (forward slots and backward slots, at
the module's first forward under the recipe) with a `QuantizerRole(module_type, tensor_type,
name)`, and keeps the returned quantizers for the rest of training. Per-role dispatch
(`quartet_te.te.roles.slot_kind`):

* ``linear`` / ``grouped_linear`` ``input``  -> forward quantizer (4/6 RTN along K; baseline:
  1x16 RTN plus the RHT-16 column-wise copy)
* ``linear`` / ``grouped_linear`` ``weight`` -> forward quantizer (4/6 RTN; baseline: 16x16)
* ``linear`` / ``grouped_linear`` ``grad_output`` -> the layer's backward quantizer, owning its
  `RotationState` (seed derived from the recipe seed and the module name)
* everything else (outputs, grad-inputs, attention, ``None``), and modules named in ``skip``
  -> TE's ``IdentityQuantizer`` (high precision)

Usage::

    import transformer_engine.pytorch as te
    from transformer_engine.common.recipe import CustomRecipe
    from quartet_te.recipes.factories import quartet2_factory

    with te.autocast(recipe=CustomRecipe(qfactory=quartet2_factory)):
        y = model(x)

or simply ``with quartet_te.te.autocast(): ...``. Megatron-LM, with no code change:
``--fp4-format e2m1 --fp4-recipe custom --fp4-quantizer-factory
quartet_te.recipes.factories.quartet2_factory`` (and ``...nvfp4_sr_factory`` for the baseline).

Importing this module does not import Transformer Engine; calling a factory does.
"""
from __future__ import annotations

from typing import Any, Iterable

from .config import NVFP4Recipe, Quartet2Recipe, Recipe, get_recipe


class QuantizerFactory:
    """A TE `qfactory` for one recipe: callable on a `QuantizerRole`, returns a quantizer.

    Factories compare equal (and hash alike) when their recipe and `skip` are equal, so a fresh
    `CustomRecipe(qfactory=QuantizerFactory(r))` per step (as Megatron builds one) still matches
    the recipe TE initialized a module with, and TE keeps the module's quantizers (and their
    rotation state) instead of rebuilding them. Pickles as (recipe, skip), which TE's checkpoint
    extra state stores.

    Args:
        recipe: a `Quartet2Recipe`, an `NVFP4Recipe`, or a preset name ("quartet2", "nvfp4-sr", ...).
        skip: module names kept in high precision (TE's `name=`: exact, or a dotted suffix).
    """

    def __init__(self, recipe: "str | Recipe" = "quartet2", *, skip: Iterable[str] = ()) -> None:
        from quartet_te.te.roles import check_skip

        self.recipe = get_recipe(recipe)
        self.skip = check_skip(skip)
        self._ordinals: dict[str, int] = {}

    def __call__(self, role: Any) -> Any:
        """The quantizer for one TE tensor slot (see the module docstring for the dispatch)."""
        from quartet_te.rotation import RotationState, layer_seed
        from quartet_te.te.roles import RoleFields, SlotKind, rotation_key, slot_kind

        kind = slot_kind(role, self.skip)
        te_quantizer = _quantizer_module()
        if kind is SlotKind.PASSTHROUGH:
            return te_quantizer.IdentityQuantizer()
        name = RoleFields.of(role).name
        if kind is SlotKind.GRAD_OUTPUT:
            ordinal = self._ordinals.get(name, 0)
            self._ordinals[name] = ordinal + 1
            seed = layer_seed(self.recipe.seed, rotation_key(name, ordinal))
        else:
            seed = layer_seed(self.recipe.seed, name)
        return te_quantizer.make_quantizer(kind, self.recipe, RotationState(seed))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QuantizerFactory):
            return NotImplemented
        return (self.recipe, self.skip) == (other.recipe, other.skip)

    def __hash__(self) -> int:
        return hash((self.recipe, self.skip))

    def __reduce__(self):
        return (_rebuild, (self.recipe, self.skip))

    def __repr__(self) -> str:
        skip = f", skip={self.skip}" if self.skip else ""
        return f"QuantizerFactory({self.recipe!r}{skip})"


def _rebuild(recipe: Recipe, skip: tuple[str, ...]) -> QuantizerFactory:
    return QuantizerFactory(recipe, skip=skip)


def _quantizer_module():
    """`quartet_te.te.quantizer` (imports TE, installs the TE adapters once)."""
    from quartet_te.te import require_te

    require_te()
    from quartet_te.te import compat, quantizer

    compat.install()
    return quantizer


def make_factory(recipe: "str | Recipe" = "quartet2", *, skip: Iterable[str] = ()) -> QuantizerFactory:
    """A factory for `recipe` (a recipe object or preset name), keeping `skip` in high precision."""
    return QuantizerFactory(recipe, skip=skip)


# Stable dotted paths (Megatron's --fp4-quantizer-factory), named after the presets.
quartet2_factory = QuantizerFactory(Quartet2Recipe())
quartet2_rot_factory = QuantizerFactory(Quartet2Recipe(forward_rotation=True))
nvfp4_sr_factory = QuantizerFactory(NVFP4Recipe())

# Renamed factories: old name -> (new name, the release that removes the old one).
_DEPRECATED = {"nvfp4_factory": ("nvfp4_sr_factory", "0.2.0")}


def __getattr__(name: str) -> Any:
    """The deprecated aliases of `_DEPRECATED`, with a FutureWarning."""
    if name in _DEPRECATED:
        import warnings

        new, removal = _DEPRECATED[name]
        warnings.warn(
            f"quartet_te.recipes.factories.{name} is deprecated and will be removed in quartet-te {removal}: "
            f"use {new} (the recipe is named 'nvfp4-sr' on every path)",
            FutureWarning,
            stacklevel=2,
        )
        return globals()[new]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["QuantizerFactory", "make_factory", "nvfp4_sr_factory", "quartet2_factory", "quartet2_rot_factory"]
