"""`quartet_te.gemms`, the recipes' three GEMMs that both `QuartetLinear` and the TE `qgemm` run
(no TE needed): called directly, as the TE path calls them, they must equal the autograd wrapper
`quartet_te.quartet_linear` bit for bit (same streams, dtypes and reshapes), including the
zero-padding of token counts and inner dims."""
from __future__ import annotations

import pytest
import torch

from quartet_te import NVFP4Recipe, Quartet2Recipe, RotationState, quartet_linear
from quartet_te.rotation import layer_seed
from quartet_te import gemms as O

RECIPES = [
    pytest.param(Quartet2Recipe(), id="quartet2"),
    pytest.param(Quartet2Recipe(forward_rotation=True), id="quartet2_rot"),
    pytest.param(Quartet2Recipe(four_over_six=False, backward_quant=False), id="quartet2_bf16_bwd"),
    pytest.param(Quartet2Recipe(high_precision_gemms=("fprop", "dgrad", "wgrad")), id="quartet2_all_hp"),
    pytest.param(NVFP4Recipe(), id="nvfp4"),
    pytest.param(NVFP4Recipe(weight_2d=False, stochastic_rounding=False, wgrad_rht=False), id="nvfp4_plain"),
]
SHAPES = [
    pytest.param((256, 128, 128), id="full_tiles"),
    pytest.param((200, 128, 256), id="tokens_padded"),
]


def _ours(recipe, x, w, b, g, name="l"):
    fixed, grad_rot = RotationState(layer_seed(recipe.seed, name)), RotationState(layer_seed(recipe.seed, name))
    xo, wo = O.quantize_input(x, recipe, fixed), O.quantize_weight(w, recipe, fixed)
    y = O.fprop(xo, wo, b, recipe, x.dtype)
    go = O.make_grad(g, recipe, grad_rot)
    return y, O.dgrad(go, wo, recipe, x.dtype), O.wgrad(go, xo, recipe, w.dtype)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("recipe", RECIPES)
def test_operands_match_quartet_linear(recipe, shape, gen):
    m, k, n = shape
    x = torch.randn(m, k, generator=gen, requires_grad=True)
    w = torch.randn(n, k, generator=gen, requires_grad=True)
    b = torch.randn(n, generator=gen)
    g = torch.randn(m, n, generator=gen)
    y_ref = quartet_linear(x, w, b, recipe, RotationState(layer_seed(recipe.seed, "l")))
    y_ref.backward(g)
    y, dx, dw = _ours(recipe, x.detach(), w.detach(), b, g)
    assert torch.equal(y, y_ref.detach())
    assert torch.equal(dx, x.grad)
    assert torch.equal(dw, w.grad)


def test_inner_dim_n_is_padded_not_rejected(gen):
    """N=48 is no multiple of 128: Quartet II's dgrad zero-pads N (exact: zeros add nothing);
    with the padding the estimate still tracks the true product."""
    recipe = Quartet2Recipe()
    x, w = torch.randn(128, 64, generator=gen), torch.randn(48, 64, generator=gen)
    g = torch.randn(128, 48, generator=gen)
    y, dx, dw = _ours(recipe, x, w, None, g)
    assert y.shape == (128, 48) and dx.shape == (128, 64) and dw.shape == (48, 64)
    rel = ((dx - g @ w).norm() / (g @ w).norm()).item()
    assert rel < 0.3, rel


def test_backward_draws_once_per_call_and_differs_per_step(gen):
    recipe = Quartet2Recipe()
    rot = RotationState(11)
    g = torch.randn(128, 128, generator=gen)
    first, second = O.make_grad(g, recipe, rot), O.make_grad(g, recipe, rot)
    assert (first.draw.step, second.draw.step, rot.step) == (0, 1, 2)
    assert not torch.equal(first.draw.signs, second.draw.signs)
    assert O.make_grad(g, Quartet2Recipe(backward_quant=False), RotationState(1)).draw is None


def test_empty_token_split(gen):
    """GroupedLinear can route zero tokens to an expert: every GEMM returns zeros of the right shape."""
    recipe = Quartet2Recipe()
    rot = RotationState(3)
    xo = O.quantize_input(torch.zeros(0, 64), recipe, rot)
    wo = O.quantize_weight(torch.randn(128, 64, generator=gen), recipe, rot)
    go = O.make_grad(torch.zeros(0, 128), recipe, rot)
    assert O.fprop(xo, wo, None, recipe, torch.float32).shape == (0, 128)
    assert O.dgrad(go, wo, recipe, torch.float32).shape == (0, 64)
    dw = O.wgrad(go, xo, recipe, torch.float32)
    assert dw.shape == (128, 64) and not dw.any()


def test_saved_operand_is_fp4_only(gen):
    x = torch.randn(256, 128, generator=gen)
    op = O.quantize_input(x, Quartet2Recipe(), RotationState(0))
    assert op.hp is None and op.fp4.data.dtype == torch.uint8 and op.fp4.data.shape == (256, 64)
    keep = O.quantize_input(x, Quartet2Recipe(high_precision_gemms=("wgrad",)), RotationState(0))
    assert keep.hp is x and keep.hp_saved


@pytest.mark.parametrize(
    "recipe, k, match",
    [(Quartet2Recipe(), 40, "multiple of 16"), (Quartet2Recipe(forward_rotation=True), 64, "multiple of 128")],
    ids=["k_not_16", "rotation_k_not_128"],
)
def test_bad_inner_dim_is_a_clear_error(recipe, k, match):
    with pytest.raises(ValueError, match=match):
        O.quantize_input(torch.randn(16, k), recipe, RotationState(0))


def test_dgrad_rejects_mismatched_gradient(gen):
    recipe = Quartet2Recipe()
    wo = O.quantize_weight(torch.randn(128, 64, generator=gen), recipe, RotationState(0))
    go = O.make_grad(torch.randn(16, 256, generator=gen), recipe, RotationState(0))
    with pytest.raises(ValueError, match="does not match the saved weight"):
        O.dgrad(go, wo, recipe, torch.float32)


@pytest.mark.parametrize("n", [16, 128])
def test_unrotate_is_the_reference_inverse_rotation(n, gen):
    """The GEMM form of the forward rotation's inverse equals the reference butterfly to FP32
    rounding, and undoes `hadamard_rotate` (values up to ~1e2, errors ~1e-6 relative)."""
    from quartet_te.reference import hadamard_rotate, hadamard_unrotate, random_signs

    signs = random_signs(n, 7, 3)
    y = torch.randn(3, 40, 2 * n, generator=gen) * torch.logspace(-2, 2, 2 * n)
    ours, ref = O.unrotate(y, signs), hadamard_unrotate(y, signs)
    assert ours.dtype == torch.float32 and ours.shape == y.shape
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5 * float(y.abs().max()))
    torch.testing.assert_close(O.unrotate(hadamard_rotate(y, signs), signs), y, rtol=1e-4,
                               atol=1e-5 * float(y.abs().max()))
    assert not torch.equal(O.unrotate(y, -signs), ours)  # the signs matter
    with pytest.raises(ValueError, match="signs"):
        O.unrotate(y, torch.ones(32))
