"""tools/evidence_run.sh on the CPU (the GPU-only `setup` is not run).

- `start` / `wait` (issue 7): the background queue runs each run once, with its recipe and
  seed, and `wait` follows it and packs the logs.
- `call` / `collect` / `restore` (issue 15): a call stops its run at the budget with a
  checkpoint, snapshots the queue's state into $OUT/state within the returned-file limits, and
  the next call, on the same or a fresh machine, continues from it; split runs log exactly what
  uninterrupted ones log (the slow test; the driver's own bit-identical resume: test_resume.py).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from test_corpus import _build

ROOT = Path(__file__).resolve().parents[1]


def _script(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(["bash", str(ROOT / "tools" / "evidence_run.sh"), *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_queue_runs_each_recipe_and_seed_once(tmp_path: Path) -> None:
    corpus, _ = _build(tmp_path, val_permille=200)
    ev, out = tmp_path / "ev", tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "EVIDENCE_DIR": str(ev), "OUT": str(out),
           "CORPUS": str(corpus), "CONFIG": "examples/configs/tiny-cpu.args",
           "EVIDENCE_FLAGS": "--train-iters 2 --eval-iters 1"}
    assert "queued: bf16 quartet2@s2" in _script(env, "start", "bf16", "quartet2@s2")
    report = _script(env, "wait", "240")
    assert "QUEUE DONE" in report and "FAILED" not in report, report
    queue = (ev / "queue.sh").read_text()
    assert "--seed 1234 " in queue and "--seed 1235 --fp4-format e2m1 --fp4-recipe quartet2 " in queue
    for run, recipe in (("bf16", "fp4=None"), ("quartet2@s2", "fp4=quartet2")):
        assert (ev / f"{run}.done").exists()
        assert recipe in (ev / f"{run}.log").read_text()
        records = [json.loads(line) for line in (ev / f"{run}.jsonl").read_text().splitlines()]
        assert [r["iteration"] for r in records] == [1, 2] and "val_loss" in records[-1]
    with tarfile.open(out / "evidence.tgz") as tgz:
        assert {"bf16.jsonl", "quartet2@s2.jsonl", "queue.log"} <= set(tgz.getnames())
    # a second start skips what finished: no new "start bf16" in the queue log
    _script(env, "start", "bf16")
    _script(env, "wait", "60")
    assert (ev / "queue.log").read_text().count("start bf16") == 1


# ------------------------------------------------------------------ `call`: the resumable queue
COMPACT = "--bf16 --exp-avg-dtype bf16 --exp-avg-sq-dtype bf16 --ckpt-part-mib 1 --eval-iters 1"


def _call_env(tmp_path: Path, corpus: Path, machine: str, flags: str) -> dict[str, str]:
    """The environment of one device call on `machine` (its own /tmp: results folder and $OUT)."""
    return {**os.environ, "PYTHON": sys.executable, "CORPUS": str(corpus), "CONFIG": "examples/configs/tiny-cpu.args",
            "EVIDENCE_DIR": str(tmp_path / machine / "ev"), "OUT": str(tmp_path / machine / "out"),
            "EVIDENCE_STATE": str(tmp_path / "here" / "state"), "EVIDENCE_LOGS": str(tmp_path / "here" / "logs"),
            "EVIDENCE_FLAGS": f"{COMPACT} {flags}", "EVIDENCE_MIN_RUN_S": "5", "EVIDENCE_EXIT_SLACK_S": "2",
            "EVIDENCE_TELEMETRY_ITERS": "1"}


def test_call_pauses_snapshots_collects_and_restores(tmp_path: Path) -> None:
    """One call stops a run at its budget (here --exit-interval 1) with a checkpoint in parts; the
    snapshot fits the returned-file limits, `collect` takes it (and refuses an older one), and
    `restore` on a fresh machine rebuilds the checkpoint byte for byte."""
    corpus, _ = _build(tmp_path, val_permille=200)
    env = _call_env(tmp_path, corpus, "m1", "--train-iters 2 --exit-interval 1")
    report = _script(env, "call", "300", "quartet2")
    assert "paused quartet2 at iteration 1 of 2" in report and "quartet2 [paused] iteration 1" in report, report
    state = tmp_path / "m1" / "out" / "state"
    files = sorted(p.name for p in state.iterdir())
    assert (state / "ckpt.txt").read_text().split() == ["quartet2", "1"]
    parts = [f for f in files if f.startswith("mp_rank_00_000.pt.0")]
    assert len(parts) >= 2 and "mp_rank_00_000.pt.parts.json" in files and "queue.tgz" in files
    assert len(files) <= 8 and all((state / f).stat().st_size <= 1 << 20 for f in parts)
    with tarfile.open(state / "queue.tgz") as tgz:
        assert {"snapshot.seq", "quartet2.jsonl", "quartet2.log", "queue.log"} <= set(tgz.getnames())

    here = tmp_path / "here"
    assert "collected snapshot 1" in _script(env, "collect", str(tmp_path / "m1" / "out"))
    assert sorted(p.name for p in (here / "state").iterdir()) == files
    assert "quartet2 [paused] 1/2 loss" in _script(env, "status", "bf16")  # and a run not started yet:
    assert "bf16 [waiting] 0/2" in _script(env, "status", "bf16")
    # a fresh machine: `restore` rebuilds the run folder from the carried snapshot
    env2 = {**env, "EVIDENCE_DIR": str(tmp_path / "m2" / "ev")}
    assert "restored snapshot 1, quartet2 at iteration 1" in _script(env2, "restore")
    ck = tmp_path / "m2" / "ev" / "ckpt" / "quartet2"
    assert (ck / "latest").read_text().strip() == "1"
    for f in [*parts, "mp_rank_00_000.pt.parts.json"]:
        assert (ck / "iter_0000001" / f).read_bytes() == (state / f).read_bytes()
    log = "ev/quartet2.jsonl"
    assert (tmp_path / "m2" / log).read_text() == (tmp_path / "m1" / log).read_text()
    # a warm machine keeps its own state when the carried one is not newer
    assert "as new as the carried 1; keeping it" in _script(env2, "restore")
    # collect refuses a snapshot older than the one it holds
    (here / "state" / "queue.tgz").unlink()
    with tarfile.open(here / "state" / "queue.tgz", "w:gz") as tgz:
        seq = tmp_path / "snapshot.seq"
        seq.write_text("5\n")
        tgz.add(seq, arcname="snapshot.seq")
    done = subprocess.run(["bash", str(ROOT / "tools" / "evidence_run.sh"), "collect", str(tmp_path / "m1" / "out")],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "older than the collected 5" in done.stdout


@pytest.mark.slow
def test_call_resumes_across_machines_bit_identically(tmp_path: Path) -> None:
    """Runs split over three calls on three fresh machines (state carried back and forth) log
    exactly what one uninterrupted call logs; finished runs are skipped; seed 1 of each FP4
    recipe writes per-GEMM telemetry at its end, other runs none."""
    corpus, _ = _build(tmp_path, val_permille=200)
    runs = ("quartet2", "bf16@s2")
    ref = _call_env(tmp_path, corpus, "ref", "--train-iters 4")
    ref["EVIDENCE_STATE"] = str(tmp_path / "ref-state")
    report = _script(ref, "call", "600", *runs)
    assert report.count("done ") == 2 and "FAILED" not in report, report
    for i in (1, 2, 3, 4):  # 1: quartet2 1-2; 2: quartet2 3-4, bf16@s2 1-2; 3: bf16@s2 3-4; 4: nothing
        env = _call_env(tmp_path, corpus, f"m{i}", "--train-iters 4 --exit-interval 2")
        report = _script(env, "call", "600", *runs)
        assert "FAILED" not in report, report
        _script(env, "collect", str(tmp_path / f"m{i}" / "out"))
    assert "start " not in report and "quartet2 [done]" in report and "bf16@s2 [done]" in report
    logs, ref_ev = tmp_path / "here" / "logs", tmp_path / "ref" / "ev"
    for run in runs:
        assert (logs / f"{run}.done").exists()
        got = [json.loads(line) for line in (logs / f"{run}.jsonl").read_text().splitlines()]
        want = [json.loads(line) for line in (ref_ev / f"{run}.jsonl").read_text().splitlines()]
        keys = ("iteration", "loss", "grad_norm", "lr", "val_loss")
        assert [[r.get(k) for k in keys] for r in got] == [[r.get(k) for k in keys] for r in want], run
    queue = (logs / "queue.log").read_text()
    assert "start quartet2 (seed 1234" in queue and "start bf16@s2 (seed 1235" in queue
    assert queue.count("start quartet2") == 2 and "from iteration 2" in queue
    assert (logs / "quartet2.telemetry.csv").read_text().startswith("step,layer,gemm")
    assert not (logs / "bf16@s2.telemetry.csv").exists()


def test_launch_runs_all_at_once_with_their_own_quantizer_seeds(tmp_path: Path) -> None:
    """`launch` (issue 15 on one machine): concurrent runs, --fp4-seed per seed, telemetry on seed 1."""
    corpus, _ = _build(tmp_path, val_permille=200)
    ev, out = tmp_path / "ev", tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "EVIDENCE_DIR": str(ev), "OUT": str(out),
           "CORPUS": str(corpus), "CONFIG": "examples/configs/tiny-cpu.args", "EVIDENCE_JOBS": "2",
           "EVIDENCE_TELEMETRY_ITERS": "1", "EVIDENCE_FLAGS": "--train-iters 2 --eval-iters 1"}
    assert "launched: bf16 quartet2 quartet2@s2 (2 at a time" in _script(env, "launch", "bf16", "quartet2", "quartet2@s2")
    report = _script(env, "wait", "240")
    assert "QUEUE DONE" in report and "FAILED" not in report, report
    s1, s2 = (ev / "run-quartet2.sh").read_text(), (ev / "run-quartet2@s2.sh").read_text()
    assert "--seed 1234 --data-seed 1234 --fp4-format e2m1 --fp4-recipe quartet2 --fp4-seed 1234 " in s1
    assert "--telemetry-csv" in s1 and "--telemetry-csv" not in s2
    assert "--seed 1235 --data-seed 1234 --fp4-format e2m1 --fp4-recipe quartet2 --fp4-seed 1235 " in s2
    assert "--fp4-seed" not in (ev / "run-bf16.sh").read_text()
    for run in ("bf16", "quartet2", "quartet2@s2"):
        assert (ev / f"{run}.done").exists(), run
        assert len((ev / f"{run}.jsonl").read_text().splitlines()) == 2
    assert (ev / "quartet2.telemetry.csv").exists()
    assert (out / "evidence.tgz").exists()
    with pytest.raises(AssertionError, match="bad or repeated runs"):
        _script(env, "launch", "quartet3")
