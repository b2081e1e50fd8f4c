"""Host (CPU) time of the Quartet II path, where small layers are host-bound (BENCHMARKS §9c).

    python tests/te/profile_host_overhead.py [--out DIR]

Prints microseconds of host time per call (mean of 300 calls, inputs 256x256 so the GPU work is
negligible) for a plain torch op, our extension calls and their Python wrappers, then one
`te.Linear` forward and forward+backward under BF16, TE FP8 and Quartet II. With `--out`, also
writes a cProfile of 200 fwd+bwd steps per recipe (cumulative and internal time) to DIR.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
from pathlib import Path

import torch


def host_us(fn, n: int = 300) -> float:
    """Mean host time of `fn` in µs (launches only: the GPU catches up after the timed loop)."""
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    elapsed = time.perf_counter() - t
    torch.cuda.synchronize()
    return round(elapsed / n * 1e6, 1)


def main() -> None:
    import transformer_engine.pytorch as te
    from transformer_engine.common import recipe as te_recipe

    from quartet_te import _C, kernels as K, ops
    from quartet_te.recipes.factories import QuantizerFactory

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="folder for the cProfile listings")
    args = p.parse_args()

    x = torch.randn(256, 256, device="cuda", dtype=torch.bfloat16)
    ta = torch.ones(1, device="cuda")
    print("torch.mm", host_us(lambda: torch.mm(x, x.t())))
    print("_C.gemm_bf16", host_us(lambda: _C.gemm_bf16(x, x, ta, ta, None, 1)))
    print("kernels._gemm_bf16_impl", host_us(lambda: K._gemm_bf16_impl(x, x, ta, ta, None, torch.bfloat16)))
    print("6 x torch.empty", host_us(lambda: [torch.empty(256, 128, dtype=torch.uint8, device="cuda") for _ in range(6)]))
    print("kernels.quantize 4/6 both", host_us(lambda: K.quantize(x, "four_over_six", emit="both")))
    print("ops.quantize 4/6 both", host_us(lambda: ops.quantize(x, "four_over_six", emit="both")))
    print("ops.emulated_gemm", host_us(lambda: ops.emulated_gemm(x.device)))

    lin = te.Linear(256, 256, params_dtype=torch.bfloat16, device="cuda")
    xi = torch.randn(256, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    gy = torch.randn(256, 256, device="cuda", dtype=torch.bfloat16)
    recipes = {"bf16": None, "fp8": te_recipe.Float8CurrentScaling(),
               "quartet2": te_recipe.CustomRecipe(qfactory=QuantizerFactory("quartet2"))}  # fmt: skip
    for name, recipe in recipes.items():
        def fwd():
            with te.autocast(enabled=recipe is not None, recipe=recipe):
                return lin(xi)

        def step():
            fwd().backward(gy)

        print(f"te.Linear 256x256 {name}: fwd", host_us(fwd, 100), "fwd+bwd", host_us(step, 100))
        if args.out:
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(200):
                step()
            prof.disable()
            for order in ("cumulative", "tottime"):
                text = io.StringIO()
                pstats.Stats(prof, stream=text).sort_stats(order).print_stats(120)
                Path(args.out).mkdir(parents=True, exist_ok=True)
                (Path(args.out) / f"prof_{name}_{order}.txt").write_text(text.getvalue())


if __name__ == "__main__":
    main()
