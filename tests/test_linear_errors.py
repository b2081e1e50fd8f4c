"""The plain-PyTorch linear fails loudly: bad arguments raise errors that name the problem, the
high-precision backward GEMMs refuse inputs changed in place, and degenerate shapes either work
as in `nn.Linear` or are refused up front."""
import copy

import pytest
import torch
from torch import nn

import quartet_te as qt
from quartet_te.rotation import RotationState


def _xw(m=64, k=128, n=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, k, generator=g), torch.randn(n, k, generator=g) / k**0.5


# ------------------------------------------------------------ in-place changes after the forward
@pytest.mark.parametrize("recipe", [qt.Quartet2Recipe(high_precision_gemms=("wgrad",)),
                                    qt.NVFP4Recipe(high_precision_gemms=("wgrad",))], ids=["quartet2", "nvfp4_sr"])
def test_input_changed_in_place_before_a_high_precision_wgrad_raises(recipe):
    """dW = eᵀ x reads the saved x: changing x in place after the forward must raise (as
    nn.Linear does), not give the gradient of another input."""
    x, w = _xw()
    w.requires_grad_()
    ref = nn.Linear(128, 128, bias=False)
    y_ref = ref(x)
    x.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y_ref.sum().backward()

    x, _ = _xw()
    y = qt.quartet_linear(x, w, None, recipe, RotationState(0))
    x.add_(torch.randn(x.shape, generator=torch.Generator().manual_seed(9)))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_weight_changed_in_place_before_a_high_precision_dgrad_raises():
    x, w = _xw()
    x.requires_grad_()
    w = nn.Parameter(w)
    y = qt.quartet_linear(x, w, None, qt.Quartet2Recipe(high_precision_gemms=("dgrad",)), RotationState(0))
    with torch.no_grad():
        w.mul_(0.5)  # e.g. an optimizer step between forward and backward
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_high_precision_wgrad_still_uses_the_forward_input():
    """Without in-place changes the saved-tensor path gives the exact eᵀ x, twice (retain_graph)."""
    x, w = _xw(m=100)
    w.requires_grad_()
    e = torch.randn(100, 128, generator=torch.Generator().manual_seed(3))
    y = qt.quartet_linear(x, w, None, qt.Quartet2Recipe(high_precision_gemms=("wgrad",)), RotationState(0))
    y.backward(e, retain_graph=True)
    torch.testing.assert_close(w.grad, e.t() @ x, rtol=1e-5, atol=1e-5)
    y.backward(e)
    torch.testing.assert_close(w.grad, 2 * (e.t() @ x), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------ argument errors
def test_float64_weight_is_named_not_the_input():
    x, w = _xw()
    with pytest.raises(ValueError, match=r"weight has dtype torch\.float64; expected float32, bfloat16 or float16"):
        qt.quartet_linear(x, w.double(), None, "quartet2", RotationState(0))
    with pytest.raises(ValueError, match=r"input x has dtype torch\.float64"):
        qt.quartet_linear(x.double(), w, None, "quartet2", RotationState(0))
    with pytest.raises(ValueError, match=r"bias has dtype torch\.int64"):
        qt.quartet_linear(x, w, torch.ones(128, dtype=torch.int64), "quartet2", RotationState(0))


def test_meta_tensors_are_named():
    layer = qt.QuartetLinear(128, 128, device="meta")
    with pytest.raises(ValueError, match="input x is a meta tensor.*to_empty"):
        layer(torch.empty(4, 128, device="meta"))
    with pytest.raises(ValueError, match="weight is a meta tensor"):
        qt.quartet_linear(torch.randn(4, 128), layer.weight, None, "quartet2", RotationState(0))


def test_recipe_may_be_a_name_and_other_types_are_named():
    x, w = _xw()
    by_name = qt.quartet_linear(x, w, None, "quartet2-rot", RotationState(4))
    by_object = qt.quartet_linear(x, w, None, qt.Quartet2Recipe(forward_rotation=True), RotationState(4))
    assert torch.equal(by_name, by_object)
    with pytest.raises(TypeError, match="recipe must be a preset name .* got dict"):
        qt.quartet_linear(x, w, None, {"name": "quartet2"}, RotationState(0))
    with pytest.raises(ValueError, match="unknown recipe 'quartet3'"):
        qt.quartet_linear(x, w, None, "quartet3", RotationState(0))


def test_missing_rotation_is_named():
    x, w = _xw()
    with pytest.raises(TypeError, match="rotation must be a quartet_te.RotationState .* got NoneType"):
        qt.quartet_linear(x, w, None, "quartet2", None)
    with pytest.raises(TypeError, match="got int"):
        qt.quartet_linear(x, w, None, "quartet2", 0)


def test_zero_dim_input_and_bad_bias_are_named():
    layer = qt.QuartetLinear(128, 64)
    with pytest.raises(ValueError, match=r"at least 1 dim \(\.\.\., in_features=128\), got a 0-d tensor"):
        layer(torch.tensor(1.5))
    with pytest.raises(ValueError, match=r"bias must have shape \(64,\).*got \(32,\)"):
        qt.quartet_linear(torch.randn(4, 128), layer.weight, torch.zeros(32), "quartet2", RotationState(0))


def test_out_features_zero_runs_like_nn_linear():
    """N = 0 used to fail in the backward with a reshape error; nn.Linear gives empty outputs
    and zero gradients."""
    layer = qt.QuartetLinear(128, 0)
    ref = nn.Linear(128, 0)
    x = torch.randn(8, 3, 128, generator=torch.Generator().manual_seed(2), requires_grad=True)
    xr = x.detach().clone().requires_grad_()
    y, yr = layer(x), ref(xr)
    (y.sum() + 0 * x.sum()).backward()
    (yr.sum() + 0 * xr.sum()).backward()
    assert y.shape == yr.shape == (8, 3, 0)
    assert torch.equal(x.grad, xr.grad) and x.grad.shape == x.shape
    assert layer.weight.grad.shape == ref.weight.grad.shape == (0, 128)
    assert layer.bias.grad.shape == (0,)


def test_in_features_zero_is_refused_up_front():
    with pytest.raises(ValueError, match="in_features=0.*must be positive"):
        qt.QuartetLinear(0, 16)
    with pytest.raises(ValueError, match="in_features=0"):
        qt.convert(nn.Sequential(nn.Linear(0, 16)), skip=())


# ------------------------------------------------------------------------- extra state
def _trained_layer():
    layer = qt.QuartetLinear(128, 128, name="blk")
    x = torch.randn(64, 128, generator=torch.Generator().manual_seed(5))
    for _ in range(2):
        layer(x).sum().backward()
    return layer


@pytest.mark.parametrize("bad, error, message", [
    ({"seed": 3}, ValueError, "must be a dict with 'seed' and 'step'"),
    ("seed=3,step=2", ValueError, "must be a dict with 'seed' and 'step'"),
    (None, ValueError, "must be a dict with 'seed' and 'step'"),
    ({"seed": 3, "step": -1}, ValueError, r"'step' must be in \[0, "),
    ({"seed": -5, "step": 1}, ValueError, r"'seed' must be in \[0, 18446744073709551616\), got -5"),
    ({"seed": 3, "step": 1.5}, TypeError, "'step' must be an int, got float 1.5"),
    ({"seed": True, "step": 1}, TypeError, "'seed' must be an int, got bool"),
], ids=["no_step", "str", "none", "negative_step", "negative_seed", "float_step", "bool_seed"])
def test_malformed_extra_state_is_refused_at_load(bad, error, message):
    layer = _trained_layer()
    state = copy.deepcopy(layer.state_dict())
    assert state["_extra_state"] == {"seed": layer.rotation.seed, "step": 2}
    fresh = qt.QuartetLinear(128, 128, name="blk")
    state["_extra_state"] = bad
    with pytest.raises(error, match=message):
        fresh.load_state_dict(state)
    assert fresh.rotation.step == 0  # nothing half-loaded into the rotation state

