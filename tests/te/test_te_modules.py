"""Every TE GEMM module under our recipes: runs with and without bias, stays close to BF16,
recomputes exactly, and checkpoints (model state dict + rotation state) exactly.

Closeness to BF16 is an SQNR floor, loose on purpose (NVFP4 has ~1e-2 relative MSE per operand,
about 18 dB for one GEMM's output; gradients carry the unbiased but noisier MS-EDEN/SR error):
it catches wiring bugs (a wrong operand, a lost transpose: SQNR near 0 dB), not accuracy drift.
"""
from __future__ import annotations

import io

import pytest
import torch

from quartet_te import NVFP4Recipe, Quartet2Recipe, QuartetLinear
from te_helpers import fresh_recipe, needs_te_gpu, sqnr_db, train_step

pytestmark = needs_te_gpu

RECIPES = [pytest.param(Quartet2Recipe(), id="quartet2"), pytest.param(NVFP4Recipe(), id="nvfp4")]
BIAS = pytest.mark.parametrize("bias", [False, True], ids=["no_bias", "bias"])
HIDDEN, FFN, HEADS, SEQ, BATCH = 256, 1024, 4, 128, 2
OUT_DB, GRAD_DB = 8.0, 3.0


def _te():
    import transformer_engine.pytorch as te

    return te


def _build(kind: str, bias: bool):
    te = _te()
    common = dict(params_dtype=torch.bfloat16, device="cuda")
    if kind == "LayerNormLinear":
        return te.LayerNormLinear(HIDDEN, FFN, bias=bias, name="lnl", **common)
    if kind == "LayerNormMLP":
        return te.LayerNormMLP(HIDDEN, FFN, bias=bias, name="mlp", **common)
    if kind == "TransformerLayer":
        return te.TransformerLayer(
            HIDDEN, FFN, HEADS, bias=bias, hidden_dropout=0.0, attention_dropout=0.0,
            self_attn_mask_type="causal", name="layer0", **common,
        )
    raise ValueError(kind)


def _twins(kind: str, bias: bool):
    torch.manual_seed(0)
    a = _build(kind, bias)
    if bias:
        with torch.no_grad():
            for name, p in a.named_parameters():
                if name.endswith("bias") and "layer_norm" not in name:
                    p.normal_(std=0.1)
    b = _build(kind, bias)
    b.load_state_dict(a.state_dict())
    return a, b


def _inputs():
    gen = torch.Generator(device="cuda").manual_seed(3)
    x = torch.randn(SEQ, BATCH, HIDDEN, device="cuda", dtype=torch.bfloat16, generator=gen)
    return x, gen


@BIAS
@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("kind", ["LayerNormLinear", "LayerNormMLP", "TransformerLayer"])
def test_module_close_to_bf16(kind, recipe, bias):
    a, b = _twins(kind, bias)
    x, gen = _inputs()
    out_features = FFN if kind == "LayerNormLinear" else HIDDEN
    g = torch.randn(SEQ, BATCH, out_features, device="cuda", dtype=torch.bfloat16, generator=gen)
    y_hp, dx_hp, g_hp = train_step(a, x, g)
    y_q, dx_q, g_q = train_step(b, x, g, fresh_recipe(recipe))
    assert torch.isfinite(y_q).all() and torch.isfinite(dx_q).all()
    report = {"out": sqnr_db(y_hp, y_q), "dx": sqnr_db(dx_hp, dx_q)}
    assert set(g_q) == set(g_hp), f"parameters without gradient: {set(g_hp) ^ set(g_q)}"
    for name in g_hp:
        assert torch.isfinite(g_q[name]).all(), name
        if name.endswith("key_bias"):
            continue  # exactly 0 in exact arithmetic (softmax ignores a per-row shift): noise only
        report[name] = sqnr_db(g_hp[name], g_q[name])
    print(f"\nSQNR dB {kind} {recipe.name} bias={bias}: " + ", ".join(f"{k}={v:.1f}" for k, v in report.items()))
    assert report["out"] > OUT_DB and report["dx"] > GRAD_DB, report
    assert all(v > GRAD_DB for v in report.values()), report


@BIAS
def test_grouped_linear_matches_per_expert_reference(bias):
    """GroupedLinear (through our grouped-GEMM adapter) == one QuartetLinear per expert, whose
    names follow the factory's ordinals ("experts", "experts#1", ...)."""
    te = _te()
    recipe = Quartet2Recipe()
    splits = [128, 256, 128]
    torch.manual_seed(0)
    grouped = te.GroupedLinear(
        len(splits), HIDDEN, 384, bias=bias, params_dtype=torch.bfloat16, device="cuda", name="experts"
    )
    experts = []
    for i in range(len(splits)):
        q = QuartetLinear(HIDDEN, 384, bias=bias, recipe=recipe, name="experts" if i == 0 else f"experts#{i}",
                          device="cuda", dtype=torch.bfloat16)
        with torch.no_grad():
            q.weight.copy_(getattr(grouped, f"weight{i}"))
            if bias:
                getattr(grouped, f"bias{i}").normal_()
                q.bias.copy_(getattr(grouped, f"bias{i}"))
        experts.append(q)
    gen = torch.Generator(device="cuda").manual_seed(5)
    te_recipe = fresh_recipe(recipe)
    for step in range(2):
        x = torch.randn(sum(splits), HIDDEN, device="cuda", dtype=torch.bfloat16, generator=gen)
        g = torch.randn(sum(splits), 384, device="cuda", dtype=torch.bfloat16, generator=gen)
        xg = x.clone().requires_grad_(True)
        with te.autocast(recipe=te_recipe):
            y = grouped(xg, splits)
        y.backward(g)
        xr = x.clone().requires_grad_(True)
        yr = torch.cat([e(part) for e, part in zip(experts, torch.split(xr, splits))])
        yr.backward(g)
        assert torch.equal(y, yr), f"step {step}: output"
        assert torch.equal(xg.grad, xr.grad), f"step {step}: dgrad"
        for i, e in enumerate(experts):
            assert torch.equal(getattr(grouped, f"weight{i}").grad, e.weight.grad), f"step {step}: wgrad {i}"
            if bias:
                torch.testing.assert_close(getattr(grouped, f"bias{i}").grad, e.bias.grad, rtol=2**-7, atol=1e-6)
        grouped.zero_grad(set_to_none=True)
        for e in experts:
            e.zero_grad(set_to_none=True)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recompute_is_exact(recipe):
    """te.distributed.checkpoint re-runs the forward in the backward: the RTN forward is
    deterministic and the backward draws once, so results equal the plain run bit for bit."""
    a, b = _twins("LayerNormMLP", True)
    x, gen = _inputs()
    g = torch.randn(SEQ, BATCH, HIDDEN, device="cuda", dtype=torch.bfloat16, generator=gen)
    y_a, dx_a, g_a = train_step(a, x, g, fresh_recipe(recipe))
    y_b, dx_b, g_b = train_step(b, x, g, fresh_recipe(recipe), checkpoint=True)
    assert torch.equal(y_a, y_b) and torch.equal(dx_a, dx_b)
    for name in g_a:
        assert torch.equal(g_a[name], g_b[name]), name


def test_recompute_transformer_layer_runs():
    a, b = _twins("TransformerLayer", True)
    x, gen = _inputs()
    g = torch.randn(SEQ, BATCH, HIDDEN, device="cuda", dtype=torch.bfloat16, generator=gen)
    y_a, dx_a, _ = train_step(a, x, g, fresh_recipe())
    y_b, dx_b, g_b = train_step(b, x, g, fresh_recipe(), checkpoint=True)
    assert torch.equal(y_a, y_b)
    assert sqnr_db(dx_a, dx_b) > 10 and all(torch.isfinite(t).all() for t in g_b.values())


def test_state_dict_and_rotation_resume_exactly():
    """model.state_dict() round-trips under the recipe (TE pickles the CustomRecipe in its extra
    state), and with quartet_te's rotation state the resumed run continues the exact stream."""
    import quartet_te.te as qte

    te = _te()
    a, b = _twins("LayerNormMLP", True)
    x, gen = _inputs()
    g = torch.randn(SEQ, BATCH, HIDDEN, device="cuda", dtype=torch.bfloat16, generator=gen)
    rec_a = fresh_recipe()
    train_step(a, x, g, rec_a)  # step 0
    buf = io.BytesIO()
    torch.save({"model": a.state_dict(), "rotation": qte.rotation_state_dict(a)}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    # LayerNormMLP's backward slots: 0 = fc1 grad_output, 2 = fc2 grad_output (both drew once);
    # slot 3 is TE's fc2 grad-input slot, labelled "fc1 grad_output" but never used to quantize.
    assert {k: v["step"] for k, v in ckpt["rotation"].items()} == {"/0": 1, "/2": 1, "/3": 0}, ckpt["rotation"]
    b.load_state_dict(ckpt["model"])
    rec_b = fresh_recipe()
    with torch.no_grad(), te.autocast(recipe=rec_b):
        b(x)  # builds the quantizers
    qte.load_rotation_state_dict(b, ckpt["rotation"])
    y_a, dx_a, g_a = train_step(a, x, g, rec_a)  # step 1 of the original
    y_b, dx_b, g_b = train_step(b, x, g, rec_b)  # step 1 of the resumed copy
    assert torch.equal(y_a, y_b) and torch.equal(dx_a, dx_b)
    for name in g_a:
        assert torch.equal(g_a[name], g_b[name]), name


def test_transformer_layer_state_dict_roundtrip():
    a, b = _twins("TransformerLayer", False)
    x, gen = _inputs()
    g = torch.randn(SEQ, BATCH, HIDDEN, device="cuda", dtype=torch.bfloat16, generator=gen)
    train_step(a, x, g, fresh_recipe())
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b.load_state_dict(torch.load(buf, weights_only=True))
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n
