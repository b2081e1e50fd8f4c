"""Transformer Engine support: Quartet II and the NVFP4 baseline as TE `CustomRecipe`s.

    import quartet_te.te as qte
    with qte.autocast():                      # Quartet II defaults
        loss = model(x).sum()                 # te.Linear / LayerNormLinear / LayerNormMLP /
    loss.backward()                           # GroupedLinear / TransformerLayer
    with qte.autocast(recipe="nvfp4-sr"): ... # NVIDIA's recipe, on Hopper too

Importing this package does not import Transformer Engine; `autocast`, `custom_recipe` and the
factories do, and raise an ImportError naming `transformer_engine` when it is missing. The
factories themselves live in `quartet_te.recipes.factories`; the quantizers, storages and
`qgemm` in `quartet_te.te.quantizer` (the numerics in `operands`, which needs no TE).
"""
from .api import (
    autocast,
    custom_recipe,
    is_available,
    load_rotation_state_dict,
    require_te,
    rotation_state_dict,
)
from .roles import SlotKind, slot_kind

__all__ = [
    "SlotKind",
    "autocast",
    "custom_recipe",
    "is_available",
    "load_rotation_state_dict",
    "require_te",
    "rotation_state_dict",
    "slot_kind",
]
