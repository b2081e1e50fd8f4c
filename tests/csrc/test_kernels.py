"""Device tests: every kernel bit-exact against the reference (atol = rtol = 0 on codes, block
scales and tensor scale), on fresh random data, several shapes (non-square, partial tiles, the
smallest legal ones), with poisoned outputs so an unwritten element cannot pass."""
from __future__ import annotations

import pytest
import torch

from quartet_te import kernels as K
from quartet_te import reference as R

from kernel_helpers import assert_bitwise_equal, assert_nvfp4_equal, on_cpu, spread_randn, to_cuda

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not K.is_available(), reason=K.is_available(return_reason=True)[1]),
]

POISONS = (0x5A, 0xA5)  # two runs: an unwritten byte cannot equal the reference in both
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}

# (rows, cols): smallest legal, non-square, partial 128-tiles, a larger one.
SHAPES_16 = [(16, 16), (48, 80), (272, 144), (1024, 2048)]
SHAPES_ROWS_ANY = [(1, 16), (7, 32), (33, 4096)]  # row-wise only: any row count
SHAPES_128 = [(128, 128), (256, 384), (384, 1024), (1024, 4096)]


@pytest.fixture
def cgen(request):
    """A generator seeded per test id: fresh data for every case, reproducible on failure."""
    return torch.Generator().manual_seed(abs(hash(request.node.nodeid)) % 2**31)


def _both_poisons(fn):
    """Run `fn()` under each poison byte; return the results."""
    out = []
    try:
        for p in POISONS:
            K._POISON = p
            out.append(fn())
    finally:
        K._POISON = None
    return out


def _check(kernel_fn, ref: R.NVFP4Tensor, what: str):
    for got in _both_poisons(kernel_fn):
        assert_nvfp4_equal(got, ref, what)


def _kw(mode, signs, seed):
    return dict(signs=signs, seed=seed if mode in ("sr", "ms_eden") else None, offset=(seed * 7) % 1000)


@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
@pytest.mark.parametrize("mode", ["rtn", "four_over_six", "sr"])
@pytest.mark.parametrize("shape", SHAPES_16 + SHAPES_ROWS_ANY, ids=str)
def test_quantize_rowwise(shape, mode, dtype, cgen):
    x = spread_randn(*shape, cgen, DTYPES[dtype])
    seed = int(torch.randint(0, 2**62, (1,), generator=cgen)) * 3
    kw = _kw(mode, None, seed)
    _check(lambda: K.quantize(x, mode, **kw), on_cpu(R.quantize, x, mode, **kw), f"{mode} {shape}")


@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
@pytest.mark.parametrize("mode", ["rtn", "four_over_six", "sr"])
@pytest.mark.parametrize("shape", SHAPES_16, ids=str)
def test_quantize_transposed(shape, mode, dtype, cgen):
    x = spread_randn(*shape, cgen, DTYPES[dtype])
    kw = _kw(mode, None, 11)
    _check(lambda: K.quantize(x, mode, transpose=True, **kw), on_cpu(R.quantize, x, mode, transpose=True, **kw), f"{mode}ᵀ {shape}")


@pytest.mark.parametrize("n", [16, 128])
@pytest.mark.parametrize("mode", ["rtn", "sr", "four_over_six"])
@pytest.mark.parametrize("shape", SHAPES_128, ids=str)
@pytest.mark.parametrize("transpose", [False, True], ids=["row", "col"])
def test_quantize_rotated(shape, mode, n, transpose, cgen):
    x = spread_randn(*shape, cgen, torch.bfloat16)
    signs = R.random_signs(n, 5, 17, "cuda")
    kw = _kw(mode, signs, 12345)
    _check(lambda: K.quantize(x, mode, transpose=transpose, **kw), on_cpu(R.quantize, x, mode, transpose=transpose, **kw), f"{mode}+rht{n}")


@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
@pytest.mark.parametrize("shape", SHAPES_128 + [(1, 128), (3, 256), (256, 208)], ids=str)
@pytest.mark.parametrize("transpose", [False, True], ids=["row", "col"])
def test_ms_eden(shape, dtype, transpose, cgen):
    if transpose and shape[0] % 128:
        pytest.skip("transposed MS-EDEN needs rows % 128")
    if not transpose and shape[1] % 128:
        pytest.skip("MS-EDEN needs cols % 128 (the shape is for the transposed output's partial tiles)")
    x = spread_randn(*shape, cgen, DTYPES[dtype])
    seed = int(torch.randint(0, 2**62, (1,), generator=cgen)) + 2**63  # exercise the high key word
    signs = R.random_signs(128, seed, 3, "cuda")
    kw = dict(signs=signs, seed=seed, offset=2**40 + 5)
    _check(lambda: K.quantize(x, "ms_eden", transpose=transpose, **kw),
           on_cpu(R.quantize, x, "ms_eden", transpose=transpose, **kw), f"ms_eden {shape}")  # fmt: skip


@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
@pytest.mark.parametrize("mode, n", [("ms_eden", 128), ("four_over_six", 0), ("sr", 16)])
def test_quantize_both_matches_two_calls(mode, n, dtype, cgen):
    x = spread_randn(640, 384, cgen, DTYPES[dtype])  # 5 row tiles of 128, 3 column tiles
    signs = R.random_signs(n, 1, 2, "cuda") if n else None
    seed = 99 if mode in ("sr", "ms_eden") else None
    for row, col in _both_poisons(
        lambda: K.quantize_both(x, mode, signs=signs, seed=seed, offset=1, mode_t=mode, offset_t=3)
    ):
        assert_nvfp4_equal(row, on_cpu(R.quantize, x, mode, signs=signs, seed=seed, offset=1), "rowwise")
        assert_nvfp4_equal(col, on_cpu(R.quantize, x, mode, signs=signs, seed=seed, offset=3, transpose=True), "colwise")


@pytest.mark.parametrize("mode", ["rtn", "four_over_six", "ms_eden"])
def test_given_amax(mode, cgen):
    x = spread_randn(256, 256, cgen, torch.float32)
    signs = R.random_signs(128, 4, 4, "cuda") if mode == "ms_eden" else None
    amax = torch.tensor(float(x.abs().max()) * 3.0, device="cuda")  # e.g. reduced across ranks
    kw = dict(signs=signs, seed=5 if mode == "ms_eden" else None, amax=amax)
    for tr in (False, True):
        _check(lambda: K.quantize(x, mode, transpose=tr, **kw), on_cpu(R.quantize, x, mode, transpose=tr, **kw), f"{mode} amax")


@pytest.mark.parametrize("mode", ["rtn", "four_over_six", "sr", "ms_eden"])
def test_zeros_and_tiny(mode):
    signs = R.random_signs(128, 4, 4, "cuda") if mode == "ms_eden" else None
    seed = 5 if mode in ("sr", "ms_eden") else None
    for x in (torch.zeros(128, 256, device="cuda"), torch.full((128, 256), 1e-42, device="cuda")):
        for tr in (False, True):
            _check(lambda: K.quantize(x, mode, signs=signs, seed=seed, transpose=tr),
                   on_cpu(R.quantize, x, mode, signs=signs, seed=seed, transpose=tr), f"{mode} edge")  # fmt: skip


@pytest.mark.parametrize("log2_scale", [-125, -100, -60, 0, 40, 100], ids=lambda e: f"2^{e}")
@pytest.mark.parametrize("mode", ["rtn", "four_over_six", "sr", "ms_eden"])
def test_extreme_magnitudes_and_signed_zeros(mode, log2_scale, cgen):
    # Tiny, huge and subnormal values, +0 and -0: the reciprocal scaling (capped for a subnormal
    # tensor scale) and the pre-scaled rotation must match the reference on every range.
    x = spread_randn(256, 256, cgen, torch.float32, device="cpu") * 2.0**log2_scale
    x[::7, ::3] = 0.0
    x[1::7, ::5] = -0.0
    x[2, :64] = torch.logspace(-149, 100, 64, base=2.0)
    x = x.cuda()
    signs = R.random_signs(128, 4, 4, "cuda") if mode == "ms_eden" else None
    seed = 5 if mode in ("sr", "ms_eden") else None
    for tr in (False, True):
        _check(lambda: K.quantize(x, mode, signs=signs, seed=seed, transpose=tr),
               on_cpu(R.quantize, x, mode, signs=signs, seed=seed, transpose=tr), f"{mode} 2^{log2_scale}")  # fmt: skip
    amax = x.abs().max() * 1e-3  # too small on purpose (|xs| up to 1000 D), still finite xs
    _check(lambda: K.quantize(x, mode, signs=signs, seed=seed, amax=amax),
           on_cpu(R.quantize, x, mode, signs=signs, seed=seed, amax=amax), f"{mode} small amax")  # fmt: skip


def test_nonfinite_input_gives_nan_tensor_scale():
    x = torch.randn(128, 128, device="cuda")
    x[3, 5] = float("inf")
    assert torch.isnan(K.quantize(x, "rtn").tensor_scale)
    x[3, 5] = float("nan")
    assert torch.isnan(K.quantize(x, "four_over_six", transpose=True).tensor_scale)


@pytest.mark.parametrize("fwd_mode", ["four_over_six", "rtn"])
@pytest.mark.parametrize("shape", [(128, 16), (256, 80), (384, 1024), (1024, 4096)], ids=str)
def test_requantize(shape, fwd_mode, cgen):
    x = spread_randn(*shape, cgen, torch.bfloat16)
    t = to_cuda(on_cpu(R.quantize, x, fwd_mode))
    signs = R.random_signs(128, 8, 1, "cuda")
    kw = dict(signs=signs, seed=2**64 - 3, offset=77)
    _check(lambda: K.requantize(t, **kw), on_cpu(R.requantize, t, **kw), f"requantize {shape}")


@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
@pytest.mark.parametrize("shape", [(16, 16), (48, 80), (512, 1024)], ids=str)
def test_quantize_2d(shape, dtype, cgen):
    w = spread_randn(*shape, cgen, DTYPES[dtype])
    _check(lambda: K.quantize_2d(w), on_cpu(R.quantize_2d, w), "2d")


@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
@pytest.mark.parametrize("shape", [(16, 16), (7, 48), (512, 1024)], ids=str)
def test_dequantize(shape, dtype, cgen):
    t = to_cuda(on_cpu(R.quantize, spread_randn(*shape, cgen), "four_over_six"))
    for got in _both_poisons(lambda: K.dequantize(t, DTYPES[dtype])):
        assert_bitwise_equal(got, on_cpu(R.dequantize, t, DTYPES[dtype]), "dequantize")
    for got in _both_poisons(lambda: K.dequantize_unscaled(t, torch.bfloat16)):
        assert_bitwise_equal(got, on_cpu(lambda t: t.dequantize_unscaled().to(torch.bfloat16), t), "dequantize_unscaled")
        assert torch.equal(got.float().cpu(), on_cpu(lambda t: t.dequantize_unscaled(), t)), "decodeₛ must be exact in BF16"


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("mkn", [(16, 16, 16), (128, 256, 384), (1000, 4096, 512)], ids=str)
def test_gemm(mkn, out_dtype, cgen):
    m, k, n = mkn
    a = K.quantize(spread_randn(m, k, cgen), "four_over_six")
    b = K.quantize(spread_randn(n, k, cgen), "four_over_six")
    got = K.gemm(a, b, out_dtype)
    ref32 = on_cpu(R.gemm, a, b, torch.float32).cuda()
    assert got.dtype == out_dtype and got.shape == (m, n)
    # Same products, different summation order: error bounded by K fp32 roundings of |a|·|b|ᵀ.
    bound = (a.dequantize().abs() @ b.dequantize().abs().t()) * (k * 2.0**-23)
    if out_dtype == torch.bfloat16:
        bound = bound + ref32.abs() * 2.0**-8
    assert bool(((got.float() - ref32).abs() <= bound + 1e-30).all())


def test_errors_before_launch():
    x = torch.randn(64, 64, device="cuda")
    with pytest.raises(ValueError, match="multiple of 128"):
        K.quantize(x, "ms_eden", signs=R.random_signs(128, 1, 1, "cuda"), seed=1)
    with pytest.raises(ValueError, match="multiple of 16"):
        K.quantize(torch.randn(64, 40, device="cuda"), "rtn")
    with pytest.raises(ValueError, match="multiple of 16"):
        K.quantize(torch.randn(40, 64, device="cuda"), "rtn", transpose=True)
    with pytest.raises(ValueError, match="float32, bfloat16 or float16"):
        K.quantize(x.to(torch.float64), "rtn")
    with pytest.raises(ValueError, match="signs"):
        K.quantize(x, "rtn", signs=R.random_signs(128, 1, 1, "cpu"))
    with pytest.raises(ValueError, match="random"):
        K.quantize(x, "sr")
    # non-contiguous input is accepted (copied) and gives the same bits
    xt = torch.randn(64, 128, device="cuda").t()
    assert_nvfp4_equal(K.quantize(xt, "rtn"), on_cpu(R.quantize, xt, "rtn"), "non-contiguous")


def test_torch_compile_traces_custom_ops():
    x = torch.randn(256, 256, device="cuda")
    row = (K.MODE_IDS["four_over_six"], 0, None, 0, 0, 0, None, 3)  # mode, rot, signs, seed, offsets, amax, emit
    off = (-1, 0, None, 0, 0, 0, None, 0)
    f = torch.compile(lambda t: K._quantize_op(t, None, None, 256, 256, None, *row, *off)[0], fullgraph=True)
    assert torch.equal(f(x), K.quantize(x, "four_over_six").data)
