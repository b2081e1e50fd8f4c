"""The GEMM path's hot-path launches (`gemms._quantize_rows`, `_ms_eden`, `_requantize`, `_gemm`)
pass the CUDA extension exactly the arguments the validated `ops` calls they replace pass it.

Runs on the CPU: a recording stand-in for `quartet_te._C` takes the launches, with the kernels
forced as the backend (the device tests check the kernels' bits themselves)."""
from __future__ import annotations

import pytest
import torch

from quartet_te import gemms as G
from quartet_te import kernels as K
from quartet_te import ops
from quartet_te.rotation import Operand, RotationState
from quartet_te.tensor import BF16Operand, NVFP4Tensor


def _norm(a):
    if isinstance(a, torch.Tensor):
        return ("tensor", tuple(a.shape), a.dtype)
    if isinstance(a, (list, tuple)):
        return tuple(_norm(v) for v in a)
    return a


class RecordingExtension:
    """Records each call; returns empty outputs of the shapes the real extension allocates."""

    def __init__(self) -> None:
        self.calls: list = []

    def quantize(self, x, xs, xts, rows, cols, *a):
        self.calls.append(("quantize", _norm((x, xs, xts, rows, cols, *a))))

        def outs(r, c, mode, emit):
            if mode < 0:
                return [None] * 4
            return [torch.empty(r, c // 2, dtype=torch.uint8) if emit & 1 else None,
                    torch.empty(r, c // 16, dtype=torch.float8_e4m3fn) if emit & 1 else None,
                    torch.ones((), dtype=torch.float32),
                    torch.empty(r, c, dtype=torch.bfloat16) if emit & 2 else None]  # fmt: skip

        return outs(rows, cols, a[0], a[10]) + outs(cols, rows, a[11], a[21])

    def gemm_bf16(self, a, b, ta, tb, bias, kind):
        self.calls.append(("gemm", _norm((a, b, ta, tb, bias, kind))))
        return torch.empty(a.shape[0], b.shape[0])


@pytest.fixture
def ext(monkeypatch):
    rec = RecordingExtension()
    monkeypatch.setattr(K, "_C", rec)
    monkeypatch.setattr(K, "_require", lambda x, what: None)
    monkeypatch.setattr(K, "device_backend", lambda device: "emulated")
    monkeypatch.setattr(ops, "kernels_for", lambda device: K)
    return rec


def _pair(ext, hot, validated):
    """(calls of `hot()`, calls of `validated()`) and both results."""
    ext.calls.clear()
    a = hot()
    hot_calls = list(ext.calls)
    ext.calls.clear()
    b = validated()
    return hot_calls, list(ext.calls), a, b


def _same_objects(a, b):
    assert type(a) is type(b)
    if isinstance(a, NVFP4Tensor):
        assert (a.shape, a.mode, a.rotation) == (b.shape, b.mode, b.rotation)
        assert (a.operand is None) == (b.operand is None)
    elif isinstance(a, BF16Operand):
        assert (a.shape, a.mode, a.rotation) == (b.shape, b.mode, b.rotation)


@pytest.mark.parametrize("mode", ["four_over_six", "rtn"])
@pytest.mark.parametrize("emit", ["fp4", "bf16", "both"])
def test_forward_quantization_matches_ops(ext, mode, emit):
    x = torch.randn(256, 384, dtype=torch.bfloat16)
    hot, ref, a, b = _pair(ext, lambda: G._quantize_rows(x, mode, None, emit), lambda: ops.quantize(x, mode, emit=emit))
    assert hot == ref and len(hot) == 1
    _same_objects(a, b)


@pytest.mark.parametrize("streams", [(Operand.GRAD_ROWWISE, Operand.GRAD_COLWISE), (Operand.GRAD_ROWWISE, None),
                                     (None, Operand.GRAD_COLWISE)])  # fmt: skip
def test_ms_eden_of_the_gradient_matches_ops(ext, streams):
    e = torch.randn(256, 384, dtype=torch.bfloat16)
    rotation = RotationState(1234)
    rotation.step = 7
    d = rotation.next_backward("cpu")
    d = type(d)(seed=d.seed, step=d.step, step_tensor=torch.full((1,), 7, dtype=torch.int64))  # as on CUDA
    row, col = streams

    def validated():
        kw = G._streams(d, row if row is not None else col)
        if row is not None and col is not None:
            return ops.quantize_both(e, "ms_eden", offset_t=G._streams(d, col)["offset"], emit="bf16", emit_t="bf16",
                                     **kw)  # fmt: skip
        if row is not None:
            return ops.quantize(e, "ms_eden", emit="bf16", **kw), None
        return None, ops.quantize(e, "ms_eden", emit="bf16", transpose=True, **kw)

    hot, ref, a, b = _pair(ext, lambda: G._ms_eden(e, d, row, col, "bf16"), validated)
    assert hot == ref and len(hot) == 1
    for x, y in zip(a, b):
        assert (x is None) == (y is None)
        if x is not None:
            _same_objects(x, y)


@pytest.mark.parametrize("emit", ["fp4", "bf16"])
def test_requantization_and_gemm_match_ops(ext, emit):
    t = NVFP4Tensor(torch.randint(0, 255, (256, 64), dtype=torch.uint8),
                    torch.ones(256, 8, dtype=torch.float8_e4m3fn), torch.ones(()), mode="four_over_six")  # fmt: skip
    rotation = RotationState(5)
    d0 = rotation.next_backward("cpu")
    d = type(d0)(seed=d0.seed, step=d0.step, step_tensor=torch.zeros(1, dtype=torch.int64))
    hot, ref, a, b = _pair(ext, lambda: G._requantize(t, d, Operand.WEIGHT_T, emit),
                           lambda: ops.requantize(t, emit=emit, **G._streams(d, Operand.WEIGHT_T)))  # fmt: skip
    assert hot == ref and len(hot) == 1
    _same_objects(a, b)
    q = ops.quantize(torch.randn(128, 256), "rtn", emit="bf16")
    bias = torch.randn(128, dtype=torch.bfloat16)
    hot, ref, _, _ = _pair(ext, lambda: G._gemm(q, q, torch.bfloat16, bias),
                           lambda: ops.gemm(q, q, torch.bfloat16, bias))  # fmt: skip
    assert hot == ref and hot[-1][0] == "gemm"


def test_planned_directions_are_validated_once_and_clearly():
    with pytest.raises(ValueError, match="unknown quantization mode"):
        K.planned_direction("rtm")
    with pytest.raises(ValueError, match="ms_eden needs signs"):
        K.planned_direction("ms_eden", None, 1, 0, "bf16")
    with pytest.raises(ValueError, match="emit must be one of"):
        K.planned_direction("rtn", emit="fp8")
    with pytest.raises(TypeError, match="seed must be an int"):
        K.planned_direction("ms_eden", G.BackwardDraw(1, 0).sign_stream, 1.5, 0, "bf16")


def test_trusted_constructors_equal_the_checked_ones(gen):
    data = torch.randint(0, 256, (4, 8), dtype=torch.uint8, generator=gen)
    scales = torch.rand(4, 1, generator=gen).to(torch.float8_e4m3fn)
    ts, values = torch.rand((), generator=gen), torch.randn(4, 16, generator=gen).bfloat16()
    op = BF16Operand.trusted(values, ts, "ms_eden", 128)
    assert op == BF16Operand(values, ts, "ms_eden", 128)
    t = NVFP4Tensor.trusted(data, scales, ts, "rtn", 0, op)
    assert t == NVFP4Tensor(data, scales, ts, mode="rtn", rotation=0) and t.shape == (4, 16) and t.operand is op


def test_a_linear_step_makes_five_quantizations_and_three_gemms(ext, monkeypatch):
    """The fast path's shape on Hopper, pinned on the CPU: one Quartet II linear fwd+bwd makes five
    extension quantize calls (x and W along K, each writing FP4 + the BF16 operand; e in both
    directions from one read, BF16 operands only; Ŵᵀ and x̂ᵀ re-quantized from the saved FP4) and
    three GEMMs, never a separate dequantize pass (the stand-in has none: one would raise)."""
    from quartet_te.linear import QuartetLinear
    from quartet_te.rotation import BackwardDraw

    monkeypatch.setattr(ops, "emulated_gemm", lambda device: True)

    def next_backward(self, device):  # the CUDA branch: a device step counter (here on the CPU)
        if self._counter is None:
            self._counter = torch.full((1,), self.step, dtype=torch.int64)
        snapshot = self._counter.clone()
        self._counter.add_(1)
        self.step += 1
        return BackwardDraw(seed=self.seed, step=self.step - 1, step_tensor=snapshot)

    monkeypatch.setattr(RotationState, "next_backward", next_backward)
    layer = QuartetLinear(256, 384, bias=False, recipe="quartet2")
    x = torch.randn(256, 256, requires_grad=True)
    ext.calls.clear()
    layer(x).backward(torch.randn(256, 384))
    kinds = [c[0] for c in ext.calls]
    assert kinds == ["quantize", "quantize", "gemm", "quantize", "quantize", "gemm", "quantize", "gemm"]
    quantize = [c[1] for c in ext.calls if c[0] == "quantize"]
    # (row mode, row emit, col mode, col emit) of each call; emit 3 = FP4 + BF16, 2 = BF16 only
    dirs = [(q[5], q[15], q[16], q[26]) for q in quantize]
    fwd, eden = K.MODE_IDS["four_over_six"], K.MODE_IDS["ms_eden"]
    assert dirs == [(fwd, 3, -1, 0), (fwd, 3, -1, 0), (eden, 2, eden, 2), (-1, 0, eden, 2), (-1, 0, eden, 2)]
    step = ("tensor", (1,), torch.int64)  # the backward's randomness from the device step counter
    assert quantize[2][12] == step and all(q[23] == step for q in quantize[2:])
