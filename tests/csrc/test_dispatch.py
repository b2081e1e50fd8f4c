"""CPU CI: availability probe, GEMM dispatch by compute capability, cuBLASLt scale layout, and
the errors raised before any launch."""
import pytest
import torch

from quartet_te import kernels as K
from quartet_te import ops, reference


@pytest.mark.parametrize(
    "cap, fp4, expected",
    [
        ((8, 0), True, "reference"),  # A100: reference fallback
        ((8, 9), True, "reference"),  # Ada
        ((9, 0), True, "emulated"),  # Hopper: BF16 emulation
        ((10, 0), True, "native"),  # B200
        ((10, 3), True, "native"),  # B300
        ((12, 0), True, "native"),  # RTX Blackwell
        ((10, 0), False, "emulated"),  # torch without FP4 _scaled_mm
    ],
    ids=["sm80", "sm89", "sm90", "sm100", "sm103", "sm120", "sm100-no-fp4-torch"],
)
def test_gemm_backend(cap, fp4, expected):
    assert K.gemm_backend(cap, fp4) == expected


def test_availability_reasons():
    assert "not built" in K._reason((9, 0), False, "no module")
    assert K._reason(None, True, None) == "no CUDA device"
    assert "8.0" in K._reason((8, 0), True, None)
    assert K._reason((9, 0), True, None) is None
    assert K._reason((12, 0), True, None) is None


def test_is_available_cached_and_consistent():
    ok, reason = K.is_available(return_reason=True)
    assert K.is_available() is ok
    assert isinstance(reason, str) and reason
    if not torch.cuda.is_available():
        assert not ok


def _swizzle_by_formula(s: torch.Tensor) -> torch.Tensor:
    rows, cols = s.shape
    pr, pc = -(-rows // 128) * 128, -(-cols // 4) * 4
    out = torch.zeros(pr * pc, dtype=torch.uint8)
    for r in range(rows):
        for c in range(cols):
            tile = (r // 128) * (pc // 4) + c // 4
            rr, cc = r % 128, c % 4
            out[tile * 512 + (rr % 32) * 16 + (rr // 32) * 4 + cc] = s[r, c]
    return out


@pytest.mark.parametrize("shape", [(128, 4), (256, 8), (130, 6), (16, 1)], ids=str)
def test_swizzle_scales_matches_cublaslt_layout(shape, gen):
    s = torch.randint(0, 255, shape, generator=gen, dtype=torch.uint8)
    assert torch.equal(K.swizzle_scales(s), _swizzle_by_formula(s))
    f8 = K.swizzle_scales(s.view(torch.float8_e4m3fn))
    assert f8.dtype == torch.float8_e4m3fn and torch.equal(f8.view(torch.uint8), _swizzle_by_formula(s))


def test_cpu_tensor_rejected_before_launch():
    with pytest.raises(ValueError, match="CUDA"):
        K.quantize(torch.randn(16, 16), "rtn")
    with pytest.raises(ValueError, match="CUDA"):
        K.quantize_2d(torch.randn(16, 16))


def test_signed64_round_trip():
    for v in (0, 1, 2**63 - 1, 2**63, 2**64 - 1):
        assert K._signed64(v) % 2**64 == v
    with pytest.raises(ValueError):
        K._signed64(2**64)
    with pytest.raises(ValueError):
        K._signed64(-1)


def test_constants_are_the_references():
    from quartet_te.reference import formats as F

    assert K._consts("ms_eden", 128) == (F.D_EDEN, F.M_EDEN, F.M4, F.SQRT_N[128])
    assert K._consts("four_over_six", 0) == (F.D_46, F.M6, F.M4, 1.0)
    assert K._consts("sr", 16) == (F.D_RTN, F.M_SR, F.M4, 4.0)
    # sqrt(n) is n * float32(1/sqrt(n)) exactly: the rotation's bits do not depend on the form
    assert F.SQRT_N[128] == 128 * F.INV_SQRT[128] and F.INV_N[128] * 128 == 1.0


def test_ops_uses_reference_on_cpu(gen):
    x = torch.randn(32, 64, generator=gen)
    a, b = ops.quantize(x, "four_over_six"), reference.quantize(x, "four_over_six")
    assert torch.equal(a.data, b.data)


def test_quantize_op_unaliases_the_shared_allocation(monkeypatch):
    """The extension returns codes, scales and tensor scale as views of one allocation, and None
    for what it does not emit (csrc/bindings.cpp make_outputs); the torch.compile custom op must
    return separate tensors (torch refuses outputs that alias each other) and empties for None."""

    def shared_views(x, *args):
        buf = torch.randint(0, 255, (64,), dtype=torch.uint8)
        data, scales = buf[:32].view(4, 8), buf[32:36].view(torch.float8_e4m3fn).view(4, 1)
        ts = buf[48:52].view(torch.float32).view(())
        return [data, scales, ts, torch.randn(4, 16).bfloat16(), None, None, None, None]

    monkeypatch.setattr(K, "_quantize_eager", shared_views)
    row = (K.MODE_IDS["four_over_six"], 0, None, 0, 0, 0, None, 3)
    off = (-1, 0, None, 0, 0, 0, None, 0)
    outs = K._quantize_op(torch.randn(4, 16), None, None, 4, 16, None, *row, *off)
    assert [tuple(t.shape) for t in outs] == [(4, 8), (4, 1), (), (4, 16), (0,), (0,), (0,), (0,)]
    assert [t.dtype for t in outs[4:]] == [torch.uint8, torch.uint8, torch.float32, torch.bfloat16]
    ptrs = [t.untyped_storage().data_ptr() for t in outs[:4]]
    assert len(set(ptrs)) == 4
