"""Time one `te.TransformerLayer` forward+backward under BF16, TE FP8 and our two recipes.

    python tests/te/bench_te_layer.py --hidden 4096 --ffn 16384 --heads 32 --seq 2048 --batch 1

Prints a Markdown table (median of `--iters` timed iterations after `--warmup`, CUDA events,
inputs and grads preallocated) and which numerical backend `quartet_te.ops` used (the CUDA
kernels or the pure-PyTorch reference): the recipe's speed is the backend's speed plus the
recipe's Python overhead. "host ms" is the time the host takes to issue one iteration (from
before the forward to the return of the backward, no synchronisation inside): where it comes
close to the fwd+bwd time the layer is host-bound. `--graph RECIPES` times the same fwd+bwd
replayed from a CUDA graph, which takes the host out (the device-bound ratio). `--sync-check
RECIPE` runs one more iteration under `torch.cuda.set_sync_debug_mode("warn")` and prints where
the host waited for the GPU. `--fuse-wgrad` builds the layer as Megatron-Core does by default
(gradient-accumulation fusion: `fuse_wgrad_accumulation=True`, every weight with an FP32
`main_grad` that its weight-gradient GEMM accumulates into).
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch


def _recipe(name: str):
    from transformer_engine.common import recipe as te_recipe

    from quartet_te.recipes.factories import QuantizerFactory

    if name == "bf16":
        return None
    if name == "fp8_current":
        return te_recipe.Float8CurrentScaling()
    if name == "fp8_delayed":
        return te_recipe.DelayedScaling()
    return te_recipe.CustomRecipe(qfactory=QuantizerFactory(name))


def time_layer(layer, x, g, recipe, warmup: int, iters: int) -> tuple[float, float]:
    """(median device ms, median host-issue ms) of one fwd+bwd."""
    import transformer_engine.pytorch as te

    times, host = [], []
    for i in range(warmup + iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t0 = time.perf_counter()
        start.record()
        with te.autocast(enabled=recipe is not None, recipe=recipe):
            y = layer(x)
        y.backward(g)
        end.record()
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(end))
            host.append((t1 - t0) * 1e3)
        layer.zero_grad(set_to_none=True)
        x.grad = None
    return statistics.median(times), statistics.median(host)


def time_graphed(layer, x, g, recipe, iters: int) -> float:
    """Device ms of one fwd+bwd replayed from a CUDA graph (no host issue in the loop): what the
    layer costs once the host is out of the way. Captured with `torch.cuda.graph` after warm-up
    iterations on a side stream (`quartet_te.bench.kernels.graph_replay`); the gradients live in
    the graph's pool."""
    import transformer_engine.pytorch as te

    from quartet_te.bench.kernels import graph_replay

    def step():
        layer.zero_grad(set_to_none=True)
        x.grad = None
        with te.autocast(enabled=recipe is not None, recipe=recipe):
            y = layer(x)
        y.backward(g)

    replay = graph_replay(step)
    replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        replay()
    end.record()
    torch.cuda.synchronize()
    layer.zero_grad(set_to_none=True)
    x.grad = None
    return start.elapsed_time(end) / iters


def sync_check(layer, x, g, recipe) -> None:
    """One fwd+bwd under the sync debug mode: each host<->device synchronisation, with its caller."""
    time_layer(layer, x, g, recipe, 1, 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            time_layer(layer, x, g, recipe, 0, 1)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    print(f"\nsync check: {len(syncs)} synchronising calls in one timed fwd+bwd (any in this file are the timing's own)")
    for w in syncs[:10]:
        print(f"- {str(w.message).splitlines()[0]} at {w.filename}:{w.lineno}")


def main() -> None:
    import transformer_engine
    import transformer_engine.pytorch as te

    from quartet_te import kernels

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--ffn", type=int, default=16384)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--recipes", default="bf16,fp8_current,quartet2,nvfp4-sr")
    p.add_argument("--profile", default="", help="also print the top CUDA kernels of this recipe")
    p.add_argument("--sync-check", default="", help="report host-device synchronisations of this recipe")
    p.add_argument("--graph", default="", help="also time these recipes' fwd+bwd as CUDA-graph replays (comma-separated)")
    p.add_argument("--cprofile", default="", help="print a cProfile (internal time) of these recipes' fwd+bwd (comma-separated)")
    p.add_argument("--fuse-wgrad", action="store_true",
                   help="fuse_wgrad_accumulation=True with FP32 main_grad buffers (Megatron-Core's default)")
    args = p.parse_args()

    torch.manual_seed(0)
    layer = te.TransformerLayer(
        args.hidden, args.ffn, args.heads, hidden_dropout=0.0, attention_dropout=0.0,
        self_attn_mask_type="causal", params_dtype=torch.bfloat16, device="cuda", name="bench",
        fuse_wgrad_accumulation=args.fuse_wgrad,
    )
    if args.fuse_wgrad:  # what Megatron's DDP attaches: one FP32 accumulation buffer per parameter
        for param in layer.parameters():
            param.main_grad = torch.zeros(param.shape, dtype=torch.float32, device="cuda")
    x = torch.randn(args.seq, args.batch, args.hidden, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    g = torch.randn_like(x)
    ok, reason = kernels.is_available(return_reason=True)
    backend = "CUDA kernels" if ok else f"reference ({reason})"
    print(f"device: {torch.cuda.get_device_name()}; TE {transformer_engine.__version__}; ops backend: {backend}")
    shape = f"hidden={args.hidden} ffn={args.ffn} heads={args.heads} seq={args.seq} batch={args.batch}"
    shape += " fuse_wgrad_accumulation (FP32 main_grad)" if args.fuse_wgrad else ""
    print(f"te.TransformerLayer {shape}\n")
    rows = []
    for name in args.recipes.split(","):
        ms, host = time_layer(layer, x, g, _recipe(name), args.warmup, args.iters)
        rows.append((name, ms, host))
    bf16 = {name: ms for name, ms, _ in rows}.get("bf16")
    print("| recipe | fwd+bwd ms (median) | vs BF16 | host ms |")
    print("|---|---|---|---|")
    for name, ms, host in rows:
        rel = f"{ms / bf16:.2f}x" if bf16 else "-"
        print(f"| {name} | {ms:.2f} | {rel} | {host:.2f} |")
    graphed = []
    for name in filter(None, args.graph.split(",")):
        try:
            graphed.append((name, time_graphed(layer, x, g, _recipe(name), max(args.iters, 10))))
        except Exception as exc:  # a recipe that cannot be captured: say so, keep the other rows
            print(f"graph capture of {name} failed: {type(exc).__name__}: {exc}")
    if graphed:
        bf16_graph = dict(graphed).get("bf16")
        print("\n| recipe | CUDA-graph replay ms | vs BF16 replay |")
        print("|---|---|---|")
        for name, ms in graphed:
            print(f"| {name} | {ms:.2f} | {f'{ms / bf16_graph:.2f}x' if bf16_graph else '-'} |")
    if args.sync_check:
        sync_check(layer, x, g, _recipe(args.sync_check))
    for name in filter(None, args.cprofile.split(",")):
        print(f"\n## {name}")
        host_profile(layer, x, g, _recipe(name))
    if args.profile:
        profile(layer, x, g, _recipe(args.profile))


def host_profile(layer, x, g, recipe, steps: int = 10) -> None:
    """Where the host time of one fwd+bwd goes (`quartet_te.bench.host_profile`)."""
    import cProfile

    from quartet_te.bench.host_profile import report

    time_layer(layer, x, g, recipe, 1, 1)
    prof = cProfile.Profile()
    prof.enable()
    time_layer(layer, x, g, recipe, 0, steps)
    prof.disable()
    print("\n" + report(prof, steps))


def profile(layer, x, g, recipe) -> None:
    """Top CUDA kernels of two fwd+bwd iterations, and GPU-busy vs wall time."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    time_layer(layer, x, g, recipe, 1, 1)
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        wall, _ = time_layer(layer, x, g, recipe, 0, 2)
    events = prof.key_averages()
    key = "self_device_time_total" if hasattr(events[0], "self_device_time_total") else "self_cuda_time_total"
    # Device-side events only (kernels, memsets, copies): CPU-side rows such as the autograd
    # functions also report device time, which would count the same kernels twice.
    on_device = [e for e in events if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA]
    busy = sum(getattr(e, key) for e in on_device) / 1e3 / 2
    print(f"\nprofile: {wall:.2f} ms wall per iteration (profiled), {busy:.2f} ms of device work per iteration"
          f" ({len(on_device)} distinct kernels); the host is the limit where wall exceeds device work")
    print(events.table(sort_by=key, row_limit=18, max_name_column_width=60))


if __name__ == "__main__":
    main()
