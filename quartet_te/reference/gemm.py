"""Reference NVFP4 GEMM: decode both operands (without tensor scales), FP32 matmul, alpha last."""
from __future__ import annotations

import torch

from ..tensor import BF16Operand, NVFP4Tensor

Quantized = (NVFP4Tensor, BF16Operand)


def check_gemm_operands(a: NVFP4Tensor | BF16Operand, b: NVFP4Tensor | BF16Operand) -> None:
    """Raise ValueError unless `a` (M×K) and `b` (N×K) can be multiplied as `a · bᵀ`."""
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, Quantized):
            raise ValueError(f"gemm operand {name} must be an NVFP4Tensor or BF16Operand, got {type(t).__name__}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"K dimension mismatch: a is {a.shape} (K={a.shape[1]}), b is {b.shape} (K={b.shape[1]})")
    if a.rotation != b.rotation:
        raise ValueError(f"operands rotated differently along K: a by {a.rotation}, b by {b.rotation}")
    if a.device != b.device:
        raise ValueError(f"operands on different devices: {a.device} and {b.device}")


def gemm(
    a: NVFP4Tensor | BF16Operand, b: NVFP4Tensor | BF16Operand, out_dtype: torch.dtype = torch.float32,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """`a · bᵀ (+ bias)` for quantized `a` (M×K) and `b` (N×K): `(Da · Dbᵀ) · (s_a · s_b)`, FP32
    accumulation, then the bias in FP32, rounded once to `out_dtype`."""
    check_gemm_operands(a, b)
    acc = a.dequantize_unscaled() @ b.dequantize_unscaled().t()
    alpha = a.tensor_scale.float() * b.tensor_scale.float()
    out = acc * alpha
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype)
