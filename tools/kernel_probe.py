"""Run each quantize kernel of a Quartet II linear once, for a kernel profiler (ncu / nsys).

    ncu --target-processes all --set detailed python tools/kernel_probe.py [--rows 8192 --cols 8192]

Launches, on one random BF16 x (rows×cols) after one warm-up round: the forward's 4/6 quantizer
(FP4 + BF16 operand, with its amax pass), the backward's e in both directions (MS-EDEN, BF16
operands), and the re-quantization of a saved FP4 operand (decode → transpose → RHT → MS-EDEN).
`tools/gpu_fastpath.sh ncu` profiles the last round with Nsight Compute when it is installed.
"""
from __future__ import annotations

import argparse

import torch

from quartet_te import kernels as K
from quartet_te.rotation import SignStream


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=8192)
    p.add_argument("--cols", type=int, default=8192)
    args = p.parse_args()
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(args.rows, args.cols, device="cuda", dtype=torch.bfloat16, generator=gen)
    step = torch.tensor([3], dtype=torch.int64, device="cuda")
    eden = dict(signs=SignStream(128, 0), seed=1, step=step)
    fp4 = K.quantize(x, "four_over_six")
    for _ in range(2):  # warm-up, then the profiled round
        K.quantize(x, "four_over_six", emit="both")
        K.quantize_both(x, "ms_eden", offset=1, emit="bf16", mode_t="ms_eden", offset_t=3, emit_t="bf16", **eden)
        K.requantize(fp4, emit="bf16", **eden)
    torch.cuda.synchronize()
    print("kernel probe done", tuple(x.shape))


if __name__ == "__main__":
    main()
