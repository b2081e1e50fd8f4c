"""The three GEMMs of each recipe (spec §4 and §5), shared by every path and free of any TE import.

`quartet_te.linear` (plain PyTorch) and the TE quantizers' `qgemm` (`quartet_te.te`) both call
these functions, so a TE module under our recipe and a `QuartetLinear` with the same name and
seed produce the same bits. The operands:
- `ForwardOperand`: a quantized input x̂ (M×K) or weight Ŵ (N×K), quantized along K. It is what
  the forward GEMM consumes and what TE saves for the backward (packed FP4 + scales only).
- `GradOperand`: the gradient e = ∂L/∂y (M×N) in high precision plus this backward call's
  randomness (one `BackwardDraw` per layer and step); each backward GEMM quantizes its own view
  of it (e along N for dgrad, eᵀ along M for wgrad) when it runs.

`fprop`, `dgrad` and `wgrad` implement spec §4 (Quartet II) and §5 (NVIDIA's baseline). A token
count M and an output dim N that are not multiples of 128 are zero-padded along the rotated
inner dimension (zeros change no product).

Where GEMMs are emulated in BF16 (Hopper), every quantizer also writes the exact BF16 operand
its GEMM consumes (`emit`), so no GEMM operand is decoded in a pass of its own; the forward keeps
only the packed FP4 copies for the backward. The backward quantizes e in both directions from one
read when both backward GEMMs run, and every GEMM applies alpha, the bias and the output cast in
its epilogue. On CUDA the backward's randomness comes from the layer's device step counter (no
host synchronisation).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from . import ops
from .recipes import NVFP4Recipe, Quartet2Recipe, Recipe
from .reference.formats import INV_SQRT
from .reference.hadamard import check_signs, hadamard_matrix
from .rotation import BackwardDraw, Operand, RotationState
from .telemetry import target
from .tensor import BF16Operand, NVFP4Tensor

ROTATION = 128  # the backward's Hadamard size: rotated inner dims are padded to this
RHT16 = 16  # NVIDIA's wgrad Hadamard size

_HADAMARD: dict[tuple[int, str], torch.Tensor] = {}  # Sylvester matrices, per (size, device)


def unrotate(y: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """Undo the forward rotation on a GEMM result: each n-chunk of the last dim times
    H/√n·diag(signs), as one FP32 GEMM against an n×n matrix.

    Same math as `reference.hadamard_unrotate`, whose butterfly takes ~20 elementwise passes over
    the M×K FP32 tensor (the main cost of `forward_rotation` on a GPU). This is an output transform,
    not quantization: results equal the butterfly's to FP32 rounding (the summation order differs),
    and under a global TF32 setting for FP32 matmuls they carry TF32 rounding (~1e-3 relative),
    far below the FP4 gradient noise (~1e-1 relative).
    """
    n = check_signs(signs)
    key = (n, str(y.device))
    if key not in _HADAMARD:
        _HADAMARD[key] = hadamard_matrix(n, y.device)
    m = _HADAMARD[key] * (signs.to(device=y.device, dtype=torch.float32) * INV_SQRT[n])
    yf = y.float()
    return (yf.reshape(-1, n) @ m).reshape(yf.shape)


def round_up(n: int, m: int) -> int:
    """`n` rounded up to a multiple of `m`."""
    return (n + m - 1) // m * m


def pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """`t` with zero rows appended up to `rows`."""
    if t.shape[0] == rows:
        return t
    return torch.cat((t, t.new_zeros(rows - t.shape[0], *t.shape[1:])), 0)


def pad_cols(t: torch.Tensor, cols: int) -> torch.Tensor:
    """`t` with zero columns appended up to `cols`."""
    if t.shape[1] == cols:
        return t
    return torch.cat((t, t.new_zeros(t.shape[0], cols - t.shape[1])), 1)


@dataclass
class ForwardOperand:
    """A forward GEMM operand quantized along K, and what the backward needs of it.

    Attributes:
        kind: "input" (x̂, M×K) or "weight" (Ŵ, N×K).
        rows, cols: logical 2-D shape (M or N, K).
        device: where the operand lives.
        fp4: the quantized operand along K (None for an empty tensor, or for a baseline input
            whose forward GEMM runs in high precision).
        fwd_signs: Quartet II's fixed forward rotation (128 signs) if on; `fp4` decodes in that
            rotated basis along K.
        colwise: baseline only: the input's x̂ᵀ (K×M', RHT-16 + RTN of the high-precision x, as
            TE's NVFP4 recipe does), or the weight's Ŵᵀ once built.
        rht_signs: baseline only: the fixed RHT-16 signs used for `colwise` (shared with eᵀ).
        hp: the high-precision tensor, kept only while a GEMM in `high_precision_gemms` needs it.
        hp_saved: whether `hp` must survive into the backward (dgrad/wgrad in high precision).
    """

    kind: str
    rows: int
    cols: int
    device: torch.device
    fp4: NVFP4Tensor | None = None
    fwd_signs: torch.Tensor | None = None
    colwise: NVFP4Tensor | None = None
    rht_signs: torch.Tensor | None = None
    hp: torch.Tensor | None = None
    hp_saved: bool = False

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        """The values the forward GEMM used (un-rotated), as a (rows, cols) `dtype` tensor."""
        if self.fp4 is None:
            if self.hp is not None:
                return self.hp.to(dtype)
            if self.rows == 0:
                return torch.zeros(0, self.cols, dtype=dtype, device=self.device)
            raise RuntimeError(f"{self.kind} operand holds no data to dequantize")
        out = self.fp4.dequantize()[: self.rows]
        if self.fwd_signs is not None:
            out = unrotate(out, self.fwd_signs)
        return out.to(dtype)


@dataclass
class GradOperand:
    """∂L/∂y (M×N, high precision) and the randomness of this backward call (None: RTN/BF16).

    `needs` names the backward GEMMs that will quantize e: when both do, the first one quantizes
    e in both directions from one read (one amax pass) and keeps the other direction in `_cache`
    for the second GEMM.
    """

    e: torch.Tensor
    draw: BackwardDraw | None
    needs: tuple[str, ...] = ("dgrad", "wgrad")
    _cache: dict = field(default_factory=dict, repr=False)


def _forward_mode(recipe: Quartet2Recipe) -> str:
    return "four_over_six" if recipe.four_over_six else "rtn"


def _emit(device: torch.device, keep_fp4: bool) -> str:
    """What a quantizer writes: the BF16 operand where the GEMM is emulated (plus the packed FP4
    copy where it is saved for the backward), else packed FP4 only."""
    if not ops.emulated_gemm(device):
        return "fp4"
    return "both" if keep_fp4 else "bf16"


# The hot path. On the CUDA kernels, the Quartet II quantizations and GEMMs below skip `ops`'
# per-call argument checks: every argument but the tensors repeats each step, so its validation
# is cached (`kernels.planned_direction`), and the tensors are the ones this module built (the
# extension still checks shapes and pointers before any launch). Same launches, same bits as the
# `ops` calls they replace, which remain the path for the reference and for fixed signs tensors.
def _quantize_rows(x: torch.Tensor, mode: str, signs: torch.Tensor | None, emit: str) -> NVFP4Tensor | BF16Operand:
    """`ops.quantize(x, mode, signs=signs, emit=emit)` (deterministic modes)."""
    k = ops.kernels_for(x.device)
    if k is None or signs is not None:
        return ops.quantize(x, mode, signs=signs, emit=emit)
    return k.quantize_planned(x, k.planned_direction(mode, emit=emit), None)[0]


def _ms_eden(e: torch.Tensor, d: BackwardDraw, row: int | None, col: int | None, emit: str) -> tuple:
    """MS-EDEN of e along its rows (stream `row`) and/or of eᵀ (stream `col`; None: not wanted):
    `ops.quantize_both` / `ops.quantize` with the draw's streams."""
    k = ops.kernels_for(e.device)
    if k is None or d.step_tensor is None:
        if row is not None and col is not None:
            kw = _streams(d, row)
            return ops.quantize_both(e, "ms_eden", offset_t=_streams(d, col)["offset"], emit=emit, emit_t=emit, **kw)
        if row is not None:
            return ops.quantize(e, "ms_eden", emit=emit, **_streams(d, row)), None
        return None, ops.quantize(e, "ms_eden", emit=emit, transpose=True, **_streams(d, col))
    plan = [None if s is None else k.planned_direction("ms_eden", d.sign_stream, d.seed, s, emit) for s in (row, col)]
    return k.quantize_planned(e, plan[0], plan[1], d.step_tensor)


def _requantize(t: NVFP4Tensor, d: BackwardDraw, operand: int, emit: str) -> NVFP4Tensor | BF16Operand:
    """`ops.requantize(t, ...)` with the draw's stream `operand`."""
    k = ops.kernels_for(t.device)
    if k is None or d.step_tensor is None or t.shape[0] % ROTATION:
        return ops.requantize(t, emit=emit, **_streams(d, operand))
    col = k.planned_direction("ms_eden", d.sign_stream, d.seed, operand, emit)
    ts = t.tensor_scale if t.tensor_scale.dtype == torch.float32 else t.tensor_scale.float()
    return k.quantize_planned(t.data, None, col, d.step_tensor, t.block_scales.contiguous(), ts)[1]


def _gemm(a: NVFP4Tensor | BF16Operand, b: NVFP4Tensor | BF16Operand, out_dtype: torch.dtype,
          bias: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """`ops.gemm(a, b, out_dtype, bias=bias)` for operands this module quantized."""
    k = ops.kernels_for(a.device)
    return ops.gemm(a, b, out_dtype, bias=bias) if k is None else k.gemm_unchecked(a, b, out_dtype, bias)


def quantize_input(x: torch.Tensor, recipe: Recipe, fixed: RotationState) -> ForwardOperand:
    """x̂ for the forward GEMM from the 2-D input `x` (M×K); `fixed` supplies the fixed signs."""
    rows, cols = x.shape
    check_dims(recipe, "input", cols)
    hp_gemms = recipe.high_precision_gemms
    keep_hp = "fprop" in hp_gemms or "wgrad" in hp_gemms
    op = ForwardOperand("input", rows, cols, x.device, hp=x if keep_hp else None, hp_saved="wgrad" in hp_gemms)
    if rows == 0:
        return op
    if isinstance(recipe, Quartet2Recipe):
        op.fwd_signs = fixed.fixed_signs(ROTATION, x.device) if recipe.forward_rotation else None
        op.fp4 = _quantize_rows(x, _forward_mode(recipe), op.fwd_signs, _emit(x.device, True))
        return op
    if "fprop" not in hp_gemms:
        op.fp4 = ops.quantize(x, "rtn", emit=_emit(x.device, True))
    if "wgrad" not in hp_gemms:
        op.rht_signs = fixed.fixed_signs(RHT16, x.device) if recipe.wgrad_rht else None
        op.colwise = ops.quantize(pad_rows(x, round_up(rows, ROTATION)), "rtn", signs=op.rht_signs, transpose=True)
    return op


def quantize_weight(w: torch.Tensor, recipe: Recipe, fixed: RotationState) -> ForwardOperand:
    """Ŵ for the forward GEMM from the weight `w` (N×K)."""
    rows, cols = w.shape
    check_dims(recipe, "weight", cols)
    hp_gemms = recipe.high_precision_gemms
    keep_hp = "fprop" in hp_gemms or "dgrad" in hp_gemms
    op = ForwardOperand("weight", rows, cols, w.device, hp=w if keep_hp else None, hp_saved="dgrad" in hp_gemms)
    if rows == 0:
        return op
    if isinstance(recipe, Quartet2Recipe):
        op.fwd_signs = fixed.fixed_signs(ROTATION, w.device) if recipe.forward_rotation else None
        op.fp4 = _quantize_rows(w, _forward_mode(recipe), op.fwd_signs, _emit(w.device, True))
    else:
        op.fp4 = ops.quantize_2d(w) if recipe.weight_2d else ops.quantize(w, "rtn")
    return op


def make_grad(
    e: torch.Tensor, recipe: Recipe, rotation: RotationState, needs: tuple[str, ...] = ("dgrad", "wgrad")
) -> GradOperand:
    """Wrap ∂L/∂y and draw this backward call's randomness (advances the layer's step once; on
    CUDA with device ops on the layer's step counter, without a host synchronisation)."""
    if isinstance(recipe, Quartet2Recipe) and not recipe.backward_quant:
        return GradOperand(e, None, needs)
    return GradOperand(e, rotation.next_backward(e.device), needs)


def _streams(d: BackwardDraw, operand: int) -> dict:
    """Keyword arguments of `ops` for `operand`'s stream at the draw's step: relative to the
    device step counter on CUDA (signs drawn by the kernels), absolute on the CPU."""
    if d.step_tensor is not None:
        return {"signs": d.sign_stream, "seed": d.seed, "offset": operand, "step": d.step_tensor}
    return {"signs": d.signs, "seed": d.seed, "offset": d.offset(operand)}


def _grad_ms_eden(g: GradOperand, which: str) -> tuple[NVFP4Tensor | BF16Operand, torch.Tensor]:
    """MS-EDEN of e along N (`which="dgrad"`) or of eᵀ along M (`"wgrad"`), and the zero-padded
    e it quantized (for telemetry). Both directions from one read when both GEMMs need them."""
    if which in g._cache:
        return g._cache.pop(which)
    e, d = g.e, g.draw
    both = "dgrad" in g.needs and "wgrad" in g.needs
    rows = round_up(e.shape[0], ROTATION) if both or which == "wgrad" else e.shape[0]
    cols = round_up(e.shape[1], ROTATION) if both or which == "dgrad" else e.shape[1]
    ep = pad_cols(pad_rows(e, rows), cols)
    emit = _emit(e.device, False)
    row_stream = Operand.GRAD_ROWWISE if both or which == "dgrad" else None
    col_stream = Operand.GRAD_COLWISE if both or which == "wgrad" else None
    row, col = _ms_eden(ep, d, row_stream, col_stream, emit)
    if both:
        g._cache["wgrad" if which == "dgrad" else "dgrad"] = (col, ep) if which == "dgrad" else (row, ep)
    return (row, ep) if which == "dgrad" else (col, ep)


# `record(gemm, a, b, out, ref)`: a sampled step's telemetry hook (`LayerProbe.record` with the
# step bound); None on every other call.
Record = Optional[Callable[..., None]]


def _zeros(rows: int, cols: int, device: torch.device) -> torch.Tensor:
    return torch.zeros(rows, cols, dtype=torch.float32, device=device)


def fprop(
    x: ForwardOperand, w: ForwardOperand, bias: torch.Tensor | None, recipe: Recipe, out_dtype: torch.dtype,
    record: Record = None,
) -> torch.Tensor:
    """y = x̂ Ŵᵀ (+ bias in high precision), M×N in `out_dtype`. `record`: see `Record` (it
    reads `x.hp` / `w.hp`, which the quantizers keep on sampled steps)."""
    if x.cols != w.cols:
        raise ValueError(f"fprop: K mismatch: input is {x.rows}x{x.cols}, weight is {w.rows}x{w.cols}")
    if "fprop" in recipe.high_precision_gemms:
        y = x.hp.float() @ w.hp.float().t()
    elif x.rows == 0 or w.rows == 0:
        y = _zeros(x.rows, w.rows, x.device)
    else:
        if record is None:  # the usual case: bias and cast in the GEMM's epilogue
            y = _gemm(x.fp4, w.fp4, out_dtype, bias)
        else:  # a sampled step: telemetry compares the bias-free FP32 product
            y = ops.gemm(x.fp4, w.fp4, torch.float32)
            xt = target(x.hp, x.fwd_signs) if x.hp is not None else None
            wt = target(w.hp, w.fwd_signs) if w.hp is not None else None
            ref = x.hp.float() @ w.hp.float().t() if xt is not None and wt is not None else None
            record("fprop", (x.fp4, xt), (w.fp4, wt), y, ref)
        for op in (x, w):  # the BF16 operands served this GEMM only: the backward uses the FP4
            if op.fp4 is not None:
                op.fp4.operand = None
        if record is None:
            return y
    if bias is not None:
        y = y.add_(bias.float())
    return y.to(out_dtype)


def _check_pair(what: str, g: GradOperand, other: ForwardOperand, dim: int) -> None:
    if g.e.dim() != 2 or g.e.shape[dim] != other.rows:
        raise ValueError(
            f"{what}: gradient of shape {tuple(g.e.shape)} does not match the saved {other.kind} "
            f"({other.rows}x{other.cols})"
        )


def dgrad(
    g: GradOperand, w: ForwardOperand, recipe: Recipe, out_dtype: torch.dtype, record: Record = None
) -> torch.Tensor:
    """∂L/∂x = e Ŵ (M×K): Quartet II re-quantizes the saved Ŵ along N with the step's signs."""
    _check_pair("dgrad", g, w, 1)
    e = g.e
    if "dgrad" in recipe.high_precision_gemms:
        return (e.float() @ w.hp.float()).to(out_dtype)
    if e.shape[0] == 0 or w.rows == 0:
        return _zeros(e.shape[0], w.cols, e.device).to(out_dtype)
    if isinstance(recipe, Quartet2Recipe):
        d = g.draw
        if d is None:
            dx = e.float() @ w.fp4.dequantize()
            if record is not None:
                record("dgrad", (None, None), (None, None), dx, dx)
        else:
            eq, ep = _grad_ms_eden(g, "dgrad")
            n = ep.shape[1]
            wtq = _requantize(w.fp4.pad_rows(n), d, Operand.WEIGHT_T, _emit(e.device, False))
            dx = _gemm(eq, wtq, torch.float32 if w.fwd_signs is not None else out_dtype)[: e.shape[0]]
            if record is not None:
                w_deq = w.fp4.pad_rows(n).dequantize()
                record("dgrad", (eq, target(ep, d.signs)), (wtq, target(w_deq, d.signs, True)),
                       dx, e.float() @ w_deq[: w.rows])
        if w.fwd_signs is not None:
            dx = unrotate(dx, w.fwd_signs)
        return dx.to(out_dtype)
    if w.colwise is None:  # Ŵᵀ: exact for 16×16 blocks, else RTN re-quantization along N
        if w.fp4.mode == "rtn_2d":
            w.colwise = ops.transpose_2d(w.fp4)
        else:
            w.colwise = ops.quantize(w.fp4.dequantize(), "rtn", transpose=True)
    streams = _sr_streams(recipe, g.draw, Operand.GRAD_ROWWISE)
    eq = ops.quantize(e, _grad_mode(recipe), emit=_emit(e.device, False), **streams)
    dx = ops.gemm(eq, w.colwise, out_dtype)
    if record is not None:
        w_deq = w.fp4.dequantize() if w.fp4 is not None else None
        record("dgrad", (eq, target(e)), (w.colwise, target(w_deq, transpose=True) if w_deq is not None else None),
               dx, e.float() @ w_deq if w_deq is not None else None)
    return dx.to(out_dtype)


def _grad_mode(recipe: NVFP4Recipe) -> str:
    return "sr" if recipe.stochastic_rounding else "rtn"


def _sr_streams(recipe: NVFP4Recipe, d: BackwardDraw, operand: int) -> dict:
    """`ops` keyword arguments of the baseline's gradient rounding stream (none for RTN)."""
    if not recipe.stochastic_rounding:
        return {}
    kw = _streams(d, operand)
    kw.pop("signs")
    return kw


def wgrad(
    g: GradOperand, x: ForwardOperand, recipe: Recipe, out_dtype: torch.dtype, record: Record = None
) -> torch.Tensor:
    """∂L/∂W = eᵀ x̂ (N×K): Quartet II re-quantizes the saved x̂ along the tokens M."""
    _check_pair("wgrad", g, x, 0)
    e = g.e
    if "wgrad" in recipe.high_precision_gemms:
        return (e.float().t() @ x.hp.float()).to(out_dtype)
    if e.shape[0] == 0:
        return _zeros(e.shape[1], x.cols, e.device).to(out_dtype)
    if isinstance(recipe, Quartet2Recipe):
        d = g.draw
        if d is None:
            dw = e.float().t() @ x.fp4.dequantize()
            if record is not None:
                record("wgrad", (None, None), (None, None), dw, dw)
        else:
            etq, ep = _grad_ms_eden(g, "wgrad")
            m = ep.shape[0]
            xtq = _requantize(x.fp4.pad_rows(m), d, Operand.INPUT_T, _emit(e.device, False))
            dw = _gemm(etq, xtq, torch.float32 if x.fwd_signs is not None else out_dtype)[: e.shape[1]]
            if record is not None:
                x_deq = x.fp4.pad_rows(m).dequantize()
                record("wgrad", (etq, target(ep, d.signs, True)), (xtq, target(x_deq, d.signs, True)),
                       dw, e.float().t() @ x_deq[: e.shape[0]])
        if x.fwd_signs is not None:
            dw = unrotate(dw, x.fwd_signs)
        return dw.to(out_dtype)
    etq = ops.quantize(
        pad_rows(e, x.colwise.shape[1]), _grad_mode(recipe), signs=x.rht_signs, transpose=True,
        emit=_emit(e.device, False), **_sr_streams(recipe, g.draw, Operand.GRAD_COLWISE),
    )  # fmt: skip
    dw = ops.gemm(etq, x.colwise, out_dtype)
    if record is not None:  # x̂ᵀ's own error needs the high-precision x, not kept: NaN
        et = target(pad_rows(e, x.colwise.shape[1]), x.rht_signs, True)
        record("wgrad", (etq, et), (x.colwise, None), dw, et @ x.colwise.dequantize().t())
    return dw.to(out_dtype)


def check_dims(recipe: Recipe, kind: str, cols: int) -> None:
    """Raise ValueError for an inner dim K that the recipe's forward quantizer cannot handle."""
    k_mult = ROTATION if isinstance(recipe, Quartet2Recipe) and recipe.forward_rotation else 16
    if cols % k_mult:
        raise ValueError(
            f"{recipe.name}: the inner dim K={cols} of the {kind} must be a multiple of {k_mult}; "
            "keep this module in high precision (skip=...)"
        )
