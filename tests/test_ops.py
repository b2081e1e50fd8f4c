"""`quartet_te.ops` options of the fast path, on the reference backend (CPU): what the CUDA kernels
must reproduce (tests/csrc/test_fastpath.py checks them there)."""
from __future__ import annotations

import torch

from quartet_te import ops
from quartet_te import reference as R
from quartet_te.rotation import STREAMS_PER_STEP, Operand, RotationState, SignStream
from quartet_te.tensor import BF16Operand, NVFP4Tensor


def _equal(a: NVFP4Tensor, b: NVFP4Tensor) -> bool:
    return (torch.equal(a.data, b.data) and torch.equal(a.block_scales.view(torch.uint8), b.block_scales.view(torch.uint8))
            and torch.equal(a.tensor_scale, b.tensor_scale))  # fmt: skip


def test_emit_bf16_is_the_exact_decoded_operand(gen):
    x = torch.randn(256, 384, generator=gen) * 7
    fp4 = ops.quantize(x, "four_over_six")
    op = ops.quantize(x, "four_over_six", emit="bf16")
    both = ops.quantize(x, "four_over_six", emit="both")
    assert isinstance(op, BF16Operand) and isinstance(both, NVFP4Tensor)
    assert torch.equal(op.values.float(), fp4.dequantize_unscaled())  # exact in BF16
    assert _equal(both, fp4) and torch.equal(both.operand.values, op.values)
    assert torch.equal(op.dequantize(), fp4.dequantize())


def test_step_relative_streams_equal_absolute_ones(gen):
    x = torch.randn(256, 512, generator=gen)
    seed, step = 2**63 + 12345, 7
    counter = torch.tensor([step], dtype=torch.int64)
    base = step * STREAMS_PER_STEP
    signs = R.random_signs(128, seed, base + Operand.SIGNS)
    got = ops.quantize(x, "ms_eden", signs=SignStream(128, Operand.SIGNS), seed=seed, offset=Operand.GRAD_ROWWISE,
                       step=counter)  # fmt: skip
    assert _equal(got, R.quantize(x, "ms_eden", signs=signs, seed=seed, offset=base + Operand.GRAD_ROWWISE))
    row, col = ops.quantize_both(x, "ms_eden", signs=SignStream(128, 0), seed=seed, offset=1, offset_t=3, step=counter)
    assert _equal(row, R.quantize(x, "ms_eden", signs=signs, seed=seed, offset=base + 1))
    assert _equal(col, R.quantize(x, "ms_eden", signs=signs, seed=seed, offset=base + 3, transpose=True))


def test_backward_draw_materializes_the_steps_signs():
    rot = RotationState(99)
    d0, d1 = rot.next_backward("cpu"), rot.next_backward("cpu")
    assert (d0.step, d1.step, rot.step) == (0, 1, 2) and d0.step_tensor is None
    assert torch.equal(d1.signs, R.random_signs(128, 99, 1 * STREAMS_PER_STEP + Operand.SIGNS))
    assert torch.equal(d1.sign_stream.materialize(99, "cpu", step=1), d1.signs)
    assert not torch.equal(d0.signs, d1.signs)


def test_gemm_bias_is_added_in_fp32_then_rounded_once(gen):
    a = ops.quantize(torch.randn(64, 128, generator=gen), "rtn", emit="bf16")
    b = ops.quantize(torch.randn(96, 128, generator=gen), "rtn")
    bias = torch.randn(96, generator=gen).to(torch.bfloat16)
    got = ops.gemm(a, b, torch.bfloat16, bias=bias)
    acc = (a.dequantize_unscaled() @ b.dequantize_unscaled().t()) * (a.tensor_scale * b.tensor_scale)
    assert torch.equal(got, (acc + bias.float()).to(torch.bfloat16))
