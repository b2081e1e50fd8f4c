#!/usr/bin/env python3
"""Summarize pre-training evidence runs (JSON-lines logs of examples/pretrain_gpt.py) and plot them.

    python tools/summarize_evidence.py runs/evidence/*.jsonl --tokens-per-iter 65536 \
        --plot docs/evidence_loss_curves.png --baseline bf16 --reference nvfp4-sr --target quartet2 \
        [--gap-plot docs/evidence_gap_curve.png] [--telemetry runs/evidence/*.telemetry.csv]

A run's name is its file name up to the first dot; `recipe@sN` is seed N of the recipe (a stem without `@` is seed 1).
Val gaps are taken at a run's last validation iteration against the baseline at that iteration, so
an incomplete run is compared at the point it reached. Markdown goes to stdout.

Over seeds (the runs that reached the final validation iteration): a recipe's gap is its mean
final val loss minus the mean over the baseline's seeds (mean-BF16 pairing: every seed of every
recipe sees the same data, so seeds 3+ need no BF16 run of their own), with the standard error
sqrt(s_r^2/n_r + s_b^2/n_b) (s: sample standard deviation over seeds) and a Welch t interval.
The gap ratio target/reference gets a Fieller interval: unpooled variances, the covariance the
shared baseline mean puts into both gaps, t quantile at Welch-Satterthwaite degrees of freedom
evaluated at the point estimate. The difference of the two recipes' mean val losses (the
baseline cancels) gets a Welch t interval, and the same-seed difference (seed s of both recipes
starts from the same initialization on the same data) a paired t interval; the reading uses the
paired one where two or more seeds pair. --at-iteration compares at an earlier validation
iteration (e.g. the last one every run reached).
"""
from __future__ import annotations

import argparse
import csv
import gzip
import json
import math
import statistics
from pathlib import Path
from typing import Any

WARMUP = 20  # first iterations left out of throughput medians (compilation, allocator warm-up)
TAIL = 32  # iterations in the train-loss mean and in the plot's running mean


def _read_text(path: Path) -> str:
    """A log or CSV as text, gunzipped if its name ends in .gz (as committed under docs/)."""
    return gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()


def load_run(path: str | Path) -> dict[str, Any]:
    """One log as columns plus {iteration: val_loss}; a repeated iteration keeps its last record."""
    path = Path(path)
    text = _read_text(path)
    recs = {r["iteration"]: r for r in map(json.loads, filter(str.strip, text.splitlines()))}
    if not recs:
        raise ValueError(f"{path}: no records")
    name = path.name.split(".")[0]  # bf16.jsonl and bf16.jsonl.gz are both run "bf16"
    recipe, _, seed = name.partition("@")
    run: dict[str, Any] = {"name": name, "recipe": recipe, "seed": int(seed.lstrip("s")) if seed else 1}
    for key in ("iteration", "loss", "iter_ms", "tokens_per_s", "peak_mem_gib"):
        run[key] = [recs[i].get(key) for i in sorted(recs)]
    # iterations with per-GEMM telemetry attached (its reference GEMMs cost time and memory):
    # left out of the throughput and peak-memory figures
    tel = [bool(recs[i].get("telemetry")) for i in sorted(recs)]
    for key in ("iter_ms", "tokens_per_s", "peak_mem_gib"):
        run[key] = [None if t else x for x, t in zip(run[key], tel)]
    run["val"] = {i: r["val_loss"] for i, r in sorted(recs.items()) if r.get("val_loss") is not None}
    return run


def _median(xs: list) -> float | None:
    """Median over the iterations after WARMUP (all of them for a shorter run)."""
    vals = [x for x in (xs[WARMUP:] if len(xs) > WARMUP else xs) if x is not None]
    return statistics.median(vals) if vals else None


def _tokens_per_iter(run: dict, given: int | None) -> float:
    """The given tokens per iteration, else tokens/s x iteration time (median)."""
    return given or round(_median([t * ms / 1e3 for t, ms in zip(run["tokens_per_s"], run["iter_ms"])
                                   if t is not None and ms is not None]))


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


# ------------------------------------------------------------------------- statistics over seeds
def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) (continued fraction, modified Lentz)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - _betainc(b, a, 1.0 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)) / a
    tiny, c, d, f = 1e-300, 1.0, 0.0, 1.0
    for i in range(400):
        m = i // 2
        if i == 0:
            num = 1.0
        elif i % 2 == 0:
            num = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        else:
            num = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c
        c = c if abs(c) > tiny else tiny
        f *= c * d
        if abs(1.0 - c * d) < 1e-15:
            break
    return front * (f - 1.0)


def t_cdf(t: float, dof: float) -> float:
    """Student t distribution function (dof > 0, real; inf: the normal)."""
    if math.isinf(dof):
        return statistics.NormalDist().cdf(t)
    tail = 0.5 * _betainc(dof / 2.0, 0.5, dof / (dof + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_pdf(t: float, dof: float) -> float:
    """Student t density."""
    log_c = math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2) - 0.5 * math.log(dof * math.pi)
    return math.exp(log_c - (dof + 1) / 2 * math.log1p(t * t / dof))


def t_quantile(p: float, dof: float) -> float:
    """Inverse of `t_cdf` in p (0 < p < 1): Newton steps kept inside a bisection bracket, to a
    relative 1e-13."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if math.isinf(dof):
        return statistics.NormalDist().inv_cdf(p)
    if p < 0.5:
        return -t_quantile(1.0 - p, dof)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, dof) < p:
        lo, hi = hi, 2.0 * hi
    x = min(max(statistics.NormalDist().inv_cdf(p), lo), hi)
    for _ in range(200):
        f = t_cdf(x, dof) - p
        if f < 0:
            lo = x
        else:
            hi = x
        step = f / t_pdf(x, dof)
        nxt = x - step
        if not lo < nxt < hi:
            nxt = 0.5 * (lo + hi)
        if abs(nxt - x) <= 1e-13 * max(1.0, abs(x)) or hi - lo <= 1e-13 * max(1.0, hi):
            return nxt
        x = nxt
    return x


def welch_dof(parts: list[tuple[float, int]]) -> float:
    """Welch-Satterthwaite degrees of freedom of a sum of variance terms (u_i, n_i): u_i an
    estimated variance contribution from n_i samples (n_i - 1 degrees of freedom each)."""
    total = sum(u for u, _ in parts)
    denom = sum(u * u / (n - 1) for u, n in parts if u > 0)
    return math.inf if denom == 0 else total * total / denom


def mean_sd(xs: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for one value)."""
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


def welch_interval(est: float, parts: list[tuple[float, int]],
                   level: float = 0.95) -> tuple[float, float, float, float]:
    """(standard error, dof, lo, hi) of an estimate whose variance is the sum of `parts`."""
    se = math.sqrt(sum(u for u, _ in parts))
    dof = welch_dof(parts)
    half = t_quantile(0.5 + level / 2, dof) * se if se > 0 else 0.0
    return se, dof, est - half, est + half


def fieller(a: float, b: float, vaa: float, vbb: float, vab: float, t: float) -> tuple[str, float | None, float | None]:
    """Fieller's confidence set for a/b: {rho : (a - rho b)^2 <= t^2 (vaa - 2 rho vab + rho^2 vbb)}.

    Returns ("interval", lo, hi); ("outside", lo, hi) for the two rays (-inf, lo] and [hi, inf);
    or ("all", None, None). The set is an interval exactly when b is significantly nonzero,
    b^2 > t^2 vbb."""
    qa, qb, qc = b * b - t * t * vbb, a * b - t * t * vab, a * a - t * t * vaa
    disc = qb * qb - qa * qc
    if qa > 0:
        root = math.sqrt(max(disc, 0.0))
        return "interval", (qb - root) / qa, (qb + root) / qa
    if disc <= 0 or qa == 0:
        return "all", None, None
    root = math.sqrt(disc)
    lo, hi = sorted(((qb - root) / qa, (qb + root) / qa))
    return "outside", lo, hi


def final_iteration(runs: list[dict]) -> int | None:
    """The last validation iteration any run reached (the comparison point over seeds)."""
    its = [max(r["val"]) for r in runs if r["val"]]
    return max(its) if its else None


def aggregate(runs: list[dict], baseline: str, tokens_per_iter: int | None = None,
              level: float = 0.95, at: int | None = None) -> dict[str, dict]:
    """Per recipe, over the seeds that reached `final_iteration` (or validation iteration `at`,
    e.g. the last one that every run reached when some stopped early): n, seeds, mean and sd of the
    final val loss, gap to the baseline's mean (se, Welch interval), same-seed gaps, tokens/s
    and peak memory (means over seeds of each run's median / maximum) and their ratios."""
    it = final_iteration(runs) if at is None else at
    if at is not None and not any(at in r["val"] for r in runs):
        raise ValueError(f"no run has a validation loss at iteration {at}")
    done = [r for r in runs if it is not None and it in r["val"]]
    groups: dict[str, list[dict]] = {}
    for r in sorted(done, key=lambda r: r["seed"]):
        groups.setdefault(r["recipe"], []).append(r)
    base_runs = groups.get(baseline, [])
    base_vals = [r["val"][it] for r in base_runs]
    out: dict[str, dict] = {}
    for recipe, group in groups.items():
        vals = [r["val"][it] for r in group]
        mean, sd = mean_sd(vals)
        tps = [t for t in (_median(r["tokens_per_s"]) for r in group) if t is not None]
        peaks = [max(p) for p in ([x for x in r["peak_mem_gib"] if x is not None] for r in group) if p]
        row = {"recipe": recipe, "n": len(group), "seeds": [r["seed"] for r in group], "iteration": it,
               "tokens_m": it * _tokens_per_iter(group[0], tokens_per_iter) / 1e6,
               "vals": vals, "mean": mean, "sd": sd, "gap": None, "se": None, "dof": None, "ci": None,
               "paired": {}, "tokens_per_s": statistics.fmean(tps) if tps else None,
               "peak_mem": statistics.fmean(peaks) if peaks else None,
               "excluded": sorted(r["name"] for r in runs if r["recipe"] == recipe and r not in group)}
        if base_vals and recipe != baseline:
            bmean, bsd = mean_sd(base_vals)
            row["gap"] = mean - bmean
            if sd is not None and bsd is not None:
                parts = [(sd * sd / len(vals), len(vals)), (bsd * bsd / len(base_vals), len(base_vals))]
                row["se"], row["dof"], lo, hi = welch_interval(row["gap"], parts, level)
                row["ci"] = (lo, hi)
            by_seed = {r["seed"]: r["val"][it] for r in base_runs}
            row["paired"] = {r["seed"]: r["val"][it] - by_seed[r["seed"]] for r in group if r["seed"] in by_seed}
        out[recipe] = row
    if baseline in out:
        b = out[baseline]
        for row in out.values():
            row["time_ratio"] = _ratio(b["tokens_per_s"], row["tokens_per_s"])  # time per token vs baseline
            row["mem_ratio"] = _ratio(row["peak_mem"], b["peak_mem"])
    return out


def gap_ratio(agg: dict[str, dict], baseline: str, target: str, reference: str, level: float = 0.95) -> dict | None:
    """target's mean gap / reference's mean gap with Fieller's interval (see the module doc), and
    the difference of their mean val losses with a Welch interval. None if a recipe is missing."""
    if not all(k in agg for k in (baseline, target, reference)):
        return None
    t, r, b = agg[target], agg[reference], agg[baseline]
    out = {"target": target, "reference": reference, "ratio": _ratio(t["gap"], r["gap"]),
           "diff": t["mean"] - r["mean"], "ratio_ci": None, "ratio_dof": None, "diff_ci": None, "diff_se": None,
           "level": level}
    # Same-seed pairing: seed s of every recipe starts from the same initialization and sees the
    # same data, so target(s) - reference(s) cancels the initialization's share of the seed noise.
    tv, rv = (dict(zip(x.get("seeds", []), x.get("vals", []))) for x in (t, r))
    common = sorted(set(tv) & set(rv))
    out["paired_seeds"] = common
    out["paired_diffs"] = [tv[s] - rv[s] for s in common]
    out["paired_diff"] = out["paired_se"] = out["paired_ci"] = None
    if common:
        out["paired_diff"], psd = mean_sd(out["paired_diffs"])
        if psd is not None:  # one variance term from n pairs: the paired t interval, n - 1 dof
            out["paired_se"], _, lo, hi = welch_interval(out["paired_diff"], [(psd * psd / len(common), len(common))],
                                                         level)
            out["paired_ci"] = (lo, hi)
    if t["sd"] is None or r["sd"] is None:
        return out
    ut, ur = t["sd"] ** 2 / t["n"], r["sd"] ** 2 / r["n"]
    out["diff_se"], out["diff_dof"], lo, hi = welch_interval(out["diff"], [(ut, t["n"]), (ur, r["n"])], level)
    out["diff_ci"] = (lo, hi)
    if b["sd"] is None or out["ratio"] is None:
        return out
    ub, rho = b["sd"] ** 2 / b["n"], out["ratio"]
    dof = welch_dof([(ut, t["n"]), (rho * rho * ur, r["n"]), ((1 - rho) ** 2 * ub, b["n"])])
    tq = t_quantile(0.5 + level / 2, dof)
    out["ratio_dof"] = dof
    out["ratio_ci"] = fieller(t["gap"], r["gap"], ut + ub, ur + ub, ub, tq)
    return out


def gap_curve(runs: list[dict], baseline: str, tokens_per_iter: int | None = None) -> dict[str, list[dict]]:
    """Per recipe, at every validation iteration that the recipe and the baseline both have:
    mean gap (mean val over the recipe's seeds there minus the baseline's), its standard error
    (None unless both have two seeds there) and the seed counts."""
    by_recipe: dict[str, list[dict]] = {}
    for r in runs:
        by_recipe.setdefault(r["recipe"], []).append(r)
    base = by_recipe.get(baseline, [])
    out: dict[str, list[dict]] = {}
    for recipe, group in by_recipe.items():
        if recipe == baseline or not base:
            continue
        tpi = _tokens_per_iter(group[0], tokens_per_iter)
        points = []
        for it in sorted({i for r in group for i in r["val"]}):
            vals = [r["val"][it] for r in group if it in r["val"]]
            bvals = [r["val"][it] for r in base if it in r["val"]]
            if not bvals:
                continue
            (m, sd), (bm, bsd) = mean_sd(vals), mean_sd(bvals)
            se = None if sd is None or bsd is None else math.sqrt(sd * sd / len(vals) + bsd * bsd / len(bvals))
            points.append({"iteration": it, "tokens_m": it * tpi / 1e6, "gap": m - bm, "se": se,
                           "n": len(vals), "n_base": len(bvals)})
        out[recipe] = points
    return out


def diff_curve(runs: list[dict], reference: str, baseline: str, tokens_per_iter: int | None = None,
               level: float = 0.95) -> dict[str, list[dict]]:
    """Per recipe other than `reference` and `baseline`, at every validation iteration where two
    or more seeds pair: the same-seed difference recipe(s) - reference(s), its mean, standard
    error and paired t interval. Seed s of both recipes starts from the same initialization on
    the same data, so the pairing removes the initialization's share of the seed noise (the band
    that dominates `gap_curve`)."""
    by: dict[str, dict[int, dict]] = {}
    for r in runs:
        by.setdefault(r["recipe"], {})[r["seed"]] = r
    ref = by.get(reference, {})
    out: dict[str, list[dict]] = {}
    for recipe, seeds in sorted(by.items()):
        if recipe in (reference, baseline) or not ref:
            continue
        tpi = _tokens_per_iter(next(iter(seeds.values())), tokens_per_iter)
        points = []
        for it in sorted({i for r in seeds.values() for i in r["val"]}):
            diffs = [seeds[s]["val"][it] - ref[s]["val"][it] for s in sorted(set(seeds) & set(ref))
                     if it in seeds[s]["val"] and it in ref[s]["val"]]
            if len(diffs) < 2:
                continue
            m, sd = mean_sd(diffs)
            se, _, lo, hi = welch_interval(m, [(sd * sd / len(diffs), len(diffs))], level)
            points.append({"iteration": it, "tokens_m": it * tpi / 1e6, "diff": m, "se": se, "ci": (lo, hi),
                           "n": len(diffs)})
        out[recipe] = points
    return out


def format_diff_curve(curves: dict[str, list[dict]], reference: str, level: float = 0.95) -> str:
    """Markdown: the same-seed difference to `reference` along the run, per recipe."""
    rec = [k for k in sorted(curves) if curves[k]]
    if not rec:
        return ""
    pct = f"{100 * level:g} %"
    header = [f"Same-seed difference to {reference} along the run (mean ± se, {pct} paired t interval):", ""]
    cell = lambda p: f"{p['diff']:+.4f} ± {p['se']:.4f} {_ci_text(p['ci'], '+.4f')}"  # noqa: E731
    return "\n".join(header + _curve_table(curves, rec, [f"{k} - {reference}" for k in rec], cell)) + "\n"


def plot_diff_curve(curves: dict[str, list[dict]], out: str | Path, reference: str, title: str | None = None,
                    marks: dict[str, float] | None = None) -> None:
    """Same-seed difference to the reference vs tokens, with its paired 95 % band; `marks`: labelled
    horizontal reference lines (e.g. the difference a claimed gap ratio would give)."""
    fig, ax = _tokens_axes()
    for i, recipe in enumerate(sorted(curves)):
        pts = curves[recipe]
        if not pts:
            continue
        x = [p["tokens_m"] for p in pts]
        n = max(p["n"] for p in pts)
        ax.plot(x, [p["diff"] for p in pts], marker="o", ms=3, color=f"C{i + 2}",
                label=f"{recipe} - {reference} ({n} seed pairs)")
        ax.fill_between(x, [p["ci"][0] for p in pts], [p["ci"][1] for p in pts], color=f"C{i + 2}", alpha=0.15, lw=0)
    for j, (label, y) in enumerate((marks or {}).items()):
        ax.axhline(y, color="0.4", lw=1, ls=("--", ":", "-.")[j % 3], label=label)
    _save_tokens_plot(fig, ax, out, f"val loss - {reference} val loss (same seed)",
                      title or f"Same-seed difference to {reference} (mean, 95 % paired band)")


def _curve_table(curves: dict[str, list[dict]], recipes: list[str], columns: list[str], cell) -> list[str]:
    """Markdown rows of per-iteration curves: one row per validation iteration any of `recipes`
    has, one column per recipe (`columns` its header, `cell(point)` its text, "—" where absent)."""
    at = {k: {p["iteration"]: p for p in curves[k]} for k in recipes}
    rows = ["| iteration | tokens (M) | " + " | ".join(columns) + " |", "|---" * (2 + len(recipes)) + "|"]
    for it in sorted({i for k in recipes for i in at[k]}):
        tok = next(at[k][it]["tokens_m"] for k in recipes if it in at[k])
        cells = ["—" if it not in at[k] else cell(at[k][it]) for k in recipes]
        rows.append(f"| {it} | {tok:.1f} | " + " | ".join(cells) + " |")
    return rows


def _tokens_axes():
    """A fresh figure and axes for a curve against tokens (matplotlib's file-only backend)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(7, 4.5))


def _save_tokens_plot(fig, ax, out: str | Path, ylabel: str, title: str) -> None:
    """Zero line, labels, grid and legend of a curve against tokens; write `out` and close."""
    import matplotlib.pyplot as plt

    ax.axhline(0.0, color="k", lw=0.8)
    ax.set(xlabel="tokens (M)", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def _ci_text(ci: tuple | None, fmt: str) -> str:
    if ci is None:
        return "—"
    if len(ci) == 3:  # Fieller
        kind, lo, hi = ci
        if kind == "interval":
            return f"[{lo:{fmt}}, {hi:{fmt}}]"
        return "unbounded" + ("" if kind == "all" else f" (outside ({lo:{fmt}}, {hi:{fmt}}))")
    return f"[{ci[0]:{fmt}}, {ci[1]:{fmt}}]"


def format_aggregate(agg: dict[str, dict], baseline: str, ratio: dict | None = None,
                     curves: dict[str, list[dict]] | None = None, level: float = 0.95) -> str:
    """Markdown: per-recipe table over seeds, the gap ratio and difference, the gap along the run."""
    pct = f"{100 * level:g} %"
    first = next(iter(agg.values()))
    out = [f"Over seeds, at iteration {first['iteration']} ({first['tokens_m']:.1f}M tokens): gap = mean val - "
           f"mean {baseline} val (every run against the mean over the {baseline} seeds; the per-run tables "
           f"above pair a run with the {baseline} run of its seed, else seed 1); "
           f"se = sqrt(s_r^2/n_r + s_{baseline}^2/n_{baseline}); {pct} Welch t interval.", "",
           f"| recipe | seeds | mean val | sd | gap vs {baseline} | se | {pct} CI | same-seed gaps | tokens/s "
           f"| time ×{baseline} | peak GiB | mem ×{baseline} |", "|---" * 12 + "|"]
    order = sorted(agg, key=lambda k: (k != baseline, k))
    for k in order:
        r = agg[k]
        paired = ", ".join(f"s{s}: {g:+.4f}" for s, g in sorted(r["paired"].items())) or "—"
        out.append(" | ".join([
            f"| {k}", f"{r['n']} ({', '.join(map(str, r['seeds']))})", f"{r['mean']:.4f}", _f(r["sd"], ".4f"),
            _f(r["gap"], "+.4f"), _f(r["se"], ".4f"), _ci_text(r["ci"], "+.4f"), paired,
            _f(r["tokens_per_s"], ",.0f"), _f(r.get("time_ratio"), ".2f"), _f(r["peak_mem"], ".2f"),
            _f(r.get("mem_ratio"), ".2f") + " |"]))
    excluded = sorted(n for r in agg.values() for n in r["excluded"])
    if excluded:
        out += ["", f"Left out (no validation at that iteration): {', '.join(excluded)}."]
    if ratio:
        t, ref = ratio["target"], ratio["reference"]
        out += ["", f"**Gap ratio** {t} / {ref} = {_f(ratio['ratio'], '.2f')}, {pct} Fieller interval "
                f"{_ci_text(ratio['ratio_ci'], '.2f')}"
                + (f" (Welch-Satterthwaite dof {ratio['ratio_dof']:.1f})" if ratio["ratio_dof"] else "") + ".",
                f"**Difference** mean val {t} - {ref} = {ratio['diff']:+.4f}"
                + (f" ± {ratio['diff_se']:.4f} (se), {pct} Welch interval {_ci_text(ratio['diff_ci'], '+.4f')}"
                   if ratio["diff_ci"] else " (no interval: a recipe has one seed)") + "."]
        if ratio.get("paired_ci"):
            diffs = ", ".join(f"s{s}: {d:+.4f}" for s, d in zip(ratio["paired_seeds"], ratio["paired_diffs"]))
            out.append(f"**Same-seed difference** {t} - {ref} (seeds {', '.join(map(str, ratio['paired_seeds']))}: "
                       f"{diffs}) = {ratio['paired_diff']:+.4f} ± {ratio['paired_se']:.4f} (se), {pct} t interval "
                       f"({len(ratio['paired_seeds']) - 1} dof) {_ci_text(ratio['paired_ci'], '+.4f')}.")
        ci = ratio.get("paired_ci") or ratio["diff_ci"]
        if ci:
            lo, hi = ci
            verdict = (f"{t} ends below {ref}" if hi < 0 else f"{t} ends above {ref}" if lo > 0
                       else f"{t} and {ref} are not distinguishable")
            basis = "same-seed" if ratio.get("paired_ci") else "unpaired"
            out.append(f"Reading ({basis} interval): {verdict} at {pct} confidence.")
    if curves:
        rec = sorted(curves)
        cell = lambda p: f"{p['gap']:+.4f}" + (f" ± {p['se']:.4f}" if p["se"] is not None else "")  # noqa: E731
        out += ["", f"Mean gap to {baseline} along the run (± se where both have two seeds):", ""]
        out += _curve_table(curves, rec, rec, cell)
    return "\n".join(out) + "\n"


def plot_gap_curve(curves: dict[str, list[dict]], out: str | Path, baseline: str, title: str | None = None) -> None:
    """Mean val gap to the baseline vs tokens per recipe, with a ±1 se band where known."""
    fig, ax = _tokens_axes()
    for i, recipe in enumerate(sorted(curves)):
        pts = curves[recipe]
        if not pts:
            continue
        x = [p["tokens_m"] for p in pts]
        y = [p["gap"] for p in pts]
        n = max(p["n"] for p in pts)
        ax.plot(x, y, marker="o", ms=3, color=f"C{i + 1}", label=f"{recipe} ({n} seed{'s' * (n > 1)})")
        band = [(p["tokens_m"], p["gap"] - p["se"], p["gap"] + p["se"]) for p in pts if p["se"] is not None]
        if band:
            bx, lo, hi = zip(*band)
            ax.fill_between(bx, lo, hi, color=f"C{i + 1}", alpha=0.2, lw=0)
    _save_tokens_plot(fig, ax, out, f"val loss - mean {baseline} val loss",
                      title or f"Validation gap to {baseline} (mean over seeds, ±1 se)")


# --------------------------------------------------------------------------------- telemetry
def telemetry_table(paths: list[str | Path]) -> list[dict]:
    """Per (run, GEMM) of per-GEMM telemetry CSVs (quartet_te.telemetry, docs/telemetry.md):
    means over layers and sampled steps of err_a, err_b, err_out and 1 - cos_out, and the layer
    with the largest mean err_out. The run is the file name up to its first dot."""
    rows = []
    for path in paths:
        run = Path(path).name.split(".")[0]
        recs = list(csv.DictReader(_read_text(Path(path)).splitlines()))
        for gemm in ("fprop", "dgrad", "wgrad"):
            sel = [r for r in recs if r["gemm"] == gemm]
            if not sel:
                continue
            num = lambda k, rs: [float(r[k]) for r in rs if not math.isnan(float(r[k]))]  # noqa: E731
            by_layer: dict[str, list[float]] = {}
            for r in sel:
                by_layer.setdefault(r["layer"], []).append(float(r["err_out"]))
            worst = max(by_layer, key=lambda k: statistics.fmean(by_layer[k]))
            mean = lambda xs: statistics.fmean(xs) if xs else None  # noqa: E731
            rows.append({"run": run, "gemm": gemm, "rows": len(sel), "steps": len({r["step"] for r in sel}),
                         "err_a": mean(num("err_a", sel)), "err_b": mean(num("err_b", sel)),
                         "err_out": mean(num("err_out", sel)),
                         "one_minus_cos": mean([1.0 - x for x in num("cos_out", sel)]),
                         "worst_layer": worst, "worst_err_out": statistics.fmean(by_layer[worst])})
    return rows


def format_telemetry(rows: list[dict]) -> str:
    out = ["Per-GEMM quantization telemetry (means over layers and sampled steps; docs/telemetry.md):", "",
           "| run | GEMM | steps | err_a | err_b | err_out | 1 - cos | worst layer (err_out) |", "|---" * 8 + "|"]
    for r in rows:
        out.append(f"| {r['run']} | {r['gemm']} | {r['steps']} | {_f(r['err_a'], '.2e')} | {_f(r['err_b'], '.2e')} "
                   f"| {_f(r['err_out'], '.2e')} | {_f(r['one_minus_cos'], '.2e')} | {r['worst_layer']} "
                   f"({r['worst_err_out']:.2e}) |")
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
    p.add_argument("--gap-plot", help="PNG of the mean gap to the baseline vs tokens (±1 se band)")
    p.add_argument("--diff-plot", help="PNG of the same-seed difference to --reference vs tokens (paired band)")
    p.add_argument("--claimed-ratio", type=float,
                   help="with --diff-plot: mark the difference a gap ratio of this value would give at the end")
    p.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals")
    p.add_argument("--at-iteration", type=int,
                   help="compare over seeds at this validation iteration (default: the last any run reached)")
    p.add_argument("--telemetry", nargs="*", default=[], help="per-GEMM telemetry CSVs to tabulate")
    a = p.parse_args(argv)
    runs = [load_run(f) for f in a.logs]
    print(format_markdown(summarize(runs, a.baseline, a.reference, a.tokens_per_iter), a.baseline, a.reference,
                          a.target), end="")
    agg = aggregate(runs, a.baseline, a.tokens_per_iter, a.level, a.at_iteration)
    curves = gap_curve(runs, a.baseline, a.tokens_per_iter)
    if agg:
        ratio = gap_ratio(agg, a.baseline, a.target, a.reference, a.level) if a.target and a.reference else None
        print("\n" + format_aggregate(agg, a.baseline, ratio, curves, a.level), end="")
    diffs = diff_curve(runs, a.reference, a.baseline, a.tokens_per_iter, a.level) if a.reference else {}
    if any(diffs.values()):
        print("\n" + format_diff_curve(diffs, a.reference, a.level), end="")
    if a.telemetry:
        print("\n" + format_telemetry(telemetry_table(a.telemetry)), end="")
    if a.plot:
        plot(runs, a.plot, a.baseline, a.tokens_per_iter, a.title)
    if a.gap_plot:
        plot_gap_curve(curves, a.gap_plot, a.baseline, a.title)
    if a.diff_plot and any(diffs.values()):
        marks = {}
        ref_gap = agg.get(a.reference, {}).get("gap") if agg else None
        if a.claimed_ratio is not None and ref_gap is not None:
            marks[f"gap ratio {a.claimed_ratio:g} (at the final {a.reference} gap)"] = (a.claimed_ratio - 1) * ref_gap
        plot_diff_curve(diffs, a.diff_plot, a.reference, a.title, marks)


if __name__ == "__main__":
    main()
