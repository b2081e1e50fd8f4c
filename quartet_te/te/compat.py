"""Two narrow adapters for gaps in TE's custom-GEMM dispatch (measured on TE 2.20.2).

1. `custom_gemm` (TE `custom_recipes/gemm.py`) drops `out=` and `accumulate=`, so with
   `fuse_wgrad_accumulation=True` (Megatron's default gradient-accumulation fusion) the weight
   gradient is computed and thrown away: `main_grad` never receives it, silently. It also infers
   the GEMM type from `(grad, layout)`, which `LayerNormMLP`'s FC1 wgrad (called with
   `grad=False`) gets wrong.
2. `general_grouped_gemm` (used by `GroupedLinear`) has no custom dispatch at all: it hands
   custom storages to the C++ grouped GEMM.

`install()` wraps both module-level functions once per process. Each wrapper handles only GEMMs
whose two operands are `QuartetStorage`s and calls the original for everything else, so TE's own
recipes (and other custom recipes) run exactly as before. Our quantizers' `qgemm` stays the
contract path for everything else. `install()` also declares `QuartetGradQuantizer` a virtual
`IdentityQuantizer` (done on import of `quantizer`), so TE computes the bias gradient in high
precision instead of calling the C++ `bgrad_quantize`, which rejects Python quantizers.
"""
from __future__ import annotations

import functools
import importlib
from typing import Any, Callable, Optional

import torch

from .quantizer import is_ours, run_gemm, write_out

_GEMM_MODULE = "transformer_engine.pytorch.cpp_extensions.gemm"
_GROUPED_MODULE = "transformer_engine.pytorch.module.grouped_linear"
_MARK = "_quartet_te_original"


def _wrap_custom_gemm(original: Callable) -> Callable:
    @functools.wraps(original)
    def custom_gemm(
        A: Any, B: Any, workspace: Any, out_dtype: Optional[torch.dtype] = None, quantization_params: Any = None,
        gelu: bool = False, gelu_in: Any = None, accumulate: bool = False, layout: str = "TN",
        out: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
        use_split_accumulator: bool = False, grad: bool = False,
    ):
        if not (is_ours(A) and is_ours(B)):
            return original(A, B, workspace, out_dtype, quantization_params, gelu, gelu_in, accumulate,
                            layout, out, bias, use_split_accumulator, grad)
        if gelu:
            raise NotImplementedError("quartet_te: a GELU fused into the GEMM epilogue is not supported")
        # TE calls general_gemm(weight-side, x-side); custom_gemm swaps them back.
        result = run_gemm(B, A, bias=bias, out_dtype=out_dtype)
        return write_out(result, out, accumulate), None, None, None

    setattr(custom_gemm, _MARK, original)
    return custom_gemm


def _split_rows(t: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    return list(torch.split(t, sizes)) if sizes else [t]


def _wrap_grouped_gemm(original: Callable) -> Callable:
    @functools.wraps(original)
    def general_grouped_gemm(
        A: list, B: list, out: list, quantization_params: list, out_dtype: torch.dtype, layout: str = "TN",
        m_splits: Optional[list[int]] = None, gelu: bool = False, grad: bool = False, accumulate: bool = False,
        bias: Optional[list] = None, use_bias: bool = False, use_split_accumulator: bool = False,
        D_dtype: Any = None, single_output: bool = False,
    ):
        ours = [is_ours(t) for t in list(A) + list(B)]
        if not any(ours):
            return original(A, B, out, quantization_params, out_dtype, layout, m_splits, gelu, grad, accumulate,
                            bias, use_bias, use_split_accumulator, D_dtype, single_output)
        if not all(ours):
            raise TypeError("quartet_te: a grouped GEMM mixes quartet_te operands with other tensors")
        if gelu:
            raise NotImplementedError("quartet_te: a GELU fused into the grouped GEMM is not supported")
        n = len(A)
        if single_output:
            if m_splits is None:
                raise ValueError("single_output grouped GEMM needs m_splits")
            outs = _split_rows(out[0], list(m_splits))
        else:
            outs = list(out)
        if len(outs) != n or len(B) != n:
            raise ValueError(f"grouped GEMM: {n} A operands, {len(B)} B operands, {len(outs)} outputs")
        grad_bias = [None] * n
        for i in range(n):
            fwd_bias = bias[i] if (use_bias and not grad and bias is not None) else None
            result = run_gemm(B[i], A[i], bias=fwd_bias, out_dtype=outs[i].dtype)
            write_out(result, outs[i], accumulate)
            if grad and use_bias:  # bias gradient of a wgrad GEMM: Σ_rows e, in high precision
                grad_bias[i] = B[i].operand.e.float().sum(0).to(outs[i].dtype)
        result_out = out if not single_output else [out[0]]
        return result_out, (grad_bias if grad else bias), None

    setattr(general_grouped_gemm, _MARK, original)
    return general_grouped_gemm


def _patch(module_name: str, attr: str, wrap: Callable[[Callable], Callable]) -> None:
    module = importlib.import_module(module_name)
    current = getattr(module, attr, None)
    if current is None:
        raise ImportError(
            f"quartet_te needs {module_name}.{attr}, which this Transformer Engine does not have; "
            "supported: transformer_engine 2.9 to 2.20"
        )
    if not hasattr(current, _MARK):
        setattr(module, attr, wrap(current))


@functools.lru_cache(maxsize=None)
def install() -> bool:
    """Install the adapters (idempotent; called by our factories before building quantizers)."""
    _patch(_GEMM_MODULE, "custom_gemm", _wrap_custom_gemm)
    _patch(_GROUPED_MODULE, "general_grouped_gemm", _wrap_grouped_gemm)
    return True


def uninstall() -> None:
    """Restore TE's original functions (tests; normal runs never need it)."""
    for module_name, attr in ((_GEMM_MODULE, "custom_gemm"), (_GROUPED_MODULE, "general_grouped_gemm")):
        module = importlib.import_module(module_name)
        current = getattr(module, attr, None)
        if current is not None and hasattr(current, _MARK):
            setattr(module, attr, getattr(current, _MARK))
    install.cache_clear()
