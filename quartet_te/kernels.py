"""CUDA kernels of quartet-te (`quartet_te._C`): thin wrappers with the reference's signatures.

`quartet_te.ops` calls this module for CUDA tensors when `is_available()`; every function here
computes the same bits as the function of the same name in `quartet_te.reference` (see
`docs/numerics.md`), except `gemm`, whose summation order is the GEMM library's.

Paths by compute capability:
- sm_90 (Hopper): quantizers in `csrc/`, GEMM emulated exactly: both operands as BF16
  `decode(code) · s_b` (at most 6 significant bits: exact), written by the quantizers themselves
  (`emit="bf16"` / `"both"`), then one cuBLASLt BF16 GEMM with FP32 accumulation whose epilogue
  applies `alpha = s_tA · s_tB` (read from device memory), the bias and the output cast.
- sm_100 / sm_120 (Blackwell): the same quantizers, GEMM native in NVFP4 through cuBLASLt
  (`torch._scaled_mm` with swizzled E4M3 block scales), then `· s_tA · s_tB`.
- older GPUs and CPU: not available; `ops` falls back to the reference with a one-time warning.

The launches are registered as `torch.library.custom_op`s (namespace ``quartet_te``) with fake
implementations, so they trace under `torch.compile`.
"""
from __future__ import annotations

import functools
import inspect
from typing import Optional

import torch

from .reference import formats as F
from .reference.gemm import check_gemm_operands
from .reference.quantize import MODES, check_input, resolve_seed
from .rotation import STREAMS_PER_STEP, SignStream
from .tensor import BF16Operand, NVFP4Tensor

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
        _C.quantize(
            x, None, None, 16, 16,
            MODE_IDS["rtn"], [F.D_RTN, F.M6, F.M4, 1.0], 0, None, 0, 0, 0, None, 0, None, 1,
            -1, [1.0] * 4, 0, None, 0, 0, 0, None, 0, None, 0, -1,
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


_BACKENDS: dict[int, str] = {}  # per CUDA device index: the GPU of an index does not change


def device_backend(device: torch.device) -> str:
    """`gemm_backend` of the CUDA device `device` (computed once per device index)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    backend = _BACKENDS.get(index)
    if backend is None:
        backend = _BACKENDS[index] = gemm_backend(torch.cuda.get_device_capability(index))
    return backend


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


@functools.lru_cache(maxsize=None)
def _consts(mode: str, rot: int) -> tuple[float, ...]:
    """(D, M, M4, sqrt(n)): the float32 constants of docs/numerics.md (n: the rotation size)."""
    D, M = {
        "rtn": (F.D_RTN, F.M6),
        "four_over_six": (F.D_46, F.M6),
        "sr": (F.D_RTN, F.M_SR),
        "ms_eden": (F.D_EDEN, F.M_EDEN),
    }[mode]
    return (D, M, F.M4, F.SQRT_N[rot] if rot else 1.0)


def _prep_signs(signs, x: Optional[torch.Tensor], mode: str, qdim: Optional[int], what: str):
    """(signs tensor or None, rotation size, sign-stream offset) for one direction (`qdim` None:
    a `SignStream`'s fit to the quantized dim is left to the extension's check)."""
    if mode == "ms_eden" and (signs is None or _numel(signs) != 128):
        raise ValueError("ms_eden needs signs: a ±1 tensor (or SignStream) of 128 entries (fresh per backward call)")
    if signs is None:
        return None, 0, 0
    if isinstance(signs, SignStream):
        n = signs.n
        if n not in F.INV_SQRT:
            raise ValueError(f"SignStream.n must be 16 or 128, got {n}")
        if qdim is not None and qdim % n:
            raise ValueError(f"{what}: the quantized dim {qdim} is not a multiple of the rotation size {n}")
        return None, n, _signed64(signs.offset)
    if not isinstance(signs, torch.Tensor) or signs.dim() != 1 or signs.numel() not in F.INV_SQRT:
        raise ValueError(f"signs must be a 1-D tensor of 16 or 128 entries, got {getattr(signs, 'shape', signs)}")
    if signs.device != x.device:
        raise ValueError(f"signs are on {signs.device} but {what} is on {x.device}")
    if qdim % signs.numel():
        raise ValueError(f"{what}: the quantized dim {qdim} is not a multiple of the rotation size {signs.numel()}")
    return signs.to(torch.float32).contiguous(), signs.numel(), 0


def _numel(signs) -> int:
    return signs.n if isinstance(signs, SignStream) else signs.numel()


def _prep_step(step: Optional[torch.Tensor], x: torch.Tensor) -> Optional[torch.Tensor]:
    if step is None:
        return None
    if not isinstance(step, torch.Tensor) or step.dtype != torch.int64 or step.numel() != 1:
        raise ValueError(f"step must be a one-element int64 tensor (the device step counter), got {step!r}")
    if step.device != x.device:
        raise ValueError(f"step is on {step.device} but x is on {x.device}")
    return step  # the extension reads its one element, whatever the shape


def _prep_amax(amax: Optional[torch.Tensor], x: torch.Tensor) -> Optional[torch.Tensor]:
    if amax is None:
        return None
    if not isinstance(amax, torch.Tensor):
        amax = torch.tensor(float(amax), device=x.device)
    if amax.numel() != 1:
        raise ValueError(f"amax must hold one value, got shape {tuple(amax.shape)}")
    return amax.to(device=x.device, dtype=torch.float32).reshape(1).contiguous()


_EMIT = {"fp4": 1, "bf16": 2, "both": 3}


def _check_emit(emit: str) -> int:
    if emit not in _EMIT:
        raise ValueError(f"emit must be one of {tuple(_EMIT)}, got {emit!r}")
    return _EMIT[emit]


# ----------------------------------------------------------------------------------------------
# Custom ops
# ----------------------------------------------------------------------------------------------
def _eager(op, impl):
    """The registered custom op while torch.compile traces, else its implementation itself: the
    dispatcher round trip of a Python custom op costs tens of microseconds per call, which a
    linear's forward+backward (eight launches of ours) pays on every step in eager mode."""
    return op if torch.compiler.is_compiling() else impl


# ----------------------------------------------------------------------------------------------
# Custom-op implementations
# ----------------------------------------------------------------------------------------------
# Tests set this to a byte value: every output is then filled with it before the launch, so an
# element the kernel fails to write shows up (tests/csrc run twice with two different bytes).
_POISON: Optional[int] = None


def _poisoned(t: torch.Tensor) -> torch.Tensor:
    if _POISON is not None:
        t.reshape(-1).view(torch.uint8).fill_(_POISON)
    return t


def _dir_outputs(rows: int, cols: int, emit: int, device: torch.device) -> list[Optional[torch.Tensor]]:
    """[data, scales, tensor_scale, operand] of one direction (None where not emitted)."""
    if not emit:
        return [None] * 4
    fp4, bf16 = bool(emit & 1), bool(emit & 2)
    return [
        _poisoned(torch.empty(rows, cols // 2, dtype=torch.uint8, device=device)) if fp4 else None,
        _poisoned(torch.empty(rows, cols // 16, dtype=torch.uint8, device=device)) if fp4 else None,
        _poisoned(torch.empty((), dtype=torch.float32, device=device)),
        _poisoned(torch.empty(rows, cols, dtype=torch.bfloat16, device=device)) if bf16 else None,
    ]


_MODE_NAMES = {v: k for k, v in MODE_IDS.items()}
_NO_CONSTS = (1.0,) * 4


def _quantize_eager(
    x: torch.Tensor,
    x_scales: Optional[torch.Tensor],
    x_ts: Optional[torch.Tensor],
    rows: int,
    cols: int,
    step: Optional[torch.Tensor],
    row_mode: int,
    row_rot: int,
    row_signs: Optional[torch.Tensor],
    row_seed: int,
    row_offset: int,
    row_sign_offset: int,
    row_amax: Optional[torch.Tensor],
    row_emit: int,
    col_mode: int,
    col_rot: int,
    col_signs: Optional[torch.Tensor],
    col_seed: int,
    col_offset: int,
    col_sign_offset: int,
    col_amax: Optional[torch.Tensor],
    col_emit: int,
) -> list[Optional[torch.Tensor]]:
    """Row-wise (x along cols) and/or column-wise (xᵀ along rows) NVFP4 of one read of x.

    Per direction: mode id (MODE_IDS; -1 disables it), rotation size, signs (None with a rotation:
    drawn in the kernel from (seed, sign_offset)), Philox key and offsets (relative to
    `step * STREAMS_PER_STEP` when the device counter `step` is given), amax, and what to emit
    (1: packed FP4, 2: the BF16 operand, 3: both). Returns [data, scales, tensor_scale, operand]
    of the row-wise output then of the column-wise one (None where not emitted), all allocated by
    the extension in the same call (one Python-to-C++ crossing per quantization, at most three
    allocations).
    """
    row_consts = _consts(_MODE_NAMES[row_mode], row_rot) if row_mode >= 0 else _NO_CONSTS
    col_consts = _consts(_MODE_NAMES[col_mode], col_rot) if col_mode >= 0 else _NO_CONSTS
    return _C.quantize(
        x, x_scales, x_ts, rows, cols,
        row_mode, row_consts, row_rot, row_signs, row_seed, row_offset, row_sign_offset, step, STREAMS_PER_STEP,
        row_amax, row_emit,
        col_mode, col_consts, col_rot, col_signs, col_seed, col_offset, col_sign_offset, step, STREAMS_PER_STEP,
        col_amax, col_emit,
        -1 if _POISON is None else _POISON,
    )  # fmt: skip


# What the extension leaves out (None), as the custom op's schema (list[Tensor]) needs it.
_ABSENT = (torch.uint8, torch.uint8, torch.float32, torch.bfloat16)


def _quantize_impl(*args, **kwargs) -> list[torch.Tensor]:
    """The custom op's body (torch.compile): `_quantize_eager` with empty tensors for the outputs
    not emitted, and the outputs that share one allocation (codes, scales, tensor scales) cloned,
    since a custom op's outputs may not alias each other. Its schema is `_quantize_eager`'s."""
    outs = _quantize_eager(*args, **kwargs)
    x = args[0] if args else kwargs["x"]
    return [
        x.new_empty((0,), dtype=_ABSENT[i % 4]) if t is None else (t if i % 4 == 3 else t.clone())
        for i, t in enumerate(outs)
    ]


_quantize_impl.__signature__ = inspect.signature(_quantize_eager).replace(  # type: ignore[attr-defined]
    return_annotation="list[torch.Tensor]"
)


_quantize_op = torch.library.custom_op("quartet_te::quantize", mutates_args=())(_quantize_impl)


@_quantize_op.register_fake
def _(x, x_scales, x_ts, rows, cols, step, row_mode, row_rot, row_signs, row_seed, row_offset, row_sign_offset,
      row_amax, row_emit, col_mode, col_rot, col_signs, col_seed, col_offset, col_sign_offset, col_amax,
      col_emit):  # fmt: skip
    def fake(r, c, emit):
        fp4, bf16 = bool(emit & 1), bool(emit & 2)
        return [
            x.new_empty((r, c // 2) if fp4 else (0,), dtype=torch.uint8),
            x.new_empty((r, c // 16), dtype=torch.float8_e4m3fn) if fp4 else x.new_empty((0,), dtype=torch.uint8),
            x.new_empty(() if emit else (0,), dtype=torch.float32),
            x.new_empty((r, c) if bf16 else (0,), dtype=torch.bfloat16),
        ]

    return fake(rows, cols, row_emit if row_mode >= 0 else 0) + fake(cols, rows, col_emit if col_mode >= 0 else 0)


def _quantize_2d_impl(w: torch.Tensor) -> list[torch.Tensor]:
    rows, cols = w.shape
    data, scales, ts, _ = _dir_outputs(rows, cols, 1, w.device)
    ws = torch.empty(2, dtype=torch.float32, device=w.device)
    _C.quantize_2d(w, F.D_RTN, F.M6, data, scales, ts, ws)
    return [data, scales, ts]


_quantize_2d_op = torch.library.custom_op("quartet_te::quantize_2d", mutates_args=())(_quantize_2d_impl)


@_quantize_2d_op.register_fake
def _(w):
    rows, cols = w.shape
    return [w.new_empty((rows, cols // 2), dtype=torch.uint8), w.new_empty((rows, cols // 16), dtype=torch.uint8),
            w.new_empty((), dtype=torch.float32)]  # fmt: skip


def _dequantize_impl(
    data: torch.Tensor, scales: torch.Tensor, ts: torch.Tensor, apply_tensor_scale: bool, dtype: torch.dtype
) -> torch.Tensor:
    out = _poisoned(torch.empty(data.shape[0], data.shape[1] * 2, dtype=dtype, device=data.device))
    _C.dequantize(data, scales.view(torch.uint8), ts.reshape(()).float().contiguous(), apply_tensor_scale, out)
    return out


_dequantize_op = torch.library.custom_op("quartet_te::dequantize", mutates_args=())(_dequantize_impl)


@_dequantize_op.register_fake
def _(data, scales, ts, apply_tensor_scale, dtype):
    return data.new_empty(data.shape[0], data.shape[1] * 2, dtype=dtype)


def _wrap(outs: list[torch.Tensor], emit: int, mode: str, rotation: int) -> "NVFP4Tensor | BF16Operand":
    """The public object of one direction's [data, scales, tensor_scale, operand]."""
    data, scales, ts, values = outs
    op = BF16Operand.trusted(values, ts, mode, rotation) if emit & 2 else None
    if not emit & 1:
        return op
    return NVFP4Tensor.trusted(data, scales, ts, mode, rotation, op)  # scales: E4M3 already


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


Signs = Optional["torch.Tensor | SignStream"]


def quantize(
    x: torch.Tensor,
    mode: str,
    *,
    signs: Signs = None,
    generator: Optional[torch.Generator] = None,
    seed: Optional[int] = None,
    offset: int = 0,
    amax: Optional[torch.Tensor] = None,
    transpose: bool = False,
    step: Optional[torch.Tensor] = None,
    emit: str = "fp4",
) -> "NVFP4Tensor | BF16Operand":
    """Quantize `x` (R, C), or `x.T` if `transpose` (from the same input, no copy), along its last dim.

    `emit`: "fp4" (an NVFP4Tensor), "bf16" (a BF16Operand: the exact decoded operand of the
    emulated GEMM) or "both" (an NVFP4Tensor whose `.operand` is set). `step`: the device step
    counter; `offset` (and a SignStream's offset) are then relative to `step * STREAMS_PER_STEP`.
    """
    if transpose:
        _, col = quantize_both(
            x, None, mode_t=mode, signs_t=signs, generator=generator, seed_t=seed, offset_t=offset, amax_t=amax,
            step=step, emit_t=emit,
        )  # fmt: skip
        return col
    row, _ = quantize_both(x, mode, signs=signs, generator=generator, seed=seed, offset=offset, amax=amax, step=step,
                           emit=emit)  # fmt: skip
    return row


def quantize_both(
    x: torch.Tensor,
    mode: Optional[str],
    *,
    signs: Signs = None,
    seed: Optional[int] = None,
    offset: int = 0,
    amax: Optional[torch.Tensor] = None,
    emit: str = "fp4",
    mode_t: Optional[str] = None,
    signs_t: Signs = None,
    seed_t: Optional[int] = None,
    offset_t: int = 0,
    amax_t: Optional[torch.Tensor] = None,
    emit_t: str = "fp4",
    step: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
):
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
    step = _prep_step(step, x)
    dirs = [
        _direction(mode, signs, seed, offset, amax, emit, cols, "x", x, generator),
        _direction(mode_t, signs_t if signs_t is not None else signs, seed_t if seed_t is not None else seed,
                   offset_t, amax_t, emit_t, rows, "x.T", x, generator),
    ]  # fmt: skip
    if mode_t is not None and rows % F.BLOCK:
        raise ValueError(f"x.T: the quantized dim {rows} is not a multiple of {F.BLOCK}")
    if rows == 0 or cols == 0:
        raise ValueError(f"empty input of shape {tuple(x.shape)}")
    outs = _eager(_quantize_op, _quantize_eager)(x, None, None, rows, cols, step, *dirs[0], *dirs[1])
    return _wrap_both(outs, dirs)


_OFF = (-1, 0, None, 0, 0, 0, None, 0)  # a disabled direction's arguments


def _direction(mode, signs, seed, offset, amax, emit, qdim: Optional[int], what: str, x: Optional[torch.Tensor],
               generator) -> tuple:  # fmt: skip
    """One direction's eight `_quantize_eager` arguments (mode id, rotation, signs, Philox key,
    offset, sign-stream offset, amax, emit id), validated; `_OFF` if `mode` is None. `qdim` None
    (with no signs tensor and no amax, so no `x` either): the quantized dim is left to the
    extension's check."""
    if mode is None:
        return _OFF
    _check_mode(mode)
    if qdim is not None:
        _check_qdim(mode, qdim, what)
    sg, rot, soff = _prep_signs(signs, x, mode, qdim, what)
    key = resolve_seed(mode, seed, generator)
    return (MODE_IDS[mode], rot, sg, _signed64(key), _signed64(offset), soff, _prep_amax(amax, x), _check_emit(emit))


def _wrap_both(outs: list, dirs: list) -> tuple:
    """The (row-wise, column-wise) public objects of one `_quantize_eager` result (None for a
    disabled direction)."""
    return tuple(
        None if d[0] < 0 else _wrap(outs[4 * i : 4 * i + 4], d[7], _MODE_NAMES[d[0]], d[1]) for i, d in enumerate(dirs)
    )


@functools.lru_cache(maxsize=4096)
def planned_direction(
    mode: str, signs: Optional[SignStream] = None, seed: Optional[int] = None, offset: int = 0, emit: str = "fp4"
) -> tuple:
    """`_direction` for the arguments a layer repeats every step (signs none or drawn in the kernel,
    seed, stream offset, emit; no amax), validated once per distinct value: the GEMM path's
    quantizations (`quantize_planned`). The quantized dim is checked per call, by the extension."""
    if signs is not None and not isinstance(signs, SignStream):
        raise ValueError(f"planned_direction takes signs=None or a SignStream, got {type(signs).__name__}")
    return _direction(mode, signs, seed, offset, None, emit, None, "x", None, None)


def quantize_planned(
    x: torch.Tensor, row: Optional[tuple], col: Optional[tuple], step: Optional[torch.Tensor] = None,
    x_scales: Optional[torch.Tensor] = None, x_ts: Optional[torch.Tensor] = None,
) -> tuple:
    """`quantize_both` with directions from `planned_direction` (None: off), for the GEMM path,
    which calls it with operands it built itself: x is a CUDA float tensor (or, with `x_scales`
    and `x_ts`, saved packed FP4 to re-quantize column-wise), `step` the layer's device counter.
    Shapes and pointers are checked by the extension before any launch. Returns the
    (row-wise, column-wise) objects, None where off."""
    rows, cols = x.shape
    if x_scales is not None:
        cols *= 2  # packed FP4: two codes per byte
    x = _contiguous(x)
    row, col = row or _OFF, col or _OFF
    outs = _eager(_quantize_op, _quantize_eager)(x, x_scales, x_ts, rows, cols, step, *row, *col)
    return _wrap_both(outs, [row, col])


def quantize_2d(w: torch.Tensor) -> NVFP4Tensor:
    """16×16-block RTN (NVIDIA's weight quantizer), scales replicated per row."""
    _check_x(w, "w")
    if w.shape[0] % F.BLOCK:
        raise ValueError(f"2-D block scaling: rows {w.shape[0]} is not a multiple of {F.BLOCK}")
    if w.numel() == 0:
        raise ValueError(f"empty input of shape {tuple(w.shape)}")
    data, scales, ts = _eager(_quantize_2d_op, _quantize_2d_impl)(_contiguous(w))
    return NVFP4Tensor(data, scales.view(torch.float8_e4m3fn), ts, mode="rtn_2d", rotation=0)


def requantize(
    t: NVFP4Tensor,
    *,
    signs: Signs,
    generator: Optional[torch.Generator] = None,
    seed: Optional[int] = None,
    offset: int = 0,
    step: Optional[torch.Tensor] = None,
    emit: str = "fp4",
) -> "NVFP4Tensor | BF16Operand":
    """Saved FP4 → dequantize → transpose → rotate → MS-EDEN, in one kernel (plus its amax pass)."""
    if not isinstance(t, NVFP4Tensor):
        raise ValueError(f"requantize needs an NVFP4Tensor, got {type(t).__name__}")
    _require(t.data, "t.data")
    rows, cols = t.shape
    if rows % 128:
        raise ValueError(f"requantize: rows {rows} (the new quantized dim) is not a multiple of 128")
    if rows == 0 or cols == 0:
        raise ValueError(f"empty input of shape {t.shape}")
    sg, rot, soff = _prep_signs(signs, t.data, "ms_eden", rows, "t.T")
    key = resolve_seed("ms_eden", seed, generator)
    e = _check_emit(emit)
    data = _contiguous(t.data)
    scales = t.block_scales.contiguous()  # E4M3 bytes: the extension reads them as uint8
    ts = t.tensor_scale if t.tensor_scale.dtype == torch.float32 else t.tensor_scale.float()
    outs = _eager(_quantize_op, _quantize_eager)(
        data, scales, ts, rows, cols, _prep_step(step, data),
        -1, 0, None, 0, 0, 0, None, 0,
        MODE_IDS["ms_eden"], rot, sg, _signed64(key), _signed64(offset), soff, None, e,
    )  # fmt: skip
    return _wrap(outs[4:8], e, "ms_eden", rot)


def dequantize(t: NVFP4Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """`(decode(code) · s_b) · s_t` in float32, cast to `dtype` (float32, bfloat16, float16)."""
    if dtype not in _INPUT_DTYPES:
        raise ValueError(f"dequantize: dtype must be float32, bfloat16 or float16, got {dtype}")
    if isinstance(t, BF16Operand):
        return t.dequantize(dtype)
    _require(t.data, "t.data")
    if t.data.numel() == 0:
        return torch.empty(t.shape, dtype=dtype, device=t.device)
    return _eager(_dequantize_op, _dequantize_impl)(
        _contiguous(t.data), t.block_scales.contiguous(), t.tensor_scale, True, dtype
    )


def dequantize_unscaled(t: "NVFP4Tensor | BF16Operand", dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """`decode(code) · s_b` (exact in BF16): the GEMM-emulation operand (no pass if already there)."""
    if isinstance(t, BF16Operand):
        return t.values if dtype == torch.bfloat16 else t.values.to(dtype)
    if t.operand is not None and dtype == torch.bfloat16:
        return t.operand.values
    _require(t.data, "t.data")
    if t.data.numel() == 0:
        return torch.empty(t.shape, dtype=dtype, device=t.device)
    return _eager(_dequantize_op, _dequantize_impl)(
        _contiguous(t.data), t.block_scales.contiguous(), t.tensor_scale, False, dtype
    )


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


def _gemm_bf16_impl(
    a: torch.Tensor, b: torch.Tensor, ta: torch.Tensor, tb: torch.Tensor, bias: Optional[torch.Tensor],
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """`(a · bᵀ) · (ta · tb) (+ bias)` for the exact BF16 operands, FP32 accumulation: one cuBLASLt
    call whose epilogue applies alpha (read on the device), the bias and the cast; the extension
    allocates the output."""
    ta = ta if ta.dtype == torch.float32 else ta.float()
    tb = tb if tb.dtype == torch.float32 else tb.float()
    out = _C.gemm_bf16(a, b, ta, tb, bias, _OUT_KINDS[out_dtype])
    if out is not None:
        return out
    # No cuBLASLt algorithm for this problem (e.g. an odd bias alignment): the unfused form.
    acc = torch.mm(a, b.t(), out_dtype=torch.float32).mul_(ta.reshape(()) * tb.reshape(()))
    if bias is not None:
        acc.add_(bias.float())
    return acc.to(out_dtype)


_OUT_KINDS = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


_gemm_bf16_op = torch.library.custom_op("quartet_te::gemm_bf16", mutates_args=())(_gemm_bf16_impl)


@_gemm_bf16_op.register_fake
def _(a, b, ta, tb, bias, out_dtype):
    return a.new_empty(a.shape[0], b.shape[0], dtype=out_dtype)


_GEMM_OUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def gemm(
    a: "NVFP4Tensor | BF16Operand", b: "NVFP4Tensor | BF16Operand", out_dtype: torch.dtype = torch.float32,
    bias: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """`a · bᵀ (+ bias)` for quantized `a` (M×K) and `b` (N×K): `(Da · Dbᵀ) · (s_a · s_b) + bias`,
    FP32 accumulation, rounded once to `out_dtype`.

    Hopper: one BF16 GEMM on the exact decoded operands (written by the quantizers when they
    emitted them, else decoded here), alpha/bias/cast in its epilogue. Blackwell: the native
    NVFP4 GEMM (needs packed FP4 operands).
    """
    check_gemm_operands(a, b)
    _require(a.values if isinstance(a, BF16Operand) else a.data, "a")
    if out_dtype not in _GEMM_OUT_DTYPES:
        raise ValueError(f"gemm: out_dtype must be float32, bfloat16 or float16, got {out_dtype}")
    if bias is not None:
        if bias.dim() != 1 or bias.shape[0] != b.shape[0] or bias.device != a.device:
            raise ValueError(f"gemm: bias must be a vector of N={b.shape[0]} on {a.device}, got {tuple(bias.shape)}")
        if bias.dtype not in _GEMM_OUT_DTYPES:
            raise ValueError(f"gemm: bias dtype {bias.dtype} is not a float type")
    return gemm_unchecked(a, b, out_dtype, bias)


def gemm_unchecked(
    a: "NVFP4Tensor | BF16Operand", b: "NVFP4Tensor | BF16Operand", out_dtype: torch.dtype = torch.float32,
    bias: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """`gemm` without its argument checks, for the GEMM path (`quartet_te.gemms`), which made the
    operands itself; the extension still checks shapes before the launch."""
    native = device_backend(a.device) == "native"
    if native and isinstance(a, NVFP4Tensor) and isinstance(b, NVFP4Tensor):
        acc = _gemm_native(a, b).float().mul_(a.tensor_scale.float() * b.tensor_scale.float())
        if bias is not None:
            acc.add_(bias.float())
        return acc.to(out_dtype)
    da = _contiguous(dequantize_unscaled(a, torch.bfloat16))
    db = _contiguous(dequantize_unscaled(b, torch.bfloat16))
    bias = None if bias is None else bias.contiguous()
    return _eager(_gemm_bf16_op, _gemm_bf16_impl)(da, db, a.tensor_scale, b.tensor_scale, bias, out_dtype)


__all__ = [
    "MODE_IDS",
    "dequantize",
    "dequantize_unscaled",
    "device_backend",
    "gemm",
    "gemm_backend",
    "gemm_unchecked",
    "is_available",
    "planned_direction",
    "quantize",
    "quantize_2d",
    "quantize_both",
    "quantize_planned",
    "requantize",
    "swizzle_scales",
]
