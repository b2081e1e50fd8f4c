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
    if in_features <= 0 or out_features < 0:
        raise ValueError(
            f"{name}: in_features={in_features}, out_features={out_features}: in_features must be positive "
            "(nothing to quantize otherwise) and out_features non-negative; keep this layer in high precision"
        )
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
        # x / W for a high-precision dgrad or wgrad go through save_for_backward, whose version
        # check makes an in-place change of them before the backward an error (as in nn.Linear).
        ctx.save_for_backward(*(op.hp for op in (xop, wop)))
        xop.hp = wop.hp = None
        ctx.xop, ctx.wop = xop, wop
        ctx.recipe, ctx.rotation = recipe, rotation
        ctx.has_bias = bias is not None
        ctx.x_shape, ctx.dtypes = x.shape, (x.dtype, weight.dtype)
        return y.reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        recipe: Recipe = ctx.recipe
        ctx.xop.hp, ctx.wop.hp = ctx.saved_tensors  # raises if x or W was modified in place
        e = grad_out.reshape(ctx.xop.rows, ctx.wop.rows)
        if ctx.wop.rows == 0:  # out_features == 0: nothing to quantize; zeros, as nn.Linear gives
            return _zero_grads(ctx, e)
        needs = tuple(gemm for gemm, need in zip(("dgrad", "wgrad"), ctx.needs_input_grad[:2]) if need)
        g = G.make_grad(e, recipe, ctx.rotation, needs)
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


def _zero_grads(ctx, e: torch.Tensor) -> tuple:
    """The backward of a layer with out_features == 0: zeros of the inputs' shapes."""
    n, k = ctx.wop.rows, ctx.wop.cols
    dx = e.new_zeros(ctx.x_shape, dtype=ctx.dtypes[0]) if ctx.needs_input_grad[0] else None
    dw = e.new_zeros((n, k), dtype=ctx.dtypes[1]) if ctx.needs_input_grad[1] else None
    db = e.new_zeros(n, dtype=ctx.dtypes[1]) if ctx.has_bias and ctx.needs_input_grad[2] else None
    return dx, dw, db, None, None


_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _check_tensor(what: str, t: object, dims: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{what} has dtype {t.dtype}; expected float32, bfloat16 or float16 {dims}")
    if t.device.type == "meta":
        raise ValueError(
            f"{what} is a meta tensor (no data): materialize the module first, e.g. "
            "module.to_empty(device='cpu') and initialize it, or build it on a real device"
        )


def quartet_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, recipe: "str | Recipe",
    rotation: RotationState,
) -> torch.Tensor:
    """Functional linear under `recipe` (a recipe object or preset name: Quartet II or the NVFP4
    baseline); `rotation` is the layer's randomness, e.g. `RotationState(layer_seed(seed, name))`.

    Raises TypeError / ValueError naming the argument for inputs it cannot run (dtype, device,
    shape), before any work is done."""
    recipe = get_recipe(recipe)
    if not isinstance(rotation, RotationState):
        raise TypeError(
            "rotation must be a quartet_te.RotationState (the layer's randomness, e.g. "
            f"RotationState(layer_seed(recipe.seed, name))), got {type(rotation).__name__}"
        )
    _check_tensor("input x", x, "(..., in_features)")
    _check_tensor("weight", weight, "(out_features, in_features)")
    if bias is not None:
        _check_tensor("bias", bias, "(out_features,)")
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
    if x.dim() == 0:
        raise ValueError(f"input x must have at least 1 dim (..., in_features={weight.shape[1]}), got a 0-d tensor")
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"input has {x.shape[-1]} features but weight is {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(
            f"bias must have shape ({weight.shape[0]},) for weight {tuple(weight.shape)}, got {tuple(bias.shape)}"
        )
    for what, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.device != x.device:
            raise ValueError(f"input is on {x.device} but {what} is on {t.device}")
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


def _replace(model: nn.Module, name: str, module: nn.Module) -> nn.Module:
    """Put `module` at dotted path `name` of `model`; returns what was there."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child)
    setattr(parent, child, module)
    return old


def convert(model: nn.Module, recipe: "str | Recipe" = "quartet2", skip: Iterable[str] | None = None) -> nn.Module:
    """Swap every `nn.Linear` of `model` (in place) for a `QuartetLinear` sharing its parameters.

    Args:
        recipe: a recipe object or preset name ("quartet2", "quartet2-rot", "nvfp4-sr", ...).
        skip: names of linears that stay in high precision: full dotted names or dotted suffixes
            (e.g. ("lm_head",) or ("layers.3.mlp.fc2",)). Each entry must match a linear of the
            model (a typo would quantize the layer). None (the default): ("lm_head",) where the
            model has such a linear.
    Returns the model (a new `QuartetLinear` if `model` itself is an `nn.Linear`).

    All or nothing: raises before changing anything, naming every layer whose dims the recipe
    cannot run (ValueError), a `str` skip (TypeError) and skip entries that match nothing
    (ValueError). A linear reachable under several names (a shared module) becomes one
    `QuartetLinear` at all of them, seeded by its first name; skipping it at only some of its
    names is an error.
    """
    from .te.roles import check_skip  # no TE import

    recipe = get_recipe(recipe)
    strict = skip is not None
    skip = check_skip(("lm_head",) if skip is None else skip)
    places: dict[int, list[str]] = {}  # one entry per distinct nn.Linear: all its names
    modules: dict[int, nn.Linear] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if type(module) is nn.Linear:
            places.setdefault(id(module), []).append(name)
            modules[id(module)] = module
    all_names = [n for names in places.values() for n in names]
    unmatched = [s for s in skip if not any(_skipped(n, (s,)) for n in all_names)]
    if strict and unmatched:
        shown = ", ".join(repr(n) for n in all_names[:8]) + (", ..." if len(all_names) > 8 else "")
        raise ValueError(
            f"convert: skip entries {unmatched} match no nn.Linear of the model (entries name linear "
            f"layers, by full dotted name or dotted suffix); its linears: {shown or 'none'}"
        )
    new: dict[int, QuartetLinear] = {}
    errors = []
    for key, names in places.items():
        skipped = [_skipped(n, skip) for n in names]
        if all(skipped):
            continue
        if any(skipped):
            errors.append(
                f"one nn.Linear is shared as {names} but skip={skip} keeps only "
                f"{[n for n, s in zip(names, skipped) if s]} in high precision: skip all of its names or none"
            )
            continue
        try:
            new[key] = QuartetLinear.from_linear(modules[key], recipe, names[0])
        except ValueError as exc:
            errors.append(str(exc))
    if errors:
        raise ValueError("convert: the model was left unchanged: " + "; ".join(errors))
    if type(model) is nn.Linear:
        return new.get(id(model), model)
    swapped: list[tuple[str, nn.Module]] = []
    try:
        for key, names in places.items():
            for name in names if key in new else ():
                swapped.append((name, _replace(model, name, new[key])))
    except BaseException:
        for name, old in reversed(swapped):  # all or nothing
            _replace(model, name, old)
        raise
    return model
