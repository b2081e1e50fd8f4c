"""Host-time ledger of one TE module's fwd+bwd: how much of it runs inside quartet_te, how much in
Transformer Engine, torch and autograd around it (BENCHMARKS §9f).

    python tests/te/host_ledger.py [--module layer|linear] [--steps 30]

Wall-clock timers (no profiler, so no per-call inflation) wrap every entry point TE calls into
our code: the quantizers' `quantize_impl` / `update_quantized`, the custom GEMM hook and the
storage methods TE uses around saving for the backward. Nested entries count once. Per recipe it
prints the median host-issue ms of one fwd+bwd (from before the forward to the return of
`backward()`, synchronised between iterations so the launch queue never fills), the part spent
inside our entry points, and the rest. Against BF16, "rest" minus BF16's total is what TE's
quantized path itself adds; TE FP8's total minus BF16's is the same for TE's own recipe.
"""
from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections import defaultdict
from typing import Any, Callable

import torch


class Ledger:
    """Accumulates wall time of wrapped functions. Entry points (`inner=False`) count only when
    called from outside our code (their sum is the time inside quartet_te); inner functions
    (`inner=True`: the extension calls) count every call, inclusive."""

    def __init__(self) -> None:
        self.depth = 0
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.entries: set[str] = set()

    def wrap(self, owner: Any, attr: str, label: str, inner: bool = False) -> None:
        original: Callable = getattr(owner, attr)
        ledger = self
        if not inner:
            self.entries.add(label)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if ledger.depth and not inner:
                return original(*args, **kwargs)
            ledger.depth += 1
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                ledger.seconds[label] += time.perf_counter() - t0
                ledger.calls[label] += 1
                ledger.depth -= 1

        setattr(owner, attr, timed)

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()

    def total(self) -> float:
        return sum(v for k, v in self.seconds.items() if k in self.entries)


class _TimedExtension:
    """Stands in for `quartet_te._C` so the ledger can time its functions (built-ins cannot be
    patched in place)."""

    def __init__(self, ext: Any) -> None:
        self.__dict__.update({name: getattr(ext, name) for name in dir(ext) if not name.startswith("__")})


def install(ledger: Ledger) -> None:
    """Time every entry point from TE into quartet_te (call after the recipe's first use, so
    `compat.install()` has put our custom-GEMM hook in place)."""
    import transformer_engine.pytorch.cpp_extensions.gemm as te_gemm

    from quartet_te.te import quantizer as Q

    for attr in ("quantize_impl", "update_quantized", "copy"):
        ledger.wrap(Q.QuartetQuantizer, attr, f"quantizer.{attr}")
    for attr in ("update_usage", "prepare_for_saving", "restore_from_saved", "get_data_tensors", "clear", "size",
                 "dequantize"):  # fmt: skip
        ledger.wrap(Q.QuartetStorage, attr, f"storage.{attr}")
    ledger.wrap(te_gemm, "custom_gemm", "custom_gemm (GEMM hook)")
    from quartet_te import kernels

    kernels._C = _TimedExtension(kernels._C)
    for attr in ("quantize", "gemm_bf16"):
        ledger.wrap(kernels._C, attr, f"  inner: _C.{attr}", inner=True)


def step_ms(module, x, g, recipe, ledger: Ledger, steps: int) -> tuple[float, float, dict[str, tuple[float, float]]]:
    """(median host ms per fwd+bwd, median ms inside our entry points, per-entry (calls, µs) per step)."""
    import transformer_engine.pytorch as te

    host, ours = [], []
    per_entry: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for i in range(steps + 3):
        ledger.reset()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with te.autocast(enabled=recipe is not None, recipe=recipe):
            y = module(x)
        y.backward(g)
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        module.zero_grad(set_to_none=True)
        x.grad = None
        if i >= 3:
            host.append((t1 - t0) * 1e3)
            ours.append(ledger.total() * 1e3)
            for label, seconds in ledger.seconds.items():
                per_entry[label].append((ledger.calls[label], seconds * 1e6))
    entries = {k: (statistics.median(c for c, _ in v), statistics.median(u for _, u in v))
               for k, v in per_entry.items()}  # fmt: skip
    return statistics.median(host), statistics.median(ours), entries


def main() -> None:
    import transformer_engine.pytorch as te
    from transformer_engine.common import recipe as te_recipe

    from quartet_te.recipes.factories import QuantizerFactory

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--module", choices=("layer", "linear"), default="layer")
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--ffn", type=int, default=16384)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--steps", type=int, default=30)
    args = p.parse_args()

    torch.manual_seed(0)
    if args.module == "layer":
        module = te.TransformerLayer(
            args.hidden, args.ffn, args.heads, hidden_dropout=0.0, attention_dropout=0.0,
            self_attn_mask_type="causal", params_dtype=torch.bfloat16, device="cuda", name="ledger",
        )  # fmt: skip
        x = torch.randn(args.seq, 1, args.hidden, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        what = f"te.TransformerLayer hidden={args.hidden} ffn={args.ffn} seq={args.seq}"
    else:
        module = te.Linear(256, 256, params_dtype=torch.bfloat16, device="cuda", name="ledger")
        x = torch.randn(256, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        what = "te.Linear 256x256 (GPU work negligible)"
    g = torch.randn_like(x)
    recipes = {"bf16": None, "fp8_current": te_recipe.Float8CurrentScaling(),
               "quartet2": te_recipe.CustomRecipe(qfactory=QuantizerFactory("quartet2"))}  # fmt: skip
    ledger = Ledger()
    installed = False
    rows = []
    for name, recipe in recipes.items():
        if name == "quartet2" and not installed:
            step_ms(module, x, g, recipe, ledger, 1)  # first use installs our TE adapters
            install(ledger)
            installed = True
        rows.append((name, *step_ms(module, x, g, recipe, ledger, args.steps)))
    print(f"{what}: host ms per fwd+bwd (median of {args.steps})\n")
    bf16 = rows[0][1]
    print("| recipe | host ms | inside quartet_te | outside | outside - BF16 total |")
    print("|---|---:|---:|---:|---:|")
    for name, total, ours, _ in rows:
        print(f"| {name} | {total:.3f} | {ours:.3f} | {total - ours:.3f} | {total - ours - bf16:+.3f} |")
    for name, _, _, entries in rows:
        if entries:
            print(f"\n{name}: entry points (calls per step, µs per step)")
            for label, (calls, us) in sorted(entries.items(), key=lambda kv: -kv[1][1]):
                print(f"  {label:34s} {calls:5.0f} {us:9.1f}")


if __name__ == "__main__":
    main()
