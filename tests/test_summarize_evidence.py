"""tools/summarize_evidence.py on synthetic logs with known val losses, throughput and memory."""
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
