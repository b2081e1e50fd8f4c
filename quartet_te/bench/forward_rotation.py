"""Cost of Quartet II's forward rotation: QuartetLinear fwd+bwd with and without it, and with the
reference butterfly (`hadamard_unrotate`) instead of the GEMM-form `gemms.unrotate`.

    python -m quartet_te.bench.forward_rotation [--tokens 65536] [--device cuda]

Shapes default to the evidence model's linears (hidden 512, SwiGLU 1536; docs/evidence_results.md).
"""
from __future__ import annotations

import argparse
import time
from contextlib import contextmanager

import torch

from quartet_te import Quartet2Recipe, QuartetLinear
from quartet_te import gemms
from quartet_te.reference import hadamard_unrotate


@contextmanager
def butterfly_unrotate():
    """Temporarily route gemms' un-rotation through the reference butterfly."""
    saved = gemms.unrotate
    gemms.unrotate = hadamard_unrotate
    try:
        yield
    finally:
        gemms.unrotate = saved


def time_fwd_bwd(layer: torch.nn.Module, x: torch.Tensor, iters: int) -> float:
    """Median milliseconds of one forward + backward."""
    g = torch.randn(x.shape[0], layer.out_features, device=x.device, dtype=x.dtype)
    times = []
    for i in range(iters + 3):
        if x.is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        layer(x).backward(g)
        if x.is_cuda:
            torch.cuda.synchronize()
        if i >= 3:
            times.append(1e3 * (time.perf_counter() - t0))
    return sorted(times)[len(times) // 2]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=65536)
    p.add_argument("--shapes", default="512x1536,512x512,512x3072,1536x512", help="KxN list")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    print("| K x N | tokens | quartet2 ms | +rotation (GEMM unrotate) ms | +rotation (butterfly) ms |")
    print("|---|---|---|---|---|")
    for shape in a.shapes.split(","):
        k, n = map(int, shape.split("x"))
        x = torch.randn(a.tokens, k, device=a.device, dtype=torch.bfloat16, requires_grad=True)
        plain = QuartetLinear(k, n, bias=False, recipe=Quartet2Recipe(), device=a.device, dtype=torch.bfloat16)
        rot = QuartetLinear(k, n, bias=False, recipe=Quartet2Recipe(forward_rotation=True), device=a.device,
                            dtype=torch.bfloat16)
        t_plain, t_rot = time_fwd_bwd(plain, x, a.iters), time_fwd_bwd(rot, x, a.iters)
        with butterfly_unrotate():
            t_fly = time_fwd_bwd(rot, x, a.iters)
        print(f"| {k} x {n} | {a.tokens} | {t_plain:.3f} | {t_rot:.3f} | {t_fly:.3f} |", flush=True)


if __name__ == "__main__":
    main()
