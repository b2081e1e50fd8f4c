"""Megatron's local (non-TE) tensor-parallel linears, running the Quartet II linear on their shard.

`ColumnParallelLinear` and `RowParallelLinear` (megatron-core 0.16.1 to 0.20) do their
tensor-parallel communication around one method, `_forward_impl(input=..., weight=..., bias=...,
allreduce_dgrad=..., sequence_parallel=..., tp_group=..., ...)`, which Megatron points at its
fused GEMM + async-communication autograd function. We override that method and nothing else:

- column-parallel: Megatron's function also owns the input-side communication (all-gather of a
  sequence-parallel input, all-reduce of its gradient). We express it with Megatron's own mapping
  ops (`gather_from_sequence_parallel_region`, `copy_to_tensor_model_parallel_region`) and then
  call `quartet_linear` on the local shard `y_i = x W_iᵀ`.
- row-parallel: `_forward_impl` is called without communication (`tp_group=None`); the layer's
  forward reduces the partial outputs afterwards, as before.

Randomness: each layer owns a `RotationState` seeded by `layer_seed(recipe.seed, name)` with a
global, rank-free name (`layer{L}.self_attention.linear_qkv`, bound by `layers.name_layer`), so
TP ranks that share an inner dimension draw the same signs and a PP=2 run draws the same as PP=1.
The state travels in the state dict as the layer's `_extra_state`.

Not supported on this path (Megatron's path is used instead, or an error names it): frozen
weights (Megatron's frozen-weight function runs, in high precision), GTP weight sharding.
`gradient_accumulation_fusion` is ignored: the weight gradient is returned as `.grad` and
Megatron's DDP adds it to `main_grad`.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
from megatron.core.tensor_parallel.mappings import (
    copy_to_tensor_model_parallel_region,
    gather_from_sequence_parallel_region,
)

from quartet_te.linear import check_shapes, quartet_linear
from quartet_te.rotation import RotationState, layer_seed

from .registry import MEGATRON_RECIPES, quartet_recipe

__all__ = ["QuartetColumnParallelLinear", "QuartetParallelLinearMixin", "QuartetRowParallelLinear"]

_EXTRA_KEY = "quartet_te"


class QuartetParallelLinearMixin:
    """Quartet II / NVFP4 `_forward_impl` for Megatron's parallel linears (see module docstring).

    A layer is *active* when the config selects one of our recipes and `bind_quartet` gave it a
    name; `bind_quartet(..., enabled=False)` (BF16 first/last layers) makes it a plain layer.
    """

    config: Any
    weight: torch.nn.Parameter

    def _init_quartet(self) -> None:
        self.quartet_recipe = quartet_recipe(self.config)
        if self.quartet_recipe is None and getattr(self.config, "fp4", None):
            raise ValueError(
                f"fp4_recipe={self.config.fp4_recipe!r} has no implementation in Megatron's local "
                f"layers (Megatron runs it only through Transformer Engine); local layers run "
                f"ours: {sorted(MEGATRON_RECIPES)} ('nvfp4-sr' is our NVIDIA-style baseline)"
            )
        self.quartet_name: Optional[str] = None
        self.quartet_rotation: Optional[RotationState] = None

    @property
    def quartet_active(self) -> bool:
        """True if the forward runs the quantized linear."""
        return self.quartet_recipe is not None

    def bind_quartet(self, name: str, enabled: bool = True) -> None:
        """Give the layer its global name (hence its seed), or turn quantization off.

        Raises ValueError if the local shard's dims cannot run under the recipe.
        """
        if self.quartet_recipe is None:
            return
        if not enabled:
            self.quartet_recipe = None
            return
        out_local, in_local = self.weight.shape
        check_shapes(self.quartet_recipe, in_local, out_local, f"{name} (local shard)")
        self.quartet_name = name
        self.quartet_rotation = RotationState(layer_seed(self.quartet_recipe.seed, name))

    def _forward_impl(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        weight = kwargs.get("weight", args[1] if len(args) > 1 else None)
        if self.quartet_recipe is None or weight is None or not weight.requires_grad:
            return super()._forward_impl(*args, **kwargs)  # type: ignore[misc]
        if args:
            raise TypeError("quartet_te expects Megatron to call _forward_impl with keyword arguments")
        if self.quartet_rotation is None:
            raise RuntimeError(
                f"{type(self).__name__} runs {self.quartet_recipe.name} but has no name/seed: build it "
                "through quartet_te.integration.megatron.quartet_layer_spec (QuartetTransformerLayer) "
                "or call name_layers(model) before the first forward"
            )
        if kwargs.get("gtp_remat_size", 1) > 1:
            raise NotImplementedError("quartet_te's local linear does not support GTP weight sharding")
        x = kwargs["input"]
        group = kwargs.get("tp_group")
        if kwargs.get("sequence_parallel", False):
            x = gather_from_sequence_parallel_region(x, tensor_parallel_output_grad=True, group=group)
        elif kwargs.get("allreduce_dgrad", False):
            x = copy_to_tensor_model_parallel_region(x, group=group)
        return quartet_linear(x, weight, kwargs.get("bias"), self.quartet_recipe, self.quartet_rotation)

    def get_extra_state(self) -> Optional[dict]:
        """The rotation state (seed, step), so a checkpoint resumes the same random stream."""
        if self.quartet_rotation is None:
            return None
        return {_EXTRA_KEY: {"name": self.quartet_name, **self.quartet_rotation.state_dict()}}

    def set_extra_state(self, state: Any) -> None:
        """Restore the rotation state; checkpoints without one (BF16 runs) leave it as is.

        ValueError / TypeError for a malformed quartet_te entry (checked at load, not at a
        later backward)."""
        if not isinstance(state, dict) or _EXTRA_KEY not in state:
            return
        saved = state[_EXTRA_KEY]
        if not isinstance(saved, dict) or not {"seed", "step"} <= set(saved):
            raise ValueError(
                f"{type(self).__name__} {self.quartet_name!r}: malformed quartet_te extra state {saved!r}; "
                "expected a dict with 'name', 'seed' and 'step' (as get_extra_state writes)"
            )
        if self.quartet_rotation is None:
            raise RuntimeError(
                f"checkpoint holds a quartet_te rotation state for {saved.get('name')!r} "
                "but this layer is not quantized (different --fp4-recipe or BF16 layers?)"
            )
        self.quartet_rotation.load_state_dict({"seed": saved["seed"], "step": saved["step"]})


class QuartetColumnParallelLinear(QuartetParallelLinearMixin, ColumnParallelLinear):
    """`ColumnParallelLinear` whose shard GEMMs run under our recipe when the config selects it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_quartet()


class QuartetRowParallelLinear(QuartetParallelLinearMixin, RowParallelLinear):
    """`RowParallelLinear` whose shard GEMMs run under our recipe when the config selects it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_quartet()
