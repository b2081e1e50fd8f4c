"""Per-layer randomness of the backward pass: fresh Hadamard signs and rounding streams per step.

Everything random is a pure function of (layer seed, step, operand), so runs are reproducible,
resume exactly from a checkpoint (the step travels in the state dict), and tensor-parallel ranks
that share an inner dimension draw the same signs as long as they derive the layer seed from the
layer's name rather than their rank (see `layer_seed`).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from .reference.rng import random_signs

# Philox stream offsets: step-based streams use `step * STREAMS_PER_STEP + operand`; the fixed
# streams (forward rotation, the baseline's RHT-16) live in the top half of the 64-bit range.
STREAMS_PER_STEP = 8
_FIXED = 1 << 63


class Operand:
    """Stream ids inside one backward step."""

    SIGNS = 0
    GRAD_ROWWISE = 1  # e along N (dgrad)
    WEIGHT_T = 2  # Ŵᵀ re-quantized along N (dgrad)
    GRAD_COLWISE = 3  # eᵀ along M (wgrad)
    INPUT_T = 4  # x̂ᵀ re-quantized along M (wgrad)


def layer_seed(base_seed: int, name: str) -> int:
    """A 64-bit seed for the layer called `name`: stable across processes and TP ranks."""
    digest = hashlib.blake2b(f"{int(base_seed)}/{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


@dataclass(frozen=True)
class BackwardDraw:
    """What one backward call uses: the shared signs and the Philox key/stream base."""

    signs: torch.Tensor
    seed: int
    step: int

    def offset(self, operand: int) -> int:
        return self.step * STREAMS_PER_STEP + operand


class RotationState:
    """Randomness state of one linear layer (no class-level state: layers never share it)."""

    def __init__(self, seed: int) -> None:
        if not 0 <= int(seed) < 2**64:
            raise ValueError(f"seed must fit in 64 unsigned bits, got {seed}")
        self.seed = int(seed)
        self.step = 0
        self._fixed: dict[tuple[int, str], torch.Tensor] = {}
        self.telemetry = None  # an optional per-layer probe set by `quartet_te.telemetry.Telemetry`

    def fixed_signs(self, n: int, device: torch.device | str) -> torch.Tensor:
        """Signs that never change (forward rotation: n=128; NVIDIA's wgrad RHT: n=16)."""
        key = (n, str(device))
        if key not in self._fixed:
            self._fixed[key] = random_signs(n, self.seed, _FIXED + n, device)
        return self._fixed[key]

    def next_backward(self, device: torch.device | str) -> BackwardDraw:
        """Fresh signs for this backward call; advances the step."""
        step = self.step
        if step * STREAMS_PER_STEP >= _FIXED:
            raise RuntimeError("rotation step counter exhausted")
        signs = random_signs(128, self.seed, step * STREAMS_PER_STEP + Operand.SIGNS, device)
        self.step += 1
        return BackwardDraw(signs=signs, seed=self.seed, step=step)

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed = int(state["seed"])
        self.step = int(state["step"])
        self._fixed.clear()

    def __repr__(self) -> str:
        return f"RotationState(seed={self.seed}, step={self.step})"
