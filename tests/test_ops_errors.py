"""`quartet_te.ops` (and the reference it falls back to) refuse arguments they would otherwise
misread: float or bool seeds, misshapen amax, plain tensors where a quantized one is needed,
malformed `NVFP4Tensor`s. Each error names the argument and the value."""
import pytest
import torch

from quartet_te import NVFP4Tensor, ops
from quartet_te import reference as R
from quartet_te.reference.rng import random_signs


@pytest.fixture
def x(gen):
    return torch.randn(64, 256, generator=gen)


@pytest.mark.parametrize("mode", ["sr", "ms_eden"])
@pytest.mark.parametrize("seed, error, message", [
    (1.7, TypeError, "seed must be an int .* got float 1.7"),
    (1.0, TypeError, "seed must be an int .* got float 1.0"),
    (True, TypeError, "seed must be an int .* got bool True"),
    ("3", TypeError, "seed must be an int .* got str '3'"),
    (-1, ValueError, r"seed must be in \[0, 2\*\*64\), got -1"),
    (2**64, ValueError, r"seed must be in \[0, 2\*\*64\)"),
], ids=["float", "float_integral", "bool", "str", "negative", "too_big"])
def test_random_modes_refuse_non_int_seeds(x, mode, seed, error, message):
    """seed=1.7 used to be truncated to 1 without a word."""
    signs = random_signs(128, 7, 0, x.device) if mode == "ms_eden" else None
    for quantize in (ops.quantize, R.quantize):
        with pytest.raises(error, match=message):
            quantize(x, mode, signs=signs, seed=seed)
    good = ops.quantize(x, mode, signs=signs, seed=1)
    assert good.mode == mode


def test_requantize_refuses_a_float_seed(x):
    t = ops.quantize(x[:, :128].t().contiguous(), "rtn")  # 128 rows: the new quantized dim
    signs = random_signs(128, 7, 0, x.device)
    with pytest.raises(TypeError, match="seed must be an int .* got float 2.5"):
        ops.requantize(t, signs=signs, seed=2.5)


def test_amax_of_the_wrong_shape_is_named(x):
    with pytest.raises(ValueError, match=r"amax must hold one value \(max \|x\|\), got a tensor of shape \(3,\)"):
        ops.quantize(x, "rtn", amax=torch.ones(3))
    with pytest.raises(ValueError, match=r"shape \(2, 2\)"):
        R.quantize(x, "rtn", amax=torch.ones(2, 2))
    with pytest.raises(TypeError, match="amax must be a number or a one-element tensor .* got str"):
        ops.quantize(x, "rtn", amax="6.0")


def test_amax_as_a_python_number_means_what_the_tensor_means(x):
    """The CUDA kernels take a Python float for amax; the reference used to fail on one with an
    AttributeError. Same bits for 2.5, tensor(2.5) and a one-element (1,) tensor."""
    amax = float(x.abs().amax()) * 1.25
    a = ops.quantize(x, "four_over_six", amax=amax)
    for other in (torch.tensor(amax), torch.tensor([amax])):
        b = ops.quantize(x, "four_over_six", amax=other)
        assert torch.equal(a.data, b.data) and torch.equal(a.tensor_scale, b.tensor_scale)
        assert torch.equal(a.block_scales.view(torch.uint8), b.block_scales.view(torch.uint8))
    plain = ops.quantize(x, "four_over_six")
    assert not torch.equal(a.tensor_scale, plain.tensor_scale)  # amax is actually used


def test_dequantize_of_a_plain_tensor_is_named(x):
    with pytest.raises(TypeError, match="dequantize needs an NVFP4Tensor or BF16Operand .* got Tensor"):
        ops.dequantize(x)
    with pytest.raises(TypeError, match="got Tensor"):
        R.dequantize(x)
    t = ops.quantize(x, "rtn")
    torch.testing.assert_close(ops.dequantize(t), t.dequantize(), rtol=0, atol=0)


def test_nvfp4_tensor_checks_its_fields(x):
    t = ops.quantize(x, "rtn")
    with pytest.raises(ValueError, match=r"NVFP4Tensor data must be a 2-D torch.uint8 .* got torch.uint8 \(8192,\)"):
        NVFP4Tensor(t.data.reshape(-1), t.block_scales, t.tensor_scale)
    with pytest.raises(ValueError, match=r"data must be a 2-D torch.uint8 tensor .* got torch.float32"):
        NVFP4Tensor(t.data.float(), t.block_scales, t.tensor_scale)
    with pytest.raises(ValueError, match=r"block_scales must be a 2-D torch.float8_e4m3fn tensor .* got torch.uint8"):
        NVFP4Tensor(t.data, t.block_scales.view(torch.uint8), t.tensor_scale)
    with pytest.raises(ValueError, match="data must be .* got list"):
        NVFP4Tensor([[1, 2]], t.block_scales, t.tensor_scale)
    same = NVFP4Tensor(t.data, t.block_scales, t.tensor_scale, mode=t.mode)
    assert same.shape == (64, 256) and torch.equal(same.dequantize(), t.dequantize())


def test_transposed_inputs_are_checked_along_their_rows(gen):
    """`transpose=True` and `quantize_both` check x.T's quantized dim (x's rows) without making
    the view: a 40-row x is refused for its x.T, a 48-row one accepted."""
    x = torch.randn(40, 256, generator=gen)
    with pytest.raises(ValueError, match="x: the quantized .* dim 40 is not a multiple of 16"):
        ops.quantize(x, "rtn", transpose=True)
    with pytest.raises(ValueError, match="x.T: the quantized .* dim 40 is not a multiple of 16"):
        ops.quantize_both(x, "rtn")
    ok = ops.quantize(torch.randn(48, 256, generator=gen), "rtn", transpose=True)
    assert ok.shape == (256, 48)
    with pytest.raises(ValueError, match="must be 2-D"):
        ops.quantize(torch.randn(16, generator=gen), "rtn", transpose=True)
