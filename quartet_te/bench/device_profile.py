"""Where a step's GPU time goes: the kernels of a torch.profiler run, summed by category.

Used by the Megatron-LM launcher's `QUARTET_TE_DEVICE_PROFILE` (whole training iterations,
eager or replayed from CUDA graphs). Where a step is bound by device work, these sums say which
kernels do it: our quantizers, the GEMMs, attention, TE's own kernels, the optimizer. Kernel
durations are those CUPTI records (the GPU's busy time per kernel, overlap not removed), so
compare rows between recipes; the total is the device work, not the step's wall time.
"""
from __future__ import annotations

import re
from collections import defaultdict
from typing import Callable, Iterable

# (category, test on the kernel name), first match wins.
CATEGORIES: tuple[tuple[str, Callable[[str], bool]], ...] = (
    ("quartet_te quantize / amax", lambda n: "quartet::" in n),
    ("GEMM (cuBLAS, CUTLASS)", lambda n: bool(re.search(r"nvjet|xmma|gemm|cutlass|cublas|\bsm\d+_", n, re.I))),
    ("attention", lambda n: bool(re.search(r"flash|fmha|attn|attention|cudnn", n, re.I))),
    ("optimizer", lambda n: bool(re.search(r"multi_tensor|adam", n, re.I))),
    ("communication (NCCL)", lambda n: "nccl" in n.lower()),
    ("Transformer Engine kernels", lambda n: "transformer_engine" in n),
    ("memset / memcpy", lambda n: bool(re.match(r"(memset|memcpy)", n, re.I))),
    ("other (torch elementwise, reductions, ...)", lambda n: True),
)


def category_of(kernel: str) -> str:
    """The `CATEGORIES` row a kernel name is summed into."""
    return next(name for name, test in CATEGORIES if test(kernel))


def summarize(kernels: Iterable[tuple[str, float]], steps: int, top: int = 15) -> str:
    """Device ms per step by category, then the `top` kernels, from (name, µs) pairs."""
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    by_cat: dict[str, float] = dict.fromkeys((name for name, _ in CATEGORIES), 0.0)
    by_kernel: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for name, us in kernels:
        by_cat[category_of(name)] += us
        by_kernel[name][0] += us
        by_kernel[name][1] += 1
    total = sum(by_cat.values())
    lines = [f"GPU kernel time, ms per step by category ({steps} steps, {total / steps / 1e3:.2f} ms per step in all):"]
    for name, us in by_cat.items():
        share = us / total if total else 0.0
        lines.append(f"  {name:44s} {us / steps / 1e3:8.3f}  {share:6.1%}")
    lines.append(f"top {top} kernels (ms per step, launches per step):")
    for name, (us, n) in sorted(by_kernel.items(), key=lambda kv: -kv[1][0])[:top]:
        lines.append(f"  {us / steps / 1e3:8.3f} {n / steps:6.1f}  {name[:110]}")
    return "\n".join(lines)


def kernel_events(prof) -> list[tuple[str, float]]:
    """(kernel name, duration µs) of every device-side event (kernels, memsets, copies) of a
    finished `torch.profiler.profile`."""
    from torch.autograd import DeviceType

    device = {DeviceType.CUDA, getattr(DeviceType, "PrivateUse1", DeviceType.CUDA)}
    return [(e.name, float(e.time_range.elapsed_us())) for e in prof.events() if e.device_type in device]
