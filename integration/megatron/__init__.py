"""Quartet II in Megatron-Core and Megatron-LM (installed as `quartet_te.integration.megatron`).

- `register()`: makes `fp4_recipe="quartet2"` (and "quartet2-rot", "quartet2-no46", and our
  NVIDIA-baseline "nvfp4-sr") valid for `TransformerConfig` and `get_fp4_recipe` (TE layers).
- `quartet_layer_spec(spec)`, `name_layers(model)`: per-layer names/seeds; Megatron's local
  (non-TE) `ColumnParallelLinear`/`RowParallelLinear` run the Quartet II linear too.
- `add_quartet_args`: an `extra_args_provider` for Megatron-LM's `pretrain(...)`;
  `python -m quartet_te.integration.megatron.launch pretrain_gpt.py ...` for an unmodified
  checkout. `enable_cpu_mode()` lets megatron-core run without CUDA (tests, tiny CPU runs).

Importing this package does not import megatron-core; each name imports it on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "MEGATRON_RECIPES": "registry",
    "register": "registry",
    "is_registered": "registry",
    "quartet_recipe": "registry",
    "te_recipe": "registry",
    "set_quantizer_seed": "registry",
    "quantizer_seed": "registry",
    "QuartetColumnParallelLinear": "local_linear",
    "QuartetRowParallelLinear": "local_linear",
    "QuartetTransformerLayer": "layers",
    "quartet_layer_spec": "layers",
    "name_layers": "layers",
    "add_quartet_args": "args",
    "enable_cpu_mode": "cpu",
    "cpu_device_mode": "cpu",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
