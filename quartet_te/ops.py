"""The public numerical API: validate once, then dispatch to the CUDA kernels or the reference.

CUDA tensors go to `quartet_te.kernels` (the `_C` extension) when it is built and the GPU is
sm_90 or newer; everything else runs the pure-PyTorch reference, with a one-time warning when
that happens on a GPU. Both backends produce the same bits (docs/numerics.md) except inside
GEMMs, where only the summation order differs.

Two options serve the fast paths and mean the same on both backends:
- `emit`: "fp4" returns an `NVFP4Tensor`; "bf16" a `BF16Operand` (the exact BF16 operand of the
  emulated GEMM, written by the quantize kernel itself); "both" an `NVFP4Tensor` with `.operand`.
- `step` (a device int64 counter) with a `SignStream` for the signs: the random streams are
  relative to `step * STREAMS_PER_STEP` and the kernels draw the signs themselves (no host
  synchronisation; CUDA-graph safe). The reference reads the counter (one synchronisation).
"""
from __future__ import annotations

import warnings
from types import ModuleType

import torch

from . import reference
from .reference.gemm import check_gemm_operands
from .reference.quantize import MODES, as_amax, check_input, check_seed
from .rotation import STREAMS_PER_STEP, SignStream
from .tensor import BF16Operand, NVFP4Tensor

EMITS = ("fp4", "bf16", "both")
Signs = torch.Tensor | SignStream | None
Quantized = NVFP4Tensor | BF16Operand

_warned = False
# Per CUDA device index: (kernel module or None, GEMMs emulated?). Dispatch runs several times per
# GEMM; the answer cannot change within a process (extension and GPU are fixed), and computing it
# (availability, device capability) costs more than the launches it decides about.
_DISPATCH: dict[int, tuple[ModuleType | None, bool]] = {}


def _dispatch(device: torch.device) -> tuple[ModuleType | None, bool]:
    index = device.index if device.index is not None else torch.cuda.current_device()
    hit = _DISPATCH.get(index)
    if hit is None:
        k = _load_kernels()
        emulated = k is not None and k.device_backend(torch.device("cuda", index)) == "emulated"
        hit = _DISPATCH[index] = (k, emulated)
    return hit


def _load_kernels() -> ModuleType | None:
    """The kernel module if it can run here, else None (warning once)."""
    global _warned
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
        warnings.warn(f"quartet_te: using the slow pure-PyTorch reference on CUDA ({reason})", stacklevel=5)
        _warned = True
    return None


def kernels_for(device: torch.device) -> ModuleType | None:
    """The kernel module for tensors on `device`, or None to use the reference."""
    if device.type != "cuda":
        return None
    return _dispatch(device)[0]


def emulated_gemm(device: torch.device) -> bool:
    """Whether GEMMs on `device` run as BF16 GEMMs of decoded operands (Hopper, or Blackwell
    without the native FP4 GEMM): then quantizers should emit `BF16Operand`s directly."""
    return device.type == "cuda" and _dispatch(device)[1]


def _check_random(mode: str, seed: int | None) -> None:
    if mode in ("sr", "ms_eden") and seed is None:
        raise ValueError(f"mode {mode!r} is random: pass seed=<int>")
    if seed is not None:
        check_seed(seed)


def _check_emit(emit: str) -> None:
    if emit not in EMITS:
        raise ValueError(f"emit must be one of {EMITS}, got {emit!r}")


def _check_signs(signs: Signs, x: torch.Tensor, seed: int | None) -> None:
    if isinstance(signs, SignStream):
        if seed is None:
            raise ValueError("signs drawn from a SignStream need seed=<int> (the Philox key)")
    elif signs is not None:
        if not isinstance(signs, torch.Tensor):
            raise ValueError(f"signs must be a tensor or a SignStream, got {type(signs).__name__}")
        if signs.device != x.device:
            raise ValueError(f"signs are on {signs.device} but x is on {x.device}")


def _check_step(step: torch.Tensor | None, x: torch.Tensor) -> None:
    if step is None:
        return
    if not isinstance(step, torch.Tensor) or step.dtype != torch.int64 or step.numel() != 1:
        raise ValueError(f"step must be a one-element int64 tensor (the device step counter), got {step!r}")
    if step.device != x.device:
        raise ValueError(f"step is on {step.device} but x is on {x.device}")


def _absolute(signs: Signs, seed: int | None, offset: int, step: torch.Tensor | None, device: torch.device):
    """For the reference: (signs tensor, absolute offset) of a possibly step-relative draw."""
    base = int(step.item()) * STREAMS_PER_STEP if step is not None else 0
    if isinstance(signs, SignStream):
        signs = signs.materialize(seed, device, step=None if step is None else base // STREAMS_PER_STEP)
    return signs, offset + base


def _emitted(t: NVFP4Tensor, emit: str) -> Quantized:
    """The reference's result in the requested form."""
    if emit == "fp4":
        return t
    op = BF16Operand(t.dequantize_unscaled().to(torch.bfloat16), t.tensor_scale, t.mode, t.rotation)
    if emit == "bf16":
        return op
    t.operand = op
    return t


def quantize(
    x: torch.Tensor,
    mode: str,
    *,
    signs: Signs = None,
    seed: int | None = None,
    offset: int = 0,
    amax: torch.Tensor | None = None,
    transpose: bool = False,
    step: torch.Tensor | None = None,
    emit: str = "fp4",
) -> Quantized:
    """Quantize `x` (or `x.T`) along its last dim; see `quartet_te.reference.quantize`."""
    if mode not in MODES:
        raise ValueError(f"unknown quantization mode {mode!r}; expected one of {MODES}")
    check_input(x, "x", transposed=transpose and isinstance(x, torch.Tensor) and x.dim() == 2)
    _check_random(mode, seed)
    _check_signs(signs, x, seed)
    _check_step(step, x)
    _check_emit(emit)
    amax = as_amax(amax, x)
    k = kernels_for(x.device)
    if k is not None:
        return k.quantize(x, mode, signs=signs, seed=seed, offset=offset, amax=amax, transpose=transpose, step=step,
                          emit=emit)  # fmt: skip
    signs, offset = _absolute(signs, seed, offset, step, x.device)
    t = reference.quantize(x, mode, signs=signs, seed=seed, offset=offset, amax=amax, transpose=transpose)
    return _emitted(t, emit)


def quantize_both(
    x: torch.Tensor,
    mode: str,
    *,
    signs: Signs = None,
    seed: int | None = None,
    offset: int = 0,
    offset_t: int = 0,
    step: torch.Tensor | None = None,
    emit: str = "fp4",
    emit_t: str = "fp4",
) -> tuple[Quantized, Quantized]:
    """`quantize(x, ...)` and `quantize(x, ..., transpose=True)` with the same mode, signs and
    seed (streams `offset` / `offset_t`): one read of `x` and one amax pass on the kernels.
    E.g. the backward's MS-EDEN of e along N (dgrad) and of eᵀ along M (wgrad)."""
    if mode not in MODES:
        raise ValueError(f"unknown quantization mode {mode!r}; expected one of {MODES}")
    check_input(x)
    check_input(x, "x.T", transposed=True)
    _check_random(mode, seed)
    _check_signs(signs, x, seed)
    _check_step(step, x)
    _check_emit(emit)
    _check_emit(emit_t)
    k = kernels_for(x.device)
    if k is not None:
        return k.quantize_both(x, mode, signs=signs, seed=seed, offset=offset, emit=emit, mode_t=mode, seed_t=seed,
                               offset_t=offset_t, emit_t=emit_t, step=step)  # fmt: skip
    s, off = _absolute(signs, seed, offset, step, x.device)
    _, off_t = _absolute(None, seed, offset_t, step, x.device)
    row = reference.quantize(x, mode, signs=s, seed=seed, offset=off)
    col = reference.quantize(x, mode, signs=s, seed=seed, offset=off_t, transpose=True)
    return _emitted(row, emit), _emitted(col, emit_t)


def quantize_2d(w: torch.Tensor) -> NVFP4Tensor:
    """16×16-block RTN (NVIDIA's weight quantizer)."""
    check_input(w, "w")
    return (kernels_for(w.device) or reference).quantize_2d(w)


def requantize(
    t: NVFP4Tensor, *, signs: Signs, seed: int, offset: int = 0, step: torch.Tensor | None = None, emit: str = "fp4"
) -> Quantized:
    """Saved FP4 → dequantize → transpose → rotate → MS-EDEN."""
    if not isinstance(t, NVFP4Tensor):
        raise ValueError(f"requantize needs an NVFP4Tensor, got {type(t).__name__}")
    if t.shape[0] % 128:
        raise ValueError(f"requantize: rows {t.shape[0]} (the new quantized dim) is not a multiple of 128")
    _check_random("ms_eden", seed)
    _check_signs(signs, t.data, seed)
    _check_step(step, t.data)
    _check_emit(emit)
    k = kernels_for(t.device)
    if k is not None:
        return k.requantize(t, signs=signs, seed=seed, offset=offset, step=step, emit=emit)
    signs, offset = _absolute(signs, seed, offset, step, t.device)
    return _emitted(reference.requantize(t, signs=signs, seed=seed, offset=offset), emit)


def gemm(
    a: Quantized, b: Quantized, out_dtype: torch.dtype = torch.float32, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """`a · bᵀ (+ bias)` for quantized `a` (M×K) and `b` (N×K), FP32 accumulation."""
    check_gemm_operands(a, b)
    return (kernels_for(a.device) or reference).gemm(a, b, out_dtype, bias=bias)


def dequantize(t: Quantized, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Decoded values of `t` as `dtype`."""
    if not isinstance(t, (NVFP4Tensor, BF16Operand)):
        raise TypeError(
            f"dequantize needs an NVFP4Tensor or BF16Operand (what quantize returns), got {type(t).__name__}"
        )
    return (kernels_for(t.device) or reference).dequantize(t, dtype)


def transpose_2d(t: NVFP4Tensor) -> NVFP4Tensor:
    """Exact transpose of a 16×16-block quantized weight (pure data movement)."""
    return reference.transpose_2d(t)
