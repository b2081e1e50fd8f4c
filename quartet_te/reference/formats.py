"""NVFP4 element and scale formats: E2M1 codes, nibble packing, E4M3 helpers, constants.

Everything here is exact integer/float32 logic; `docs/numerics.md` is the contract the CUDA
kernels share with this module.
"""
from __future__ import annotations

import math

import torch

# E2M1 magnitudes indexed by the 3-bit magnitude code.
E2M1_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
E2M1_MAX = 6.0
E4M3_MAX = 448.0
BLOCK = 16


def _f32(value: float) -> float:
    """Round a float64 constant once to float32 (the value every backend uses)."""
    return float(torch.tensor(value, dtype=torch.float64).to(torch.float32))


# Divisors of amax giving the tensor scale (fp8_max * 6 / o) and block-max targets (m / o).
D_RTN = _f32(448.0 * 6.0)
D_46 = _f32(256.0 * 6.0)
O_EDEN = 17.0 / 16.0 * 0.93
D_EDEN = _f32(255.99 * 6.0 / O_EDEN)
M6 = 6.0
M4 = 4.0
M_EDEN = _f32(6.0 / O_EDEN)
M_SR = _f32(6.0 * 16.0 / 17.0)
INV_SQRT = {16: 0.25, 128: _f32(1.0 / math.sqrt(128.0))}
# The rotation runs on chunks pre-scaled by 1/n (exact: a power of two) so that its butterfly
# sums never overflow, and multiplies by SQRT_N = n * INV_SQRT[n] (exact) at the end: the same
# bits as scaling by INV_SQRT after an unscaled butterfly wherever that one does not overflow.
INV_N = {16: 2.0**-4, 128: 2.0**-7}
SQRT_N = {n: _f32(n * INV_SQRT[n]) for n in INV_SQRT}
FLOAT32_MAX = float(torch.finfo(torch.float32).max)

# Midpoints between grid magnitudes; True where a tie rounds up (to the even code).
_MIDPOINTS = ((0.25, False), (0.75, True), (1.25, False), (1.75, True), (2.5, False), (3.5, True), (5.0, False))
# The same rule as strict thresholds: `a >= m` is `a > nextafter(m, 0)` in float32.
_STRICT_THRESHOLDS = tuple(
    float(torch.nextafter(torch.tensor(m), torch.tensor(0.0))) if tie_up else m for m, tie_up in _MIDPOINTS
)


def e2m1_grid(device: torch.device | str = "cpu") -> torch.Tensor:
    """The 8 E2M1 magnitudes as float32."""
    return torch.tensor(E2M1_GRID, dtype=torch.float32, device=device)


def e2m1_round_magnitude(a: torch.Tensor) -> torch.Tensor:
    """Magnitude code (0..7, uint8) of |u| rounded to nearest, ties to even; saturates at 6.

    The code is the number of midpoints passed (`> m`, or `>= m` where the tie goes up).
    """
    a = a.float()
    code = (a > _STRICT_THRESHOLDS[0]).to(torch.uint8)
    for t in _STRICT_THRESHOLDS[1:]:
        code += a > t
    return code


def e2m1_encode(u: torch.Tensor) -> torch.Tensor:
    """E2M1 codes (uint8, 0..15) of float32 `u` by RTN, sign bit = signbit(u)."""
    return e2m1_round_magnitude(u.abs()) | (torch.signbit(u).to(torch.uint8) << 3)


def _decode_table(device: torch.device) -> torch.Tensor:
    grid = e2m1_grid(device)
    return torch.cat((grid, -grid))  # code 8 decodes to -0.0


def e2m1_decode(codes: torch.Tensor) -> torch.Tensor:
    """float32 values of E2M1 codes (uint8, 0..15)."""
    return torch.take(_decode_table(codes.device), codes.long())


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """Pack codes (..., C) two per byte, element 2j in the low nibble: (..., C/2) uint8."""
    if codes.shape[-1] % 2:
        raise ValueError(f"cannot pack an odd number of codes along the last dim: {codes.shape[-1]}")
    c = codes.to(torch.uint8)
    return c[..., 0::2] | (c[..., 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of `pack_nibbles`: (..., C/2) uint8 -> (..., C) uint8 codes."""
    lo = packed & 0xF
    hi = packed >> 4
    return torch.stack((lo, hi), dim=-1).flatten(-2)


def e4m3_rn(x: torch.Tensor) -> torch.Tensor:
    """Round non-negative float32 to E4M3 (RNE), saturating at 448."""
    return x.clamp(max=E4M3_MAX).to(torch.float8_e4m3fn)


def e4m3_neighbours(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(down, up): the E4M3 values bracketing non-negative float32 `v <= 448`.

    `down` is `v` rounded toward zero; `up` the next E4M3 value, or `down` itself when `v` is
    exactly representable or `down == 448`. Positive E4M3 codes are ordered like their values,
    so neighbours are adjacent codes.
    """
    code = e4m3_rn(v).view(torch.uint8).to(torch.int16)
    val = code.to(torch.uint8).view(torch.float8_e4m3fn).float()
    code = torch.where(val > v, code - 1, code)
    down = code.to(torch.uint8).view(torch.float8_e4m3fn).float()
    exact = (down == v) | (code >= 0x7E)
    up_code = torch.where(exact, code, code + 1)
    up = up_code.to(torch.uint8).view(torch.float8_e4m3fn).float()
    return down, up
