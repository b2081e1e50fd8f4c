"""Quantization telemetry on TE modules under our recipes (GPU + Transformer Engine).

`te.Linear` and `QuartetLinear` with the same name compute the same bits (test_te_linear_exact),
so their telemetry rows must agree too; attaching telemetry must change no gradient bit; a
LayerNormMLP reports its two GEMMs as "<name>.fc1" / "<name>.fc2".
"""
from __future__ import annotations

import math

import pytest
import torch

from quartet_te import NVFP4Recipe, Quartet2Recipe, QuartetLinear
from quartet_te.telemetry import Telemetry
from te_helpers import fresh_recipe, needs_te_gpu, train_step

pytestmark = needs_te_gpu

RECIPES = [
    pytest.param(Quartet2Recipe(), id="quartet2"),
    pytest.param(Quartet2Recipe(forward_rotation=True), id="quartet2_rot"),
    pytest.param(Quartet2Recipe(backward_quant=False), id="quartet2_bf16bwd"),
    pytest.param(NVFP4Recipe(), id="nvfp4"),
]
GEMMS = {"fprop", "dgrad", "wgrad"}
METRICS = ("err_a", "err_b", "err_out", "cos_out")


def _run(module, x, g, recipe=None):
    """[∂L/∂x, then every parameter's gradient] of one step."""
    _, dx, grads = train_step(module, x, g, recipe)
    return [dx, *grads.values()]


def _warm(module, x, recipe):
    """One no-grad forward under the recipe: TE builds the module's quantizers."""
    import transformer_engine.pytorch as te

    with torch.no_grad(), te.autocast(enabled=True, recipe=recipe):
        module(x)


def _close(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-4, abs=1e-9)


@pytest.mark.parametrize("recipe", RECIPES)
def test_te_linear_rows_match_quartet_linear(recipe):
    import transformer_engine.pytorch as te

    torch.manual_seed(0)
    tl = te.Linear(256, 384, bias=False, params_dtype=torch.bfloat16, device="cuda", name="blk.proj")
    ql = QuartetLinear(256, 384, bias=False, recipe=recipe, name="blk.proj", device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        ql.weight.copy_(tl.weight)
    te_recipe = fresh_recipe(recipe)
    gen = torch.Generator(device="cuda").manual_seed(1)
    xs = [torch.randn(200, 256, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(3)]
    gs = [torch.randn(200, 384, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(3)]
    _warm(tl, xs[0], te_recipe)
    t_te, t_q = Telemetry(every=2, console=False), Telemetry(every=2, console=False)
    with t_te.attach(tl), t_q.attach(ql):
        for x, g in zip(xs, gs):
            for a, b in zip(_run(tl, x, g, te_recipe), _run(ql, x, g)):
                assert torch.equal(a, b)
    rows_te = {(r.step, r.gemm): r for r in t_te.rows}
    rows_q = {(r.step, r.gemm): r for r in t_q.rows}
    assert set(rows_te) == set(rows_q) == {(s, g) for s in (0, 2) for g in GEMMS}
    for key, r in rows_te.items():
        assert r.layer == "Linear"
        for m in METRICS:
            assert _close(getattr(r, m), getattr(rows_q[key], m)), (key, m, r, rows_q[key])


@pytest.mark.parametrize("recipe", RECIPES)
def test_te_layernorm_mlp_rows_and_unchanged_grads(recipe):
    import transformer_engine.pytorch as te

    kw = dict(bias=True, params_dtype=torch.bfloat16, device="cuda", name="mlp")
    torch.manual_seed(0)
    plain = te.LayerNormMLP(256, 512, **kw)
    probed = te.LayerNormMLP(256, 512, **kw)
    probed.load_state_dict(plain.state_dict())
    rec_plain, rec_probed = fresh_recipe(recipe), fresh_recipe(recipe)
    gen = torch.Generator(device="cuda").manual_seed(2)
    xs = [torch.randn(64, 4, 256, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(3)]
    gs = [torch.randn(64, 4, 256, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(3)]
    _warm(plain, xs[0], rec_plain)
    _warm(probed, xs[0], rec_probed)
    tel = Telemetry(every=2, console=False)
    with tel.attach(probed):
        for x, g in zip(xs, gs):
            for a, b in zip(_run(plain, x, g, rec_plain), _run(probed, x, g, rec_probed)):
                assert torch.equal(a, b)
    got = {(r.step, r.layer, r.gemm) for r in tel.rows}
    want = {(s, f"LayerNormMLP.{fc}", g) for s in (0, 2) for fc in ("fc1", "fc2") for g in GEMMS}
    assert want <= got, sorted(want - got)
    for r in tel.rows:
        assert 0.0 <= r.err_out < 0.1 and r.cos_out > 0.95, r


def test_attach_before_the_first_forward_is_a_clear_error():
    import transformer_engine.pytorch as te

    layer = te.Linear(256, 256, params_dtype=torch.bfloat16, device="cuda", name="fresh")
    with pytest.raises(ValueError, match="already ran one forward"):
        Telemetry().attach(layer)
