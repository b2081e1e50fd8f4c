"""`te.Linear` under our recipes against `quartet_te.QuartetLinear` (the reference linear).

Both call the same `quartet_te.ops` functions on the same tensors with the same randomness
(layer seed from the name, one draw per backward), so outputs, input gradients and weight
gradients must agree bit for bit over several steps. The bias gradient is the one exception:
TE sums ∂L/∂y in its own BF16-input reduction, the reference in FP32 then rounds, so they may
differ by one BF16 ulp (rtol 2**-7).
"""
from __future__ import annotations

import pytest
import torch

from quartet_te import NVFP4Recipe, Quartet2Recipe, QuartetLinear
from te_helpers import fresh_recipe, needs_te_gpu, train_step

pytestmark = needs_te_gpu

RECIPES = [
    pytest.param(Quartet2Recipe(), id="quartet2"),
    pytest.param(Quartet2Recipe(forward_rotation=True), id="quartet2_rot"),
    pytest.param(Quartet2Recipe(four_over_six=False, backward_quant=False), id="quartet2_rtn_bf16bwd"),
    pytest.param(Quartet2Recipe(high_precision_gemms=("wgrad",)), id="quartet2_hp_wgrad"),
    pytest.param(NVFP4Recipe(), id="nvfp4"),
]
SHAPES = [
    pytest.param((2, 128, 256, 384), id="full_tiles_3d"),
    pytest.param((200, 256, 128), id="tokens_padded_2d"),  # M=200 is padded to 256 in wgrad
]


def _pair(recipe, k, n, bias, name="blk.proj"):
    import transformer_engine.pytorch as te

    torch.manual_seed(0)
    tl = te.Linear(k, n, bias=bias, params_dtype=torch.bfloat16, device="cuda", name=name)
    ql = QuartetLinear(k, n, bias=bias, recipe=recipe, name=name, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        ql.weight.copy_(tl.weight)
        if bias:
            tl.bias.normal_()
            ql.bias.copy_(tl.bias)
    return tl, ql


def _step(module, x, g, recipe=None, bias=False):
    """(y, ∂L/∂x, ∂L/∂W, ∂L/∂b or None) of one step."""
    y, dx, grads = train_step(module, x, g, recipe)
    return y, dx, grads["weight"], grads["bias"] if bias else None


@pytest.mark.parametrize("bias", [False, True], ids=["no_bias", "bias"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("recipe", RECIPES)
def test_linear_matches_reference(recipe, shape, bias):
    *lead, k, n = shape
    tl, ql = _pair(recipe, k, n, bias)
    te_recipe = fresh_recipe(recipe)
    gen = torch.Generator(device="cuda").manual_seed(1)
    for step in range(3):  # the rotation state advances identically in both
        x = torch.randn(*lead, k, device="cuda", dtype=torch.bfloat16, generator=gen)
        g = torch.randn(*lead, n, device="cuda", dtype=torch.bfloat16, generator=gen)
        y_te, dx_te, dw_te, db_te = _step(tl, x, g, te_recipe, bias)
        y_q, dx_q, dw_q, db_q = _step(ql, x, g, None, bias)
        assert torch.equal(y_te, y_q), f"step {step}: output differs"
        assert torch.equal(dx_te, dx_q), f"step {step}: dgrad differs"
        assert torch.equal(dw_te, dw_q), f"step {step}: wgrad differs"
        if bias:
            torch.testing.assert_close(db_te, db_q, rtol=2**-7, atol=1e-6)


def test_fused_wgrad_accumulation_reaches_main_grad():
    """With fuse_wgrad_accumulation (Megatron's default), TE 2.20's custom_gemm drops `out=`;
    our adapter must accumulate the weight gradient into `main_grad`."""
    import transformer_engine.pytorch as te

    recipe = Quartet2Recipe()
    torch.manual_seed(0)
    kw = dict(bias=False, params_dtype=torch.bfloat16, device="cuda", name="f")
    fused = te.Linear(256, 256, fuse_wgrad_accumulation=True, **kw)
    plain = te.Linear(256, 256, **kw)
    with torch.no_grad():
        plain.weight.copy_(fused.weight)
    fused.weight.main_grad = torch.zeros(256, 256, device="cuda", dtype=torch.float32)
    x = torch.randn(256, 256, device="cuda", dtype=torch.bfloat16)
    g = torch.randn(256, 256, device="cuda", dtype=torch.bfloat16)
    for module, rec in ((fused, fresh_recipe(recipe)), (plain, fresh_recipe(recipe))):
        with te.autocast(recipe=rec):
            y = module(x.clone().requires_grad_(True))
        y.backward(g)
    assert fused.weight.main_grad.abs().sum() > 0, "weight gradient was dropped"
    assert torch.equal(fused.weight.main_grad.to(torch.bfloat16), plain.weight.grad)


def test_saved_activations_are_fp4():
    """Only packed FP4 + scales of the input are saved for the backward (4x less than BF16)."""
    import transformer_engine.pytorch as te

    m, k, n = 512, 1024, 1024
    layer = te.Linear(k, n, bias=False, params_dtype=torch.bfloat16, device="cuda", name="s")
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    saved = []

    def pack(t):
        saved.append((t.dtype, t.numel()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with te.autocast(recipe=fresh_recipe()):
            y = layer(x)
    y.sum().backward()
    assert (torch.uint8, m * k // 2) in saved, f"no packed FP4 input among saved tensors {saved}"
    assert (torch.bfloat16, m * k) not in saved, "the BF16 input was saved for the backward"


@pytest.mark.parametrize("recipe", [pytest.param(Quartet2Recipe(), id="quartet2"),
                                    pytest.param(NVFP4Recipe(), id="nvfp4")])  # fmt: skip
def test_weight_cache_across_microbatches_matches_fresh_quantization(recipe):
    """Gradient accumulation as Megatron runs it: `is_first_microbatch=True` re-quantizes the
    weight into TE's cached workspace, `False` reuses it. Every micro-batch must give the bits of
    a layer that quantizes the weight afresh each time (forward quantization is deterministic),
    and the cache must follow the weight across steps (the weight changes after each step here)."""
    import transformer_engine.pytorch as te

    torch.manual_seed(0)
    kw = dict(bias=False, params_dtype=torch.bfloat16, device="cuda", name="blk.cached")
    cached, fresh = te.Linear(256, 384, **kw), te.Linear(256, 384, **kw)
    with torch.no_grad():
        fresh.weight.copy_(cached.weight)
    rec_cached, rec_fresh = fresh_recipe(recipe), fresh_recipe(recipe)
    gen = torch.Generator(device="cuda").manual_seed(3)
    for step in range(2):
        for mb in range(3):
            x = torch.randn(256, 256, device="cuda", dtype=torch.bfloat16, generator=gen)
            g = torch.randn(256, 384, device="cuda", dtype=torch.bfloat16, generator=gen)
            outs = []
            for module, rec, first in ((cached, rec_cached, mb == 0), (fresh, rec_fresh, None)):
                xi = x.clone().requires_grad_(True)
                with te.autocast(recipe=rec):
                    y = module(xi, is_first_microbatch=first)
                y.backward(g)
                outs.append((y.detach(), xi.grad))
            assert torch.equal(outs[0][0], outs[1][0]), f"step {step}, micro-batch {mb}: output differs"
            assert torch.equal(outs[0][1], outs[1][1]), f"step {step}, micro-batch {mb}: dgrad differs"
        assert torch.equal(cached.weight.grad, fresh.weight.grad), f"step {step}: accumulated wgrad differs"
        with torch.no_grad():  # an optimizer step: the next first micro-batch must re-quantize
            for module in (cached, fresh):
                module.weight.add_(module.weight.grad, alpha=-0.05)
                module.weight.grad = None
