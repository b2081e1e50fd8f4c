"""Run an unmodified Megatron-LM training script with our recipes registered.

    python -m quartet_te.integration.megatron.launch pretrain_gpt.py --fp4-format e2m1 \\
        --fp4-recipe quartet2 <the usual Megatron-LM flags>
    torchrun --nproc-per-node 8 -m quartet_te.integration.megatron.launch pretrain_gpt.py ...

Why a launcher: Megatron-LM's `pretrain_gpt.py` builds its parser (and the `--fp4-recipe`
choices) inside `main`, and passes `extra_args_provider` only for ModelOpt, so registration must
happen before the script runs. The launcher calls `register()`, then names each transformer
layer's linears (`name_layers`, so TE hands our factory a per-layer, TP-rank-free name) by
wrapping `megatron.training.training.get_model`, then runs the script as `__main__` with its
own folder on `sys.path` (it imports `gpt_builders`, `model_provider` from there).

Without the launcher (zero patches): `--fp4-format e2m1 --fp4-recipe custom
--fp4-quantizer-factory quartet_te.recipes.factories.quartet2_factory`. The numerics are the same;
the difference is that Megatron gives TE layers no names, so our factory seeds layers by their
order of first use (consistent across TP ranks, but not between PP=1 and PP=2 runs).

Megatron-LM builds Transformer Engine layers unless told `--transformer-impl local`; without a
working TE it fails deep inside model construction (`NameError: TESpecProvider`). The launcher
checks first and exits naming both ways out: `--transformer-impl local` or installing TE.

Host profile: with `QUARTET_TE_HOST_PROFILE=START:STOP` in the environment, training steps START to
STOP-1 (counted from 0 by calls to Megatron's `train_step`) run under cProfile, and the launcher
prints their host time per step summed by package (`quartet_te.bench.host_profile`) on every rank
(rank 0 alone if RANK is set). Eager small-model runs are bound by host issue: this says whose
code issues the step. `QUARTET_TE_DEVICE_PROFILE=START:STOP` does the same for the GPU: those steps
run under torch.profiler, and the launcher prints their kernel time per step by category
(`quartet_te.bench.device_profile`: our quantizers, GEMMs, attention, TE's kernels, the optimizer),
which says what bounds a device-bound (e.g. graphed) run.
"""
from __future__ import annotations

import functools
import os
import runpy
import sys
import time
from pathlib import Path
from typing import Any, Callable

from .registry import register

__all__ = [
    "check_transformer_engine", "main", "profile_window", "transformer_impl", "wrap_get_model", "wrap_train_step",
    "wrap_train_step_device",
]  # fmt: skip
PROFILE_ENV = "QUARTET_TE_HOST_PROFILE"
DEVICE_PROFILE_ENV = "QUARTET_TE_DEVICE_PROFILE"

_USAGE = "usage: python -m quartet_te.integration.megatron.launch <script.py> [script flags...]"


def transformer_impl(script_args: list[str]) -> str:
    """The script's `--transformer-impl` (last one wins), else Megatron-LM's default,
    "transformer_engine"."""
    impl = "transformer_engine"
    for i, arg in enumerate(script_args):
        if arg == "--transformer-impl" and i + 1 < len(script_args):
            impl = script_args[i + 1]
        elif arg.startswith("--transformer-impl="):
            impl = arg.split("=", 1)[1]
    return impl


def check_transformer_engine(script_args: list[str]) -> None:
    """Exit with a clear message if the run would build TE layers and TE cannot be imported."""
    if transformer_impl(script_args) != "transformer_engine":
        return
    from quartet_te.te import is_available

    ok, reason = is_available(return_reason=True)
    if not ok:
        raise SystemExit(
            "--transformer-impl transformer_engine (Megatron-LM's default) needs Transformer Engine, "
            f"which is not usable here: {reason}\nEither pass --transformer-impl local (Megatron's local "
            "layers) or install Transformer Engine (pip install --no-build-isolation "
            "transformer-engine[pytorch])."
        )


def wrap_get_model() -> bool:
    """Make Megatron-LM's `get_model` name the layers of the chunks it returns; False if
    `megatron.training` is not importable (then nothing is patched)."""
    try:
        from megatron.training import training
    except ImportError:
        return False
    original: Callable[..., Any] = training.get_model
    if getattr(original, "__quartet_te__", False):
        return True

    @functools.wraps(original)
    def get_model(*args: Any, **kwargs: Any) -> Any:
        from .layers import name_layers

        chunks = original(*args, **kwargs)
        for chunk in chunks if isinstance(chunks, (list, tuple)) else [chunks]:
            name_layers(chunk)
        return chunks

    get_model.__quartet_te__ = True  # type: ignore[attr-defined]
    training.get_model = get_model
    return True


def profile_window(value: str, env: str = PROFILE_ENV) -> tuple[int, int]:
    """(start, stop) of a profile window "START:STOP" (0 <= START < STOP) read from `env`."""
    try:
        start, stop = (int(part) for part in value.split(":"))
    except ValueError:
        raise ValueError(f"{env} must be START:STOP (training step numbers), got {value!r}") from None
    if not 0 <= start < stop:
        raise ValueError(f"{env}={value!r}: need 0 <= START < STOP")
    return start, stop


def _patch_train_step(make: Callable[[Callable[..., Any]], Callable[..., Any]]) -> bool:
    """Replace Megatron-LM's `train_step` by `make(original)`; False if `megatron.training` is not
    importable (then nothing is patched)."""
    try:
        from megatron.training import training
    except ImportError:
        return False
    original = training.train_step
    training.train_step = functools.wraps(original)(make(original))
    return True


def _report_here() -> bool:
    return os.environ.get("RANK", "0") == "0"


def wrap_train_step(start: int, stop: int, out: Any = None) -> bool:
    """Run Megatron-LM's training steps `start`..`stop-1` under cProfile and print their host time
    by package to `out` (default stdout) after step `stop-1`; False if `megatron.training` is not
    importable."""
    import cProfile

    prof = cProfile.Profile()
    state = {"calls": 0, "host_s": 0.0}

    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        def train_step(*args: Any, **kwargs: Any) -> Any:
            call = state["calls"]
            state["calls"] = call + 1
            if not start <= call < stop:
                return original(*args, **kwargs)
            t0 = time.perf_counter()
            prof.enable()
            try:
                return original(*args, **kwargs)
            finally:
                prof.disable()
                state["host_s"] += time.perf_counter() - t0
                if call == stop - 1 and _report_here():
                    from quartet_te.bench.host_profile import report

                    steps = stop - start
                    per_step = state["host_s"] / steps * 1e3
                    print(f"\n[{PROFILE_ENV}] train_step {start}..{stop - 1}: {per_step:.2f} ms of host time per step "
                          "under the profiler", file=out or sys.stdout)  # fmt: skip
                    print(report(prof, steps, what="training step"), file=out or sys.stdout, flush=True)

        return train_step

    return _patch_train_step(make)


def _cuda_profiler() -> Any:
    import torch
    from torch.profiler import ProfilerActivity, profile

    return profile(activities=[ProfilerActivity.CUDA] if torch.cuda.is_available() else [ProfilerActivity.CPU])


def wrap_train_step_device(
    start: int, stop: int, out: Any = None, profiler_factory: Callable[[], Any] = _cuda_profiler
) -> bool:
    """Run Megatron-LM's training steps `start`..`stop-1` under torch.profiler (CUDA activity) and
    print their GPU kernel time by category (`quartet_te.bench.device_profile`) to `out` (default
    stdout) after step `stop-1`; False if `megatron.training` is not importable."""
    state: dict[str, Any] = {"calls": 0, "prof": None}

    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        def train_step(*args: Any, **kwargs: Any) -> Any:
            call = state["calls"]
            state["calls"] = call + 1
            if call == start:
                state["prof"] = profiler_factory()
                state["prof"].start()
            try:
                return original(*args, **kwargs)
            finally:
                if call == stop - 1 and state["prof"] is not None:
                    import torch

                    if torch.cuda.is_available():
                        torch.cuda.synchronize()  # the window's kernels have finished
                    prof, state["prof"] = state["prof"], None
                    prof.stop()
                    if _report_here():
                        from quartet_te.bench.device_profile import kernel_events, summarize

                        print(f"\n[{DEVICE_PROFILE_ENV}] train_step {start}..{stop - 1}:", file=out or sys.stdout)
                        print(summarize(kernel_events(prof), stop - start), file=out or sys.stdout, flush=True)

        return train_step

    return _patch_train_step(make)


def main(argv: list[str] | None = None) -> None:
    """Register, then run `argv[0]` as `__main__` with `argv[1:]` as its arguments."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_USAGE + "\n\n" + (__doc__ or ""), file=sys.stderr)
        raise SystemExit(0 if argv else 2)
    script = Path(argv[0]).resolve()
    if not script.is_file():
        raise SystemExit(f"{_USAGE}\nno such script: {argv[0]}")
    check_transformer_engine(argv[1:])
    window = profile_window(os.environ[PROFILE_ENV]) if os.environ.get(PROFILE_ENV) else None
    device_window = (
        profile_window(os.environ[DEVICE_PROFILE_ENV], DEVICE_PROFILE_ENV) if os.environ.get(DEVICE_PROFILE_ENV) else None
    )
    register()
    sys.path.insert(0, str(script.parent))
    wrap_get_model()
    if window is not None:
        wrap_train_step(*window)
    if device_window is not None:
        wrap_train_step_device(*device_window)
    sys.argv = [str(script), *argv[1:]]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
