"""Pure-PyTorch NVFP4 / Quartet II numerics: readable, slow, exact; the oracle for every kernel.

Implements `docs/numerics.md` operation by operation (float32 math, runs on CPU and GPU).
"""
from ..tensor import NVFP4Tensor
from .formats import (
    E2M1_GRID,
    e2m1_decode,
    e2m1_encode,
    e4m3_neighbours,
    e4m3_rn,
    pack_nibbles,
    unpack_nibbles,
)
from .gemm import gemm
from .hadamard import hadamard_matrix, hadamard_rotate, hadamard_unrotate
from .quantize import MODES, dequantize, quantize, quantize_2d, requantize, transpose_2d
from .rng import random_signs, random_u32, uniform

__all__ = [
    "E2M1_GRID",
    "MODES",
    "NVFP4Tensor",
    "dequantize",
    "e2m1_decode",
    "e2m1_encode",
    "e4m3_neighbours",
    "e4m3_rn",
    "gemm",
    "hadamard_matrix",
    "hadamard_rotate",
    "hadamard_unrotate",
    "pack_nibbles",
    "quantize",
    "quantize_2d",
    "random_signs",
    "random_u32",
    "requantize",
    "transpose_2d",
    "uniform",
    "unpack_nibbles",
]
