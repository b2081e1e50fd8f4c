"""Shared helpers for the Transformer Engine tests: skip markers, fresh recipes, SQNR."""
from __future__ import annotations

import contextlib

import pytest
import torch

import quartet_te.te as qte

TE_OK, TE_REASON = qte.is_available(return_reason=True)
CUDA_OK = torch.cuda.is_available()

# Every TE test: a GPU and the staged TE stack (tests/te/README in docs/te_gpu_results.md).
needs_te_gpu = [
    pytest.mark.gpu,
    pytest.mark.skipif(not CUDA_OK, reason="needs a CUDA GPU"),
    pytest.mark.skipif(not TE_OK, reason=TE_REASON or "transformer_engine unavailable"),
]


def fresh_recipe(recipe="quartet2", skip=()):
    """A TE CustomRecipe with its own factory (fresh per-name ordinals), so two model copies
    built with the same names draw the same randomness."""
    from transformer_engine.common.recipe import CustomRecipe

    from quartet_te.recipes.factories import QuantizerFactory

    return CustomRecipe(qfactory=QuantizerFactory(recipe, skip=skip))


def sqnr_db(ref: torch.Tensor, test: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio of `test` against `ref`, in dB."""
    ref, test = ref.float(), test.float()
    noise = (ref - test).pow(2).sum().clamp_min(1e-30)
    return float(10 * torch.log10(ref.pow(2).sum() / noise))


def train_step(module, x, g, recipe=None, checkpoint=False):
    """One forward (under `te.autocast(recipe)` unless `recipe` is None, optionally through TE's
    activation checkpointing) and backward of `g`; returns (y, ∂L/∂x, {param name: grad}) and
    clears the module's gradients."""
    import transformer_engine.pytorch as te

    x = x.clone().requires_grad_(True)
    ctx = contextlib.nullcontext() if recipe is None else te.autocast(enabled=True, recipe=recipe)
    with ctx:
        y = te.distributed.checkpoint(module, x) if checkpoint else module(x)
    y.backward(g)
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    module.zero_grad(set_to_none=True)
    return y.detach(), x.grad, grads
