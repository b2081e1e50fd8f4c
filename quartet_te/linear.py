"""Quartet II and NVFP4-baseline linear layers for plain PyTorch (no Transformer Engine needed).

`y = x Wᵀ (+ b)` with x: (..., K), W: (N, K). The three GEMMs are those of `quartet_te.gemms`
(the same code the TE recipe runs), following the spec:

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

import functools
from typing import Iterable

import torch
from torch import nn

from . import gemms as G
from .recipes import NVFP4Recipe, Quartet2Recipe, Recipe, get_recipe
from .rotation import RotationState, layer_seed


def _out_dtype(x: torch.Tensor) -> torch.dtype:
    dev = x.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return x.dtype


def check_shapes(recipe: Recipe, in_features: int, out_features: int, name: str = "linear") -> None:
    """Raise ValueError if the layer's dims cannot run under `recipe` (spec §7): the inner dim K
    is quantized in blocks of 16 (rotated in chunks of 128 with `forward_rotation`); N and the
    token count are zero-padded where the backward rotates along them."""
    k_mult = 128 if isinstance(recipe, Quartet2Recipe) and recipe.forward_rotation else 16
    if in_features % k_mult:
        raise ValueError(
            f"{name}: in_features={in_features} must be a multiple of {k_mult} for {recipe.name}; "
            "keep this layer in high precision"
        )
    if isinstance(recipe, NVFP4Recipe) and out_features % 16:
        # The baseline quantizes e along N without padding, and W in 16×16 blocks.
        raise ValueError(
            f"{name}: out_features={out_features} must be a multiple of 16 for {recipe.name}; "
            "keep this layer in high precision"
        )


class _LinearFn(torch.autograd.Function):
    """One linear under a recipe; the FP4 operands (not x or W) are what the backward keeps."""

    @staticmethod
    def forward(ctx, x, weight, bias, recipe: Recipe, rotation: RotationState):  # type: ignore[override]
        x2 = x.reshape(-1, x.shape[-1])
        xop = G.quantize_input(x2, recipe, rotation)
        wop = G.quantize_weight(weight, recipe, rotation)
        probe = rotation.telemetry  # quartet_te.telemetry (opt-in)
        step = probe.forward_step() if probe is not None and "fprop" not in recipe.high_precision_gemms else None
        record = None
        if step is not None:  # a sampled step: fprop telemetry compares with x Wᵀ
            record = functools.partial(probe.record, step)
            xop.hp = x2 if xop.hp is None else xop.hp
            wop.hp = weight if wop.hp is None else wop.hp
        y = G.fprop(xop, wop, bias, recipe, _out_dtype(x), record)
        for op in (xop, wop):
            if not op.hp_saved:  # high precision kept only for fprop or telemetry: drop it now
                op.hp = None
        ctx.xop, ctx.wop = xop, wop
        ctx.recipe, ctx.rotation = recipe, rotation
        ctx.has_bias = bias is not None
        ctx.x_shape, ctx.dtypes = x.shape, (x.dtype, weight.dtype)
        return y.reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        recipe: Recipe = ctx.recipe
        e = grad_out.reshape(-1, grad_out.shape[-1])
        g = G.make_grad(e, recipe, ctx.rotation)
        probe = ctx.rotation.telemetry
        step = probe.backward_step(g.draw) if probe is not None else None

        def record_for(gemm: str):
            if step is None or gemm in recipe.high_precision_gemms:
                return None
            return functools.partial(probe.record, step)

        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = G.dgrad(g, ctx.wop, recipe, ctx.dtypes[0], record_for("dgrad")).reshape(ctx.x_shape)
        if ctx.needs_input_grad[1]:
            dw = G.wgrad(g, ctx.xop, recipe, ctx.dtypes[1], record_for("wgrad"))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = e.float().sum(0).to(ctx.dtypes[1])
        return dx, dw, db, None, None


def quartet_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, recipe: Recipe, rotation: RotationState
) -> torch.Tensor:
    """Functional linear under `recipe` (Quartet II or the NVFP4 baseline)."""
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"input has {x.shape[-1]} features but weight is {tuple(weight.shape)}")
    if x.device != weight.device:
        raise ValueError(f"input is on {x.device} but weight is on {weight.device}")
    check_shapes(recipe, weight.shape[1], weight.shape[0])
    return _LinearFn.apply(x, weight, bias, recipe, rotation)


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
