"""The Quartet II and NVFP4-baseline linear layers (plain PyTorch path) against the spec math."""
import copy

import pytest
import torch
from torch import nn

import quartet_te as qt
from quartet_te import reference as R
from quartet_te.rotation import RotationState


def _data(m=200, k=256, n=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    w = torch.randn(n, k, generator=g) / k**0.5
    b = torch.randn(n, generator=g)
    e = torch.randn(m, n, generator=g)
    return x, w, b, e


def _run(recipe, x, w, b, e, rotation):
    x = x.clone().requires_grad_()
    w = w.clone().requires_grad_()
    b = b.clone().requires_grad_() if b is not None else None
    y = qt.quartet_linear(x, w, b, recipe, rotation)
    y.backward(e)
    return y.detach(), x.grad, w.grad, (b.grad if b is not None else None)


def test_forward_is_the_spec_math():
    x, w, b, e = _data()
    y, *_ = _run(qt.Quartet2Recipe(), x, w, b, e, RotationState(1))
    xq, wq = R.quantize(x, "four_over_six"), R.quantize(w, "four_over_six")
    expect = xq.dequantize().double() @ wq.dequantize().double().t() + b.double()
    assert torch.allclose(y.double(), expect, rtol=1e-5, atol=1e-5)


def test_forward_rotation_is_exact_in_the_product():
    x, w, b, e = _data()
    rot = RotationState(1)
    y, *_ = _run(qt.Quartet2Recipe(forward_rotation=True), x, w, None, e, rot)
    s = rot.fixed_signs(128, "cpu")
    xq, wq = R.quantize(x, "four_over_six", signs=s), R.quantize(w, "four_over_six", signs=s)
    assert torch.allclose(y, xq.dequantize() @ wq.dequantize().t(), rtol=1e-5, atol=1e-5)
    # and it quantizes the rotated operands, not the raw ones
    assert not torch.allclose(y, R.quantize(x, "four_over_six").dequantize() @ R.quantize(w, "four_over_six").dequantize().t())


def _mean_grads(recipe, n):
    x, w, b, e = _data(m=130)
    rot = RotationState(2)
    dxs, dws = [], []
    for _ in range(n):
        _, dx, dw, db = _run(recipe, x, w, b, e, rot)
        dxs.append(dx)
        dws.append(dw)
    assert rot.step == n  # fresh signs every backward call
    return x, w, e, torch.stack(dxs), torch.stack(dws), db


def _bias_rms(target, est):
    bias = float((est.mean(0) - target).norm() / target.norm())
    rms = float((est - target).pow(2).sum(dim=(1, 2)).mean().sqrt() / target.norm())
    return bias, rms


def test_quartet2_gradients_unbiased_for_the_quantized_forward():
    n = 160
    x, w, e, dxs, dws, db = _mean_grads(qt.Quartet2Recipe(), n)
    x_hat = R.quantize(x, "four_over_six").dequantize()
    w_hat = R.quantize(w, "four_over_six").dequantize()
    for target, est in ((e @ w_hat, dxs), (e.t() @ x_hat, dws)):
        bias, rms = _bias_rms(target, est)
        assert 0.05 < rms < 0.3  # one draw really is noisy (two MS-EDEN operands)
        assert bias < 2.0 * rms / n**0.5, (bias, rms)
    assert torch.allclose(db, e.sum(0), rtol=1e-5)


def test_nvfp4_baseline_dgrad_unbiased():
    n = 160
    x, w, e, dxs, _, _ = _mean_grads(qt.NVFP4Recipe(), n)
    target = e @ R.quantize_2d(w).dequantize()
    bias, rms = _bias_rms(target, dxs)
    assert bias < 2.0 * rms / n**0.5, (bias, rms)


def test_backward_without_quantization_uses_saved_fp4_operands():
    x, w, b, e = _data()
    _, dx, dw, _ = _run(qt.Quartet2Recipe(backward_quant=False), x, w, b, e, RotationState(0))
    x_hat = R.quantize(x, "four_over_six").dequantize()
    w_hat = R.quantize(w, "four_over_six").dequantize()
    assert torch.allclose(dx, e @ w_hat, rtol=1e-5, atol=1e-5)
    assert torch.allclose(dw, e.t() @ x_hat, rtol=1e-5, atol=1e-4)


def test_high_precision_gemms():
    x, w, b, e = _data()
    y, dx, dw, _ = _run(qt.Quartet2Recipe(high_precision_gemms=("fprop", "dgrad", "wgrad")), x, w, b, e, RotationState(0))
    assert torch.allclose(y, x @ w.t() + b, atol=1e-4)
    assert torch.allclose(dx, e @ w, atol=1e-4) and torch.allclose(dw, e.t() @ x, atol=1e-3)


@pytest.mark.parametrize("recipe", ["quartet2", "quartet2-rot", "nvfp4-sr"])
def test_same_seed_same_bits_other_seed_differs(recipe):
    x, w, b, e = _data(m=130)
    r = qt.get_recipe(recipe)
    a = _run(r, x, w, b, e, RotationState(5))
    c = _run(r, x, w, b, e, RotationState(5))
    d = _run(r, x, w, b, e, RotationState(6))
    assert all(torch.equal(u, v) for u, v in zip(a, c))
    assert not torch.equal(a[2], d[2])


@pytest.mark.parametrize("recipe", ["quartet2", "nvfp4-sr"])
def test_gradients_close_to_high_precision(recipe):
    # SQNR-style sanity bound: a single FP4 step stays well correlated with BF16 math.
    x, w, b, e = _data(m=256)
    y, dx, dw, _ = _run(qt.get_recipe(recipe), x, w, b, e, RotationState(3))
    for got, ref in ((y, x @ w.t() + b), (dx, e @ w), (dw, e.t() @ x)):
        assert float((got - ref).norm() / ref.norm()) < 0.3


def test_module_state_dict_carries_the_rotation_step():
    torch.manual_seed(0)
    model = qt.convert(nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 128)), "quartet2", skip=())
    x = torch.randn(64, 128)
    for _ in range(3):
        model(x).sum().backward()
    clone = qt.convert(nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 128)), "quartet2", skip=())
    clone.load_state_dict(copy.deepcopy(model.state_dict()))
    assert clone[0].rotation.step == 3 and clone[0].rotation.seed == model[0].rotation.seed
    model.zero_grad()
    model(x).sum().backward()
    clone(x).sum().backward()
    assert torch.equal(model[0].weight.grad, clone[0].weight.grad)


def test_convert_swaps_linears_and_skips_named():
    model = nn.ModuleDict({"proj": nn.Linear(128, 128), "lm_head": nn.Linear(128, 256)})
    w = model["proj"].weight
    qt.convert(model, "nvfp4-sr")
    assert isinstance(model["proj"], qt.QuartetLinear) and model["proj"].weight is w
    assert type(model["lm_head"]) is nn.Linear
    assert model["proj"].recipe.name == "nvfp4-sr"
    # layers get distinct seeds from their names
    model2 = qt.convert(nn.ModuleDict({"a": nn.Linear(128, 128), "b": nn.Linear(128, 128)}))
    assert model2["a"].rotation.seed != model2["b"].rotation.seed


def test_bad_shapes_name_the_layer():
    with pytest.raises(ValueError, match="fc.*in_features=40.*multiple of 16"):
        qt.convert(nn.ModuleDict({"fc": nn.Linear(40, 128)}))
    with pytest.raises(ValueError, match="out_features=100.*multiple of 16.*nvfp4-sr"):
        qt.QuartetLinear(128, 100, recipe="nvfp4-sr")
    with pytest.raises(ValueError, match="in_features=40.*multiple of 16"):
        qt.QuartetLinear(40, 128)
    with pytest.raises(ValueError, match="in_features=144.*multiple of 128"):
        qt.QuartetLinear(144, 128, recipe="quartet2-rot")
    with pytest.raises(ValueError, match="unknown recipe"):
        qt.QuartetLinear(128, 128, recipe="fp3")
    layer = qt.QuartetLinear(128, 128)
    with pytest.raises(ValueError, match="input has 64 features"):
        layer(torch.randn(4, 64))
    with pytest.raises(ValueError, match="float32, bfloat16 or float16"):
        layer(torch.ones(4, 128, dtype=torch.int64))


def test_autocast_output_dtype_and_3d_input():
    layer = qt.QuartetLinear(128, 128)
    x = torch.randn(2, 70, 128, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16 and y.shape == (2, 70, 128)
    y.float().sum().backward()
    assert x.grad.shape == x.shape and x.grad.dtype == torch.float32
    assert bool(torch.isfinite(layer.weight.grad).all())


def test_out_features_not_multiple_of_128_are_padded():
    # N = 200: the dgrad rotation along N zero-pads to 256; gradients stay unbiased-shaped and finite.
    x, w, b, e = _data(m=130, n=200)
    y, dx, dw, db = _run(qt.Quartet2Recipe(), x, w, b, e, RotationState(4))
    assert y.shape == (130, 200) and dw.shape == w.shape and dx.shape == x.shape
    for got, ref in ((dx, e @ w), (dw, e.t() @ x)):
        assert float((got - ref).norm() / ref.norm()) < 0.3


def test_nan_in_input_reaches_the_output():
    layer = qt.QuartetLinear(128, 128)
    x = torch.randn(16, 128)
    x[0, 0] = float("nan")
    assert bool(torch.isnan(layer(x)).all())
