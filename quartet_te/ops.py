"""The public numerical API: validate once, then dispatch to the CUDA kernels or the reference.

CUDA tensors go to `quartet_te.kernels` (the `_C` extension) when it is built and the GPU is
sm_90 or newer; everything else runs the pure-PyTorch reference, with a one-time warning when
that happens on a GPU. Both backends produce the same bits (docs/numerics.md) except inside
GEMMs, where only the summation order differs.
"""
from __future__ import annotations

import warnings
from types import ModuleType

import torch

from . import reference
from .reference.gemm import check_gemm_operands
from .reference.quantize import MODES, check_input
from .tensor import NVFP4Tensor

_warned = False


def _kernels_for(device: torch.device) -> ModuleType | None:
    """The kernel module for tensors on `device`, or None to use the reference."""
    global _warned
    if device.type != "cuda":
        return None
    try:
        from . import kernels
    except ImportError as exc:  # the extension's Python wrapper itself failed to import
        reason = f"quartet_te.kernels failed to import: {exc}"
        kernels = None
    else:
        ok, reason = kernels.is_available(return_reason=True)
        if ok:
            return kernels
    if not _warned:
        warnings.warn(f"quartet_te: using the slow pure-PyTorch reference on CUDA ({reason})", stacklevel=3)
        _warned = True
    return None


def _check_random(mode: str, seed: int | None) -> None:
    if mode in ("sr", "ms_eden") and seed is None:
        raise ValueError(f"mode {mode!r} is random: pass seed=<int>")


def quantize(
    x: torch.Tensor,
    mode: str,
    *,
    signs: torch.Tensor | None = None,
    seed: int | None = None,
    offset: int = 0,
    amax: torch.Tensor | None = None,
    transpose: bool = False,
) -> NVFP4Tensor:
    """Quantize `x` (or `x.T`) along its last dim; see `quartet_te.reference.quantize`."""
    if mode not in MODES:
        raise ValueError(f"unknown quantization mode {mode!r}; expected one of {MODES}")
    check_input(x.t() if transpose and isinstance(x, torch.Tensor) and x.dim() == 2 else x)
    _check_random(mode, seed)
    if signs is not None and signs.device != x.device:
        raise ValueError(f"signs are on {signs.device} but x is on {x.device}")
    backend = _kernels_for(x.device) or reference
    return backend.quantize(x, mode, signs=signs, seed=seed, offset=offset, amax=amax, transpose=transpose)


def quantize_2d(w: torch.Tensor) -> NVFP4Tensor:
    """16×16-block RTN (NVIDIA's weight quantizer)."""
    check_input(w, "w")
    return (_kernels_for(w.device) or reference).quantize_2d(w)


def requantize(t: NVFP4Tensor, *, signs: torch.Tensor, seed: int, offset: int = 0) -> NVFP4Tensor:
    """Saved FP4 → dequantize → transpose → rotate → MS-EDEN."""
    if not isinstance(t, NVFP4Tensor):
        raise ValueError(f"requantize needs an NVFP4Tensor, got {type(t).__name__}")
    if t.shape[0] % 128:
        raise ValueError(f"requantize: rows {t.shape[0]} (the new quantized dim) is not a multiple of 128")
    return (_kernels_for(t.device) or reference).requantize(t, signs=signs, seed=seed, offset=offset)


def gemm(a: NVFP4Tensor, b: NVFP4Tensor, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """`a · bᵀ` for NVFP4 `a` (M×K) and `b` (N×K)."""
    check_gemm_operands(a, b)
    return (_kernels_for(a.device) or reference).gemm(a, b, out_dtype)


def dequantize(t: NVFP4Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Decoded values of `t` as `dtype`."""
    return (_kernels_for(t.device) or reference).dequantize(t, dtype)


def transpose_2d(t: NVFP4Tensor) -> NVFP4Tensor:
    """Exact transpose of a 16×16-block quantized weight (pure data movement)."""
    return reference.transpose_2d(t)
