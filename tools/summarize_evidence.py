#!/usr/bin/env python3
"""Summarize pre-training evidence runs (JSON-lines logs of examples/pretrain_gpt.py) and plot them.

    python tools/summarize_evidence.py runs/evidence/*.jsonl --tokens-per-iter 65536 \
        --plot docs/evidence_loss_curves.png --baseline bf16 --reference nvfp4-sr --target quartet2

A run's name is its file name up to the first dot; `recipe@sN` is seed N of the recipe (a stem without `@` is seed 1).
Val gaps are taken at a run's last validation iteration against the baseline at that iteration, so
an incomplete run is compared at the point it reached. Markdown goes to stdout.
"""
from __future__ import annotations

import argparse
import gzip
import json
import statistics
from pathlib import Path
from typing import Any

WARMUP = 20  # first iterations left out of throughput medians (compilation, allocator warm-up)
TAIL = 32  # iterations in the train-loss mean and in the plot's running mean


def load_run(path: str | Path) -> dict[str, Any]:
    """One log as columns plus {iteration: val_loss}; a repeated iteration keeps its last record."""
    path = Path(path)
    text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
    recs = {r["iteration"]: r for r in map(json.loads, filter(str.strip, text.splitlines()))}
    if not recs:
        raise ValueError(f"{path}: no records")
    name = path.name.split(".")[0]  # bf16.jsonl and bf16.jsonl.gz are both run "bf16"
    recipe, _, seed = name.partition("@")
    run: dict[str, Any] = {"name": name, "recipe": recipe, "seed": int(seed.lstrip("s")) if seed else 1}
    for key in ("iteration", "loss", "iter_ms", "tokens_per_s", "peak_mem_gib"):
        run[key] = [recs[i].get(key) for i in sorted(recs)]
    run["val"] = {i: r["val_loss"] for i, r in sorted(recs.items()) if r.get("val_loss") is not None}
    return run


def _median(xs: list) -> float | None:
    """Median over the iterations after WARMUP (all of them for a shorter run)."""
    vals = [x for x in (xs[WARMUP:] if len(xs) > WARMUP else xs) if x is not None]
    return statistics.median(vals) if vals else None


def _tokens_per_iter(run: dict, given: int | None) -> float:
    """The given tokens per iteration, else tokens/s x iteration time (median)."""
    return given or round(_median([t * ms / 1e3 for t, ms in zip(run["tokens_per_s"], run["iter_ms"])]))


def _gap(run: dict | None, base: dict | None, it: int) -> float | None:
    """run's val loss minus base's at iteration it (None where either lacks it)."""
    if run is None or base is None or it not in run["val"] or it not in base["val"]:
        return None
    return run["val"][it] - base["val"][it]


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def summarize(runs: list[dict], baseline: str, reference: str | None = None,
              tokens_per_iter: int | None = None) -> list[dict]:
    """One row per run: progress, final val, gaps to the baseline (and reference), speed, memory."""
    by_key = {(r["recipe"], r["seed"]): r for r in runs}
    max_it = max(r["iteration"][-1] for r in runs)
    rows = []
    for run in sorted(runs, key=lambda r: (r["recipe"] != baseline, r["recipe"] != reference, r["recipe"], r["seed"])):
        same_base = by_key.get((baseline, run["seed"]))
        base = same_base or by_key.get((baseline, 1))
        ref = by_key.get((reference, run["seed"]))
        it = max(run["val"]) if run["val"] else None
        gap = _gap(run, base, it)
        ref_gap = _gap(ref, same_base, it) if same_base and run["recipe"] not in (baseline, reference) else None
        peaks = [p for p in run["peak_mem_gib"] if p is not None]
        base_peaks = [p for p in base["peak_mem_gib"] if p is not None] if base else []
        rows.append({
            "name": run["name"], "recipe": run["recipe"], "seed": run["seed"],
            "iterations": run["iteration"][-1], "incomplete": run["iteration"][-1] < max_it,
            "tokens_m": run["iteration"][-1] * _tokens_per_iter(run, tokens_per_iter) / 1e6,
            "val_iter": it, "final_val": run["val"].get(it), "gap": gap, "base_fallback": same_base is None,
            "ref_gap": ref_gap, "gap_ratio": _ratio(gap, ref_gap) if same_base else None,
            "tokens_per_s": _median(run["tokens_per_s"]),
            "time_ratio": _ratio(_median(run["iter_ms"]), _median(base["iter_ms"]) if base else None),
            "peak_mem": max(peaks, default=None),
            "mem_ratio": _ratio(max(peaks, default=None), max(base_peaks, default=None)),
            "train_loss": statistics.fmean(run["loss"][-TAIL:]),
        })
    return rows


def _f(x: float | None, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


def format_markdown(rows: list[dict], baseline: str, reference: str | None = None,
                    target: str | None = None) -> str:
    """The per-run table, then gap ratios per seed (and seed means), with footnotes."""
    out = [f"| run | iterations | tokens (M) | final val | gap vs {baseline} | tokens/s | time ×{baseline} "
           f"| peak GiB | mem ×{baseline} | train loss (last {TAIL}) |", "|---" * 10 + "|"]
    for r in rows:
        at = "" if r["val_iter"] == r["iterations"] else f" @{r['val_iter']}"
        out.append(" | ".join([
            f"| {r['name']}", f"{r['iterations']}" + (" (incomplete)" if r["incomplete"] else ""),
            f"{r['tokens_m']:.1f}", _f(r["final_val"], ".4f") + at,
            _f(r["gap"], "+.4f") + (" ¹" if r["base_fallback"] and r["gap"] is not None else ""),
            _f(r["tokens_per_s"], ",.0f"), _f(r["time_ratio"], ".2f"), _f(r["peak_mem"], ".2f"),
            _f(r["mem_ratio"], ".2f"), f"{r['train_loss']:.4f} |"]))
    notes = []
    if any(r["base_fallback"] and r["gap"] is not None for r in rows):
        notes.append(f"¹ no {baseline} run of this seed: gap to {baseline} seed 1.")
    if any(r["val_iter"] != r["iterations"] for r in rows):
        notes.append("@N: the run's last validation was at iteration N; its gap is to the baseline there.")
    notes.append(f"tokens/s: median over iterations after the first {WARMUP}; time: ratio of median iteration times "
                 f"against the same-seed {baseline} run (meaningful only if both ran on the same GPU).")
    out += [""] + notes
    if reference:
        out += ["", f"Gap ratio = (gap to {baseline}) / ({reference}'s gap to {baseline}), same seed, same iteration"
                + (f"; target: {target}" if target else "") + ".", "",
                "| seed | recipe | iteration | final val | gap | ref gap | gap ratio | val spread |", "|---" * 8 + "|"]
        ranked = sorted(rows, key=lambda r: (r["recipe"] != target, r["recipe"], r["seed"]))
        for r in sorted((r for r in ranked if r["gap_ratio"] is not None), key=lambda r: r["seed"]):
            flag = " (incomplete)" if r["incomplete"] else ""
            out.append(f"| {r['seed']} | {r['recipe']}{flag} | {r['val_iter']} | {r['final_val']:.4f} | "
                       f"{r['gap']:+.4f} | {r['ref_gap']:+.4f} | {r['gap_ratio']:.2f} | |")
        for recipe in dict.fromkeys(r["recipe"] for r in ranked):
            group = [r for r in rows if r["recipe"] == recipe and not r["incomplete"] and r["final_val"] is not None]
            if len(group) < 2:
                continue
            mean = lambda k: (statistics.fmean(v) if (v := [r[k] for r in group if r[k] is not None]) else None)
            vals = [r["final_val"] for r in group]
            out.append(f"| mean of {len(group)} | {recipe} | {group[0]['val_iter']} | {mean('final_val'):.4f} | "
                       f"{_f(mean('gap'), '+.4f')} | {_f(mean('ref_gap'), '+.4f')} | {_f(_ratio(mean('gap'), mean('ref_gap')), '.2f')} "
                       f"| {max(vals) - min(vals):.4f} |")
        out += ["", "mean rows: mean gap / mean reference gap over the seeds that have them; val spread = "
                "max - min of final val over seeds."]
    return "\n".join(out) + "\n"


def plot(runs: list[dict], out: str | Path, baseline: str, tokens_per_iter: int | None = None,
         title: str | None = None) -> None:
    """Smoothed train loss (second half) and val loss with a val-gap inset, both vs tokens."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    recipes = sorted({r["recipe"] for r in runs}, key=lambda x: (x != baseline, x))
    colors = {rc: f"C{i}" for i, rc in enumerate(recipes)}
    by_key = {(r["recipe"], r["seed"]): r for r in runs}
    tpi = {r["name"]: _tokens_per_iter(r, tokens_per_iter) for r in runs}
    max_tok = max(r["iteration"][-1] * tpi[r["name"]] for r in runs)
    max_it = max(r["iteration"][-1] for r in runs)
    scale, unit = (1e9, "B") if max_tok >= 1e9 else (1e6, "M")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    inset = ax2.inset_axes([0.5, 0.5, 0.47, 0.45])
    visible = []
    for run in sorted(runs, key=lambda r: (recipes.index(r["recipe"]), r["seed"])):
        style = {"color": colors[run["recipe"]], "ls": ["-", "--", ":", "-."][(run["seed"] - 1) % 4],
                 "label": run["name"] + (" (incomplete)" if run["iteration"][-1] < max_it else "")}
        tok = np.asarray(run["iteration"]) * tpi[run["name"]] / scale
        loss = np.asarray(run["loss"], dtype=float)
        k = min(TAIL, len(loss))
        smooth, x = np.convolve(loss, np.ones(k) / k, mode="valid"), tok[k - 1:]
        ax1.plot(x, smooth, lw=1.2, **style)
        visible += list(smooth[x >= max_tok / scale / 2])
        its = sorted(run["val"])
        ax2.plot(np.asarray(its) * tpi[run["name"]] / scale, [run["val"][i] for i in its], marker="o", ms=3, **style)
        base = by_key.get((baseline, run["seed"])) or by_key.get((baseline, 1))
        common = [i for i in its if base and i in base["val"]]
        if common:
            inset.plot(np.asarray(common) * tpi[run["name"]] / scale, [_gap(run, base, i) for i in common],
                       marker="o", ms=2, lw=1, **{k: v for k, v in style.items() if k != "label"})
    ax1.set_xlim(max_tok / scale / 2, max_tok / scale * 1.01)
    if visible:
        lo, hi = min(visible), max(visible)
        ax1.set_ylim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
    ax1.set(xlabel=f"tokens ({unit})", ylabel="train loss", title=f"train loss (running mean of {TAIL})")
    ax2.set(xlabel=f"tokens ({unit})", ylabel="validation loss", title="validation loss")
    inset.set_title(f"val gap to {baseline}", fontsize=8)
    inset.tick_params(labelsize=7)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    fig.suptitle(title or f"Pre-training evidence: {len(runs)} runs, up to {max_tok / scale:.1f}{unit} tokens")
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("logs", nargs="+", help="JSON-lines loss logs (.jsonl or .jsonl.gz); run name = file name up to its first dot")
    p.add_argument("--tokens-per-iter", type=int, help="default: tokens/s x iteration time")
    p.add_argument("--baseline", default="bf16")
    p.add_argument("--reference", help="recipe the gap ratios divide by (e.g. nvfp4-sr)")
    p.add_argument("--target", help="recipe listed first in the gap ratios (e.g. quartet2)")
    p.add_argument("--plot", help="PNG to write")
    p.add_argument("--title", help="plot title, e.g. model / tokens / device")
    a = p.parse_args(argv)
    runs = [load_run(f) for f in a.logs]
    print(format_markdown(summarize(runs, a.baseline, a.reference, a.tokens_per_iter), a.baseline, a.reference,
                          a.target), end="")
    if a.plot:
        plot(runs, a.plot, a.baseline, a.tokens_per_iter, a.title)


if __name__ == "__main__":
    main()
