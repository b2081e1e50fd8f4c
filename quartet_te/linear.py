"""Quartet II and NVFP4-baseline linear layers for plain PyTorch (no Transformer Engine needed).

`y = x Wᵀ (+ b)` with x: (..., K), W: (N, K). The three GEMMs follow the spec:

Quartet II
- fprop: ``x̂ = 4/6-RTN(x)``, ``Ŵ = 4/6-RTN(W)`` along K; ``y = x̂ Ŵᵀ``. Only x̂ and Ŵ (FP4) are saved.
- dgrad: ``dx = MS-EDEN(e R) · MS-EDEN(Ŵᵀ R)ᵀ`` along N.
- wgrad: ``dW = MS-EDEN(eᵀ R) · MS-EDEN(x̂ᵀ R)ᵀ`` along the tokens M (zero-padded to 128).
  One fresh R (signs) per layer and backward call, shared by both operands of each GEMM.

NVFP4 baseline (NVIDIA)
- fprop: 1×16 RTN on x, 16×16 blocks on W; the column-wise x̂ᵀ (for wgrad) is quantized from x
  with a fixed RHT-16 along M, as TE does.
- dgrad: ``SR(e) · Ŵ`` with Ŵᵀ the exact transpose of the 2-D blocks.
- wgrad: ``SR(eᵀ H16) · x̂ᵀ`` (RHT-16 along M).

Bias is added and its gradient summed in high precision.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from . import ops
from .recipes import NVFP4Recipe, Quartet2Recipe, Recipe, get_recipe
from .reference.hadamard import hadamard_unrotate
from .rotation import Operand, RotationState, layer_seed
from .telemetry import target
from .tensor import NVFP4Tensor

ROWS_MULTIPLE = 128  # tokens are zero-padded to this for the rotations along M


def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def _out_dtype(x: torch.Tensor) -> torch.dtype:
    dev = x.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return x.dtype


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    if t.shape[0] == rows:
        return t
    return torch.cat((t, t.new_zeros(rows - t.shape[0], *t.shape[1:])), 0)


def check_shapes(recipe: Recipe, in_features: int, out_features: int, name: str = "linear") -> None:
    """Raise ValueError if the layer's dims cannot run under `recipe` (spec §7)."""
    k_mult = 128 if isinstance(recipe, Quartet2Recipe) and recipe.forward_rotation else 16
    if in_features % k_mult:
        raise ValueError(f"{name}: in_features={in_features} must be a multiple of {k_mult} for {recipe.name}")
    n_mult = 128 if isinstance(recipe, Quartet2Recipe) and recipe.backward_quant else 16
    if out_features % n_mult:
        raise ValueError(
            f"{name}: out_features={out_features} must be a multiple of {n_mult} for {recipe.name} "
            "(the backward rotates along N in 128-chunks); keep this layer in high precision"
        )


class _QuartetLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, recipe: Quartet2Recipe, rotation: RotationState):  # type: ignore[override]
        out_dtype = _out_dtype(x)
        x2 = x.reshape(-1, x.shape[-1])
        hp = recipe.high_precision_gemms
        signs = rotation.fixed_signs(128, x.device) if recipe.forward_rotation else None
        mode = "four_over_six" if recipe.four_over_six else "rtn"
        xq = ops.quantize(x2, mode, signs=signs)
        wq = ops.quantize(weight, mode, signs=signs)
        if "fprop" in hp:
            y = x2.float() @ weight.float().t()
        else:
            y = ops.gemm(xq, wq, torch.float32)
            probe = getattr(rotation, "telemetry", None)  # quartet_te.telemetry (opt-in)
            if probe is not None and (step := probe.forward_step()) is not None:
                probe.record(step, "fprop", (xq, target(x2, signs)), (wq, target(weight, signs)), y,
                             x2.float() @ weight.float().t())
        if bias is not None:
            y = y + bias.float()
        ctx.xq, ctx.wq = xq, wq
        ctx.recipe, ctx.rotation = recipe, rotation
        ctx.has_bias = bias is not None
        ctx.x_shape, ctx.dtypes = x.shape, (x.dtype, weight.dtype)
        # High-precision GEMMs in the backward need the high-precision operands.
        ctx.save_for_backward(x2 if "wgrad" in hp else None, weight if "dgrad" in hp else None)
        return y.to(out_dtype).reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x_hp, w_hp = ctx.saved_tensors
        recipe: Quartet2Recipe = ctx.recipe
        xq: NVFP4Tensor = ctx.xq
        wq: NVFP4Tensor = ctx.wq
        e = grad_out.reshape(-1, grad_out.shape[-1])
        m = e.shape[0]
        hp = recipe.high_precision_gemms
        draw = ctx.rotation.next_backward(e.device) if recipe.backward_quant else None
        probe = getattr(ctx.rotation, "telemetry", None)
        step = probe.backward_step(draw) if probe is not None else None

        dx = dw = None
        if ctx.needs_input_grad[0]:
            if "dgrad" in hp:
                dx = e.float() @ w_hp.float()
            elif draw is None:
                dx = e.float() @ wq.dequantize()
                if step is not None:
                    probe.record(step, "dgrad", (None, None), (None, None), dx, dx)
            else:
                eq = ops.quantize(e, "ms_eden", signs=draw.signs, seed=draw.seed, offset=draw.offset(Operand.GRAD_ROWWISE))
                wtq = ops.requantize(wq, signs=draw.signs, seed=draw.seed, offset=draw.offset(Operand.WEIGHT_T))
                dx = ops.gemm(eq, wtq, torch.float32)
                if step is not None:
                    w_deq = wq.dequantize()
                    probe.record(step, "dgrad", (eq, target(e, draw.signs)), (wtq, target(w_deq, draw.signs, True)),
                                 dx, e.float() @ w_deq)
            if recipe.forward_rotation and "dgrad" not in hp:
                dx = hadamard_unrotate(dx, ctx.rotation.fixed_signs(128, dx.device))
            dx = dx.to(ctx.dtypes[0]).reshape(ctx.x_shape)
        if ctx.needs_input_grad[1]:
            if "wgrad" in hp:
                dw = e.float().t() @ x_hp.float()
            elif draw is None:
                dw = e.float().t() @ xq.dequantize()
                if step is not None:
                    probe.record(step, "wgrad", (None, None), (None, None), dw, dw)
            else:
                mp = _round_up(m, ROWS_MULTIPLE)
                etq = ops.quantize(
                    _pad_rows(e, mp), "ms_eden", signs=draw.signs, seed=draw.seed,
                    offset=draw.offset(Operand.GRAD_COLWISE), transpose=True,
                )
                xtq = ops.requantize(xq.pad_rows(mp), signs=draw.signs, seed=draw.seed, offset=draw.offset(Operand.INPUT_T))
                dw = ops.gemm(etq, xtq, torch.float32)
                if step is not None:
                    x_deq = xq.pad_rows(mp).dequantize()
                    probe.record(step, "wgrad", (etq, target(_pad_rows(e, mp), draw.signs, True)),
                                 (xtq, target(x_deq, draw.signs, True)), dw, e.float().t() @ x_deq[:m])
            if recipe.forward_rotation and "wgrad" not in hp:
                dw = hadamard_unrotate(dw, ctx.rotation.fixed_signs(128, dw.device))
            dw = dw.to(ctx.dtypes[1])
        db = e.float().sum(0).to(ctx.dtypes[1]) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, dw, db, None, None


class _NVFP4LinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, recipe: NVFP4Recipe, rotation: RotationState):  # type: ignore[override]
        out_dtype = _out_dtype(x)
        x2 = x.reshape(-1, x.shape[-1])
        hp = recipe.high_precision_gemms
        wq = ops.quantize_2d(weight) if recipe.weight_2d else ops.quantize(weight, "rtn")
        if "fprop" in hp:
            y = x2.float() @ weight.float().t()
        else:
            xq = ops.quantize(x2, "rtn")
            y = ops.gemm(xq, wq, torch.float32)
            probe = getattr(rotation, "telemetry", None)  # quartet_te.telemetry (opt-in)
            if probe is not None and (step := probe.forward_step()) is not None:
                probe.record(step, "fprop", (xq, target(x2)), (wq, target(weight)), y, x2.float() @ weight.float().t())
        if bias is not None:
            y = y + bias.float()
        # The column-wise input for wgrad, quantized now from the high-precision x (as TE does).
        xtq = None
        if "wgrad" not in hp:
            mp = _round_up(x2.shape[0], ROWS_MULTIPLE)
            rht = rotation.fixed_signs(16, x.device) if recipe.wgrad_rht else None
            xtq = ops.quantize(_pad_rows(x2, mp), "rtn", signs=rht, transpose=True)
        ctx.wq, ctx.xtq = wq, xtq
        ctx.recipe, ctx.rotation = recipe, rotation
        ctx.has_bias = bias is not None
        ctx.x_shape, ctx.dtypes = x.shape, (x.dtype, weight.dtype)
        ctx.save_for_backward(x2 if "wgrad" in hp else None, weight if "dgrad" in hp else None)
        return y.to(out_dtype).reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x_hp, w_hp = ctx.saved_tensors
        recipe: NVFP4Recipe = ctx.recipe
        e = grad_out.reshape(-1, grad_out.shape[-1])
        hp = recipe.high_precision_gemms
        draw = ctx.rotation.next_backward(e.device)
        probe = getattr(ctx.rotation, "telemetry", None)
        step = probe.backward_step(draw) if probe is not None else None
        mode = "sr" if recipe.stochastic_rounding else "rtn"
        seed = draw.seed if recipe.stochastic_rounding else None
        dx = dw = None
        if ctx.needs_input_grad[0]:
            if "dgrad" in hp:
                dx = e.float() @ w_hp.float()
            else:
                wq: NVFP4Tensor = ctx.wq
                if wq.mode == "rtn_2d":
                    wt = ops.transpose_2d(wq)
                else:  # 1×16 weight blocks: re-quantize Ŵᵀ along N by RTN
                    wt = ops.quantize(wq.dequantize(), "rtn", transpose=True)
                eq = ops.quantize(e, mode, seed=seed, offset=draw.offset(Operand.GRAD_ROWWISE))
                dx = ops.gemm(eq, wt, torch.float32)
                if step is not None:
                    w_deq = wq.dequantize()
                    probe.record(step, "dgrad", (eq, target(e)), (wt, target(w_deq, transpose=True)), dx, e.float() @ w_deq)
            dx = dx.to(ctx.dtypes[0]).reshape(ctx.x_shape)
        if ctx.needs_input_grad[1]:
            if "wgrad" in hp:
                dw = e.float().t() @ x_hp.float()
            else:
                xtq: NVFP4Tensor = ctx.xtq
                rht = ctx.rotation.fixed_signs(16, e.device) if recipe.wgrad_rht else None
                etq = ops.quantize(
                    _pad_rows(e, xtq.shape[1]), mode, signs=rht, seed=seed,
                    offset=draw.offset(Operand.GRAD_COLWISE), transpose=True,
                )
                dw = ops.gemm(etq, xtq, torch.float32)
                if step is not None:  # x̂ᵀ's own error needs the high-precision x, not kept: NaN
                    et = target(_pad_rows(e, xtq.shape[1]), rht, True)
                    probe.record(step, "wgrad", (etq, et), (xtq, None), dw, et @ xtq.dequantize().t())
            dw = dw.to(ctx.dtypes[1])
        db = e.float().sum(0).to(ctx.dtypes[1]) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, dw, db, None, None


def quartet_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, recipe: Recipe, rotation: RotationState
) -> torch.Tensor:
    """Functional linear under `recipe` (Quartet II or the NVFP4 baseline)."""
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"input has {x.shape[-1]} features but weight is {tuple(weight.shape)}")
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
    check_shapes(recipe, weight.shape[1], weight.shape[0])
    fn = _QuartetLinearFn if isinstance(recipe, Quartet2Recipe) else _NVFP4LinearFn
    return fn.apply(x, weight, bias, recipe, rotation)


class QuartetLinear(nn.Linear):
    """`nn.Linear` whose three GEMMs run in NVFP4 under a Quartet II or NVFP4-baseline recipe.

    The layer's randomness (`self.rotation`) is part of its state dict (extra state), so a
    checkpoint resumes the exact stream of rotations.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        recipe: "str | Recipe" = "quartet2",
        name: str = "",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.recipe = get_recipe(recipe)
        check_shapes(self.recipe, in_features, out_features, name or "QuartetLinear")
        self.rotation = RotationState(layer_seed(self.recipe.seed, name))

    @classmethod
    def from_linear(cls, linear: nn.Linear, recipe: "str | Recipe", name: str = "") -> "QuartetLinear":
        """A QuartetLinear sharing `linear`'s parameters (no copy)."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = linear.in_features, linear.out_features
        new.weight, new.bias = linear.weight, linear.bias
        new.recipe = get_recipe(recipe)
        check_shapes(new.recipe, linear.in_features, linear.out_features, name or "linear")
        new.rotation = RotationState(layer_seed(new.recipe.seed, name))
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return quartet_linear(x, self.weight, self.bias, self.recipe, self.rotation)

    def get_extra_state(self) -> dict[str, int]:
        return self.rotation.state_dict()

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.rotation.load_state_dict(state)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, recipe={self.recipe.name}"


def _skipped(name: str, skip: Iterable[str]) -> bool:
    return any(name == s or name.endswith("." + s) for s in skip)


def convert(model: nn.Module, recipe: "str | Recipe" = "quartet2", skip: Iterable[str] = ("lm_head",)) -> nn.Module:
    """Swap every `nn.Linear` of `model` (in place) for a `QuartetLinear` sharing its parameters.

    Args:
        recipe: a recipe object or preset name ("quartet2", "quartet2-rot", "nvfp4", ...).
        skip: layer names (full dotted names or their last components, e.g. "lm_head") that stay
            in high precision.
    Returns the model. Raises ValueError naming any layer whose dims the recipe cannot run.
    """
    recipe = get_recipe(recipe)
    skip = tuple(skip)
    if type(model) is nn.Linear:
        return QuartetLinear.from_linear(model, recipe)
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if type(module) is nn.Linear and not _skipped(name, skip)
    ]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, QuartetLinear.from_linear(module, recipe, name))
    return model
