"""Shared helpers of the kernel tests: bitwise NVFP4 comparison with the first mismatch reported."""
from __future__ import annotations

import torch

from quartet_te.tensor import NVFP4Tensor


def _first_mismatch(a: torch.Tensor, b: torch.Tensor) -> str:
    bad = (a != b).nonzero()
    idx = tuple(int(i) for i in bad[0]) if a.dim() else ()
    return f"{int((a != b).sum())} of {a.numel()} differ; first at {idx}: got {a[idx].item()} expected {b[idx].item()}"


def assert_bitwise_equal(got: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    assert got.shape == ref.shape, f"{what}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    g = got.contiguous().reshape(-1).view(torch.uint8).cpu()
    r = ref.to(got.device).contiguous().reshape(-1).view(torch.uint8).cpu()
    if not torch.equal(g, r):
        if got.dtype == torch.uint8:
            raise AssertionError(f"{what}: {_first_mismatch(got.cpu(), ref.cpu())}")
        raise AssertionError(f"{what}: {_first_mismatch(got.cpu().float(), ref.cpu().float())}")


def assert_nvfp4_equal(got: NVFP4Tensor, ref: NVFP4Tensor, what: str = "") -> None:
    """Codes, block scales and tensor scale equal bit for bit (atol = rtol = 0)."""
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    assert_bitwise_equal(got.tensor_scale.float().reshape(()), ref.tensor_scale.float().reshape(()), f"{what} tensor scale")
    assert_bitwise_equal(got.block_scales.view(torch.uint8), ref.block_scales.view(torch.uint8), f"{what} block scales")
    assert_bitwise_equal(got.codes(), ref.codes(), f"{what} codes")
    assert got.rotation == ref.rotation, f"{what}: rotation {got.rotation} != {ref.rotation}"


def _cpu(v):
    if isinstance(v, torch.Tensor):
        return v.cpu()
    if isinstance(v, NVFP4Tensor):
        return NVFP4Tensor(v.data.cpu(), v.block_scales.cpu(), v.tensor_scale.cpu(), mode=v.mode, rotation=v.rotation)
    return v


def on_cpu(fn, *args, **kwargs):
    """Run a reference function on CPU copies of its tensor arguments.

    The reference is the contract on CPU; on CUDA, PyTorch divides by a Python scalar as a
    multiplication by its reciprocal (`amax / D`, `a_b / M`), which can differ by one ulp from the
    true division of docs/numerics.md (reported to the lead).
    """
    return fn(*[_cpu(a) for a in args], **{k: _cpu(v) for k, v in kwargs.items()})


def to_cuda(t: NVFP4Tensor) -> NVFP4Tensor:
    return NVFP4Tensor(t.data.cuda(), t.block_scales.cuda(), t.tensor_scale.cuda(), mode=t.mode, rotation=t.rotation)


def spread_randn(rows: int, cols: int, gen: torch.Generator, dtype=torch.float32, device="cuda") -> torch.Tensor:
    """Gaussian rows spread over a 256x range of magnitudes, a few outliers (fresh each call)."""
    x = torch.randn(rows, cols, generator=gen) * torch.logspace(0, 8, rows, base=2.0)[torch.randperm(rows, generator=gen)][:, None]
    if x.numel() > 64:
        idx = torch.randint(0, x.numel(), (max(1, x.numel() // 1000),), generator=gen)
        x.view(-1)[idx] *= 40.0
    return x.to(dtype).to(device)
