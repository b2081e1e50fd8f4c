"""Kernel benchmark: `python -m quartet_te.bench.kernels [--quick]` on a CUDA GPU.

Prints, in one run:
1. the device-to-device copy bandwidth (bytes read + written), measured here as the ceiling;
2. each kernel's median time and its bandwidth over the fewest bytes it must move (input read
   once, outputs written once), as a fraction of the copy bandwidth. Where the tensor scale needs
   an amax pass, the kernel reads its input twice: the "given amax" rows time the quantize pass
   alone (amax supplied by the caller, e.g. reduced across ranks);
3. the Quartet II linear forward+backward against a BF16 `nn.Linear` (and TE's FP8 `te.Linear`
   when Transformer Engine imports) at LLM shapes;
4. the activation memory each keeps for the backward, and the peak memory of forward+backward.

Timing: `triton.testing.do_bench` (CUDA events, L2 flushed between runs, median), falling back to
CUDA events with a manual L2 flush when Triton is missing. Inputs are random, never zeros.
"""
from __future__ import annotations

import argparse
import datetime
import statistics
from typing import Callable

import torch

from .. import kernels as K
from .. import reference as R


def _bench(fn: Callable[[], object], ms: int = 200) -> float:
    """Median milliseconds of `fn()`."""
    try:
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=ms, return_mode="median"))
    except ImportError:
        flush = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
        for _ in range(3):
            fn()
        times = []
        for _ in range(30):
            flush.zero_()
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            torch.cuda.synchronize()
            times.append(s.elapsed_time(e))
        return statistics.median(times)


def copy_bandwidth() -> float:
    """Bytes/s of a 1 GiB device-to-device copy (read + write)."""
    src = torch.randn(2**28, device="cuda")
    dst = torch.empty_like(src)
    ms = _bench(lambda: dst.copy_(src))
    return 2 * src.numel() * 4 / (ms * 1e-3)


def bf16_gemm_flops(n: int = 8192) -> float:
    """FLOP/s of an n³ BF16 GEMM on random data (the matrix-unit ceiling measured here)."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    ms = _bench(lambda: a @ b)
    return 2 * n**3 / (ms * 1e-3)


def _nvfp4_bytes(rows: int, cols: int) -> int:
    return rows * cols // 2 + rows * cols // 16 + 4


def kernel_table(rows: int, cols: int, copy_bw: float) -> list[tuple[str, float, float, float]]:
    """(name, ms, GB/s over minimal bytes, fraction of copy) for each kernel at x (rows, cols) bf16.

    Minimal bytes: the input once, every output once (packed FP4 + scales: 0.5625 B/element; the
    emitted BF16 operand: 2 B/element)."""
    from ..rotation import SignStream

    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(rows, cols, device="cuda", dtype=torch.bfloat16, generator=gen)
    signs = R.random_signs(128, 1, 2, "cuda")
    stream = SignStream(128, 0)
    step = torch.tensor([3], dtype=torch.int64, device="cuda")
    amax = x.float().abs().amax()
    amax_rot = R.hadamard_rotate(x[:256], signs).abs().amax() * 4  # any positive value: timing only
    inp = rows * cols * 2
    q = _nvfp4_bytes(rows, cols)
    op = rows * cols * 2
    fp4 = K.quantize(x, "four_over_six")
    eden = dict(signs=stream, seed=1, step=step)
    cases = [
        ("rtn row (+amax pass)", lambda: K.quantize(x, "rtn"), inp + q),
        ("rtn row, given amax", lambda: K.quantize(x, "rtn", amax=amax), inp + q),
        ("4/6 row, given amax", lambda: K.quantize(x, "four_over_six", amax=amax), inp + q),
        ("4/6 row (+amax pass)", lambda: K.quantize(x, "four_over_six"), inp + q),
        ("4/6 row fp4+bf16 (+amax): forward", lambda: K.quantize(x, "four_over_six", emit="both"), inp + q + op),
        ("4/6 col, given amax", lambda: K.quantize(x, "four_over_six", amax=amax, transpose=True), inp + q),
        ("sr row, given amax", lambda: K.quantize(x, "sr", seed=1, amax=amax), inp + q),
        ("sr+rht16 col, given amax",
         lambda: K.quantize(x, "sr", seed=1, signs=signs[:16], amax=amax, transpose=True), inp + q),
        ("ms_eden row, given amax", lambda: K.quantize(x, "ms_eden", amax=amax_rot, **eden), inp + q),
        ("ms_eden row (+amax pass)", lambda: K.quantize(x, "ms_eden", **eden), inp + q),
        ("ms_eden row bf16 (+amax)", lambda: K.quantize(x, "ms_eden", emit="bf16", **eden), inp + op),
        ("ms_eden col (+amax pass)", lambda: K.quantize(x, "ms_eden", transpose=True, **eden), inp + q),
        ("ms_eden row+col bf16 (+amax): e",
         lambda: K.quantize_both(x, "ms_eden", offset=1, emit="bf16", mode_t="ms_eden", offset_t=3, emit_t="bf16",
                                 signs=stream, seed=1, step=step), inp + 2 * op),
        ("requantize fp4->ms_eden^T (+amax)", lambda: K.requantize(fp4, **eden), 2 * q),
        ("requantize fp4->bf16 ms_eden^T (+amax)", lambda: K.requantize(fp4, emit="bf16", **eden), q + op),
        ("dequantize -> bf16", lambda: K.dequantize(fp4, torch.bfloat16), q + inp),
        ("quantize_2d (+amax pass)", lambda: K.quantize_2d(x), inp + q),
    ]  # fmt: skip
    out = []
    for name, fn, nbytes in cases:
        ms = _bench(fn)
        bw = nbytes / (ms * 1e-3)
        out.append((name, ms, bw / 1e9, bw / copy_bw))
    return out


def _linear_step(layer: torch.nn.Module, x: torch.Tensor, g: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        layer.weight.grad = None
        if getattr(layer, "bias", None) is not None:
            layer.bias.grad = None
        x.grad = None
        layer(x).backward(g)

    return step


def _saved_bytes(layer: torch.nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """(bytes the forward keeps alive for the backward, peak bytes above baseline during fwd+bwd)."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    y = layer(x)
    torch.cuda.synchronize()
    kept = torch.cuda.memory_allocated() - base - y.numel() * y.element_size()
    y.backward(torch.ones_like(y))
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del y
    layer.weight.grad = None
    x.grad = None
    return kept, peak


def linear_table(shapes: list[tuple[int, int, int]], graphs: bool = True) -> list[dict]:
    """Forward+backward ms of one linear (bf16 in/out, no bias) side by side: torch BF16, TE BF16
    `te.Linear`, TE FP8 `te.Linear` (current scaling), ours (`QuartetLinear`, eager and replayed
    from a CUDA graph), plus activation memory."""
    from ..linear import QuartetLinear

    try:
        import transformer_engine.pytorch as te
        from transformer_engine.common import recipe as te_recipe
    except Exception:  # noqa: BLE001 - any import failure means "not staged"
        te = None
    rows = []
    for m, k, n in shapes:
        gen = torch.Generator(device="cuda").manual_seed(1)
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_(True)
        g = torch.randn(m, n, device="cuda", dtype=torch.bfloat16, generator=gen)
        bf16 = torch.nn.Linear(k, n, bias=False, device="cuda", dtype=torch.bfloat16)
        ours = QuartetLinear(k, n, bias=False, recipe="quartet2", name="bench", device="cuda", dtype=torch.bfloat16)
        row = {"shape": (m, k, n)}
        row["bf16_ms"] = _bench(_linear_step(bf16, x, g), 400)
        row["ours_ms"] = _bench(_linear_step(ours, x, g), 400)
        if graphs:
            row["ours_graph_ms"] = _bench(_graphed_step(ours, x, g), 400)
        # BF16 keeps x itself for the backward (an activation that would otherwise be freed).
        row["bf16_saved"] = m * k * 2
        row["ours_saved"], row["ours_peak"] = _saved_bytes(ours, x)
        row["ours_act"] = row["ours_saved"] - _nvfp4_bytes(n, k)  # minus the FP4 weight copy
        _, row["bf16_peak"] = _saved_bytes(bf16, x)
        if te is not None:
            tel = te.Linear(k, n, bias=False, params_dtype=torch.bfloat16, device="cuda")
            row["te_bf16_ms"] = _bench(_te_step(te, tel, x, g, None), 400)
            row["te_fp8_ms"] = _bench(_te_step(te, tel, x, g, te_recipe.Float8CurrentScaling()), 400)
            del tel
        rows.append(row)
        del ours, bf16, x, g
        torch.cuda.empty_cache()
    return rows


def _te_step(te, layer, x, g, recipe) -> Callable[[], None]:
    def step() -> None:
        layer.weight.grad = None
        x.grad = None
        with te.autocast(enabled=recipe is not None, recipe=recipe):
            y = layer(x)
        y.backward(g)

    return step


def graph_replay(step: Callable[[], None], warmup: int = 3) -> Callable[[], None]:
    """`step` (a forward+backward that first drops the gradients, so that the capture allocates
    them in the graph's pool) captured once in a CUDA graph after `warmup` calls on a side stream
    (torch's capture rule); returns the replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def _graphed_step(layer: torch.nn.Module, x: torch.Tensor, g: torch.Tensor) -> Callable[[], None]:
    """`layer`'s forward+backward captured once in a CUDA graph; each call replays it (fresh
    randomness per replay: the kernels read the layer's device step counter)."""
    return graph_replay(_linear_step(layer, x, g))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one kernel shape, two linear shapes")
    ap.add_argument("--profile", action="store_true", help="also print a kernel-time profile of the linear")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("quartet_te.bench.kernels needs a CUDA GPU")
    ok, reason = K.is_available(return_reason=True)
    if not ok:
        raise SystemExit(f"kernels unavailable: {reason}")
    torch.backends.cuda.matmul.allow_tf32 = False
    props = torch.cuda.get_device_properties(0)
    print(f"# quartet_te.bench.kernels  {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"# device: {props.name}, {props.multi_processor_count} SMs, torch {torch.__version__}")
    bw = copy_bandwidth()
    flops = bf16_gemm_flops()
    print(f"\ncopy bandwidth (read+write, 1 GiB fp32): {bw / 1e12:.2f} TB/s; BF16 GEMM 8192^3: {flops / 1e12:.0f} TFLOP/s\n")

    kshapes = [(8192, 8192)] if args.quick else [(8192, 8192), (16384, 4096)]
    for rows, cols in kshapes:
        print(f"kernels, x = ({rows}, {cols}) bf16; GB/s over the minimal bytes (input once, outputs once)")
        print(f"{'kernel':<40}{'ms':>9}{'GB/s':>9}{'of copy':>9}")
        for name, ms, gbs, frac in kernel_table(rows, cols, bw):
            print(f"{name:<40}{ms:>9.3f}{gbs:>9.0f}{frac:>8.0%}")
        print()

    lshapes = [(8192, 4096, 4096), (8192, 8192, 8192)]
    if not args.quick:
        lshapes += [(16384, 4096, 4096), (16384, 8192, 8192)]
    print("linear forward+backward, bf16 in/out, no bias (tokens, K, N), ms (do_bench median, L2 flushed).")
    print("ours: QuartetLinear eager; graph: the same replayed from a CUDA graph; te: te.Linear BF16 / FP8")
    print("(current scaling). act: activation bytes kept for the backward (ours: x̂; bf16: x itself); kept:")
    print("everything the forward keeps (ours adds the FP4 weight copy); peak: max allocated during fwd+bwd")
    rows = linear_table(lshapes)
    te_on = any("te_fp8_ms" in r for r in rows)
    hdr = f"{'(M, K, N)':<22}{'torch bf16':>11}"
    if te_on:
        hdr += f"{'te bf16':>9}{'te fp8':>9}"
    hdr += f"{'ours':>9}{'graph':>9}{'ours/bf16':>10}{'graph/bf16':>11}"
    hdr += f"{'act':>7}{'kept':>7}{'peak':>7}"
    print(hdr)
    for r in rows:
        line = f"{str(r['shape']):<22}{r['bf16_ms']:>11.3f}"
        if te_on:
            line += f"{r.get('te_bf16_ms', float('nan')):>9.3f}{r.get('te_fp8_ms', float('nan')):>9.3f}"
        gms = r.get("ours_graph_ms", float("nan"))
        line += f"{r['ours_ms']:>9.3f}{gms:>9.3f}{r['ours_ms'] / r['bf16_ms']:>10.2f}{gms / r['bf16_ms']:>11.2f}"
        line += f"{r['ours_act'] / r['bf16_saved']:>7.3f}{r['ours_saved'] / r['bf16_saved']:>7.3f}"
        line += f"{r['ours_peak'] / r['bf16_peak']:>7.2f}"
        print(line)

    if args.profile:
        profile_linear(*lshapes[-1])


def profile_linear(m: int, k: int, n: int) -> None:
    """GPU time by kernel of one Quartet II linear forward+backward (where the time goes)."""
    from torch.profiler import ProfilerActivity, profile

    from ..linear import QuartetLinear

    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16).requires_grad_(True)
    g = torch.randn(m, n, device="cuda", dtype=torch.bfloat16)
    layer = QuartetLinear(k, n, bias=False, recipe="quartet2", name="bench", device="cuda", dtype=torch.bfloat16)
    step = _linear_step(layer, x, g)
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    print(f"\nprofile of one Quartet II linear fwd+bwd at {(m, k, n)} (top GPU kernels):")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))


if __name__ == "__main__":
    main()
