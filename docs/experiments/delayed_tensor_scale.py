"""A contract change weighed and not built, kept as a record: MS-EDEN's tensor scale from the
previous step's rotated maximum ("delayed scaling") instead of an amax pass in this step
(docs/fastpath_h200.md, "Analysed on the CPU").

    python docs/experiments/delayed_tensor_scale.py [--steps 150]

Why it was considered: every MS-EDEN operand (e in both directions, the re-quantized Ŵᵀ and x̂ᵀ)
is rotated twice on the GPU, once in an amax pass only to find the maximum the tensor scale needs
(about a quarter of the quantizer time, BENCHMARKS §9e/§9g). The quantize pass rotates anyway, so
it could record this step's maximum for the next step and skip the amax pass, if the maximum
moves little from step to step: block scales have 448 / 255.99 = 1.75x of headroom above the
nominal maximum before they clip (then that step would have to be redone with the true maximum),
and a maximum that falls makes the scale loose (block scales move towards the E4M3 subnormals).

What this measures: a tiny Llama (2 layers, dim 128) trained on Shakespeare bytes with Quartet II
on the CPU reference (AdamW, lr 3e-3, 8 x 256 tokens a step); every MS-EDEN quantization records
its rotated maximum (tensor scale x D), and the script prints, per operand, the distribution of
its step-to-step ratio after the first 20 steps. Deterministic (fixed seeds); about 2 minutes.
"""
from __future__ import annotations

import argparse
import statistics
import sys

import torch

import quartet_te
from quartet_te.data import load_splits
from quartet_te.models.tiny_llama import TinyLlama, TinyLlamaConfig

OPERANDS = ("e along N (dgrad)", "eᵀ along M (wgrad)", "Ŵᵀ re-quantized (dgrad)", "x̂ᵀ re-quantized (wgrad)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--skip", type=int, default=20, help="early steps left out of the statistics")
    args = ap.parse_args()
    torch.manual_seed(0)
    ref = sys.modules["quartet_te.reference.quantize"]
    seen: list[float] = []
    original = ref.quantize

    def recording(x, mode, *a, **k):  # every path to MS-EDEN ends here on the CPU
        q = original(x, mode, *a, **k)
        if mode == "ms_eden":
            seen.append(float(q.tensor_scale) * ref.F.D_EDEN)
        return q

    ref.quantize = quartet_te.reference.quantize = recording
    cfg = TinyLlamaConfig(dim=128, n_layers=2, n_heads=4, ffn_dim=384, max_seq_len=256)
    model = quartet_te.convert(TinyLlama(cfg), "quartet2", skip=("lm_head",))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    train, _ = load_splits()
    steps: list[list[float]] = []
    for step in range(args.steps):
        idx = torch.randint(0, train.numel() - 257, (8,))
        xb = torch.stack([train[i : i + 256] for i in idx]).long()
        yb = torch.stack([train[i + 1 : i + 257] for i in idx]).long()
        seen.clear()
        logits = model(xb)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), yb.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps.append(list(seen))
        if step % 50 == 0:
            print(f"step {step}: loss {loss.item():.3f}, {len(seen)} MS-EDEN quantizations", flush=True)
    per_linear = len(OPERANDS)  # each linear's backward: e (both directions), Ŵᵀ, x̂ᵀ, in that order
    n = min(len(s) for s in steps)
    ratios: dict[int, list[float]] = {m: [] for m in range(per_linear)}
    for now, before in zip(steps[args.skip + 1 :], steps[args.skip : -1]):
        for i in range(n):
            ratios[i % per_linear].append(now[i] / before[i])
    pct = lambda v, p: sorted(v)[min(len(v) - 1, int(p * len(v)))]  # noqa: E731
    print(f"\nstep-to-step ratio of the rotated maximum, steps {args.skip + 1}..{args.steps - 1}, {n // per_linear} linears")
    print("| operand | p1 | median | p99 | max | share > 1.75 (would clip) | share < 0.5 (scale 2x loose) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for m, name in enumerate(OPERANDS):
        v = ratios[m]
        print(f"| {name} | {pct(v, .01):.3f} | {statistics.median(v):.3f} | {pct(v, .99):.3f} | {max(v):.3f} | "
              f"{sum(r > 1.75 for r in v) / len(v):.2%} | {sum(r < 0.5 for r in v) / len(v):.2%} |")  # fmt: skip


if __name__ == "__main__":
    main()
