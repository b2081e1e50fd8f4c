"""Device tests of the Hopper fast path, each against the reference on fresh random data:

- the BF16 operands the quantizers emit equal `decode(code) · s_b` of the same quantization, bit
  for bit, and emitting them changes no FP4 bit;
- randomness from the device step counter (signs drawn in the kernel) equals the reference's
  explicit draws at that step;
- the cuBLASLt GEMM with alpha read on the device, bias and cast in the epilogue, within the
  summation-order bound of the reference GEMM;
- a Quartet II linear runs its forward and backward without one host synchronisation, and a
  CUDA graph of it replays the same bits as eager steps (fresh randomness on every replay).
"""
from __future__ import annotations

import pytest
import torch

from quartet_te import kernels as K
from quartet_te import reference as R
from quartet_te.linear import QuartetLinear
from quartet_te.rotation import STREAMS_PER_STEP, SignStream

from kernel_helpers import assert_bitwise_equal, assert_nvfp4_equal, on_cpu, spread_randn, to_cuda

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not K.is_available(), reason=K.is_available(return_reason=True)[1]),
]


@pytest.fixture
def cgen(request):
    return torch.Generator().manual_seed(abs(hash(request.node.nodeid)) % 2**31)


def _operand_of(t: R.NVFP4Tensor) -> torch.Tensor:
    return t.dequantize_unscaled().to(torch.bfloat16)


def _check_emits(fn, ref: R.NVFP4Tensor, what: str) -> None:
    """fn(emit) under "fp4", "bf16" and "both": the same codes/scales, the exact BF16 operand."""
    for poison in (0x5A, 0xA5):
        K._POISON = poison
        try:
            fp4, bf16, both = fn("fp4"), fn("bf16"), fn("both")
        finally:
            K._POISON = None
        assert_nvfp4_equal(fp4, ref, f"{what} fp4")
        assert_nvfp4_equal(both, ref, f"{what} both")
        want = on_cpu(_operand_of, ref)
        for op in (bf16, both.operand):
            assert isinstance(op, K.BF16Operand) and op.rotation == ref.rotation
            assert_bitwise_equal(op.values, want, f"{what} operand")
            assert_bitwise_equal(op.tensor_scale.reshape(()), ref.tensor_scale.reshape(()), f"{what} operand scale")


@pytest.mark.parametrize("mode", ["rtn", "four_over_six", "sr", "ms_eden"])
@pytest.mark.parametrize("transpose", [False, True], ids=["row", "col"])
@pytest.mark.parametrize("shape", [(128, 128), (384, 1024), (256, 4096)], ids=str)
def test_emitted_bf16_operand_is_exact(shape, mode, transpose, cgen):
    x = spread_randn(*shape, cgen, torch.bfloat16)
    signs = R.random_signs(128, 3, 9, "cuda") if mode == "ms_eden" else None
    kw = dict(signs=signs, seed=77 if mode in ("sr", "ms_eden") else None, offset=5, transpose=transpose)
    _check_emits(lambda emit: K.quantize(x, mode, emit=emit, **kw), on_cpu(R.quantize, x, mode, **kw), mode)


def test_emitted_operand_of_requantize_and_both_directions(cgen):
    x = spread_randn(512, 384, cgen, torch.bfloat16)
    t = to_cuda(on_cpu(R.quantize, x, "four_over_six"))
    signs = R.random_signs(128, 8, 1, "cuda")
    _check_emits(lambda emit: K.requantize(t, signs=signs, seed=3, offset=2, emit=emit),
                 on_cpu(R.requantize, t, signs=signs, seed=3, offset=2), "requantize")  # fmt: skip
    row, col = K.quantize_both(x, "ms_eden", signs=signs, seed=4, offset=1, emit="bf16", mode_t="ms_eden", offset_t=3,
                               emit_t="bf16")  # fmt: skip
    for got, offset, tr in ((row, 1, False), (col, 3, True)):
        want = on_cpu(R.quantize, x, "ms_eden", signs=signs, seed=4, offset=offset, transpose=tr)
        assert_bitwise_equal(got.values, _operand_of(want), f"quantize_both operand transpose={tr}")


@pytest.mark.parametrize("step", [0, 5, 2**40 + 3])
def test_device_step_and_drawn_signs_equal_explicit_draws(step, cgen):
    x = spread_randn(256, 512, cgen, torch.float32)
    seed = int(torch.randint(0, 2**62, (1,), generator=cgen)) + 2**63
    counter = torch.tensor([step], dtype=torch.int64, device="cuda")
    base = step * STREAMS_PER_STEP
    signs = R.random_signs(128, seed, base + 0, "cpu")
    stream = SignStream(128, 0)
    for tr in (False, True):
        got = K.quantize(x, "ms_eden", signs=stream, seed=seed, offset=3, step=counter, transpose=tr)
        assert_nvfp4_equal(got, on_cpu(R.quantize, x, "ms_eden", signs=signs, seed=seed, offset=base + 3,
                                       transpose=tr), f"ms_eden step {step}")  # fmt: skip
    got = K.quantize(x, "sr", seed=seed, offset=1, step=counter)
    assert_nvfp4_equal(got, on_cpu(R.quantize, x, "sr", seed=seed, offset=base + 1), "sr")
    xb = x.to(torch.bfloat16)  # 16-bit tile, 16-point signs drawn in the kernel (NVFP4-SR's wgrad)
    got = K.quantize(xb, "sr", signs=SignStream(16, 2), seed=seed, offset=5, step=counter, transpose=True)
    want = on_cpu(R.quantize, xb, "sr", signs=R.random_signs(16, seed, base + 2, "cpu"), seed=seed, offset=base + 5,
                  transpose=True)  # fmt: skip
    assert_nvfp4_equal(got, want, "sr+rht16 drawn signs, transposed")
    t = to_cuda(on_cpu(R.quantize, x, "four_over_six"))
    got = K.requantize(t, signs=stream, seed=seed, offset=4, step=counter)
    assert_nvfp4_equal(got, on_cpu(R.requantize, t, signs=signs, seed=seed, offset=base + 4), "requantize")


def test_rotation_does_not_overflow_near_the_float32_maximum(cgen):
    # |x| up to 2.9e37: the butterfly's partial sums of an unscaled rotation overflow (128·|x|),
    # the rotated values themselves (≤ √128·|x|) do not.
    x = (torch.rand(256, 256, generator=cgen) * 2 - 1) * 2.9e37
    signs = R.random_signs(128, 1, 1, "cpu")
    ref = R.quantize(x, "four_over_six", signs=signs)
    assert torch.isfinite(ref.tensor_scale)
    got = K.quantize(x.cuda(), "four_over_six", signs=signs.cuda())
    assert_nvfp4_equal(got, ref, "near-max rotation")
    got = K.quantize(x.cuda(), "ms_eden", signs=signs.cuda(), seed=1, transpose=True)
    assert_nvfp4_equal(got, R.quantize(x, "ms_eden", signs=signs, seed=1, transpose=True), "near-max ms_eden")


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["f32", "bf16", "f16"])
@pytest.mark.parametrize("bias_dtype", [None, torch.bfloat16, torch.float32], ids=["nobias", "bias_bf16", "bias_f32"])
@pytest.mark.parametrize("mkn", [(16, 16, 16), (200, 256, 384), (1000, 4096, 80)], ids=str)
def test_gemm_epilogue(mkn, out_dtype, bias_dtype, cgen):
    m, k, n = mkn
    # float16 output: magnitudes that fit its range; otherwise rows spread over 256x
    make = (lambda r, c: torch.randn(r, c, generator=cgen).cuda()) if out_dtype == torch.float16 else (
        lambda r, c: spread_randn(r, c, cgen))
    a = K.quantize(make(m, k), "four_over_six", emit="both")
    b = K.quantize(make(n, k), "rtn", emit="bf16")
    bias = None if bias_dtype is None else (torch.randn(n, generator=cgen) * 100).to(bias_dtype).cuda()
    got = K.gemm(a, b, out_dtype, bias=bias)
    assert got.dtype == out_dtype and got.shape == (m, n)
    da, db = a.dequantize_unscaled().cpu(), b.dequantize_unscaled().cpu()
    alpha = (a.tensor_scale.float() * b.tensor_scale.float()).cpu()
    ref32 = (da @ db.t()) * alpha + (bias.float().cpu() if bias is not None else 0.0)
    # Same exact products, another summation order: |error| <= K fp32 roundings of |a|·|b|ᵀ·alpha,
    # plus one rounding to out_dtype.
    bound = (da.abs() @ db.abs().t()) * alpha * (k * 2.0**-23) + 1e-30
    ulp = {torch.float32: 2.0**-23, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}[out_dtype]
    bound = bound + ref32.abs() * ulp
    err = (got.float().cpu() - ref32).abs()
    assert bool((err <= bound).all()), f"max excess {float((err - bound).max()):.3e}"


def _layer(seed_name: str = "fast.l0", bias: bool = True) -> QuartetLinear:
    torch.manual_seed(0)
    return QuartetLinear(512, 384, bias=bias, recipe="quartet2", name=seed_name, device="cuda", dtype=torch.bfloat16)


def test_linear_forward_backward_without_host_sync(cgen):
    layer = _layer()
    x = torch.randn(256, 512, generator=cgen).to("cuda", torch.bfloat16).requires_grad_(True)
    g = torch.randn(256, 384, generator=cgen).to("cuda", torch.bfloat16)
    layer(x).backward(g)  # warm-up: cuBLASLt plans, the device step counter, fixed signs
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            layer(x).backward(g)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert layer.rotation.device_step() == 3


def test_linear_cuda_graph_replays_equal_eager_steps(cgen):
    x_data = torch.randn(256, 512, generator=cgen).to("cuda", torch.bfloat16)
    g_data = torch.randn(256, 384, generator=cgen).to("cuda", torch.bfloat16)

    def step(layer, x):
        layer.weight.grad = layer.bias.grad = None
        x.grad = None
        y = layer(x)
        y.backward(g_data)
        return y.detach().clone(), x.grad.clone(), layer.weight.grad.clone(), layer.bias.grad.clone()

    eager = _layer()
    x_e = x_data.clone().requires_grad_(True)
    want = [step(eager, x_e) for _ in range(5)]
    assert not torch.equal(want[3][2], want[4][2])  # fresh randomness: dW differs step to step

    graphed = _layer()
    x_g = x_data.clone().requires_grad_(True)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the graph (steps 0, 1)
        got = [step(graphed, x_g) for _ in range(2)]
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    graphed.weight.grad = graphed.bias.grad = x_g.grad = None
    with torch.cuda.graph(graph):  # captures step 2; every replay runs the next step
        y = graphed(x_g)
        y.backward(g_data)
    for _ in range(3):
        graph.replay()
        got.append((y.detach().clone(), x_g.grad.clone(), graphed.weight.grad.clone(), graphed.bias.grad.clone()))
    # Capture itself ran step 2's kernels once (recorded, not executed): replays are steps 2, 3, 4.
    for i, (w, gt) in enumerate(zip(want, got)):
        for name, a, b in zip(("y", "dx", "dW", "db"), gt, w):
            assert torch.equal(a, b), f"step {i} {name} differs from eager"
    assert graphed.rotation.device_step() == 5
