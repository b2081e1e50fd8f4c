"""Our TE quantizers and storages (TE's custom-recipe contract) and the GEMM dispatch.

Contract (TE 2.9+ `CustomRecipe`): a quantizer whose `custom` property is true returns a
storage whose `custom` is true; TE's `general_gemm` then hands both storages of a GEMM to
`custom_gemm`, which calls `qgemm(...)` on the first operand's quantizer: the input quantizer for
the forward GEMM, the grad-output quantizer for both backward GEMMs. So the grad-output quantizer
of a layer owns the layer's backward randomness (`RotationState`): it draws one `BackwardDraw`
per backward call when TE quantizes ∂L/∂y, and the storage carries that draw to the dgrad and
wgrad GEMMs, where it re-quantizes the saved FP4 weight and input with the same signs.

Which GEMM runs is decided from the operands' kinds, not from the `gemm_type` TE passes:
(input, weight) is fprop, (grad, weight) dgrad, (grad, input) wgrad. TE 2.20's `custom_gemm`
infers the type from `(grad, layout)`, and `LayerNormMLP` calls its FC1 wgrad GEMM with
`grad=False`, which `custom_gemm` reports as FPROP: that is what makes TE's reference NVFP4
factory fail there with "K dimension mismatch between qx and qw".

This module imports Transformer Engine; import it only through `quartet_te.te`.
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Optional

import torch
from transformer_engine.pytorch.quantized_tensor import QuantizedTensorStorage, Quantizer
from transformer_engine.pytorch.tensor.identity_tensor import IdentityQuantizer

from ..recipes import NVFP4Recipe, Recipe
from ..rotation import RotationState
from ..tensor import NVFP4Tensor
from .. import gemms as O
from .roles import SlotKind

log = logging.getLogger(__name__)
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _fp4_fields(t: Optional[NVFP4Tensor]) -> list[Optional[torch.Tensor]]:
    return [None, None, None] if t is None else [t.data, t.block_scales, t.tensor_scale]


def _fp4_from(fields: list, like: Optional[NVFP4Tensor]) -> Optional[NVFP4Tensor]:
    """`like` with its tensors replaced by `fields` (unchanged if `like` is None or if the
    tensors are the very same objects)."""
    if like is None or fields[0] is None:
        return like
    if fields[0] is like.data and fields[1] is like.block_scales and fields[2] is like.tensor_scale:
        return like
    return NVFP4Tensor(fields[0], fields[1], fields[2], mode=like.mode, rotation=like.rotation)


class QuartetStorage(QuantizedTensorStorage):
    """What our quantizers return: an operand (`operands.ForwardOperand` / `GradOperand`) plus
    the metadata TE reads (`original_shape`, `dtype`, `_quantizer`).

    `data`, `scale`, `data_t` and `scale_t` exist because TE's `custom_gemm` checks them for
    None before calling `qgemm`; they are presence markers only (the packed FP4 data, or the
    gradient): `qgemm` reads the operand itself, and re-quantizes the saved FP4 operand for the
    backward instead of keeping a transposed copy.
    """

    def __init__(self, operand: Any, quantizer: "QuartetQuantizer", dtype: torch.dtype, shape: tuple[int, ...]):
        self.operand = operand
        self._quantizer = quantizer
        self._dtype = dtype
        self.original_shape = tuple(shape)

    custom = property(lambda self: True, doc="TE's flag for storages handled by `qgemm`.")
    dtype = property(lambda self: self._dtype, doc="Nominal (high-precision) dtype.")

    @property
    def recipe(self) -> Recipe:
        return self._quantizer.recipe

    @property
    def kind(self) -> SlotKind:
        return self._quantizer.kind

    @property
    def device(self) -> torch.device:
        op = self.operand
        return op.e.device if isinstance(op, O.GradOperand) else op.device

    def _marker(self) -> torch.Tensor:
        op = self.operand
        if isinstance(op, O.GradOperand):
            return op.e
        for t in (op.fp4, op.hp, op.colwise):
            if t is not None:
                return t if isinstance(t, torch.Tensor) else t.data
        return torch.empty(0, dtype=torch.uint8, device=op.device)

    data = property(lambda self: self._marker())
    scale = property(lambda self: self._marker())
    data_t = property(lambda self: self._marker())
    scale_t = property(lambda self: self._marker())

    def size(self, dim: Optional[int] = None):  # noqa: D401 - torch-style
        """Logical shape (or one dim of it), as TE expects from a quantized tensor."""
        shape = torch.Size(self.original_shape)
        return shape if dim is None else shape[dim]

    def update_usage(self, rowwise_usage: Optional[bool] = None, columnwise_usage: Optional[bool] = None) -> None:
        """Quartet II keeps the row-wise FP4 operand (the backward re-quantizes from it) and builds
        column-wise operands when a backward GEMM needs them. The baseline's input drops its
        row-wise x̂ when TE says only the column-wise x̂ᵀ is needed (as TE's NVFP4 does)."""
        op = self.operand
        if (
            rowwise_usage is False
            and isinstance(op, O.ForwardOperand)
            and op.kind == "input"
            and isinstance(self.recipe, NVFP4Recipe)
            and op.colwise is not None
        ):
            op.fp4 = None

    def get_usages(self) -> dict[str, bool]:
        return {"rowwise": True, "columnwise": True}

    def dequantize(self, *, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """High-precision view: what the forward GEMM used, or the gradient itself."""
        dtype = dtype or self._dtype
        op = self.operand
        out = op.e.to(dtype) if isinstance(op, O.GradOperand) else op.dequantize(dtype)
        return out.reshape(self.original_shape)

    def prepare_for_saving(self) -> tuple[list[Optional[torch.Tensor]], "QuartetStorage"]:
        """Hand the tensors to `save_for_backward`: packed FP4 and scales, plus the
        high-precision tensor only where a backward GEMM runs in high precision.

        The storage keeps its own references (TE may reuse a cached weight workspace before the
        backward restores it), so this never frees memory by itself."""
        op = self.operand
        if isinstance(op, O.GradOperand):
            return [op.e], self
        if not op.hp_saved and op.kind == "input":
            op.hp = None  # only the forward GEMM needed it (fprop in high precision)
        hp = op.hp if op.hp_saved else None
        return _fp4_fields(op.fp4) + _fp4_fields(op.colwise) + [hp], self

    def restore_from_saved(self, tensors: list[Optional[torch.Tensor]]) -> list[Optional[torch.Tensor]]:
        """Take back what `prepare_for_saving` handed out (possibly moved, e.g. by offloading)."""
        op = self.operand
        if isinstance(op, O.GradOperand):
            if tensors[0] is not None:
                op.e = tensors[0]
            return tensors[1:]
        op.fp4 = _fp4_from(tensors[0:3], op.fp4)
        op.colwise = _fp4_from(tensors[3:6], op.colwise)
        if op.hp_saved:
            op.hp = tensors[6]
        return tensors[7:]

    def get_data_tensors(self) -> tuple[Optional[torch.Tensor], ...]:
        op = self.operand
        if isinstance(op, O.GradOperand):
            return (op.e,)
        return tuple(_fp4_fields(op.fp4) + _fp4_fields(op.colwise) + [op.hp])

    def clear(self) -> None:
        """Drop every tensor (TE calls this to free memory early)."""
        op = self.operand
        if isinstance(op, O.GradOperand):
            op.e = torch.empty(0, device=op.e.device) if op.e is not None else None
        else:
            op.fp4 = op.colwise = op.hp = None

    def __repr__(self) -> str:
        return (
            f"QuartetStorage(kind={self.kind.value}, shape={self.original_shape}, dtype={self._dtype}, "
            f"recipe={self.recipe.name})"
        )


class QuartetQuantizer(Quantizer):
    """Quantizes one tensor slot (input, weight) of one TE module under a recipe.

    Args:
        kind: `SlotKind.INPUT` or `SlotKind.WEIGHT` here; grad-output slots use
            `QuartetGradQuantizer`.
        recipe: a `Quartet2Recipe` or `NVFP4Recipe`.
        rotation: the layer's randomness (fixed forward / RHT-16 signs for forward slots; the
            per-step backward draws for grad-output slots).

    `telemetry` (a `quartet_te.telemetry.LayerProbe`, set by `Telemetry.attach` on the input and
    weight slots) is read once per GEMM; None (the default) costs nothing else.
    """

    def __init__(self, kind: SlotKind, recipe: Recipe, rotation: RotationState) -> None:
        if kind is SlotKind.PASSTHROUGH:
            raise ValueError("passthrough slots use TE's IdentityQuantizer, not QuartetQuantizer")
        super().__init__(rowwise=True, columnwise=True)
        self.internal = True
        self.kind = kind
        self.recipe = recipe
        self.rotation = rotation
        self.telemetry: Any = None

    custom = property(lambda self: True, doc="TE's flag: dispatch GEMMs to `qgemm`.")

    def copy(self) -> "QuartetQuantizer":
        """A shallow copy sharing the layer's rotation state (same layer, same randomness)."""
        new = type(self)(self.kind, self.recipe, self.rotation)
        new.set_usage(rowwise=self.rowwise_usage, columnwise=self.columnwise_usage)
        new.internal = self.internal
        new.telemetry = self.telemetry
        return new

    def _operand(self, t2: torch.Tensor) -> Any:
        if self.kind is SlotKind.INPUT:
            return O.quantize_input(t2, self.recipe, self.rotation)
        if self.kind is SlotKind.WEIGHT:
            return O.quantize_weight(t2, self.recipe, self.rotation)
        return O.make_grad(t2, self.recipe, self.rotation)

    def quantize_impl(self, tensor: torch.Tensor) -> QuartetStorage:
        if not isinstance(tensor, torch.Tensor) or tensor.dtype not in _FLOAT_DTYPES:
            got = tensor.dtype if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise TypeError(f"{type(self).__name__}({self.kind.value}) needs a float32/bf16/fp16 tensor, got {got}")
        if tensor.dim() < 2 and self.kind is not SlotKind.WEIGHT:
            raise ValueError(f"{self.kind.value} must have at least 2 dims, got shape {tuple(tensor.shape)}")
        shape = tuple(tensor.shape)
        t2 = tensor.detach()
        if t2.dim() != 2:
            t2 = t2.reshape(-1, shape[-1])
        op = self._operand(t2)
        probe = self.telemetry
        if probe is not None and self.kind is not SlotKind.GRAD_OUTPUT and op.hp is None and op.rows:
            if probe.forward_step() is not None:  # a sampled step: fprop telemetry needs x and W
                op.hp = t2
        return QuartetStorage(op, self, tensor.dtype, shape)

    def quantize(
        self, tensor: torch.Tensor, *, out: Optional[QuartetStorage] = None, dtype: Optional[torch.dtype] = None
    ) -> QuartetStorage:
        """Quantize `tensor` (or refresh `out` in place). No autograd node: TE's module
        functions compute the gradients themselves."""
        if out is not None:
            return self.update_quantized(tensor, out)
        return self.quantize_impl(tensor)

    def update_quantized(
        self, src: torch.Tensor, dst: QuantizedTensorStorage, *, noop_flag: Optional[torch.Tensor] = None
    ) -> QuartetStorage:
        """Re-quantize `src` into the cached workspace `dst` (TE's weight cache).

        `noop_flag` (a device tensor: TE's "skip the weight update" for later micro-batches) is read
        on the host, except while a CUDA graph is being captured (Megatron's local graphs pass
        one), where reading it is not allowed: there the weight is re-quantized anyway, which
        gives the same bits because forward quantization is deterministic (RTN / Four over Six,
        fixed rotations) and the weight does not change between micro-batches."""
        if not isinstance(dst, QuartetStorage):
            raise TypeError(f"{type(self).__name__} can only update a QuartetStorage, got {type(dst).__name__}")
        if noop_flag is not None and not (src.is_cuda and torch.cuda.is_current_stream_capturing()):
            if bool(noop_flag.item() != 0):
                return dst
        fresh = self.quantize_impl(src)
        dst.operand, dst._dtype, dst.original_shape = fresh.operand, fresh._dtype, fresh.original_shape
        dst._quantizer = self
        return dst

    def is_requantization_safe(self) -> bool:
        """RTN forward quantization is deterministic; a gradient draw is not."""
        return self.kind is not SlotKind.GRAD_OUTPUT

    def _get_compatible_recipe(self):
        from transformer_engine.common.recipe import CustomRecipe

        return CustomRecipe

    def qgemm(
        self, qx: Any, qw: Any, m_params: Any, out_dtype: Optional[torch.dtype], sx: Any, sw: Any,
        bias: Optional[torch.Tensor] = None, out: Optional[torch.Tensor] = None, accumulate: bool = False,
        gemm_type: Any = None, qresult_x: Optional[QuartetStorage] = None, qresult_w: Optional[QuartetStorage] = None,
    ) -> torch.Tensor:
        """TE's custom-GEMM hook: run the GEMM of `qresult_x` and `qresult_w` (the raw `qx`,
        `qw`, `sx`, `sw` are only presence markers)."""
        declared = getattr(gemm_type, "value", gemm_type)
        result = run_gemm(qresult_x, qresult_w, bias=bias, out_dtype=out_dtype, declared=declared)
        return write_out(result, out, accumulate)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind.value}, recipe={self.recipe.name}, rotation={self.rotation})"


class QuartetGradQuantizer(QuartetQuantizer):
    """Grad-output slot: wraps ∂L/∂y and draws the layer's randomness for this backward call.

    Declared a virtual subclass of TE's `IdentityQuantizer` (see `compat.install`): TE's
    `grad_output_preprocess` computes the bias gradient in high precision for those and sends
    every other unknown quantizer to the C++ `bgrad_quantize`, which rejects Python quantizers.
    """

    dtype = None  # read by TE's grouped-GEMM checks on Identity quantizers: keep the input dtype

    def __init__(self, kind: SlotKind, recipe: Recipe, rotation: RotationState) -> None:
        if kind is not SlotKind.GRAD_OUTPUT:
            raise ValueError(f"QuartetGradQuantizer is for grad-output slots, got {kind}")
        super().__init__(kind, recipe, rotation)


IdentityQuantizer.register(QuartetGradQuantizer)


def make_quantizer(kind: SlotKind, recipe: Recipe, rotation: RotationState) -> QuartetQuantizer:
    """The quantizer for one of our slots (kind INPUT, WEIGHT or GRAD_OUTPUT)."""
    cls = QuartetGradQuantizer if kind is SlotKind.GRAD_OUTPUT else QuartetQuantizer
    return cls(kind, recipe, rotation)


def is_ours(x: Any) -> bool:
    return isinstance(x, QuartetStorage)


def _storage(x: Any, what: str) -> QuartetStorage:
    if not is_ours(x):
        raise TypeError(f"{what} must be a QuartetStorage (a tensor quantized by quartet_te), got {type(x).__name__}")
    return x


def gemm_kind(x: QuartetStorage, w: QuartetStorage) -> str:
    """"fprop", "dgrad" or "wgrad" from the operand kinds (x-side first, as TE's custom_gemm)."""
    pair = (x.kind, w.kind)
    if pair == (SlotKind.INPUT, SlotKind.WEIGHT):
        return "fprop"
    if pair == (SlotKind.GRAD_OUTPUT, SlotKind.WEIGHT):
        return "dgrad"
    if pair == (SlotKind.GRAD_OUTPUT, SlotKind.INPUT):
        return "wgrad"
    raise TypeError(f"no GEMM takes a {x.kind.value} and a {w.kind.value} operand")


def run_gemm(
    x: Any, w: Any, *, bias: Optional[torch.Tensor], out_dtype: Optional[torch.dtype], declared: Optional[str] = None
) -> torch.Tensor:
    """The GEMM of TE's (post-swap) operands `x` (input or grad) and `w` (weight or input).

    Returns y (M×N, or the input's leading dims × N), ∂L/∂x (M×K) or ∂L/∂W (N×K).
    """
    x, w = _storage(x, "qresult_x"), _storage(w, "qresult_w")
    if x.recipe != w.recipe:
        raise ValueError(f"the two operands were quantized under different recipes: {x.recipe} and {w.recipe}")
    kind = gemm_kind(x, w)
    if declared is not None and declared != kind:
        log.debug("TE declared a %s GEMM for (%s, %s) operands: running %s", declared, x.kind.value, w.kind.value, kind)
    if bias is not None and kind != "fprop":
        raise NotImplementedError(f"a bias in the {kind} GEMM is not supported (TE passes none under quantization)")
    recipe = x.recipe
    dtype = out_dtype or x.dtype
    record = _telemetry(kind, x, w)
    if kind == "fprop":
        y = O.fprop(x.operand, w.operand, bias, recipe, dtype, record)
        if record is not None:
            for op in (x.operand, w.operand):
                if not op.hp_saved:  # only kept for the telemetry: release it
                    op.hp = None
        if len(x.original_shape) > 2:
            y = y.view(*x.original_shape[:-1], y.shape[-1])
        return y
    if kind == "dgrad":
        return O.dgrad(x.operand, w.operand, recipe, dtype, record)
    return O.wgrad(x.operand, w.operand, recipe, dtype, record)


def _telemetry(kind: str, x: QuartetStorage, w: QuartetStorage) -> Optional[Any]:
    """The telemetry hook of this GEMM on a sampled step, else None. The probe sits on the
    layer's forward quantizers: the input's for fprop and wgrad, the weight's for dgrad."""
    probe = (x if kind == "fprop" else w)._quantizer.telemetry
    if probe is None or kind in x.recipe.high_precision_gemms:
        return None
    step = probe.forward_step() if kind == "fprop" else probe.backward_step(x.operand.draw, call=x.operand)
    return None if step is None else functools.partial(probe.record, step)


def write_out(result: torch.Tensor, out: Optional[torch.Tensor], accumulate: bool) -> torch.Tensor:
    """Honour TE's `out=` / `accumulate=` (wgrad accumulation into `main_grad`)."""
    if out is None:
        if accumulate:
            raise ValueError("accumulate=True needs an output tensor (out=None given)")
        return result
    if out.shape != result.shape and out.numel() == result.numel():
        result = result.reshape(out.shape)
    if accumulate:
        out.add_(result.to(out.dtype))
    else:
        out.copy_(result)
    return out
