"""tools/evidence_run.sh on the CPU: the queue runs each run once, with its recipe and seed, in
the background, and `wait` follows it and packs the logs (the GPU-only `setup` is not run)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

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
