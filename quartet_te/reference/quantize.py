"""NVFP4 quantizers in plain PyTorch (float32 math): the oracle every kernel is tested against.

Modes (all along the last dim of a 2-D tensor, blocks of 16, E4M3 block scales, FP32 tensor
scale; see `docs/numerics.md` for the exact operations):
- ``rtn``: round to nearest (ties to even), block max mapped to 6.
- ``four_over_six``: RTN with the block max mapped to 6 or to 4, whichever has lower error.
- ``sr``: element-wise stochastic rounding (NVIDIA's gradient quantizer), max mapped to 6·16/17.
- ``ms_eden``: random Hadamard rotation, EDEN correction per 128-chunk, stochastic rounding of
  the corrected block scales (Quartet II's unbiased gradient quantizer).
"""
from __future__ import annotations

import numbers

import torch

from ..tensor import BF16Operand, NVFP4Tensor
from . import formats as F
from .hadamard import check_signs, hadamard_rotate
from .rng import seed_from_generator, uniform

MODES = ("rtn", "four_over_six", "sr", "ms_eden")
_RANDOM_MODES = ("sr", "ms_eden")
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def true_div(t: torch.Tensor, c: float) -> torch.Tensor:
    """`t / c` correctly rounded on every device (CUDA turns division by a Python scalar into a
    multiplication by its reciprocal, one ulp off for some inputs)."""
    return t / torch.tensor(c, dtype=torch.float32, device=t.device)


def tree_sum(t: torch.Tensor) -> torch.Tensor:
    """Pairwise sum of adjacent elements over the last dim (a power of two), in float32."""
    while t.shape[-1] > 1:
        t = t[..., 0::2] + t[..., 1::2]
    return t[..., 0]


def tensor_scale(amax: torch.Tensor, divisor: float) -> torch.Tensor:
    """`amax / divisor`; 1 for a zero (or underflowing) result; NaN for non-finite amax."""
    amax = amax.to(torch.float32).reshape(())
    s = true_div(amax, divisor)
    s = torch.where((amax == 0) | (s == 0), torch.ones_like(s), s)
    return torch.where(torch.isfinite(amax), s, torch.full_like(s, float("nan")))


def inverse_scale(s: torch.Tensor) -> torch.Tensor:
    """`1 / s` correctly rounded, capped at the float32 maximum (a subnormal `s` would give inf);
    NaN stays NaN. Quantizers multiply by it instead of dividing by `s` (docs/numerics.md)."""
    r = torch.ones_like(s, dtype=torch.float32) / s.float()
    return torch.where(r > F.FLOAT32_MAX, torch.full_like(r, F.FLOAT32_MAX), r)


def block_scales(xs: torch.Tensor, target: float) -> torch.Tensor:
    """E4M3 block scales (rows, cols/16) mapping each block's max |xs| to `target`; 0 → 1."""
    a_b = xs.abs().reshape(xs.shape[0], -1, F.BLOCK).amax(-1)
    s_b = F.e4m3_rn(true_div(a_b, target))
    one = torch.ones((), dtype=torch.float8_e4m3fn, device=xs.device)
    return torch.where(s_b.float() == 0, one, s_b)


def _scaled(xs: torch.Tensor, s_b: torch.Tensor) -> torch.Tensor:
    """u = xs · (1 / s_b), block scales broadcast over their 16 elements (an E4M3 scale is in
    [2^-9, 448]: its reciprocal is always a normal float32)."""
    r = xs.reshape(xs.shape[0], -1, F.BLOCK) * inverse_scale(s_b).unsqueeze(-1)
    return r.reshape(xs.shape)


def _pack(codes: torch.Tensor, s_b: torch.Tensor, s_t: torch.Tensor, mode: str, rotation: int) -> NVFP4Tensor:
    return NVFP4Tensor(F.pack_nibbles(codes), s_b, s_t, mode=mode, rotation=rotation)


def _rtn_candidate(xs: torch.Tensor, target: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes, block scales, per-block squared error) of RTN with block max → `target`."""
    s_b = block_scales(xs, target)
    codes = F.e2m1_encode(_scaled(xs, s_b))
    deq = F.e2m1_decode(codes).reshape(xs.shape[0], -1, F.BLOCK) * s_b.float().unsqueeze(-1)
    diff = xs.reshape(deq.shape) - deq
    return codes, s_b, tree_sum(diff * diff)


def _quantize_rtn(xs: torch.Tensor, four_over_six: bool) -> tuple[torch.Tensor, torch.Tensor]:
    codes, s_b, err = _rtn_candidate(xs, F.M6)
    if four_over_six:
        codes4, s_b4, err4 = _rtn_candidate(xs, F.M4)
        pick4 = err4 < err
        codes = torch.where(pick4.repeat_interleave(F.BLOCK, dim=1), codes4, codes)
        s_b = torch.where(pick4, s_b4, s_b)
    return codes, s_b


def _quantize_sr(xs: torch.Tensor, seed: int, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    s_b = block_scales(xs, F.M_SR)
    u = _scaled(xs, s_b)
    a = u.abs().clamp(max=F.E2M1_MAX)
    grid = F.e2m1_grid(xs.device)
    lo_idx = torch.zeros(a.shape, dtype=torch.int64, device=a.device)
    for g in F.E2M1_GRID[1:]:
        lo_idx += a >= g
    hi_idx = (lo_idx + 1).clamp(max=7)
    lo, hi = grid[lo_idx], grid[hi_idx]
    p = torch.where(hi == lo, torch.zeros_like(a), (a - lo) / (hi - lo))
    f = uniform(a.numel(), seed, offset, a.device).view(a.shape)
    mag = torch.where(f < p, hi_idx, lo_idx)
    codes = (mag | (torch.signbit(u).to(torch.int64) << 3)).to(torch.uint8)
    return codes, s_b


def _quantize_ms_eden(xs: torch.Tensor, seed: int, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = xs.shape[0]
    s_b = block_scales(xs, F.M_EDEN)
    u = _scaled(xs, s_b)
    codes = F.e2m1_encode(u)
    q = F.e2m1_decode(codes)
    chunks = lambda t: t.reshape(rows, -1, 128)  # noqa: E731
    num = tree_sum(chunks(u * u))
    den = tree_sum(chunks(u * q))
    c = torch.where(den == 0, torch.ones_like(num), num / torch.where(den == 0, torch.ones_like(den), den))
    v = (s_b.float() * c.repeat_interleave(128 // F.BLOCK, dim=1)).clamp(max=F.E4M3_MAX)
    down, up = F.e4m3_neighbours(v)
    p = torch.where(up == down, torch.zeros_like(v), (v - down) / (up - down))
    f = uniform(v.numel(), seed, offset, v.device).view(v.shape)
    scale = torch.where(f < p, up, down).to(torch.float8_e4m3fn)
    return codes, scale


def check_input(x: torch.Tensor, what: str = "x", transposed: bool = False) -> None:
    """Raise ValueError unless `x` is a 2-D float tensor whose last dim is a multiple of 16
    (with `transposed`: the checks of `x.T`, without making the view; `what` names `x.T`)."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        shape = tuple(x.shape)[::-1] if transposed else tuple(x.shape)
        raise ValueError(f"{what} must be 2-D (rows, cols), got shape {shape}")
    if x.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{what} must be float32, bfloat16 or float16, got {x.dtype}")
    qdim = x.shape[0] if transposed else x.shape[1]
    if qdim % F.BLOCK:
        raise ValueError(f"{what}: the quantized (last) dim {qdim} is not a multiple of {F.BLOCK}")


def check_seed(seed: object, what: str = "seed") -> int:
    """`seed` as an int, or TypeError / ValueError: it must be an integer (not a bool, which would
    silently mean 0 or 1, nor a float, which would be truncated) in [0, 2**64)."""
    # A plain int (the usual case) skips the numbers.Integral ABC check, the slow part.
    if type(seed) is not int and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise TypeError(f"{what} must be an int (the Philox key), got {type(seed).__name__} {seed!r}")
    if not 0 <= seed < 2**64:
        raise ValueError(f"{what} must be in [0, 2**64), got {seed}")
    return int(seed)


def as_amax(amax: object, x: torch.Tensor) -> torch.Tensor | None:
    """`amax` (None, a Python number or a one-element tensor) as a float32 0-d tensor on `x`'s
    device; TypeError / ValueError naming a value that is neither."""
    if amax is None:
        return None
    if isinstance(amax, torch.Tensor):
        if amax.numel() != 1:
            raise ValueError(f"amax must hold one value (max |x|), got a tensor of shape {tuple(amax.shape)}")
        return amax.to(device=x.device, dtype=torch.float32).reshape(())
    if isinstance(amax, bool) or not isinstance(amax, numbers.Real):
        raise TypeError(f"amax must be a number or a one-element tensor (max |x|), got {type(amax).__name__} {amax!r}")
    return torch.tensor(float(amax), dtype=torch.float32, device=x.device)


def resolve_seed(mode: str, seed: int | None, generator: torch.Generator | None) -> int:
    """The Philox key for a random mode: `seed` if given, else one drawn from `generator`."""
    if mode not in _RANDOM_MODES:
        return 0
    if seed is not None and generator is not None:
        raise ValueError("pass either seed or generator, not both")
    if seed is None and generator is None:
        raise ValueError(f"mode {mode!r} is random: pass seed=<int> or generator=<torch.Generator>")
    return check_seed(seed) if seed is not None else seed_from_generator(generator)


def quantize(
    x: torch.Tensor,
    mode: str,
    *,
    signs: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    offset: int = 0,
    amax: torch.Tensor | None = None,
    transpose: bool = False,
) -> NVFP4Tensor:
    """Quantize the 2-D tensor `x` (or `x.T` if `transpose`) along its last dim to NVFP4.

    Args:
        mode: one of ``rtn``, ``four_over_six``, ``sr``, ``ms_eden``.
        signs: ±1 vector of 16 or 128: rotate each chunk by diag(signs)·H/√n first (required,
            of length 128, for ``ms_eden``); the result decodes in the rotated basis.
        generator / seed, offset: randomness of ``sr`` and ``ms_eden`` (Philox key and stream).
        amax: precomputed max |x| (of the rotated tensor, if rotating), e.g. reduced across ranks.
        transpose: quantize `x.T` (the column-wise operand of a GEMM).
    """
    if mode not in MODES:
        raise ValueError(f"unknown quantization mode {mode!r}; expected one of {MODES}")
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        check_input(x)
    if transpose:
        x = x.t()
    check_input(x)
    if mode == "ms_eden" and (signs is None or signs.numel() != 128):
        raise ValueError("ms_eden needs signs: a ±1 tensor of 128 entries (fresh per backward call)")
    rotation = 0
    xf = x.float()
    if signs is not None:
        rotation = check_signs(signs)
        if signs.device != x.device:
            raise ValueError(f"signs are on {signs.device} but x is on {x.device}")
        xf = hadamard_rotate(xf, signs)
    if mode == "ms_eden" and xf.shape[1] % 128:
        raise ValueError(f"ms_eden: the quantized dim {xf.shape[1]} is not a multiple of 128")
    key = resolve_seed(mode, seed, generator)
    amax = as_amax(amax, x)
    if amax is None:
        amax = xf.abs().amax() if xf.numel() else torch.zeros((), device=x.device)
    divisor = {"rtn": F.D_RTN, "sr": F.D_RTN, "four_over_six": F.D_46, "ms_eden": F.D_EDEN}[mode]
    s_t = tensor_scale(amax, divisor)
    xs = xf * inverse_scale(s_t)
    if mode == "rtn" or mode == "four_over_six":
        codes, s_b = _quantize_rtn(xs, four_over_six=mode == "four_over_six")
    elif mode == "sr":
        codes, s_b = _quantize_sr(xs, key, offset)
    else:
        codes, s_b = _quantize_ms_eden(xs, key, offset)
    return _pack(codes, s_b, s_t, mode, rotation)


def quantize_2d(w: torch.Tensor) -> NVFP4Tensor:
    """RTN with one E4M3 scale per 16×16 tile (NVIDIA's weight quantizer).

    The tile scales are stored replicated per row, (rows, cols/16), so the storage and GEMMs are
    those of 1×16 blocks, and the transpose is exact (see `transpose_2d`): the weight needs no
    re-quantization for the dgrad GEMM.
    """
    check_input(w, "w")
    if w.shape[0] % F.BLOCK:
        raise ValueError(f"2-D block scaling: rows {w.shape[0]} is not a multiple of {F.BLOCK}")
    wf = w.float()
    s_t = tensor_scale(wf.abs().amax() if wf.numel() else torch.zeros((), device=w.device), F.D_RTN)
    xs = wf * inverse_scale(s_t)
    rows, cols = xs.shape
    tiles = xs.abs().reshape(rows // 16, 16, cols // 16, 16).amax(dim=(1, 3))
    s_tile = F.e4m3_rn(true_div(tiles, F.M6))
    s_tile = torch.where(s_tile.float() == 0, torch.ones_like(s_tile), s_tile)
    s_b = s_tile.repeat_interleave(16, dim=0)
    codes = F.e2m1_encode(_scaled(xs, s_b))
    return _pack(codes, s_b, s_t, "rtn_2d", 0)


def transpose_2d(t: NVFP4Tensor) -> NVFP4Tensor:
    """The exact transpose of a 16×16-block quantized matrix (no re-quantization)."""
    if t.mode != "rtn_2d":
        raise ValueError(f"transpose_2d needs a 16x16-block quantized tensor, got mode {t.mode!r}")
    codes = t.codes().t().contiguous()
    tiles = t.block_scales[::16]  # (rows/16, cols/16)
    s_b = tiles.t().contiguous().repeat_interleave(16, dim=0)
    return _pack(codes, s_b, t.tensor_scale, "rtn_2d", 0)


def dequantize(t: NVFP4Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """`(decode(code) · s_b) · s_t` in float32, cast to `dtype`."""
    if not isinstance(t, (NVFP4Tensor, BF16Operand)):
        raise TypeError(
            f"dequantize needs an NVFP4Tensor or BF16Operand (what quantize returns), got {type(t).__name__}"
        )
    return t.dequantize(dtype)


def requantize(
    t: NVFP4Tensor,
    *,
    signs: torch.Tensor,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    offset: int = 0,
) -> NVFP4Tensor:
    """Saved FP4 → dequantize → transpose → rotate → MS-EDEN (the backward's re-quantization).

    Used for `Ŵᵀ` (dgrad, along N) and `x̂ᵀ` (wgrad, along the tokens M): the backward
    re-quantizes what the forward actually used, never a high-precision copy. A forward rotation
    along the other dim is kept as is (the caller un-rotates the GEMM output).
    """
    return quantize(t.dequantize(), "ms_eden", signs=signs, generator=generator, seed=seed, offset=offset, transpose=True)
