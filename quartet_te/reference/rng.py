"""Philox4x32-10, the counter-based generator shared by the reference and the CUDA kernels.

Random index `n` under key `seed` and stream `offset` (both 64-bit) is word `n % 4` of
Philox4x32-10 applied to the counter `(n//4 lo, n//4 hi, offset lo, offset hi)`. The arithmetic
runs in int64 with explicit 32-bit masking so it is exact on every device.
"""
from __future__ import annotations

import torch

_MASK = 0xFFFFFFFF
_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85


def _mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of the 64-bit product of uint32 tensor `a` and constant `m`."""
    a_lo = a & 0xFFFF
    a_hi = a >> 16
    p_lo = a_lo * m  # < 2**48
    p_hi = a_hi * m  # < 2**48
    t = p_lo + ((p_hi & 0xFFFF) << 16)
    return (p_hi >> 16) + (t >> 32), t & _MASK


def philox4x32(counter: tuple[torch.Tensor, ...], key: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """Philox4x32-10 on int64 tensors holding uint32 words; returns the 4 output words."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for r in range(10):
        hi0, lo0 = _mulhilo(c0, _M0)
        hi1, lo1 = _mulhilo(c2, _M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        if r < 9:
            k0 = (k0 + _W0) & _MASK
            k1 = (k1 + _W1) & _MASK
    return c0, c1, c2, c3


def _check_u64(name: str, value: int) -> int:
    value = int(value)
    if not 0 <= value < 2**64:
        raise ValueError(f"{name} must be an unsigned 64-bit integer, got {value}")
    return value


def _philox_python(n: int, seed: int, offset: int) -> list[int]:
    """The same words as `random_u32` in plain Python ints: cheaper than tensors for short draws."""
    out: list[int] = []
    for g in range((n + 3) // 4):
        c0, c1, c2, c3 = g & _MASK, g >> 32, offset & _MASK, offset >> 32
        k0, k1 = seed & _MASK, seed >> 32
        for r in range(10):
            p0, p1 = _M0 * c0, _M1 * c2
            c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & _MASK, (p0 >> 32) ^ c3 ^ k1, p0 & _MASK
            if r < 9:
                k0, k1 = (k0 + _W0) & _MASK, (k1 + _W1) & _MASK
        out += (c0, c1, c2, c3)
    return out[:n]


_SHORT = 512  # draws up to this length (e.g. 128 signs per backward) take the Python path


def random_u32(n: int, seed: int, offset: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Random indices 0..n-1 as uint32 values in an int64 tensor of shape (n,)."""
    seed = _check_u64("seed", seed)
    offset = _check_u64("offset", offset)
    if n <= _SHORT:
        return torch.tensor(_philox_python(n, seed, offset), dtype=torch.int64).to(device)
    groups = (n + 3) // 4
    g = torch.arange(groups, dtype=torch.int64, device=device)
    counter = (
        g & _MASK,
        g >> 32,
        torch.full_like(g, offset & _MASK),
        torch.full_like(g, offset >> 32),
    )
    words = philox4x32(counter, (seed & _MASK, seed >> 32))
    return torch.stack(words, dim=-1).flatten()[:n]


def uniform(n: int, seed: int, offset: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """float32 uniforms in [0, 1): (r >> 8) * 2**-24 (exact in float32)."""
    return (random_u32(n, seed, offset, device) >> 8).to(torch.float32) * (2.0**-24)


def random_signs(n: int, seed: int, offset: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """float32 ±1 vector: -1 where bit 31 of the random word is set."""
    bit = random_u32(n, seed, offset, device) >> 31
    return 1.0 - 2.0 * bit.to(torch.float32)


def seed_from_generator(generator: torch.Generator) -> int:
    """Draw a 64-bit Philox key from a torch.Generator (advances the generator)."""
    hi = int(torch.randint(0, 2**32, (1,), generator=generator, dtype=torch.int64))
    lo = int(torch.randint(0, 2**32, (1,), generator=generator, dtype=torch.int64))
    return (hi << 32) | lo
