"""quartet_te.bench.device_profile: kernel names into categories, per-step sums, and the
profiler's device events read back."""
from __future__ import annotations

import pytest
import torch

from quartet_te.bench import device_profile as D


@pytest.mark.parametrize(
    "kernel, category",
    [
        ("void quartet::(anonymous namespace)::tile_kernel<1, true, 128, 3, false>(quartet::TileArgs)",
         "quartet_te quantize / amax"),
        ("void quartet::(anonymous namespace)::alpha_kernel(float const*, float const*, float*)",
         "quartet_te quantize / amax"),
        ("nvjet_sm90_tst_192x192_64x4_2x1_v_bx_coopB_TNN", "GEMM (cuBLAS, CUTLASS)"),
        ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "GEMM (cuBLAS, CUTLASS)"),
        ("void cutlass::Kernel2<cutlass_80_tensorop_bf16_s16816gemm>", "GEMM (cuBLAS, CUTLASS)"),
        ("flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4>>", "attention"),
        ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop", "attention"),
        ("void multi_tensor_apply_kernel<TensorListMetadata<4>, AdamFunctor<float>>", "optimizer"),
        ("ncclDevKernel_AllReduce_Sum_f32_RING_LL", "communication (NCCL)"),
        ("void transformer_engine::normalization::ln_fwd_tuned_kernel<float>", "Transformer Engine kernels"),
        ("Memset (Device)", "memset / memcpy"),
        ("Memcpy DtoD (Device -> Device)", "memset / memcpy"),
        ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>",
         "other (torch elementwise, reductions, ...)"),
    ],
)  # fmt: skip
def test_category_of(kernel, category):
    assert D.category_of(kernel) == category


def test_summarize_divides_by_steps_and_ranks_kernels():
    kernels = [("nvjet_gemm", 300.0), ("quartet::row_kernel", 100.0), ("nvjet_gemm", 300.0), ("Memset (Device)", 4.0)]
    text = D.summarize(kernels, steps=2, top=2)
    assert "(2 steps, 0.35 ms per step in all)" in text
    assert "GEMM (cuBLAS, CUTLASS)" in text and "   0.300  " in text  # 600 µs over 2 steps
    rows = text.split("top 2 kernels")[1].splitlines()[1:]
    assert len(rows) == 2 and rows[0].split()[:2] == ["0.300", "1.0"] and rows[0].endswith("nvjet_gemm")
    for name, _ in D.CATEGORIES:
        assert name in text
    with pytest.raises(ValueError, match="steps must be positive"):
        D.summarize(kernels, steps=0)


def test_kernel_events_keeps_device_events_only():
    class Range:
        def __init__(self, us):
            self.us = us

        def elapsed_us(self):
            return self.us

    class Event:
        def __init__(self, name, device_type, us):
            self.name, self.device_type, self.time_range = name, device_type, Range(us)

    class Prof:
        def events(self):
            return [Event("aten::mm", torch.autograd.DeviceType.CPU, 50), Event("nvjet_x", torch.autograd.DeviceType.CUDA, 7)]

    assert D.kernel_events(Prof()) == [("nvjet_x", 7.0)]
