"""Randomized Hadamard transform along the last dim, in 16- or 128-element chunks.

`hadamard_rotate(x, signs)` maps every contiguous chunk `v` to `v · diag(signs) · H / √n`
(signs first, then the Sylvester Hadamard transform), by the in-place butterfly of
`docs/numerics.md` so the CUDA kernels reproduce it bit for bit. The chunk is scaled by 1/n
before the butterfly and by √n after it (both exact: n·(1/√n) is a float32 product of a power of
two), so no partial sum can overflow on finite data.
"""
from __future__ import annotations

import torch

from .formats import INV_N, INV_SQRT, SQRT_N


def check_signs(signs: torch.Tensor) -> int:
    """Validate a ±1 sign vector; return the rotation size (16 or 128)."""
    if not isinstance(signs, torch.Tensor) or signs.dim() != 1 or signs.numel() not in INV_SQRT:
        raise ValueError(
            f"signs must be a 1-D tensor of 16 or 128 entries, got "
            f"{tuple(signs.shape) if isinstance(signs, torch.Tensor) else type(signs).__name__}"
        )
    if not bool(((signs == 1) | (signs == -1)).all()):
        raise ValueError("signs must contain only +1 and -1")
    return signs.numel()


def fwht(x: torch.Tensor, n: int) -> torch.Tensor:
    """Unnormalized Walsh–Hadamard butterfly on chunks of `n` along the last dim (float32)."""
    shape = x.shape
    y = x.reshape(-1, n)
    h = 1
    while h < n:
        y = y.view(-1, n // (2 * h), 2, h)
        a, b = y[:, :, 0, :], y[:, :, 1, :]
        y = torch.stack((a + b, a - b), dim=2).reshape(-1, n)
        h *= 2
    return y.reshape(shape)


def hadamard_rotate(x: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """Rotate each n-chunk of the last dim of `x` by diag(signs)·H/√n; float32 result."""
    n = check_signs(signs)
    if x.shape[-1] % n:
        raise ValueError(f"last dim {x.shape[-1]} is not a multiple of the rotation size {n}")
    xf = x.float()
    scaled_signs = signs.to(device=x.device, dtype=torch.float32) * INV_N[n]  # ±1/n, exact
    chunks = xf.reshape(*xf.shape[:-1], -1, n) * scaled_signs
    return fwht(chunks, n).reshape(xf.shape) * SQRT_N[n]


def hadamard_unrotate(y: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """Inverse of `hadamard_rotate` (H/√n is symmetric and orthogonal): y·H/√n·diag(signs)."""
    n = check_signs(signs)
    yf = y.float()
    z = fwht(yf.reshape(*yf.shape[:-1], -1, n) * INV_N[n], n) * SQRT_N[n]
    return (z * signs.to(device=y.device, dtype=torch.float32)).reshape(yf.shape)


def hadamard_matrix(n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The n×n Sylvester Hadamard matrix (±1 entries, float32)."""
    h = torch.ones(1, 1, device=device)
    while h.shape[0] < n:
        h = torch.cat((torch.cat((h, h), 1), torch.cat((h, -h), 1)), 0)
    return h
