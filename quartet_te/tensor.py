"""NVFP4 storage shared by the reference, the CUDA kernels and the TE adapter.

A plain dataclass (TE's "storage" role: no `torch.Tensor` subclassing): packed E2M1 codes,
E4M3 block scales per 16 elements, one FP32 tensor scale. A matrix is always quantized along its
last dimension; the column-wise operand of a GEMM is the quantization of the transpose.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .reference.formats import BLOCK, e2m1_decode, unpack_nibbles


@dataclass
class NVFP4Tensor:
    """One NVFP4-quantized matrix of logical shape `shape = (rows, cols)`.

    Attributes:
        data: uint8 (rows, cols/2), two E2M1 codes per byte, first element in the low nibble.
        block_scales: float8_e4m3fn (rows, cols/16).
        tensor_scale: float32 0-d tensor (NaN marks non-finite input).
        mode: the quantizer that produced it ("rtn", "four_over_six", "sr", "ms_eden", "rtn_2d").
        rotation: size of the Hadamard rotation applied along cols before quantizing (0: none);
            decoded values are in that rotated basis.
        operand: optionally, the same quantization as a `BF16Operand` (what the Hopper GEMM
            consumes), written by the same kernel; transient, not part of what is saved.
    """

    data: torch.Tensor
    block_scales: torch.Tensor
    tensor_scale: torch.Tensor
    mode: str = "rtn"
    rotation: int = 0
    shape: tuple[int, int] = field(default=(0, 0))
    operand: "BF16Operand | None" = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        for what, t, dtype, layout in (("data", self.data, torch.uint8, "(rows, cols/2), two E2M1 codes per byte"),
                                       ("block_scales", self.block_scales, torch.float8_e4m3fn, "(rows, cols/16)")):
            if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.dtype != dtype:
                got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"NVFP4Tensor {what} must be a 2-D {dtype} tensor {layout}, got {got}")
        rows, half = self.data.shape
        self.shape = (int(rows), int(half) * 2)
        if self.block_scales.shape != (rows, self.shape[1] // BLOCK):
            raise ValueError(
                f"block_scales shape {tuple(self.block_scales.shape)} does not match data "
                f"{tuple(self.data.shape)} (expected {(rows, self.shape[1] // BLOCK)})"
            )

    @classmethod
    def trusted(cls, data: torch.Tensor, block_scales: torch.Tensor, tensor_scale: torch.Tensor, mode: str,
                rotation: int, operand: "BF16Operand | None" = None) -> "NVFP4Tensor":  # fmt: skip
        """The same object as the constructor makes, without its checks: for the CUDA extension's
        outputs, whose dtypes and shapes it fixed itself (a few µs per quantization saved)."""
        t = cls.__new__(cls)
        t.__dict__.update(data=data, block_scales=block_scales, tensor_scale=tensor_scale, mode=mode,
                          rotation=rotation, shape=(data.shape[0], data.shape[1] * 2), operand=operand)  # fmt: skip
        return t

    @property
    def device(self) -> torch.device:
        return self.data.device

    def codes(self) -> torch.Tensor:
        """Unpacked E2M1 codes, uint8 (rows, cols)."""
        return unpack_nibbles(self.data)

    def dequantize_unscaled(self) -> torch.Tensor:
        """float32 `decode(code) · s_b` (exact in BF16), without the tensor scale."""
        vals = e2m1_decode(self.codes()).view(self.shape[0], -1, BLOCK)
        return (vals * self.block_scales.float().unsqueeze(-1)).view(self.shape)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Decoded values `decode(code) · s_b · s_t` (in the rotated basis if rotated)."""
        return (self.dequantize_unscaled() * self.tensor_scale.float()).to(dtype)

    def nbytes(self) -> int:
        """Bytes held (data + scales + tensor scale): what saving this for backward costs."""
        return self.data.numel() + self.block_scales.numel() + 4

    def pad_rows(self, rows: int) -> "NVFP4Tensor":
        """Zero rows appended up to `rows` (zero codes decode to 0 whatever the scale)."""
        extra = rows - self.shape[0]
        if extra < 0:
            raise ValueError(f"cannot pad {self.shape[0]} rows down to {rows}")
        if extra == 0:
            return self
        pad = lambda t, value: torch.cat((t, t.new_full((extra, t.shape[1]), value)), 0)  # noqa: E731
        scales = pad(self.block_scales.view(torch.uint8), 0x38).view(torch.float8_e4m3fn)  # 1.0
        return NVFP4Tensor(pad(self.data, 0), scales, self.tensor_scale, self.mode, self.rotation)


@dataclass
class BF16Operand:
    """A quantized matrix as the Hopper GEMM consumes it: `decode(code) · s_b` in BF16 (exact:
    at most 6 significant bits) plus the FP32 tensor scale, of logical shape `values.shape`.

    The quantize kernels write it directly (no separate dequantize pass); it decodes to the same
    values as the `NVFP4Tensor` of the same quantization, but holds 2 bytes per element, so the
    backward's operands use it only transiently, between their quantizer and their GEMM.
    """

    values: torch.Tensor
    tensor_scale: torch.Tensor
    mode: str = "rtn"
    rotation: int = 0

    def __post_init__(self) -> None:
        if self.values.dim() != 2 or self.values.dtype != torch.bfloat16:
            raise ValueError(
                f"BF16Operand values must be a 2-D bfloat16 tensor, got {self.values.dtype} {tuple(self.values.shape)}"
            )

    @classmethod
    def trusted(cls, values: torch.Tensor, tensor_scale: torch.Tensor, mode: str, rotation: int) -> "BF16Operand":
        """The constructor's object without its checks (the CUDA extension's outputs)."""
        t = cls.__new__(cls)
        t.__dict__.update(values=values, tensor_scale=tensor_scale, mode=mode, rotation=rotation)
        return t

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.values.shape[0]), int(self.values.shape[1]))

    @property
    def device(self) -> torch.device:
        return self.values.device

    def dequantize_unscaled(self) -> torch.Tensor:
        """float32 `decode(code) · s_b`."""
        return self.values.float()

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Decoded values `decode(code) · s_b · s_t` (in the rotated basis if rotated)."""
        return (self.values.float() * self.tensor_scale.float()).to(dtype)

    def nbytes(self) -> int:
        return self.values.numel() * 2 + 4

    def pad_rows(self, rows: int) -> "BF16Operand":
        """Zero rows appended up to `rows`."""
        extra = rows - self.shape[0]
        if extra < 0:
            raise ValueError(f"cannot pad {self.shape[0]} rows down to {rows}")
        if extra == 0:
            return self
        values = torch.cat((self.values, self.values.new_zeros(extra, self.shape[1])), 0)
        return BF16Operand(values, self.tensor_scale, self.mode, self.rotation)
