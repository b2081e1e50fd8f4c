"""CUDA kernels of quartet-te (`quartet_te._C`): thin wrappers with the reference's signatures.

`quartet_te.ops` calls this module for CUDA tensors when `is_available()`; every function here
computes the same bits as the function of the same name in `quartet_te.reference` (see
`docs/numerics.md`), except `gemm`, whose summation order is the GEMM library's.

Paths by compute capability:
- sm_90 (Hopper): quantizers in `csrc/`, GEMM emulated exactly: both operands decoded to BF16
  (`decode(code) · s_b` has at most 6 significant bits), BF16 GEMM with FP32 output, then
  `· s_tA · s_tB`.
- sm_100 / sm_120 (Blackwell): the same quantizers, GEMM native in NVFP4 through cuBLASLt
  (`torch._scaled_mm` with swizzled E4M3 block scales), then `· s_tA · s_tB`.
- older GPUs and CPU: not available; `ops` falls back to the reference with a one-time warning.

The launches are registered as `torch.library.custom_op`s (namespace ``quartet_te``) with fake
implementations, so they trace under `torch.compile`.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch

from .reference import formats as F
from .reference.gemm import check_gemm_operands
from .reference.quantize import MODES, check_input, resolve_seed
from .tensor import NVFP4Tensor

try:
    from . import _C  # type: ignore[attr-defined]

    _IMPORT_ERROR: Optional[str] = None
except ImportError as exc:  # not built (CPU-only install, or no CUDA torch at build time)
    _C = None
    _IMPORT_ERROR = str(exc)

MODE_IDS = {"rtn": 0, "four_over_six": 1, "sr": 2, "ms_eden": 3}
MIN_CAPABILITY = (9, 0)
NATIVE_FP4_MAJORS = (10, 12)  # sm_100a/sm_103a (B200/B300), sm_120a (RTX Blackwell)
_INPUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# ----------------------------------------------------------------------------------------------
# Availability and dispatch
# ----------------------------------------------------------------------------------------------
def _reason(capability: Optional[tuple[int, int]], built: bool, import_error: Optional[str]) -> Optional[str]:
    """Why the kernels cannot run (None if they can): pure, so tests can drive it."""
    if not built:
        return f"quartet_te._C is not built ({import_error})"
    if capability is None:
        return "no CUDA device"
    if tuple(capability) < MIN_CAPABILITY:
        return f"compute capability {capability[0]}.{capability[1]} < 9.0 (Hopper) is not supported by the kernels"
    return None


def _probe() -> Optional[str]:
    """Launch one tiny quantization: catches an extension built without this GPU's architecture
    (e.g. sm_90a-only on a Blackwell GPU, or a B300 = sm_103 without 103a code)."""
    try:
        x = torch.ones(16, 16, device="cuda")
        outs = [torch.empty(16, 8, dtype=torch.uint8, device="cuda"), torch.empty(16, 1, dtype=torch.uint8, device="cuda"),
                torch.empty((), device="cuda")]  # fmt: skip
        ws = torch.empty(2, device="cuda")
        _C.quantize(
            x, None, None, 16, 16, MODE_IDS["rtn"], [F.D_RTN, F.M6, F.M4, 1.0], None, 0, 0, None, *outs,
            -1, [1.0] * 4, None, 0, 0, None, None, None, None, ws,
        )  # fmt: skip
        torch.cuda.synchronize()
    except RuntimeError as exc:
        cap = torch.cuda.get_device_capability()
        return f"quartet_te._C cannot run on sm_{cap[0]}{cap[1]} (rebuild with QUARTET_TE_CUDA_ARCHS): {exc}"
    return None


@functools.lru_cache(maxsize=1)
def _availability() -> tuple[bool, str]:
    cap = torch.cuda.get_device_capability() if torch.cuda.is_available() else None
    reason = _reason(cap, _C is not None, _IMPORT_ERROR)
    if reason is None:
        reason = _probe()
    return reason is None, reason or "available"


def is_available(return_reason: bool = False):
    """Whether the CUDA kernels can run here (extension built, GPU with compute capability ≥ 9.0).

    Computed once and cached. With ``return_reason=True`` returns ``(ok, reason)``.
    """
    ok, reason = _availability()
    return (ok, reason) if return_reason else ok


def gemm_backend(capability: tuple[int, int], has_fp4_scaled_mm: Optional[bool] = None) -> str:
    """GEMM path for a device: ``"native"`` (Blackwell NVFP4), ``"emulated"`` (BF16) or ``"reference"``."""
    if tuple(capability) < MIN_CAPABILITY:
        return "reference"
    if has_fp4_scaled_mm is None:
        has_fp4_scaled_mm = hasattr(torch, "float4_e2m1fn_x2") and hasattr(torch, "_scaled_mm")
    if capability[0] in NATIVE_FP4_MAJORS and has_fp4_scaled_mm:
        return "native"
    return "emulated"


def _device_backend(device: torch.device) -> str:
    return gemm_backend(torch.cuda.get_device_capability(device))


def _require(x: torch.Tensor, what: str) -> None:
    """Errors before any launch: device, availability, alignment."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.device.type != "cuda":
        raise ValueError(f"{what} is on {x.device}: the quartet_te CUDA kernels need CUDA tensors")
    ok, reason = is_available(return_reason=True)
    if not ok:
        raise RuntimeError(f"quartet_te CUDA kernels unavailable: {reason}")


def _contiguous(x: torch.Tensor) -> torch.Tensor:
    x = x.contiguous()
    if x.data_ptr() % 16:
        x = x.clone()
    return x


def _signed64(v: int) -> int:
    """A uint64 as the int64 with the same bits (custom-op schemas take int64)."""
    v = int(v)
    if not 0 <= v < 2**64:
        raise ValueError(f"seed/offset must be an unsigned 64-bit integer, got {v}")
    return v - 2**64 if v >= 2**63 else v


def _consts(mode: str, signs: Optional[torch.Tensor]) -> list[float]:
    """[D, M, M4, 1/sqrt(n)]: the float32 constants of docs/numerics.md."""
    D, M = {
        "rtn": (F.D_RTN, F.M6),
        "four_over_six": (F.D_46, F.M6),
        "sr": (F.D_RTN, F.M_SR),
        "ms_eden": (F.D_EDEN, F.M_EDEN),
    }[mode]
    return [D, M, F.M4, F.INV_SQRT[signs.numel()] if signs is not None else 1.0]


def _prep_signs(signs: Optional[torch.Tensor], x: torch.Tensor, mode: str, qdim: int, what: str):
    if mode == "ms_eden" and (signs is None or signs.numel() != 128):
        raise ValueError("ms_eden needs signs: a ±1 tensor of 128 entries (fresh per backward call)")
    if signs is None:
        return None
    if not isinstance(signs, torch.Tensor) or signs.dim() != 1 or signs.numel() not in F.INV_SQRT:
        raise ValueError(f"signs must be a 1-D tensor of 16 or 128 entries, got {getattr(signs, 'shape', signs)}")
    if signs.device != x.device:
        raise ValueError(f"signs are on {signs.device} but {what} is on {x.device}")
    if qdim % signs.numel():
        raise ValueError(f"{what}: the quantized dim {qdim} is not a multiple of the rotation size {signs.numel()}")
    return signs.to(torch.float32).contiguous()


def _prep_amax(amax: Optional[torch.Tensor], x: torch.Tensor) -> Optional[torch.Tensor]:
    if amax is None:
        return None
    if not isinstance(amax, torch.Tensor):
        amax = torch.tensor(float(amax), device=x.device)
    if amax.numel() != 1:
        raise ValueError(f"amax must hold one value, got shape {tuple(amax.shape)}")
    return amax.to(device=x.device, dtype=torch.float32).reshape(1).contiguous()


# ----------------------------------------------------------------------------------------------
# Custom ops
# ----------------------------------------------------------------------------------------------
# Tests set this to a byte value: every output is then filled with it before the launch, so an
# element the kernel fails to write shows up (tests/csrc run twice with two different bytes).
_POISON: Optional[int] = None


def _poisoned(t: torch.Tensor) -> torch.Tensor:
    if _POISON is not None:
        t.reshape(-1).view(torch.uint8).fill_(_POISON)
    return t


def _dir_outputs(rows: int, cols: int, enabled: bool, device: torch.device):
    if not enabled:
        return None, None, None
    return (
        _poisoned(torch.empty(rows, cols // 2, dtype=torch.uint8, device=device)),
        _poisoned(torch.empty(rows, cols // 16, dtype=torch.uint8, device=device)),
        _poisoned(torch.empty((), dtype=torch.float32, device=device)),
    )


def _empty_like_dir(rows: int, cols: int, enabled: bool, device: torch.device) -> list[torch.Tensor]:
    if not enabled:  # distinct tensors: custom-op outputs must not alias each other
        return [torch.empty(0, dtype=torch.uint8, device=device) for _ in range(2)] + [torch.empty((), device=device)]
    return list(_dir_outputs(rows, cols, True, device))


@torch.library.custom_op("quartet_te::quantize", mutates_args=())
def _quantize_op(
    x: torch.Tensor,
    x_scales: Optional[torch.Tensor],
    x_ts: Optional[torch.Tensor],
    rows: int,
    cols: int,
    row_mode: int,
    row_signs: Optional[torch.Tensor],
    row_seed: int,
    row_offset: int,
    row_amax: Optional[torch.Tensor],
    col_mode: int,
    col_signs: Optional[torch.Tensor],
    col_seed: int,
    col_offset: int,
    col_amax: Optional[torch.Tensor],
) -> list[torch.Tensor]:
    """Row-wise (x along cols) and/or column-wise (xᵀ along rows) NVFP4 of one read of x.

    Mode ids as in MODE_IDS, -1 disables a direction. Returns [data, scales, tensor_scale] of the
    row-wise output then of the column-wise one (empty tensors for a disabled direction).
    """
    inv = {v: k for k, v in MODE_IDS.items()}
    row = _dir_outputs(rows, cols, row_mode >= 0, x.device)
    col = _dir_outputs(cols, rows, col_mode >= 0, x.device)
    row_f = _consts(inv[row_mode], row_signs) if row_mode >= 0 else [1.0] * 4
    col_f = _consts(inv[col_mode], col_signs) if col_mode >= 0 else [1.0] * 4
    ws = torch.empty(2, dtype=torch.float32, device=x.device)
    _C.quantize(
        x, x_scales, x_ts, rows, cols,
        row_mode, row_f, row_signs, row_seed, row_offset, row_amax, *row,
        col_mode, col_f, col_signs, col_seed, col_offset, col_amax, *col,
        ws,
    )  # fmt: skip
    out = []
    for t, r, c, on in ((row, rows, cols, row_mode >= 0), (col, cols, rows, col_mode >= 0)):
        out += list(t) if on else _empty_like_dir(r, c, False, x.device)
    return out


@_quantize_op.register_fake
def _(x, x_scales, x_ts, rows, cols, row_mode, row_signs, row_seed, row_offset, row_amax,
      col_mode, col_signs, col_seed, col_offset, col_amax):  # fmt: skip
    return _empty_like_dir(rows, cols, row_mode >= 0, x.device) + _empty_like_dir(cols, rows, col_mode >= 0, x.device)


@torch.library.custom_op("quartet_te::quantize_2d", mutates_args=())
def _quantize_2d_op(w: torch.Tensor) -> list[torch.Tensor]:
    rows, cols = w.shape
    data, scales, ts = _dir_outputs(rows, cols, True, w.device)
    ws = torch.empty(2, dtype=torch.float32, device=w.device)
    _C.quantize_2d(w, F.D_RTN, F.M6, data, scales, ts, ws)
    return [data, scales, ts]


@_quantize_2d_op.register_fake
def _(w):
    return _empty_like_dir(w.shape[0], w.shape[1], True, w.device)


@torch.library.custom_op("quartet_te::dequantize", mutates_args=())
def _dequantize_op(
    data: torch.Tensor, scales: torch.Tensor, ts: torch.Tensor, apply_tensor_scale: bool, dtype: torch.dtype
) -> torch.Tensor:
    out = _poisoned(torch.empty(data.shape[0], data.shape[1] * 2, dtype=dtype, device=data.device))
    _C.dequantize(data, scales.view(torch.uint8), ts.reshape(()).float().contiguous(), apply_tensor_scale, out)
    return out


@_dequantize_op.register_fake
def _(data, scales, ts, apply_tensor_scale, dtype):
    return data.new_empty(data.shape[0], data.shape[1] * 2, dtype=dtype)


def _wrap(data, scales, ts, mode: str, rotation: int) -> NVFP4Tensor:
    return NVFP4Tensor(data, scales.view(torch.float8_e4m3fn), ts, mode=mode, rotation=rotation)


# ----------------------------------------------------------------------------------------------
# Public functions (same semantics as quartet_te.reference)
# ----------------------------------------------------------------------------------------------
def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown quantization mode {mode!r}; expected one of {MODES}")


def _check_qdim(mode: str, qdim: int, what: str) -> None:
    mult = 128 if mode == "ms_eden" else F.BLOCK
    if qdim % mult:
        raise ValueError(f"{what}: the quantized dim {qdim} is not a multiple of {mult} (mode {mode})")


def _check_x(x: torch.Tensor, what: str = "x") -> None:
    """The reference's shape/dtype checks plus the kernels' own (CUDA, extension available)."""
    _require(x, what)
    check_input(x, what)


def quantize(
    x: torch.Tensor,
    mode: str,
    *,
    signs: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    seed: Optional[int] = None,
    offset: int = 0,
    amax: Optional[torch.Tensor] = None,
    transpose: bool = False,
) -> NVFP4Tensor:
    """Quantize `x` (R, C), or `x.T` if `transpose` (from the same input, no copy), along its last dim."""
    if transpose:
        row, col = quantize_both(
            x, None, mode_t=mode, signs_t=signs, generator=generator, seed_t=seed, offset_t=offset, amax_t=amax
        )
        return col
    row, _ = quantize_both(x, mode, signs=signs, generator=generator, seed=seed, offset=offset, amax=amax)
    return row


def quantize_both(
    x: torch.Tensor,
    mode: Optional[str],
    *,
    signs: Optional[torch.Tensor] = None,
    seed: Optional[int] = None,
    offset: int = 0,
    amax: Optional[torch.Tensor] = None,
    mode_t: Optional[str] = None,
    signs_t: Optional[torch.Tensor] = None,
    seed_t: Optional[int] = None,
    offset_t: int = 0,
    amax_t: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
) -> tuple[Optional[NVFP4Tensor], Optional[NVFP4Tensor]]:
    """Row-wise `quantize(x, mode, ...)` and column-wise `quantize(x, mode_t, ..., transpose=True)`
    from one read of `x` (either may be None). `mode_t` defaults to `mode`, `signs_t` to `signs`.

    E.g. the forward 4/6 of the input for both the fprop and the (baseline's) wgrad operand, or
    the backward's MS-EDEN of `e` along N and of `eᵀ` along M (pass distinct offsets).
    """
    _check_x(x)
    if mode is None and mode_t is None:
        raise ValueError("quantize_both: nothing to do (mode and mode_t are None)")
    rows, cols = x.shape
    x = _contiguous(x)
    dirs = []
    for m, s, sd, off, am, qdim, other, what in (
        (mode, signs, seed, offset, amax, cols, rows, "x"),
        (mode_t, signs_t if signs_t is not None else signs, seed_t if seed_t is not None else seed, offset_t,
         amax_t, rows, cols, "x.T"),
    ):  # fmt: skip
        if m is None:
            dirs.append((-1, None, 0, 0, None))
            continue
        _check_mode(m)
        _check_qdim(m, qdim, what)
        s = _prep_signs(s, x, m, qdim, what)
        key = resolve_seed(m, sd, generator)
        dirs.append((MODE_IDS[m], s, _signed64(key), _signed64(off), _prep_amax(am, x)))
    if mode_t is not None and rows % F.BLOCK:
        raise ValueError(f"x.T: the quantized dim {rows} is not a multiple of {F.BLOCK}")
    if rows == 0 or cols == 0:
        raise ValueError(f"empty input of shape {tuple(x.shape)}")
    outs = _quantize_op(x, None, None, rows, cols, *dirs[0], *dirs[1])
    result = []
    for i, (m, s) in enumerate(((mode, dirs[0][1]), (mode_t, dirs[1][1]))):
        if m is None:
            result.append(None)
        else:
            result.append(_wrap(*outs[3 * i : 3 * i + 3], m, 0 if s is None else s.numel()))
    return result[0], result[1]


def quantize_2d(w: torch.Tensor) -> NVFP4Tensor:
    """16×16-block RTN (NVIDIA's weight quantizer), scales replicated per row."""
    _check_x(w, "w")
    if w.shape[0] % F.BLOCK:
        raise ValueError(f"2-D block scaling: rows {w.shape[0]} is not a multiple of {F.BLOCK}")
    if w.numel() == 0:
        raise ValueError(f"empty input of shape {tuple(w.shape)}")
    data, scales, ts = _quantize_2d_op(_contiguous(w))
    return _wrap(data, scales, ts, "rtn_2d", 0)


def requantize(
    t: NVFP4Tensor,
    *,
    signs: torch.Tensor,
    generator: Optional[torch.Generator] = None,
    seed: Optional[int] = None,
    offset: int = 0,
) -> NVFP4Tensor:
    """Saved FP4 → dequantize → transpose → rotate → MS-EDEN, in one kernel (plus its amax pass)."""
    if not isinstance(t, NVFP4Tensor):
        raise ValueError(f"requantize needs an NVFP4Tensor, got {type(t).__name__}")
    _require(t.data, "t.data")
    rows, cols = t.shape
    if rows % 128:
        raise ValueError(f"requantize: rows {rows} (the new quantized dim) is not a multiple of 128")
    if rows == 0 or cols == 0:
        raise ValueError(f"empty input of shape {t.shape}")
    s = _prep_signs(signs, t.data, "ms_eden", rows, "t.T")
    key = resolve_seed("ms_eden", seed, generator)
    data = _contiguous(t.data)
    scales = t.block_scales.view(torch.uint8).contiguous()
    ts = t.tensor_scale.reshape(1).float().contiguous()
    outs = _quantize_op(
        data, scales, ts, rows, cols, -1, None, 0, 0, None, MODE_IDS["ms_eden"], s, _signed64(key), _signed64(offset), None
    )
    return _wrap(*outs[3:6], "ms_eden", s.numel())


def dequantize(t: NVFP4Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """`(decode(code) · s_b) · s_t` in float32, cast to `dtype` (float32, bfloat16, float16)."""
    if dtype not in _INPUT_DTYPES:
        raise ValueError(f"dequantize: dtype must be float32, bfloat16 or float16, got {dtype}")
    _require(t.data, "t.data")
    if t.data.numel() == 0:
        return torch.empty(t.shape, dtype=dtype, device=t.device)
    return _dequantize_op(_contiguous(t.data), t.block_scales.contiguous(), t.tensor_scale, True, dtype)


def dequantize_unscaled(t: NVFP4Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """`decode(code) · s_b` (exact in BF16): the GEMM-emulation operand."""
    _require(t.data, "t.data")
    if t.data.numel() == 0:
        return torch.empty(t.shape, dtype=dtype, device=t.device)
    return _dequantize_op(_contiguous(t.data), t.block_scales.contiguous(), t.tensor_scale, False, dtype)


# ----------------------------------------------------------------------------------------------
# GEMM
# ----------------------------------------------------------------------------------------------
def swizzle_scales(scales: torch.Tensor) -> torch.Tensor:
    """E4M3 block scales (rows, K/16) in cuBLASLt's block-scaled layout (flat, padded).

    The scale matrix is padded to multiples of (128, 4) and cut into 128×4 tiles, stored tile
    after tile (row-tile major); inside a tile, scale (r, c) sits at `(r % 32)·16 + (r // 32)·4 + c`.
    Pure tensor ops (runs on CPU, tested there).
    """
    rows, cols = scales.shape
    pr, pc = -(-rows // 128) * 128, -(-cols // 4) * 4
    u = scales.view(torch.uint8) if scales.dtype == torch.float8_e4m3fn else scales
    padded = u.new_zeros(pr, pc)
    padded[:rows, :cols] = u
    # (rt, 4 [r // 32], 32 [r % 32], ct, 4 [c]) -> (rt, ct, 32, 4, 4)
    t = padded.view(pr // 128, 4, 32, pc // 4, 4).permute(0, 3, 2, 1, 4).contiguous()
    out = t.flatten()
    return out.view(torch.float8_e4m3fn) if scales.dtype == torch.float8_e4m3fn else out


_NATIVE_OUT_DTYPE = [torch.float32]  # becomes bfloat16 if this build's FP4 GEMM writes only BF16


def _gemm_native(a: NVFP4Tensor, b: NVFP4Tensor) -> torch.Tensor:
    """Blackwell: cuBLASLt block-scaled NVFP4 GEMM (FP32 accumulation), alpha applied after."""
    fp4 = torch.float4_e2m1fn_x2
    args = (a.data.view(fp4), b.data.view(fp4).t(), swizzle_scales(a.block_scales), swizzle_scales(b.block_scales))
    try:
        return torch._scaled_mm(*args, out_dtype=_NATIVE_OUT_DTYPE[0])
    except RuntimeError:
        if _NATIVE_OUT_DTYPE[0] == torch.bfloat16:
            raise
        _NATIVE_OUT_DTYPE[0] = torch.bfloat16
        return torch._scaled_mm(*args, out_dtype=torch.bfloat16)


def _gemm_emulated(a: NVFP4Tensor, b: NVFP4Tensor) -> torch.Tensor:
    """Hopper: decode both operands to BF16 exactly, BF16 GEMM with FP32 accumulation and output."""
    da = dequantize_unscaled(a, torch.bfloat16)
    db = dequantize_unscaled(b, torch.bfloat16)
    return torch.mm(da, db.t(), out_dtype=torch.float32)


def gemm(a: NVFP4Tensor, b: NVFP4Tensor, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """`a · bᵀ` for NVFP4 `a` (M×K) and `b` (N×K): `(Da · Dbᵀ) · (s_a · s_b)`, FP32 accumulation."""
    check_gemm_operands(a, b)
    _require(a.data, "a.data")
    backend = _device_backend(a.device)
    acc = _gemm_native(a, b) if backend == "native" else _gemm_emulated(a, b)
    alpha = a.tensor_scale.float() * b.tensor_scale.float()
    # In place on the FP32 product (one pass, no second M×N buffer); the cast is a no-op for FP32.
    return acc.float().mul_(alpha).to(out_dtype)


__all__ = [
    "MODE_IDS",
    "dequantize",
    "dequantize_unscaled",
    "gemm",
    "gemm_backend",
    "is_available",
    "quantize",
    "quantize_2d",
    "quantize_both",
    "requantize",
    "swizzle_scales",
]
