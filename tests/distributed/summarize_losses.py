"""Summarize driver loss logs (`--loss-log` JSON lines) as a Markdown table.

    python tests/distributed/summarize_losses.py runs/bf16.jsonl runs/quartet2.jsonl ...
    python tests/distributed/summarize_losses.py --max-gap 0.05 runs/ref.jsonl runs/tp2.jsonl

With `--max-gap G` the exit status is 1 if any run's train loss (last 20) differs from the first
run's by more than G nats.

Per run: iterations, train loss (mean of the last 20 iterations), last validation loss, median
ms/iteration and tokens/s after the first 10 iterations (warm-up), and the gaps to the first run.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def summarize(path: Path) -> dict:
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not recs:
        raise ValueError(f"{path}: no records")
    steady = recs[10:] or recs
    vals = [r["val_loss"] for r in recs if "val_loss" in r]
    return {
        "run": path.stem, "iters": recs[-1]["iteration"],
        "train": statistics.fmean(r["loss"] for r in recs[-20:]),
        "val": vals[-1] if vals else float("nan"),
        "ms": statistics.median(r["iter_ms"] for r in steady),
        "tok_s": statistics.median(r["tokens_per_s"] for r in steady),
    }


def main(argv: list[str]) -> int:
    max_gap = None
    if argv[:1] == ["--max-gap"]:
        max_gap, argv = float(argv[1]), argv[2:]
    rows = [summarize(Path(p)) for p in argv]
    base = rows[0]
    print(f"| run | iters | train loss (last 20) | val loss | gap to {base['run']} (val) "
          f"| ms/iter | tokens/s | time vs {base['run']} |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['iters']} | {r['train']:.4f} | {r['val']:.4f} | "
              f"{r['val'] - base['val']:+.4f} | {r['ms']:.1f} | {r['tok_s']:.0f} | "
              f"{r['ms'] / base['ms']:.2f}x |")
    if max_gap is not None:
        bad = [r["run"] for r in rows if abs(r["train"] - base["train"]) > max_gap]
        print(f"train-loss gaps to {base['run']} within {max_gap}: " + ("yes" if not bad else f"NO: {bad}"))
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
