"""Which quantizer a TE tensor slot gets: a pure function of the recipe and the slot's role.

Transformer Engine asks a `CustomRecipe` factory for one quantizer per tensor slot of every
module, describing the slot with a `QuantizerRole(module_type, tensor_type, name)` (or `None`
for boundary slots whose consumer is unknown). This module decides, without importing TE,
what each slot becomes, so the decision is testable on any machine:

- the input, weight and grad-output slots of `linear` / `grouped_linear` modules are quantized
  by the recipe (`INPUT`, `WEIGHT`, `GRAD_OUTPUT`);
- every other slot (GEMM outputs, grad-inputs, attention's `dpa` slots, `None` roles) and every
  slot of a module named in `skip` stays in high precision (`PASSTHROUGH`: TE's
  `IdentityQuantizer`), which TE then runs through its ordinary BF16 path.

A GEMM runs through our `qgemm` only when both operands come from our quantizers, so a module
is either wholly ours or wholly high precision: `skip` works on module names, never on single
tensors.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Iterable

GEMM_MODULE_TYPES = ("linear", "grouped_linear")


class SlotKind(enum.Enum):
    """What a factory returns for one TE tensor slot."""

    INPUT = "input"
    WEIGHT = "weight"
    GRAD_OUTPUT = "grad_output"
    PASSTHROUGH = "passthrough"


@dataclass(frozen=True)
class RoleFields:
    """The three fields of TE's `QuantizerRole`, as plain strings ('' when unknown)."""

    module_type: str = ""
    tensor_type: str = ""
    name: str = ""

    @classmethod
    def of(cls, role: Any) -> "RoleFields":
        """Read a TE `QuantizerRole` (or anything with the same attributes, or None)."""
        if role is None:
            return cls()
        fields = []
        for attr in ("module_type", "tensor_type", "name"):
            value = getattr(role, attr, "")
            if value is None:
                value = ""
            if not isinstance(value, str):
                raise TypeError(f"QuantizerRole.{attr} must be a str, got {type(value).__name__}: {value!r}")
            fields.append(value)
        return cls(*fields)


def check_skip(skip: Iterable[str]) -> tuple[str, ...]:
    """Validate the module names kept in high precision; returns them as a tuple."""
    if isinstance(skip, str):
        raise TypeError(f"skip must be an iterable of module names, not a single str: use skip=({skip!r},)")
    out = tuple(skip)
    for name in out:
        if not isinstance(name, str) or not name:
            raise ValueError(f"skip entries must be non-empty module names, got {name!r}")
    return out


def is_skipped(name: str, skip: tuple[str, ...]) -> bool:
    """True if module `name` (TE's `name=`, e.g. "decoder.layers.3.mlp.fc2") is kept in high
    precision: equal to an entry, ending in "." + entry, or an LayerNormMLP sub-GEMM
    ("<entry>.fc1" / "<entry>.fc2") of a skipped module."""
    if not name:
        return False
    for entry in skip:
        for candidate in (name, name.rsplit(".", 1)[0] if name.endswith((".fc1", ".fc2")) else None):
            if candidate and (candidate == entry or candidate.endswith("." + entry)):
                return True
    return False


def slot_kind(role: Any, skip: tuple[str, ...] = ()) -> SlotKind:
    """The quantizer kind for one TE slot (see the module docstring)."""
    fields = RoleFields.of(role)
    if fields.module_type not in GEMM_MODULE_TYPES:
        return SlotKind.PASSTHROUGH
    if is_skipped(fields.name, skip):
        return SlotKind.PASSTHROUGH
    try:
        return SlotKind(fields.tensor_type)
    except ValueError:
        return SlotKind.PASSTHROUGH


def rotation_key(name: str, ordinal: int) -> str:
    """The name a layer's randomness is derived from (`quartet_te.rotation.layer_seed`).

    The first grad-output slot called `name` uses `name` itself, so `te.Linear(name="x")` draws
    exactly what `quartet_te.QuartetLinear(name="x")` draws; later slots with the same name
    (unnamed modules, or TE's duplicate labels) get "#<ordinal>" appended.
    """
    if ordinal < 0:
        raise ValueError(f"ordinal must be >= 0, got {ordinal}")
    return name if ordinal == 0 else f"{name}#{ordinal}"
