"""TE path, failing loudly (GPU + TE):

- a high-precision wgrad reads x through the storage's `prepare_for_saving`, which TE passes to
  `ctx.save_for_backward`, so changing x in place after the forward raises (as in QuartetLinear
  and nn.Linear) instead of giving the weight gradient of another input;
- a malformed rotation state is refused at load, naming the entry, before any entry is loaded.
"""
from __future__ import annotations

import pytest
import torch

from quartet_te import NVFP4Recipe, Quartet2Recipe
from te_helpers import fresh_recipe, needs_te_gpu

pytestmark = needs_te_gpu


@pytest.mark.parametrize("recipe", [Quartet2Recipe(high_precision_gemms=("wgrad",)),
                                    NVFP4Recipe(high_precision_gemms=("wgrad",))], ids=["quartet2", "nvfp4_sr"])
def test_input_changed_in_place_before_a_high_precision_wgrad_raises(recipe):
    import transformer_engine.pytorch as te

    torch.manual_seed(0)
    layer = te.Linear(256, 128, bias=False, params_dtype=torch.bfloat16, device="cuda", name="blk.proj")
    x = torch.randn(128, 256, device="cuda", dtype=torch.bfloat16)
    with te.autocast(enabled=True, recipe=fresh_recipe(recipe)):
        y = layer(x)
    x.add_(torch.randn_like(x))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.float().sum().backward()


def test_malformed_rotation_state_is_refused_before_anything_loads():
    import transformer_engine.pytorch as te

    import quartet_te.te as qte

    torch.manual_seed(0)
    mlp = te.LayerNormMLP(256, 512, params_dtype=torch.bfloat16, device="cuda", name="blk.mlp")
    x = torch.randn(128, 256, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad(), te.autocast(enabled=True, recipe=fresh_recipe()):
        mlp(x)  # builds the quantizers
    state = qte.rotation_state_dict(mlp)
    assert len(state) >= 2
    bad = {key: dict(value, step=7) for key, value in state.items()}
    last = sorted(bad)[-1]
    bad[last]["step"] = -1
    with pytest.raises(ValueError, match=rf"rotation state {last!r}: rotation state 'step' must be in \[0, "):
        qte.load_rotation_state_dict(mlp, bad)
    assert qte.rotation_state_dict(mlp) == state  # no entry was loaded
