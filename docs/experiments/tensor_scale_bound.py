"""A rejected contract change, kept as a record: MS-EDEN's tensor scale from a bound on the
rotated maximum instead of the maximum itself (docs/fastpath_h200.md, "Analysed on the CPU").

    python docs/experiments/tensor_scale_bound.py [--rows 65536]

Why it was considered: MS-EDEN's tensor scale needs max |x R| over the rotated tensor, so every
MS-EDEN operand (e in both directions, the re-quantized Ŵᵀ and x̂ᵀ) is rotated twice on the GPU,
once in an amax pass only to find that maximum (about a quarter of the quantizer time, §9g).
R is orthonormal on each 128-chunk c, so |(c R)_i| <= ||c||_2 (equality when c is a multiple of a
row of R): the largest chunk norm bounds the rotated maximum and needs no rotation (one FMA per
element), and an upper bound never clips, so MS-EDEN would stay unbiased.

What it costs: the bound is 2.5-3x the true maximum on Gaussian-like chunks (about 11x on
heavy-tailed ones), so every block scale moves down by that factor, towards the E4M3
subnormals. This script quantizes the same tensors with the tensor scale from the exact rotated
amax, from the chunk-norm bound, and from the loosest free bound (sqrt(128) max |x|), through the
reference's `amax=` override, and prints the relative MSE of each (the spec §6 metric: mean over
rows of ||x - x̂||² / ||x||², x̂ rotated back). Deterministic (fixed seeds).
"""
from __future__ import annotations

import argparse

import torch

import quartet_te.reference as R
from quartet_te.bench.quant_error import rel_mse


def datasets(rows: int) -> dict[str, torch.Tensor]:
    """Rows of 128 with the spec's 256x magnitude spread, wider spreads, and heavy tails."""
    g = torch.Generator().manual_seed(0)
    spread = lambda octaves: torch.logspace(0, octaves, rows, base=2)[:, None]  # noqa: E731
    outliers = torch.where(torch.rand(rows, 1, generator=g) < 1e-3, 1000.0, 1.0)
    return {
        "spread 2^8 (spec §6)": torch.randn(rows, 128, generator=g) * spread(8),
        "spread 2^16": torch.randn(rows, 128, generator=g) * spread(16),
        "spread 2^24": torch.randn(rows, 128, generator=g) * spread(24),
        "gaussian": torch.randn(rows, 128, generator=g),
        "student-t(3)": torch.distributions.StudentT(3.0).sample((rows, 128)),
        "student-t(1.5)": torch.distributions.StudentT(1.5).sample((rows, 128)),
        "0.1% rows x1000": torch.randn(rows, 128, generator=g) * outliers,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1 << 16)
    args = ap.parse_args()
    torch.manual_seed(0)  # the Student-t samples
    signs = R.random_signs(128, 7, 0)
    print("| data | bound / amax | sqrt(128) max / amax | MSE, exact amax | chunk-norm bound | sqrt(128) max |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, x in datasets(args.rows).items():
        exact = R.hadamard_rotate(x, signs).abs().amax()
        bound = x.pow(2).reshape(-1, 128).sum(-1).sqrt().amax()
        loose = x.abs().amax() * 128**0.5
        mse = []
        for amax in (exact, bound, loose):
            q = R.quantize(x, "ms_eden", signs=signs, seed=3, amax=amax)
            mse.append(rel_mse(x, R.hadamard_unrotate(q.dequantize(), signs)))
        cells = [f"{m:.3e} ({m / mse[0] - 1:+.1%})" for m in mse[1:]]
        print(f"| {name} | {float(bound / exact):.2f} | {float(loose / exact):.1f} | {mse[0]:.3e} | "
              f"{cells[0]} | {cells[1]} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
