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
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from . import ops
from .recipes import NVFP4Recipe, Quartet2Recipe, Recipe
from .reference.formats import INV_SQRT
from .reference.hadamard import check_signs, hadamard_matrix
from .rotation import BackwardDraw, Operand, RotationState
from .telemetry import target
from .tensor import NVFP4Tensor

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
    """∂L/∂y (M×N, high precision) and the randomness of this backward call (None: RTN/BF16)."""

    e: torch.Tensor
    draw: BackwardDraw | None


def _forward_mode(recipe: Quartet2Recipe) -> str:
    return "four_over_six" if recipe.four_over_six else "rtn"


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
        op.fp4 = ops.quantize(x, _forward_mode(recipe), signs=op.fwd_signs)
        return op
    if "fprop" not in hp_gemms:
        op.fp4 = ops.quantize(x, "rtn")
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
        op.fp4 = ops.quantize(w, _forward_mode(recipe), signs=op.fwd_signs)
    else:
        op.fp4 = ops.quantize_2d(w) if recipe.weight_2d else ops.quantize(w, "rtn")
    return op


def make_grad(e: torch.Tensor, recipe: Recipe, rotation: RotationState) -> GradOperand:
    """Wrap ∂L/∂y and draw this backward call's randomness (advances the layer's step once).

    The 128 signs are drawn on the CPU and copied over: the same bits (integer Philox), without
    the few hundred tiny kernel launches the reference generator costs on a GPU per draw.
    """
    if isinstance(recipe, Quartet2Recipe) and not recipe.backward_quant:
        return GradOperand(e, None)
    draw = rotation.next_backward("cpu")
    if e.device.type != "cpu":
        draw = BackwardDraw(signs=draw.signs.to(e.device), seed=draw.seed, step=draw.step)
    return GradOperand(e, draw)


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
        y = ops.gemm(x.fp4, w.fp4, torch.float32)
        if record is not None:
            xt = target(x.hp, x.fwd_signs) if x.hp is not None else None
            wt = target(w.hp, w.fwd_signs) if w.hp is not None else None
            ref = x.hp.float() @ w.hp.float().t() if xt is not None and wt is not None else None
            record("fprop", (x.fp4, xt), (w.fp4, wt), y, ref)
    if bias is not None:
        y = y.add_(bias.float()) if y.dtype == torch.float32 else y + bias.float()
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
            n = round_up(w.rows, ROTATION)
            eq = ops.quantize(
                pad_cols(e, n), "ms_eden", signs=d.signs, seed=d.seed, offset=d.offset(Operand.GRAD_ROWWISE)
            )
            wtq = ops.requantize(w.fp4.pad_rows(n), signs=d.signs, seed=d.seed, offset=d.offset(Operand.WEIGHT_T))
            dx = ops.gemm(eq, wtq, torch.float32)
            if record is not None:
                w_deq = w.fp4.pad_rows(n).dequantize()
                record("dgrad", (eq, target(pad_cols(e, n), d.signs)), (wtq, target(w_deq, d.signs, True)),
                       dx, e.float() @ w_deq[: w.rows])
        if w.fwd_signs is not None:
            dx = unrotate(dx, w.fwd_signs)
        return dx.to(out_dtype)
    if w.colwise is None:  # Ŵᵀ: exact for 16×16 blocks, else RTN re-quantization along N
        if w.fp4.mode == "rtn_2d":
            w.colwise = ops.transpose_2d(w.fp4)
        else:
            w.colwise = ops.quantize(w.fp4.dequantize(), "rtn", transpose=True)
    mode, seed = _grad_mode(recipe, g.draw)
    eq = ops.quantize(e, mode, seed=seed, offset=g.draw.offset(Operand.GRAD_ROWWISE))
    dx = ops.gemm(eq, w.colwise, torch.float32)
    if record is not None:
        w_deq = w.fp4.dequantize() if w.fp4 is not None else None
        record("dgrad", (eq, target(e)), (w.colwise, target(w_deq, transpose=True) if w_deq is not None else None),
               dx, e.float() @ w_deq if w_deq is not None else None)
    return dx.to(out_dtype)


def _grad_mode(recipe: NVFP4Recipe, draw: BackwardDraw) -> tuple[str, int | None]:
    return ("sr", draw.seed) if recipe.stochastic_rounding else ("rtn", None)


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
            m = round_up(e.shape[0], ROTATION)
            etq = ops.quantize(
                pad_rows(e, m), "ms_eden", signs=d.signs, seed=d.seed,
                offset=d.offset(Operand.GRAD_COLWISE), transpose=True,
            )
            xtq = ops.requantize(x.fp4.pad_rows(m), signs=d.signs, seed=d.seed, offset=d.offset(Operand.INPUT_T))
            dw = ops.gemm(etq, xtq, torch.float32)
            if record is not None:
                x_deq = x.fp4.pad_rows(m).dequantize()
                record("wgrad", (etq, target(pad_rows(e, m), d.signs, True)), (xtq, target(x_deq, d.signs, True)),
                       dw, e.float().t() @ x_deq[: e.shape[0]])
        if x.fwd_signs is not None:
            dw = unrotate(dw, x.fwd_signs)
        return dw.to(out_dtype)
    mode, seed = _grad_mode(recipe, g.draw)
    etq = ops.quantize(
        pad_rows(e, x.colwise.shape[1]), mode, signs=x.rht_signs, seed=seed,
        offset=g.draw.offset(Operand.GRAD_COLWISE), transpose=True,
    )
    dw = ops.gemm(etq, x.colwise, torch.float32)
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
