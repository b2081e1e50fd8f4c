"""Reference NVFP4 GEMM: decode both operands (without tensor scales), FP32 matmul, alpha last."""
from __future__ import annotations

import torch

from ..tensor import NVFP4Tensor


def check_gemm_operands(a: NVFP4Tensor, b: NVFP4Tensor) -> None:
    """Raise ValueError unless `a` (M×K) and `b` (N×K) can be multiplied as `a · bᵀ`."""
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, NVFP4Tensor):
            raise ValueError(f"gemm operand {name} must be an NVFP4Tensor, got {type(t).__name__}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"K dimension mismatch: a is {a.shape} (K={a.shape[1]}), b is {b.shape} (K={b.shape[1]})")
    if a.rotation != b.rotation:
        raise ValueError(f"operands rotated differently along K: a by {a.rotation}, b by {b.rotation}")
    if a.device != b.device:
        raise ValueError(f"operands on different devices: {a.device} and {b.device}")


def gemm(a: NVFP4Tensor, b: NVFP4Tensor, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """`a · bᵀ` for NVFP4 `a` (M×K) and `b` (N×K): `(Da · Dbᵀ) · (s_a · s_b)`, FP32 accumulation."""
    check_gemm_operands(a, b)
    acc = a.dequantize_unscaled() @ b.dequantize_unscaled().t()
    alpha = a.tensor_scale.float() * b.tensor_scale.float()
    return (acc * alpha).to(out_dtype)
