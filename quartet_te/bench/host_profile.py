"""Where a step's host (CPU) time goes: a cProfile summed by package.

Used by `tests/te/bench_te_layer.py --cprofile` (one `te.TransformerLayer` fwd+bwd) and by the
Megatron-LM launcher's `QUARTET_TE_HOST_PROFILE` (whole training iterations). Where a step is
bound by host issue, these sums say whose code issues it: ours, Transformer Engine's, Megatron's,
torch's. cProfile's per-call overhead inflates the Python rows more than the built-in ones, so
compare rows between recipes, not with wall time.
"""
from __future__ import annotations

import cProfile
import io
import pstats
from typing import Callable

# (package, test on cProfile's (filename, function name)), first match wins. Built-in functions
# have the filename "~" and the extension's module in their name.
PACKAGES: tuple[tuple[str, Callable[[str, str], bool]], ...] = (
    ("quartet_te C++ (_C)", lambda f, n: f == "~" and "quartet_te._C" in n),
    ("quartet_te Python", lambda f, n: "/quartet_te/" in f or "/integration/megatron/" in f),
    ("TE C++ (transformer_engine_torch)", lambda f, n: f == "~" and "transformer_engine_torch" in n),
    ("TE Python", lambda f, n: "transformer_engine" in f),
    ("Megatron Python", lambda f, n: "/megatron/" in f),
    ("autograd engine", lambda f, n: "run_backward" in n),
    ("torch C++ (other built-ins)", lambda f, n: f == "~"),
    ("other Python (torch, stdlib)", lambda f, n: True),
)


def package_of(filename: str, function: str) -> str:
    """The `PACKAGES` row a cProfile entry (filename, function name) is summed into."""
    return next(name for name, test in PACKAGES if test(filename, function))


def by_package(stats: pstats.Stats) -> dict[str, float]:
    """Seconds of internal time per package (every `PACKAGES` row, zero where none)."""
    totals = dict.fromkeys((name for name, _ in PACKAGES), 0.0)
    for (filename, _, func), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        totals[package_of(filename, func)] += tottime
    return totals


def report(prof: cProfile.Profile, steps: int, what: str = "fwd+bwd", top: int = 30) -> str:
    """Host ms per step by package, then the `top` functions by internal time."""
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    stats = pstats.Stats(prof)
    total_ms = stats.total_tt / steps * 1e3  # type: ignore[attr-defined]
    lines = [f"cProfile, host ms per {what} by package ({steps} steps, {total_ms:.2f} ms in all):"]
    for name, seconds in by_package(stats).items():
        lines.append(f"  {name:36s} {seconds / steps * 1e3:7.3f}")
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(top)
    return "\n".join(lines) + "\n" + text.getvalue()
