"""Layer specs and names: what makes a Megatron GPT run our recipe layer by layer.

- `quartet_layer_spec(spec)`: any GPT layer/block spec (local or TE) with `TransformerLayer`
  replaced by `QuartetTransformerLayer` and, in local specs, the parallel linears by our
  subclasses. Nothing else changes (norms, attention, the BF16 output layer).
- `check_layer_quantized(layer)`: after `register()`, every `TransformerLayer` checks that its
  GEMMs run the selected recipe, so Megatron's own local spec fails loudly instead of training
  in BF16.
- `name_layer(layer, config)` / `name_layers(model)`: give every linear of a transformer layer a
  global, rank-free name `layer{L}.<path>` (L = the global 0-based layer number, the same on
  every TP rank and for PP=1 and PP=2). Local linears derive their rotation seed from it and
  switch off in the `--first-last-layers-bf16` layers; TE modules get it as their `name`, which
  TE hands to our quantizer factory as `QuantizerRole.name` (Megatron passes none itself).

Usage::

    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    spec = quartet_layer_spec(get_gpt_layer_local_spec())
    model = GPTModel(config, transformer_layer_spec=spec, ...)
"""
from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any

import torch
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_layer import TransformerLayer

from .local_linear import (
    QuartetColumnParallelLinear,
    QuartetParallelLinearMixin,
    QuartetRowParallelLinear,
)

__all__ = [
    "QuartetTransformerLayer",
    "check_layer_quantized",
    "install_layer_check",
    "layer_in_bf16",
    "name_layer",
    "name_layers",
    "quartet_layer_spec",
]


def layer_in_bf16(config: Any, layer_no: int) -> bool:
    """True if global 0-based layer `layer_no` stays in high precision (`--first-last-layers-bf16`).

    The same rule as megatron's `get_fp4_context`.
    """
    if not getattr(config, "first_last_layers_bf16", False):
        return False
    start = config.num_layers_at_start_in_bf16
    end = config.num_layers_at_end_in_bf16
    return layer_no < start or layer_no >= config.num_layers - end


# TE names unnamed modules "Layer_<n>" by construction count (TransformerEngineBaseModule.
# _validate_name): process-wide, so it differs between PP stages and between rebuilt models.
_TE_DEFAULT_NAME = re.compile(r"Layer_\d+")


def _te_base_class() -> type | None:
    try:
        from transformer_engine.pytorch.module.base import TransformerEngineBaseModule
    except ImportError:
        return None
    return TransformerEngineBaseModule


def name_layer(layer: torch.nn.Module, config: Any) -> int:
    """Name (and for local linears: seed or disable) every linear of one transformer layer.

    Returns how many linears were named. TE modules keep a name given by the user; TE's own
    default ("Layer_<n>") is replaced.
    """
    layer_no = int(layer.layer_number) - 1
    bf16 = layer_in_bf16(config, layer_no)
    te_base = _te_base_class()
    count = 0
    for rel, sub in layer.named_modules():
        if not rel:
            continue
        name = f"layer{layer_no}.{rel}"
        if isinstance(sub, QuartetParallelLinearMixin):
            sub.bind_quartet(name, enabled=not bf16)
            count += 1
        elif te_base is not None and isinstance(sub, te_base):
            current = getattr(sub, "name", None)
            if not current or _TE_DEFAULT_NAME.fullmatch(current):
                sub.name = name
                count += 1
    return count


def name_layers(model: torch.nn.Module) -> int:
    """`name_layer` for every `TransformerLayer` in `model` (any spec); returns linears named.

    Needed for TE specs built without `quartet_layer_spec`; call it before the first forward.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, TransformerLayer):
            count += name_layer(module, module.config)
    return count


def _grouped_mlp_class() -> type | None:
    try:
        from megatron.core.transformer.moe.experts import GroupedMLP
    except ImportError:
        return None
    return GroupedMLP


def check_layer_quantized(layer: TransformerLayer) -> None:
    """Raise ValueError if the config runs one of our recipes but a GEMM of `layer` would ignore
    it and train in high precision without a word.

    Megatron's local `ColumnParallelLinear` / `RowParallelLinear` never quantize (Megatron
    quantizes only through TE): a layer from `get_gpt_layer_local_spec()` needs
    `quartet_layer_spec`, which swaps them for our subclasses. Layers kept in BF16
    (`--first-last-layers-bf16`) and TE layers pass.
    """
    from .registry import quartet_recipe

    config = layer.config
    recipe = quartet_recipe(config)
    if recipe is None or layer_in_bf16(config, int(layer.layer_number) - 1):
        return
    grouped = _grouped_mlp_class()
    plain, grouped_names = [], []
    for rel, sub in layer.named_modules():
        local = isinstance(sub, (ColumnParallelLinear, RowParallelLinear))
        if local and not isinstance(sub, QuartetParallelLinearMixin):
            plain.append(rel)
        elif grouped is not None and isinstance(sub, grouped):
            grouped_names.append(rel)
    where = f"transformer layer {int(layer.layer_number) - 1} (fp4_recipe={recipe.name!r})"
    if plain:
        raise ValueError(
            f"{where}: Megatron's local linears {plain} ignore fp4_recipe and would train in high "
            "precision. Build the spec with quartet_te.integration.megatron.quartet_layer_spec, e.g. "
            "quartet_layer_spec(get_gpt_layer_local_spec()), or use the TE spec"
        )
    if grouped_names:
        raise ValueError(
            f"{where}: {grouped_names} are Megatron's GroupedMLP (moe_grouped_gemm with the local spec), "
            "whose expert GEMMs quartet_te does not quantize: use the TE spec (TEGroupedMLP) or "
            "moe_grouped_gemm=False with quartet_layer_spec"
        )


def install_layer_check() -> None:
    """Run `check_layer_quantized` at the end of every `TransformerLayer.__init__` (idempotent;
    `register()` calls it)."""
    original = TransformerLayer.__init__
    if getattr(original, "__quartet_te__", False):
        return

    @functools.wraps(original)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        check_layer_quantized(self)

    __init__.__quartet_te__ = True  # type: ignore[attr-defined]
    TransformerLayer.__init__ = __init__


class QuartetTransformerLayer(TransformerLayer):
    """`TransformerLayer` that names its linears on construction (see `name_layer`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        name_layer(self, self.config)


_SWAPS: dict[type, type] = {
    TransformerLayer: QuartetTransformerLayer,
    ColumnParallelLinear: QuartetColumnParallelLinear,
    RowParallelLinear: QuartetRowParallelLinear,
}


def _swap(obj: Any) -> Any:
    if isinstance(obj, type):
        return _SWAPS.get(obj, obj)
    if isinstance(obj, ModuleSpec):
        return dataclasses.replace(obj, module=_swap(obj.module), submodules=_swap(obj.submodules))
    if isinstance(obj, list):
        return [_swap(o) for o in obj]
    if isinstance(obj, tuple):
        return tuple(_swap(o) for o in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {f.name: _swap(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
        return dataclasses.replace(obj, **changes)
    return obj


def quartet_layer_spec(spec: Any) -> Any:
    """A copy of a GPT layer spec (or block spec) that runs our recipe (see module docstring).

    The recipe itself is chosen by the config (`fp4="e2m1", fp4_recipe="quartet2"`): with any
    other config the returned spec builds exactly Megatron's layers.
    """
    return _swap(spec)
