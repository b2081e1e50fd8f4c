"""Run megatron-core on a machine without CUDA (tests, CI, the tiny CPU config of the driver).

megatron-core assumes a GPU in a few places that a CPU run reaches: ``torch.cuda.current_device()``
for buffer placement, the CUDA RNG tracker (dropout and weight init inside TP regions),
``torch.cuda.synchronize()`` in the pipeline schedules, literal ``device="cuda"`` in the
schedules, optimizer and gradient clipping, and ``t.type() == "torch.cuda.FloatTensor"`` checks
in the optimizer. :func:`enable_cpu_mode` patches the first three (only when CUDA is absent, once
per process); :func:`cpu_device_mode` handles the last two while it is active. Neither changes
numerics: tensors just stay on the CPU and the RNG tracker keeps CPU generator states.

Usage::

    from quartet_te.integration.megatron.cpu import enable_cpu_mode, cpu_device_mode
    enable_cpu_mode()               # before building the model
    with cpu_device_mode():         # around code that creates tensors with device="cuda"
        ...
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["CpuRNGStatesTracker", "cpu_device_mode", "enable_cpu_mode", "is_cpu_mode"]

_ENABLED = False


def is_cpu_mode() -> bool:
    """True once :func:`enable_cpu_mode` has patched this process."""
    return _ENABLED


def _is_cuda(device: Any) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, int)  # a bare ordinal means a CUDA device to torch


class _CudaToCpu(TorchFunctionMode):
    """Rewrites ``device="cuda"`` (and ``.cuda()``) to the CPU for every torch call inside it."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = dict(kwargs or {})
        if _is_cuda(kwargs.get("device")):
            kwargs["device"] = "cpu"
            kwargs.pop("pin_memory", None)
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda(args[1]):
            args = (args[0], "cpu", *args[2:])
        out = func(*args, **kwargs)
        # megatron asserts `t.type() == "torch.cuda.FloatTensor"` (gradient clipping, fp16 optimizer)
        if func is torch.Tensor.type and len(args) == 1 and not kwargs and isinstance(out, str):
            out = out.replace("torch.", "torch.cuda.", 1) if not out.startswith("torch.cuda.") else out
        return out


@contextlib.contextmanager
def cpu_device_mode() -> Iterator[None]:
    """Inside: tensors asked for on "cuda" are made on the CPU. A no-op where CUDA exists."""
    if torch.cuda.is_available():
        yield
        return
    with _CudaToCpu():
        yield


def _make_cpu_tracker_class() -> type:
    """A subclass of megatron's ``CudaRNGStatesTracker`` that keeps CPU generator states.

    Subclassing keeps megatron's ``isinstance`` checks (checkpointing of RNG states) working.
    """
    from megatron.core.tensor_parallel.random import CudaRNGStatesTracker

    class CpuRNGStatesTracker(CudaRNGStatesTracker):
        """Named CPU RNG states; ``fork(name)`` swaps the default CPU generator's state."""

        def __init__(self) -> None:
            super().__init__()

        def add(self, name: str, seed: int) -> None:
            if seed in self.seeds_:
                raise ValueError(f"seed {seed} already exists")
            if name in self.states_:
                raise ValueError(f"RNG state {name} already exists")
            self.seeds_.add(seed)
            saved = torch.get_rng_state()
            torch.manual_seed(seed)
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(saved)

        def get_states(self) -> dict:
            return {k: v.clone() for k, v in self.states_.items()}

        def set_states(self, states: dict) -> None:
            self.states_ = {k: v.clone() for k, v in states.items()}

        @contextlib.contextmanager
        def fork(self, name: str = "model-parallel-rng"):
            if name not in self.states_:
                raise KeyError(f"RNG state {name} was not added")
            saved = torch.get_rng_state()
            torch.set_rng_state(self.states_[name])
            try:
                yield
            finally:
                self.states_[name] = torch.get_rng_state()
                torch.set_rng_state(saved)

    return CpuRNGStatesTracker


CpuRNGStatesTracker: type | None = None


def enable_cpu_mode() -> bool:
    """Patch megatron-core for a CPU-only process; returns True if patched (False where CUDA exists).

    Idempotent. Patches: ``torch.cuda.current_device`` (returns ``"cpu"``),
    ``torch.cuda.synchronize`` (no-op), megatron's RNG tracker (CPU states). Literal
    ``device="cuda"`` needs :func:`cpu_device_mode` around the code that runs it.
    """
    global _ENABLED, CpuRNGStatesTracker
    if torch.cuda.is_available():
        return False
    if _ENABLED:
        return True
    from megatron.core.tensor_parallel import random as mrandom

    torch.cuda.current_device = lambda: "cpu"  # type: ignore[assignment]
    torch.cuda.synchronize = lambda device=None: None  # type: ignore[assignment]
    CpuRNGStatesTracker = _make_cpu_tracker_class()
    mrandom._CUDA_RNG_STATE_TRACKER = CpuRNGStatesTracker()
    mrandom._CUDA_RNG_STATE_TRACKER_INITIALIZED = True
    _ENABLED = True
    return True
