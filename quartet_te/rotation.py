"""Per-layer randomness of the backward pass: fresh Hadamard signs and rounding streams per step.

Everything random is a pure function of (layer seed, step, operand), so runs are reproducible,
resume exactly from a checkpoint (the step travels in the state dict), and tensor-parallel ranks
that share an inner dimension draw the same signs as long as they derive the layer seed from the
layer's name rather than their rank (see `layer_seed`).

On CUDA the step also lives on the device: a per-layer int64 counter that the kernels read and
the backward advances with device ops. The kernels draw the signs themselves from (seed, step),
so a backward call needs no host-to-device copy and no synchronisation, and a CUDA graph that
captured a layer's forward and backward draws fresh randomness on every replay, exactly the
draws eager execution would have made at the same steps.
"""
from __future__ import annotations

import hashlib
import operator
from dataclasses import dataclass, field

import torch

from .reference.rng import random_signs

# Philox stream offsets: step-based streams use `step * STREAMS_PER_STEP + operand`; the fixed
# streams (forward rotation, the baseline's RHT-16) live in the top half of the 64-bit range.
STREAMS_PER_STEP = 8
_FIXED = 1 << 63
ROTATION = 128  # size of the backward's random Hadamard rotation


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
class SignStream:
    """Rotation signs defined by Philox instead of stored: element i of the `n` signs is -1 where
    bit 31 of word i of the stream (seed, offset) is set (`reference.random_signs`). With a device
    step counter, `offset` is relative to `step * STREAMS_PER_STEP`."""

    n: int
    offset: int

    def materialize(self, seed: int, device: torch.device | str, step: int | None = None) -> torch.Tensor:
        """The ±1 float32 signs for an absolute `step` (None: `offset` is absolute)."""
        base = 0 if step is None else step * STREAMS_PER_STEP
        return random_signs(self.n, seed, base + self.offset, device)


_STEP_SIGNS = SignStream(ROTATION, Operand.SIGNS)  # every step's signs, relative to the step


@dataclass(frozen=True)
class BackwardDraw:
    """What one backward call uses: the Philox key and the step whose streams it reads.

    Attributes:
        seed: the layer's Philox key (signs and rounding).
        step: the step on the host (eager execution; under CUDA-graph replay the host value is
            the one of the capture, and only `step_tensor` is current).
        step_tensor: on CUDA, a device snapshot (int64, one element) of the layer's counter that
            the kernels read; None on the CPU.
    """

    seed: int
    step: int
    step_tensor: torch.Tensor | None = None
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def device(self) -> torch.device:
        return self.step_tensor.device if self.step_tensor is not None else torch.device("cpu")

    def offset(self, operand: int) -> int:
        """Absolute Philox offset of `operand`'s stream at this step (host value)."""
        return self.step * STREAMS_PER_STEP + operand

    @property
    def sign_stream(self) -> SignStream:
        """The step's 128 signs as a Philox stream (relative to the step)."""
        return _STEP_SIGNS

    @property
    def signs(self) -> torch.Tensor:
        """The step's 128 signs as a ±1 tensor on `device` (for the reference and telemetry; the
        kernels draw them themselves)."""
        if "signs" not in self._cache:
            self._cache["signs"] = self.sign_stream.materialize(self.seed, self.device, self.step)
        return self._cache["signs"]


def _checked_state(state: object) -> tuple[int, int]:
    """(seed, step) of a saved rotation state, or an error naming what is wrong with it."""
    if not isinstance(state, dict) or not {"seed", "step"} <= set(state):
        raise ValueError(f"a rotation state must be a dict with 'seed' and 'step' (ints), got {state!r}")
    out = []
    for key, upper in (("seed", 2**64), ("step", _FIXED // STREAMS_PER_STEP)):
        value = state[key]
        try:
            if isinstance(value, bool):
                raise TypeError
            value = operator.index(value)
        except TypeError:
            raise TypeError(f"rotation state {key!r} must be an int, got {type(value).__name__} {value!r}") from None
        if not 0 <= value < upper:
            raise ValueError(f"rotation state {key!r} must be in [0, {upper}), got {value}")
        out.append(value)
    return out[0], out[1]


class RotationState:
    """Randomness state of one linear layer (no class-level state: layers never share it)."""

    def __init__(self, seed: int) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
            raise ValueError(f"seed must be an int that fits in 64 unsigned bits, got {seed!r}")
        self.seed = int(seed)
        self.step = 0  # host count of backward calls (see BackwardDraw.step)
        self._counter: torch.Tensor | None = None  # device step counter, made on first CUDA use
        self._fixed: dict[tuple[int, str], torch.Tensor] = {}
        self.telemetry = None  # an optional per-layer probe set by `quartet_te.telemetry.Telemetry`

    def fixed_signs(self, n: int, device: torch.device | str) -> torch.Tensor:
        """Signs that never change (forward rotation: n=128; NVIDIA's wgrad RHT: n=16)."""
        key = (n, str(device))
        if key not in self._fixed:
            self._fixed[key] = random_signs(n, self.seed, _FIXED + n, device)
        return self._fixed[key]

    def counter(self, device: torch.device) -> torch.Tensor:
        """The device step counter (int64, one element), made from the host step on first use."""
        if self._counter is None or self._counter.device != device:
            self._counter = torch.full((1,), self.step, dtype=torch.int64, device=device)
        return self._counter

    def next_backward(self, device: torch.device | str) -> BackwardDraw:
        """This backward call's randomness; advances the step (on the device too, without a sync)."""
        step = self.step
        if (step + 1) * STREAMS_PER_STEP >= _FIXED:
            raise RuntimeError("rotation step counter exhausted")
        device = torch.device(device)
        snapshot = None
        if device.type == "cuda":
            counter = self.counter(device)  # made from the host step before it advances
            snapshot = counter.clone()
            counter.add_(1)
        self.step += 1
        return BackwardDraw(seed=self.seed, step=step, step_tensor=snapshot)

    def device_step(self) -> int:
        """The step as the device counter has it (synchronises; equals `step` in eager runs and
        runs ahead of it when CUDA-graph replays advanced the counter)."""
        return int(self._counter.item()) if self._counter is not None else self.step

    def state_dict(self) -> dict[str, int]:
        self.step = self.device_step()
        return {"seed": self.seed, "step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore `state_dict()` output; ValueError / TypeError for a malformed state (checked
        before anything changes, so a bad checkpoint fails at load, not at a later backward)."""
        self.seed, self.step = _checked_state(state)
        if self._counter is not None:  # in place: a captured CUDA graph keeps reading this tensor
            self._counter.fill_(self.step)
        self._fixed.clear()

    def __repr__(self) -> str:
        return f"RotationState(seed={self.seed}, step={self.step})"
