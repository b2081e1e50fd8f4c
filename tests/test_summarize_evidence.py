"""tools/summarize_evidence.py on synthetic logs with known val losses, throughput and memory."""
import gzip
import importlib.util
import json
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "tools" / "summarize_evidence.py"
_spec = importlib.util.spec_from_file_location("summarize_evidence", _PATH)
se = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(se)

TPI = 4096  # tokens per iteration
ITERS = 256
# name: (val loss at 128, final val loss, tokens/s after warm-up (two alternating values), peak GiB, iterations)
RUNS = {
    "bf16": (2.00, 1.00, (900.0, 1100.0), 4.0, ITERS),
    "nvfp4-sr": (2.10, 1.04, (400.0, 600.0), 3.0, ITERS),
    "quartet2": (2.05, 1.02, (450.0, 550.0), 3.2, ITERS),
    "quartet2@s2": (2.06, 1.03, (450.0, 550.0), 3.2, ITERS),
    "quartet2-rot": (2.02, None, (200.0, 300.0), 3.6, 150),
}


def _write(tmp_path: Path) -> list[Path]:
    paths = []
    for name, (v128, vfin, tps, mem, iters) in RUNS.items():
        lines = []
        for it in range(1, iters + 1):
            # 20 warm-up iterations at 10 tokens/s: with them in, the median would drop to tps[0].
            t = 10.0 if it <= se.WARMUP else tps[it % 2]
            rec = {"iteration": it, "loss": 3.0 - it / ITERS, "lr": 1e-4, "grad_norm": 0.2,
                   "iter_ms": TPI / t * 1e3, "tokens_per_s": t, "skipped": False,
                   "peak_mem_gib": mem if it > 1 else mem / 2}
            if it == 128:
                rec["val_loss"] = v128
            elif it == iters and vfin is not None:
                rec["val_loss"] = vfin
            lines.append(json.dumps(rec))
        path = tmp_path / f"{name}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        paths.append(path)
    return paths


def test_summary_numbers(tmp_path):
    runs = [se.load_run(p) for p in _write(tmp_path)]
    assert {(r["recipe"], r["seed"]) for r in runs} >= {("quartet2", 2), ("quartet2", 1), ("bf16", 1)}
    rows = {r["name"]: r for r in se.summarize(runs, "bf16", "nvfp4-sr")}  # tokens/iter inferred
    assert rows["bf16"]["gap"] == pytest.approx(0.0)
    assert rows["nvfp4-sr"]["gap"] == pytest.approx(0.04)
    assert rows["quartet2"]["gap"] == pytest.approx(0.02)
    assert rows["quartet2"]["gap_ratio"] == pytest.approx(0.5)
    # seed 2 has no bf16@s2: gap to seed-1 bf16, flagged, and no gap ratio (no nvfp4-sr@s2 either)
    assert rows["quartet2@s2"]["gap"] == pytest.approx(0.03)
    assert rows["quartet2@s2"]["base_fallback"] and not rows["quartet2"]["base_fallback"]
    assert rows["quartet2@s2"]["gap_ratio"] is None
    # incomplete run: compared at its last validation (128) against the baseline and reference there
    rot = rows["quartet2-rot"]
    assert rot["incomplete"] and not rows["quartet2"]["incomplete"]
    assert rot["iterations"] == 150 and rot["val_iter"] == 128
    assert rot["gap"] == pytest.approx(0.02) and rot["gap_ratio"] == pytest.approx(0.2)
    assert rows["bf16"]["tokens_per_s"] == pytest.approx(1000.0)
    assert rows["nvfp4-sr"]["tokens_per_s"] == pytest.approx(500.0)
    assert rows["nvfp4-sr"]["time_ratio"] == pytest.approx(2.0, rel=0.05)
    assert rows["nvfp4-sr"]["peak_mem"] == 3.0 and rows["nvfp4-sr"]["mem_ratio"] == pytest.approx(0.75)
    assert rows["bf16"]["tokens_m"] == pytest.approx(ITERS * TPI / 1e6)
    assert rows["bf16"]["train_loss"] == pytest.approx(3.0 - (ITERS - 15.5) / ITERS)

    md = se.format_markdown(list(rows.values()), "bf16", "nvfp4-sr", "quartet2")
    assert "150 (incomplete)" in md and "1.0200 @128" not in md and "2.0200 @128" in md
    assert "¹" in md and "seed 1" in md
    assert "| 1 | quartet2 | 256 | 1.0200 | +0.0200 | +0.0400 | 0.50 |" in md
    assert "| mean of 2 | quartet2 | 256 | 1.0250 | +0.0250 |" in md and "| 0.0100 |" in md
    mean_row = next(line for line in md.splitlines() if line.startswith("| mean of 2 | quartet2"))
    assert mean_row.split(" | ")[6] == "0.62"  # mean gap 0.025 / nvfp4-sr gap 0.04 (seed 1 only)


def test_plot_written(tmp_path):
    pytest.importorskip("matplotlib")
    runs = [se.load_run(p) for p in _write(tmp_path)]
    out = tmp_path / "sub" / "curves.png"
    se.plot(runs, out, "bf16", TPI, title="synthetic")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli(tmp_path, capsys):
    se.main([str(p) for p in _write(tmp_path)] + ["--tokens-per-iter", str(TPI), "--baseline", "bf16",
                                                   "--reference", "nvfp4-sr", "--target", "quartet2"])
    assert "| quartet2 | 256 | 1.0" in capsys.readouterr().out


def test_committed_logs_match_the_docs():
    """README, BENCHMARKS.md and docs/evidence_results.md quote the committed logs' numbers."""
    root = Path(__file__).resolve().parents[1]
    logs = sorted((root / "docs" / "evidence").glob("*.jsonl.gz"))
    assert {p.name.split(".")[0] for p in logs} >= {"bf16", "nvfp4-sr", "quartet2", "quartet2-rot"}
    runs = [se.load_run(p) for p in logs]
    rows = {r["name"]: r for r in se.summarize(runs, "bf16", "nvfp4-sr", tokens_per_iter=65536)}
    docs = {name: (root / name).read_text("utf-8") for name in
            ("README.md", "BENCHMARKS.md", "docs/evidence_results.md")}
    for name, row in rows.items():
        assert row["iterations"] == 1536 and row["tokens_m"] == pytest.approx(100.66, abs=0.01)
        for doc, text in docs.items():
            assert f"{row['final_val']:.4f}" in text, (doc, name)
            if row["gap"]:
                assert f"{row['gap']:+.4f}" in text, (doc, name)
    assert f"{rows['quartet2']['gap_ratio']:.2f}" == "1.66"


# ------------------------------------------------------------- statistics over seeds (issue 15)
# final val losses per run (iteration 256); val at 128 is final + 1 (so every gap at 128 equals the final one)
SEEDED = {
    "bf16": 1.005, "bf16@s2": 1.015,
    "nvfp4-sr": 1.03, "nvfp4-sr@s2": 1.04, "nvfp4-sr@s3": 1.05,
    "quartet2": 1.02, "quartet2@s2": 1.025, "quartet2@s3": 1.03,
}


def _write_seeded(tmp_path: Path, finals: dict[str, float], incomplete: tuple[str, ...] = ()) -> list[Path]:
    """Logs whose seed-1 FP4 runs carry per-GEMM telemetry over their last 4 iterations, slower
    and with a higher peak there: the summaries must leave those iterations out."""
    paths = []
    for name, final in finals.items():
        iters = 150 if name in incomplete else ITERS
        tps = 2000.0 if name.startswith("bf16") else 500.0 if name.startswith("nvfp4") else 400.0
        lines = []
        for it in range(1, iters + 1):
            rec = {"iteration": it, "loss": 3.0, "iter_ms": TPI / tps * 1e3, "tokens_per_s": tps,
                   "peak_mem_gib": 4.0 if name.startswith("bf16") else 3.0}
            if "@" not in name and not name.startswith("bf16") and it > iters - 4:
                rec.update(telemetry=True, iter_ms=rec["iter_ms"] * 10, tokens_per_s=tps / 10, peak_mem_gib=9.0)
            if it == 128:
                rec["val_loss"] = final + 1.0
            elif it == ITERS:
                rec["val_loss"] = final
            lines.append(json.dumps(rec))
        path = tmp_path / f"{name}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        paths.append(path)
    return paths


def test_t_quantiles_match_tables():
    for dof, q in ((1, 12.706205), (2, 4.302653), (3, 3.182446), (5, 2.570582), (10, 2.228139), (30, 2.042272)):
        assert se.t_quantile(0.975, dof) == pytest.approx(q, abs=1e-6)
    assert se.t_quantile(0.995, 2) == pytest.approx(9.924843, abs=1e-6)
    assert se.t_quantile(0.025, 7) == pytest.approx(-2.364624, abs=1e-6)
    assert se.t_quantile(0.975, float("inf")) == pytest.approx(1.959964, abs=1e-6)
    assert se.t_cdf(se.t_quantile(0.9, 2.5), 2.5) == pytest.approx(0.9, abs=1e-12)  # non-integer dof


def test_aggregate_over_seeds(tmp_path):
    runs = [se.load_run(p) for p in _write_seeded(tmp_path, {**SEEDED, "quartet2-rot": 1.0}, ("quartet2-rot",))]
    agg = se.aggregate(runs, "bf16", TPI)
    assert set(agg) == {"bf16", "nvfp4-sr", "quartet2"}  # quartet2-rot never reached iteration 256
    b, n, q = agg["bf16"], agg["nvfp4-sr"], agg["quartet2"]
    assert (b["n"], n["n"], q["n"]) == (2, 3, 3) and q["seeds"] == [1, 2, 3] and b["iteration"] == ITERS
    assert b["mean"] == pytest.approx(1.01) and b["sd"] == pytest.approx(0.01 / 2 ** 0.5)
    assert n["gap"] == pytest.approx(0.03) and q["gap"] == pytest.approx(0.015)
    # se = sqrt(s^2/3 + s_bf16^2/2): 0.01^2/3 + 0.00005/2, 0.005^2/3 + 0.00005/2
    assert n["se"] == pytest.approx((1e-4 / 3 + 2.5e-5) ** 0.5)
    assert q["se"] == pytest.approx((2.5e-5 / 3 + 2.5e-5) ** 0.5)
    dof = (1e-4 / 3 + 2.5e-5) ** 2 / ((1e-4 / 3) ** 2 / 2 + (2.5e-5) ** 2 / 1)  # Welch-Satterthwaite
    assert n["dof"] == pytest.approx(dof)
    half = se.t_quantile(0.975, dof) * n["se"]
    assert n["ci"] == pytest.approx((0.03 - half, 0.03 + half))
    assert q["paired"] == pytest.approx({1: 0.015, 2: 0.01})  # seed 3 has no bf16 of its own
    assert n["tokens_per_s"] == pytest.approx(500.0) and n["time_ratio"] == pytest.approx(4.0)
    assert q["peak_mem"] == 3.0 and q["mem_ratio"] == pytest.approx(0.75)
    assert q["tokens_m"] == pytest.approx(ITERS * TPI / 1e6)


def test_gap_ratio_fieller_and_difference(tmp_path):
    runs = [se.load_run(p) for p in _write_seeded(tmp_path, SEEDED)]
    agg = se.aggregate(runs, "bf16", TPI)
    r = se.gap_ratio(agg, "bf16", "quartet2", "nvfp4-sr")
    assert r["ratio"] == pytest.approx(0.5) and r["diff"] == pytest.approx(-0.015)
    # Fieller's endpoints solve (a - rho b)^2 = t^2 (Vaa - 2 rho Vab + rho^2 Vbb); Welch dof at rho = 0.5
    ut, ur, ub = 2.5e-5 / 3, 1e-4 / 3, 5e-5 / 2  # s^2 / n per recipe
    parts = (ut, 0.25 * ur, 0.25 * ub)
    dof = sum(parts) ** 2 / (parts[0] ** 2 / 2 + parts[1] ** 2 / 2 + parts[2] ** 2 / 1)
    assert r["ratio_dof"] == pytest.approx(dof) and dof == pytest.approx(4.84, abs=0.01)
    t = se.t_quantile(0.975, dof)
    kind, lo, hi = r["ratio_ci"]
    assert kind == "interval" and lo < 0.5 < hi
    for rho in (lo, hi):
        assert (0.015 - rho * 0.03) ** 2 == pytest.approx(t * t * (ut + ub - 2 * rho * ub + rho * rho * (ur + ub)))
    assert r["diff_se"] == pytest.approx((ut + ur) ** 0.5)
    half = se.t_quantile(0.975, (ut + ur) ** 2 / (ut ** 2 / 2 + ur ** 2 / 2)) * r["diff_se"]
    assert r["diff_ci"] == pytest.approx((-0.015 - half, -0.015 + half))
    md = se.format_aggregate(agg, "bf16", r, se.gap_curve(runs, "bf16", TPI))
    assert "| quartet2 | 3 (1, 2, 3) | 1.0250 | 0.0050 | +0.0150 | 0.0058 |" in md
    assert f"**Gap ratio** quartet2 / nvfp4-sr = 0.50, 95 % Fieller interval [{lo:.2f}, {hi:.2f}]" in md
    # same seed = same initialization and data: the paired differences -0.01, -0.015, -0.02 have
    # sd 0.005, so the paired t interval (2 dof) excludes 0 although the unpaired one does not
    assert r["paired_seeds"] == [1, 2, 3] and r["paired_diffs"] == pytest.approx([-0.01, -0.015, -0.02])
    assert r["paired_se"] == pytest.approx(0.005 / 3 ** 0.5)
    phalf = 4.302653 * 0.005 / 3 ** 0.5
    assert r["paired_ci"] == pytest.approx((-0.015 - phalf, -0.015 + phalf), abs=1e-6)
    assert r["diff_ci"][0] < 0 < r["diff_ci"][1]
    assert "**Same-seed difference** quartet2 - nvfp4-sr (seeds 1, 2, 3: s1: -0.0100" in md
    assert "Reading (same-seed interval): quartet2 ends below nvfp4-sr at 95 % confidence." in md


def test_compare_at_an_earlier_iteration(tmp_path):
    """--at-iteration: runs that stopped early (here all nvfp4-sr seeds at 150) join the
    comparison at a validation iteration they reached; one nobody reached is refused."""
    runs = [se.load_run(p) for p in _write_seeded(tmp_path, SEEDED, ("nvfp4-sr", "nvfp4-sr@s2", "nvfp4-sr@s3"))]
    assert "nvfp4-sr" not in se.aggregate(runs, "bf16", TPI)
    agg = se.aggregate(runs, "bf16", TPI, at=128)
    assert agg["nvfp4-sr"]["n"] == 3 and agg["quartet2"]["iteration"] == 128
    assert agg["nvfp4-sr"]["gap"] == pytest.approx(0.03) and agg["quartet2"]["gap"] == pytest.approx(0.015)
    with pytest.raises(ValueError, match="iteration 200"):
        se.aggregate(runs, "bf16", TPI, at=200)


def test_fieller_without_denominator_noise_is_the_t_interval(tmp_path):
    """Equal BF16 and NVFP4-SR seeds: the ratio's interval is quartet2's gap interval over a
    fixed 0.03, with t at 2 dof: 0.015 +- 4.302653 x 0.005 / sqrt(3), divided by 0.03."""
    finals = {**SEEDED, "bf16": 1.01, "bf16@s2": 1.01, "nvfp4-sr": 1.04, "nvfp4-sr@s2": 1.04, "nvfp4-sr@s3": 1.04}
    agg = se.aggregate([se.load_run(p) for p in _write_seeded(tmp_path, finals)], "bf16", TPI)
    r = se.gap_ratio(agg, "bf16", "quartet2", "nvfp4-sr")
    kind, lo, hi = r["ratio_ci"]
    half = 4.302653 * 0.005 / 3 ** 0.5
    assert r["ratio_dof"] == pytest.approx(2.0)
    assert kind == "interval" and (lo, hi) == pytest.approx(((0.015 - half) / 0.03, (0.015 + half) / 0.03), abs=1e-6)
    # and a reference gap indistinguishable from 0 makes the set unbounded
    finals.update({"nvfp4-sr": 1.00, "nvfp4-sr@s2": 1.01, "nvfp4-sr@s3": 1.03})
    agg = se.aggregate([se.load_run(p) for p in _write_seeded(tmp_path, finals)], "bf16", TPI)
    assert se.gap_ratio(agg, "bf16", "quartet2", "nvfp4-sr")["ratio_ci"][0] in ("all", "outside")


def test_fieller_interval_covers_the_true_ratio():
    """Simulated experiments (2 BF16, 3 + 3 FP4 seeds, normal seed noise, true ratio 0.5, fixed
    RNG): the 95 % sets cover the true ratio, and the difference's interval the true
    difference, in 93-97.5 % of 1000 draws."""
    import random

    rng, mu, sigma = random.Random(0), (1.0, 1.03, 1.015), (0.004, 0.004, 0.003)
    covered = diff_covered = 0
    for _ in range(1000):
        agg = {}
        for name, m, s, n in (("bf16", mu[0], sigma[0], 2), ("nvfp4-sr", mu[1], sigma[1], 3),
                              ("quartet2", mu[2], sigma[2], 3)):
            mean, sd = se.mean_sd([rng.gauss(m, s) for _ in range(n)])
            agg[name] = {"n": n, "mean": mean, "sd": sd}
        for name in ("nvfp4-sr", "quartet2"):
            agg[name]["gap"] = agg[name]["mean"] - agg["bf16"]["mean"]
        r = se.gap_ratio(agg, "bf16", "quartet2", "nvfp4-sr")
        kind, lo, hi = r["ratio_ci"]
        covered += (kind == "all" or (kind == "interval" and lo <= 0.5 <= hi)
                    or (kind == "outside" and not lo < 0.5 < hi))
        diff_covered += r["diff_ci"][0] <= mu[2] - mu[1] <= r["diff_ci"][1]
    assert 0.93 <= covered / 1000 <= 0.975 and 0.93 <= diff_covered / 1000 <= 0.975


def test_same_seed_interval_covers_the_true_difference():
    """Simulated experiments with a per-seed initialization effect (sd 0.01) that both recipes
    share plus their own noise (sd 0.003): the paired 95 % interval of quartet2 - nvfp4-sr
    covers the true -0.015 in 93-97.5 % of 1000 draws, and is narrower than the unpaired one."""
    import random

    rng = random.Random(1)
    covered = narrower = 0
    for _ in range(1000):
        init = [rng.gauss(0.0, 0.01) for _ in range(3)]
        agg = {}
        for name, m, n in (("bf16", 1.0, 2), ("nvfp4-sr", 1.03, 3), ("quartet2", 1.015, 3)):
            vals = [m + init[s] + rng.gauss(0.0, 0.003) for s in range(n)]
            mean, sd = se.mean_sd(vals)
            agg[name] = {"n": n, "mean": mean, "sd": sd, "seeds": [1, 2, 3][:n], "vals": vals}
        for name in ("nvfp4-sr", "quartet2"):
            agg[name]["gap"] = agg[name]["mean"] - agg["bf16"]["mean"]
        r = se.gap_ratio(agg, "bf16", "quartet2", "nvfp4-sr")
        lo, hi = r["paired_ci"]
        covered += lo <= -0.015 <= hi
        narrower += (hi - lo) < (r["diff_ci"][1] - r["diff_ci"][0])
    assert 0.93 <= covered / 1000 <= 0.975 and narrower / 1000 > 0.8


def test_gap_curve_and_its_plot(tmp_path):
    pytest.importorskip("matplotlib")
    finals = {k: v for k, v in SEEDED.items() if k != "quartet2@s3"}
    runs = [se.load_run(p) for p in _write_seeded(tmp_path, {**finals, "quartet2@s3": 1.03}, ("quartet2@s3",))]
    curves = se.gap_curve(runs, "bf16", TPI)
    q = {p["iteration"]: p for p in curves["quartet2"]}
    assert sorted(q) == [128, ITERS]
    assert q[128]["n"] == 3 and q[ITERS]["n"] == 2  # seed 3 stopped at 150: in the curve at 128 only
    assert q[128]["gap"] == pytest.approx(0.015) and q[ITERS]["gap"] == pytest.approx(0.0125)
    assert q[ITERS]["se"] == pytest.approx((1.25e-5 / 2 + 2.5e-5) ** 0.5)  # variances of (1.02, 1.025), bf16
    assert q[128]["tokens_m"] == pytest.approx(128 * TPI / 1e6)
    out = tmp_path / "docs" / "gap.png"
    se.plot_gap_curve(curves, out, "bf16", title="synthetic")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_telemetry_table(tmp_path):
    header = "step,layer,gemm,operand_a,err_a,operand_b,err_b,err_out,cos_out\n"
    rows = ["0,l0.qkv,fprop,x,0.008,w,0.007,0.010,0.995", "1,l0.qkv,fprop,x,0.006,w,0.007,0.020,0.985",
            "0,l1.fc2,fprop,x,0.010,w,0.007,0.030,0.975", "0,l0.qkv,wgrad,e_t,0.02,x_t,nan,0.004,0.998"]
    path = tmp_path / "nvfp4-sr.telemetry.csv"
    path.write_text(header + "\n".join(rows) + "\n")
    table = {r["gemm"]: r for r in se.telemetry_table([path])}
    f = table["fprop"]
    assert f["run"] == "nvfp4-sr" and f["rows"] == 3 and f["steps"] == 2
    assert f["err_a"] == pytest.approx(0.008) and f["err_out"] == pytest.approx(0.02)
    assert f["one_minus_cos"] == pytest.approx(0.015)
    assert f["worst_layer"] == "l1.fc2" and f["worst_err_out"] == pytest.approx(0.03)
    assert table["wgrad"]["err_b"] is None and table["wgrad"]["err_out"] == pytest.approx(0.004)  # NaN: unmeasured
    assert "| nvfp4-sr | fprop | 2 | 8.00e-03 |" in se.format_telemetry(list(table.values()))
    # gzipped CSVs (as committed under docs/) read the same
    gz = tmp_path / "nvfp4-sr.telemetry.csv.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert se.telemetry_table([gz]) == se.telemetry_table([path])


def test_cli_over_seeds(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    paths = _write_seeded(tmp_path, SEEDED)
    tel = tmp_path / "quartet2.telemetry.csv"
    tel.write_text("step,layer,gemm,operand_a,err_a,operand_b,err_b,err_out,cos_out\n"
                   "0,l0,dgrad,e,0.01,w_t,0.01,0.008,0.996\n")
    gap_png = tmp_path / "gap.png"
    se.main([str(p) for p in paths] + ["--tokens-per-iter", str(TPI), "--reference", "nvfp4-sr", "--target",
                                       "quartet2", "--gap-plot", str(gap_png), "--telemetry", str(tel)])
    out = capsys.readouterr().out
    assert "Over seeds, at iteration 256" in out and "**Gap ratio** quartet2 / nvfp4-sr = 0.50" in out
    assert "| 128 | 0.5 | +0.0300 ± 0.0076 | +0.0150 ± 0.0058 |" in out  # gap along the run
    assert "| quartet2 | dgrad | 1 |" in out and gap_png.exists()


def test_same_seed_difference_along_the_run(tmp_path):
    pytest.importorskip("matplotlib")
    finals = {**SEEDED, "quartet2-rot": 1.0, "quartet2-rot@s2": 1.02}
    runs = [se.load_run(p) for p in _write_seeded(tmp_path, finals, ("quartet2-rot@s2",))]
    curves = se.diff_curve(runs, "nvfp4-sr", "bf16", TPI)
    assert set(curves) == {"quartet2", "quartet2-rot"}  # neither the reference nor the baseline
    q = curves["quartet2"]
    assert [p["iteration"] for p in q] == [128, 256] and all(p["n"] == 3 for p in q)
    # pairs (s1, s2, s3): -0.010, -0.015, -0.020: mean -0.015, sd 0.005, paired t with 2 dof
    se3 = 0.005 / 3 ** 0.5
    half = se.t_quantile(0.975, 2) * se3
    for p in q:
        assert p["diff"] == pytest.approx(-0.015) and p["se"] == pytest.approx(se3)
        assert p["ci"] == pytest.approx((-0.015 - half, -0.015 + half))
    # quartet2-rot@s2 stopped at iteration 150: only iteration 128 has two pairs (s1 -0.03, s2 -0.02)
    r = curves["quartet2-rot"]
    assert [p["iteration"] for p in r] == [128] and r[0]["n"] == 2
    assert r[0]["diff"] == pytest.approx(((1.0 - 1.03) + (1.02 - 1.04)) / 2)
    text = se.format_diff_curve(curves, "nvfp4-sr")
    assert "| 256 | 1.0 | -0.0150 ± 0.0029 [-0.0274, -0.0026] | — |" in text
    png = tmp_path / "diff.png"
    se.plot_diff_curve(curves, png, "nvfp4-sr", marks={"claimed": -0.01})
    assert png.stat().st_size > 10_000


def test_committed_evidence2_logs_match_the_docs():
    """Issue 15's figures in README, BENCHMARKS.md and docs/evidence2_results.md are the committed
    logs' numbers at iteration 2048, the end of every run (the stopped attempts live in
    attempt1/ and attempt2/, outside the glob)."""
    root = Path(__file__).resolve().parents[1]
    logs = sorted((root / "docs" / "evidence2").glob("*.jsonl.gz"))
    names = {p.name.split(".")[0] for p in logs}
    assert names == {"bf16", "bf16@s2", "nvfp4-sr", "nvfp4-sr@s2", "nvfp4-sr@s3", "quartet2", "quartet2@s2",
                     "quartet2@s3", "quartet2-rot", "quartet2-rot@s2", "quartet2-rot@s3"}
    runs = [se.load_run(p) for p in logs]
    assert all(max(r["val"]) == 2048 for r in runs)
    agg = se.aggregate(runs, "bf16", 65536)
    assert agg["quartet2"]["tokens_m"] == pytest.approx(134.22, abs=0.01)
    r = se.gap_ratio(agg, "bf16", "quartet2", "nvfp4-sr")
    rot = se.gap_ratio(agg, "bf16", "quartet2-rot", "nvfp4-sr")
    figures = [f"{agg[k]['mean']:.4f}" for k in ("bf16", "nvfp4-sr", "quartet2", "quartet2-rot")]
    figures += [f"{agg[k]['gap']:+.4f} ± {agg[k]['se']:.4f}" for k in ("nvfp4-sr", "quartet2", "quartet2-rot")]
    figures += [f"{x['paired_diff']:+.4f} ± {x['paired_se']:.4f}" for x in (r, rot)]
    lo, hi = r["paired_ci"]
    interval = {3: f"[{lo:+.3f}, {hi:+.3f}]", 4: f"[{lo:+.4f}, {hi:+.4f}]"}  # the docs quote 3 or 4 digits
    for doc, digits in (("README.md", (3,)), ("BENCHMARKS.md", (4,)), ("docs/evidence2_results.md", (3, 4))):
        text = (root / doc).read_text("utf-8").replace("−", "-")
        for fig in figures + [interval[d] for d in digits]:
            assert fig in text, (doc, fig)
    assert f"{r['ratio']:.2f}" == "1.06" and r["ratio_ci"][0] != "interval"  # unbounded: said in the docs
