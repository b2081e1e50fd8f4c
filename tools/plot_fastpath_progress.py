"""Plot issue 13's targets (the Hopper fast path) after each step, from the ratios recorded in
BENCHMARKS.md §9-9g and collected in docs/fastpath/progress.csv:

    python tools/plot_fastpath_progress.py [--csv docs/fastpath/progress.csv] [--out docs/fastpath_progress.png]

Three panels (Quartet II / BF16 on one H200, lower is better): the linear fwd+bwd at the two target
shapes, the `te.TransformerLayer` (eager and CUDA-graph replay), Megatron-LM's `pretrain_gpt.py`
(eager and `--cuda-graph-impl local`). A bar spans the range over a section's runs; dotted lines
are the targets. The CSV is the record: every row names the BENCHMARKS section it comes from.
"""
from __future__ import annotations

import argparse
import csv
import io
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# metric -> (panel, label, target ratio)
METRICS = {
    "linear_8192x8192x8192": (0, "linear 8192³", 1.15),
    "linear_8192x4096x4096": (0, "linear 8192×4096²", 1.3),
    "layer_eager": (1, "eager", 1.3),
    "layer_graph": (1, "CUDA-graph replay", None),
    "megatron_eager": (2, "eager", 1.3),
    "megatron_graph": (2, "--cuda-graph-impl local", None),
}
PANELS = ("linear fwd+bwd vs torch BF16", "te.TransformerLayer 4096 / seq 2048", "Megatron-LM pretrain_gpt.py 4×1024")


@dataclass(frozen=True)
class Point:
    section: str
    date: str
    step: str
    metric: str
    low: float
    high: float
    note: str


def read_points(text: str) -> list[Point]:
    """The CSV's rows ('#' lines are comments); ValueError naming a bad row."""
    rows = csv.DictReader(io.StringIO("\n".join(line for line in text.splitlines() if not line.startswith("#"))))
    points = []
    for n, row in enumerate(rows, 2):
        try:
            p = Point(row["section"], row["date"], row["step"], row["metric"], float(row["low"]), float(row["high"]),
                      row.get("note") or "")  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"progress CSV row {n}: {exc}: {row}") from None
        if p.metric not in METRICS:
            raise ValueError(f"progress CSV row {n}: unknown metric {p.metric!r}; known: {sorted(METRICS)}")
        if not 0 < p.low <= p.high:
            raise ValueError(f"progress CSV row {n}: need 0 < low <= high, got {p.low}, {p.high}")
        points.append(p)
    if not points:
        raise ValueError("progress CSV has no rows")
    return points


def steps_in_order(points: list[Point]) -> list[str]:
    """Step labels in the order they first appear (the CSV is chronological)."""
    return list(dict.fromkeys(p.step for p in points))


def plot(points: list[Point], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = steps_in_order(points)
    x_of = {s: i for i, s in enumerate(steps)}
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), sharey=True)
    for m, (panel, label, target) in METRICS.items():
        pts = [p for p in points if p.metric == m]
        if not pts:
            continue
        ax = axes[panel]
        xs = [x_of[p.step] for p in pts]
        mid = [(p.low + p.high) / 2 for p in pts]
        err = [[v - p.low for v, p in zip(mid, pts)], [p.high - v for v, p in zip(mid, pts)]]
        line = ax.errorbar(xs, mid, yerr=err, marker="o", capsize=3, label=label)
        if target is not None:
            ax.axhline(target, color=line[0].get_color(), linestyle=":", linewidth=1.2)
    for ax, title in zip(axes, PANELS):
        ax.axhline(1.0, color="k", linewidth=0.8)
        ax.set_xticks(range(len(steps)), steps, fontsize=8)
        ax.set_xlabel("issue 13 step")
        ax.set_title(title, fontsize=10)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="upper right")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("Quartet II / BF16 (lower is better; dotted: target)")
    axes[0].set_ylim(0.7, 3.1)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--csv", default=str(ROOT / "docs" / "fastpath" / "progress.csv"))
    p.add_argument("--out", default=str(ROOT / "docs" / "fastpath_progress.png"))
    args = p.parse_args(argv)
    points = read_points(Path(args.csv).read_text())
    plot(points, Path(args.out))
    print(f"wrote {args.out} ({len(points)} points, steps {', '.join(steps_in_order(points))})")


if __name__ == "__main__":
    main()
