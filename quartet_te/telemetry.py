"""Opt-in quantization telemetry: where does FP4 hurt, per layer and per GEMM?

    from quartet_te.telemetry import Telemetry

    tel = Telemetry(every=100, csv_path="telemetry.csv")
    with tel.attach(model):            # QuartetLinear layers and/or TE modules under our recipe
        train(model)                   # every 100th backward step of each layer is measured

On a sampled step each quantized GEMM (fprop, dgrad, wgrad) of each layer records one row:

- ``err_a``, ``err_b``: relative quantization error ``‖q − t‖² / ‖t‖²`` of its two operands,
  where ``t`` is what the quantizer was asked to represent, in the basis it quantized in (rotated,
  zero-padded). Every rotation here is orthonormal, so the value equals the error measured after
  un-rotating. 0 for an operand used unquantized, NaN where the high-precision operand is not
  kept (the NVFP4 baseline's x̂ᵀ, built in the forward).
- ``err_out``, ``cos_out``: relative error and cosine similarity of the GEMM's FP32 result to the
  product of the *same* operands that the estimator targets: fprop ``x Wᵀ`` (high precision),
  dgrad ``e Ŵ`` and wgrad ``eᵀ x̂`` (the dequantized FP4 operands the forward saved), computed in
  FP32. Bias is excluded.

The step is the layer's own backward-call counter (`RotationState.step`; the layer keeps its own
count where the recipe draws no backward randomness), so sampling is deterministic and costs one
attribute check per GEMM when off and nothing at all when detached. GEMMs that a recipe runs in
high precision record nothing.
"""
from __future__ import annotations

import collections
import csv
import importlib.util
import logging
import math
import os
import weakref
from dataclasses import astuple, dataclass, fields
from typing import Any, Iterator

import torch
from torch import nn

from .reference.hadamard import hadamard_rotate
from .rotation import BackwardDraw, RotationState
from .tensor import BF16Operand, NVFP4Tensor

OPERANDS = {"fprop": ("x", "w"), "dgrad": ("e", "w_t"), "wgrad": ("e_t", "x_t")}

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Row:
    """One sampled GEMM of one layer (see the module docstring for the metrics)."""

    step: int
    layer: str
    gemm: str
    operand_a: str
    err_a: float
    operand_b: str
    err_b: float
    err_out: float
    cos_out: float


COLUMNS = tuple(f.name for f in fields(Row))


def target(t: torch.Tensor, signs: torch.Tensor | None = None, transpose: bool = False) -> torch.Tensor:
    """What `ops.quantize(t, signs=signs, transpose=transpose)` represents: FP32, in its basis."""
    t = t.float().t() if transpose else t.float()
    return hadamard_rotate(t, signs) if signs is not None else t


def rel_err(q: torch.Tensor | NVFP4Tensor | BF16Operand | None, ref: torch.Tensor | None) -> float:
    """‖q − ref‖² / ‖ref‖² in float64 (0 if `q` is None: used unquantized; NaN if `ref` is None)."""
    if q is None:
        return 0.0
    if ref is None:
        return math.nan
    q = q.dequantize() if isinstance(q, (NVFP4Tensor, BF16Operand)) else q
    if q.shape != ref.shape:
        raise ValueError(f"rel_err: quantized shape {tuple(q.shape)} != reference shape {tuple(ref.shape)}")
    num = torch.linalg.vector_norm((q.float() - ref.float()).flatten(), dtype=torch.float64) ** 2
    den = torch.linalg.vector_norm(ref.flatten(), dtype=torch.float64) ** 2
    num, den = float(num), float(den)
    return 0.0 if num == 0.0 else (num / den if den > 0.0 else math.inf)


def cosine(a: torch.Tensor | None, b: torch.Tensor | None) -> float:
    """Cosine similarity of two flattened tensors in float64 (NaN if either is None or zero)."""
    if a is None or b is None:
        return math.nan
    a64, b64 = a.flatten().double(), b.flatten().double()
    den = float(torch.linalg.vector_norm(a64) * torch.linalg.vector_norm(b64))
    return max(-1.0, min(1.0, float(a64 @ b64) / den)) if den > 0.0 else math.nan


def _dropped() -> None:
    return None


class LayerProbe:
    """The hook one layer (or one GEMM of a TE module) carries: decides which steps are sampled
    and turns operands into `Row`s for its `Telemetry`.

    Args:
        sink: the `Telemetry` receiving the rows.
        name: the layer label in the rows.
        rotation: the layer's backward `RotationState` (None: count backward calls here).
        draws: whether the recipe draws backward randomness (advances `rotation.step`).
    """

    def __init__(self, sink: "Telemetry", name: str, rotation: RotationState | None, draws: bool) -> None:
        self.sink = sink
        self.name = name
        self.rotation = rotation if draws else None
        self._next = rotation.step if rotation is not None else 0  # the next backward step
        self._last_call: Any = None
        self._fprop_step: int | None = None  # the step whose fprop was recorded last

    def forward_step(self) -> int | None:
        """The step this forward feeds (the layer's next backward step) if sampled and not yet
        recorded, else None: one fprop row per step, so evaluation forwards and activation
        recomputation add no duplicates."""
        step = self.rotation.step if self.rotation is not None else self._next
        return step if self.sink.due(step) and step != self._fprop_step else None

    def backward_step(self, draw: BackwardDraw | None, call: Any = None) -> int | None:
        """This backward call's step if sampled, else None. `draw` gives the step; without one,
        calls are counted here (`call`: an object identifying one backward call, whose GEMMs
        share a step; None: every call is new)."""
        if draw is not None:
            step = draw.step
        elif call is not None and self._last_call is not None and self._last_call() is call:
            step = self._next - 1
        else:
            step = self._next
            self._last_call = weakref.ref(call) if call is not None else None
        self._next = max(self._next, step + 1)
        return step if self.sink.due(step) else None

    def record(
        self,
        step: int,
        gemm: str,
        a: tuple[Any, torch.Tensor | None],
        b: tuple[Any, torch.Tensor | None],
        out: torch.Tensor,
        ref: torch.Tensor | None,
    ) -> None:
        """Measure one GEMM: `a`, `b` are (quantized or None, target) pairs, `out` its FP32
        result and `ref` the high-precision product it estimates."""
        names = OPERANDS[gemm]
        if gemm == "fprop":
            self._fprop_step = int(step)
        with torch.no_grad():
            row = Row(
                step=int(step), layer=self.name, gemm=gemm,
                operand_a=names[0], err_a=rel_err(*a), operand_b=names[1], err_b=rel_err(*b),
                err_out=rel_err(out, ref), cos_out=cosine(out, ref),
            )
        self.sink.add(row)

    def __reduce__(self):  # a copied or pickled model carries no telemetry
        return (_dropped, ())

    def __repr__(self) -> str:
        return f"LayerProbe({self.name!r}, every={self.sink.every})"


class Telemetry:
    """Samples quantization error per layer and GEMM every `every` steps (see module docstring).

    Args:
        every: sample backward steps 0, every, 2·every, ... of each layer (>= 1).
        csv_path: append rows here (header written to a new or empty file).
        tensorboard_dir: also log scalars ``quant/<gemm>/<metric>/<layer>`` there (needs the
            ``tensorboard`` package).
        console: log one summary line per sampled step (the worst layer per GEMM) at INFO on
            the ``quartet_te.telemetry`` logger; shown once the application configures logging,
            e.g. ``logging.basicConfig(level=logging.INFO)``.
        max_rows: how many recent rows `rows` keeps in memory.
    """

    def __init__(
        self,
        every: int = 100,
        csv_path: str | os.PathLike | None = None,
        tensorboard_dir: str | os.PathLike | None = None,
        console: bool = True,
        max_rows: int = 100_000,
    ) -> None:
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an int >= 1, got {every!r}")
        if max_rows < 0:
            raise ValueError(f"max_rows must be >= 0, got {max_rows}")
        self.every = every
        self.console = console
        self.rows: collections.deque[Row] = collections.deque(maxlen=max_rows)
        self._pending: list[Row] = []
        self._attached: list[tuple[Any, str]] = []  # (object carrying a probe, attribute)
        self._csv = self._open_csv(csv_path) if csv_path is not None else None
        self._writer = csv.writer(self._csv) if self._csv is not None else None
        self._tb = self._open_tensorboard(tensorboard_dir) if tensorboard_dir is not None else None

    @staticmethod
    def _open_csv(path: str | os.PathLike):
        header = ",".join(COLUMNS)
        if os.path.exists(path) and os.path.getsize(path) > 0:
            with open(path, newline="") as f:
                first = f.readline().strip()
            if first != header:
                raise ValueError(f"{path} exists with header {first!r}, expected {header!r}")
            return open(path, "a", newline="")
        f = open(path, "w", newline="")
        f.write(header + "\n")
        f.flush()
        return f

    @staticmethod
    def _open_tensorboard(logdir: str | os.PathLike):
        if importlib.util.find_spec("tensorboard") is None:
            raise ImportError("Telemetry(tensorboard_dir=...) needs the tensorboard package: pip install tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(log_dir=str(logdir))

    def due(self, step: int) -> bool:
        """Whether backward step `step` of a layer is sampled."""
        return step % self.every == 0

    # -- attaching -------------------------------------------------------------------------

    def attach(self, model: nn.Module) -> "Telemetry":
        """Hook every `QuartetLinear` of `model` and every TE module running under our recipe.

        TE modules build their quantizers at their first forward under the recipe: run one
        (e.g. under `torch.no_grad()`) before attaching. Returns self (a context manager whose
        exit detaches). Raises ValueError if nothing in `model` can be hooked.
        """
        from .linear import QuartetLinear

        found = 0
        for name, module in model.named_modules():
            if isinstance(module, QuartetLinear):
                hp = module.recipe.high_precision_gemms
                if {"fprop", "dgrad", "wgrad"} <= set(hp):
                    continue
                probe = LayerProbe(self, name or type(module).__name__, module.rotation, _draws(module.recipe))
                self._hook(module.rotation, "telemetry", probe)
                found += 1
            elif isinstance(getattr(module, "quantizers", None), dict):
                found += self._attach_te(name, module)
        if not found:
            raise ValueError(
                f"no layer of {type(model).__name__} to hook: expected quartet_te.QuartetLinear layers or TE "
                "modules that already ran one forward under quartet_te's TE recipe"
            )
        return self

    def _hook(self, obj: Any, attr: str, probe: LayerProbe) -> None:
        if getattr(obj, attr, None) is not None:
            raise ValueError(f"{probe.name}: already has telemetry attached ({getattr(obj, attr)!r}); detach it first")
        setattr(obj, attr, probe)
        self._attached.append((obj, attr))

    def _attach_te(self, name: str, module: nn.Module) -> int:
        """Probe each GEMM of one TE module; returns how many were hooked."""
        from .te import is_available

        if not is_available():  # a `quantizers` dict, but no TE: not a TE module of ours
            return 0
        from .te.quantizer import QuartetQuantizer
        from .te.roles import SlotKind

        fwd = [q for q in module.quantizers.get("scaling_fwd") or () if isinstance(q, QuartetQuantizer)]
        bwd = [q for q in module.quantizers.get("scaling_bwd") or () if isinstance(q, QuartetQuantizer)]
        # The forward quantizers of one GEMM share the seed derived from its TE name; so does
        # the first grad-output quantizer of that name, whose step the GEMM's forward follows.
        groups: dict[int, list[Any]] = {}
        for q in fwd:
            if q.kind in (SlotKind.INPUT, SlotKind.WEIGHT):
                groups.setdefault(q.rotation.seed, []).append(q)
        grads = {q.rotation.seed: q.rotation for q in bwd if q.kind is SlotKind.GRAD_OUTPUT}
        suffixes = _te_gemm_suffixes(module, len(groups))
        base = name or type(module).__name__
        hooked = 0
        for (seed, qs), suffix in zip(groups.items(), suffixes):
            recipe = qs[0].recipe
            if {"fprop", "dgrad", "wgrad"} <= set(recipe.high_precision_gemms):
                continue
            probe = LayerProbe(self, base + suffix, grads.get(seed), _draws(recipe))
            for q in qs:
                self._hook(q, "telemetry", probe)
            hooked += 1
        return hooked

    def detach(self) -> None:
        """Remove every hook this object attached and flush the pending summary."""
        for obj, attr in self._attached:
            setattr(obj, attr, None)
        self._attached.clear()
        self.flush()

    def __enter__(self) -> "Telemetry":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.detach()

    # -- rows ------------------------------------------------------------------------------

    def add(self, row: Row) -> None:
        """Take one row: CSV and TensorBoard now, the console summary when its step is done."""
        if self._pending and self._pending[-1].step != row.step:
            self._summarize()
        self._pending.append(row)
        self.rows.append(row)
        if self._writer is not None:
            self._writer.writerow(astuple(row))
        if self._tb is not None:
            for metric in ("err_a", "err_b", "err_out", "cos_out"):
                value = getattr(row, metric)
                if not math.isnan(value):
                    self._tb.add_scalar(f"quant/{row.gemm}/{metric}/{row.layer}", value, row.step)

    def _summarize(self) -> None:
        rows, self._pending = self._pending, []
        if self._csv is not None:
            self._csv.flush()
        if self._tb is not None:
            self._tb.flush()
        if self.console and rows:
            logger.info("%s", summary_line(rows))

    def flush(self) -> None:
        """Finish the current sample: log its summary, flush the CSV and TensorBoard."""
        self._summarize()

    def close(self) -> None:
        """Detach, flush and close the files."""
        self.detach()
        if self._csv is not None:
            self._csv.close()
            self._csv = self._writer = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def summary_line(rows: list[Row]) -> str:
    """One line per sample: the layer with the largest output error for each GEMM."""
    parts = [f"[quartet_te telemetry] step {rows[0].step} ({len(rows)} GEMMs)"]
    for gemm in OPERANDS:
        mine = [r for r in rows if r.gemm == gemm and not math.isnan(r.err_out)]
        if mine:
            w = max(mine, key=lambda r: r.err_out)
            parts.append(f"{gemm} worst {w.layer}: err {w.err_out:.3e} cos {w.cos_out:.5f}")
    return " | ".join(parts)


def read_csv(path: str | os.PathLike) -> Iterator[Row]:
    """The rows of a telemetry CSV, typed."""
    with open(path, newline="") as f:
        for rec in csv.DictReader(f):
            yield Row(
                step=int(rec["step"]), layer=rec["layer"], gemm=rec["gemm"],
                operand_a=rec["operand_a"], err_a=float(rec["err_a"]), operand_b=rec["operand_b"],
                err_b=float(rec["err_b"]), err_out=float(rec["err_out"]), cos_out=float(rec["cos_out"]),
            )


def _draws(recipe: Any) -> bool:
    """Whether `recipe` draws backward randomness (advancing `RotationState.step`)."""
    return getattr(recipe, "backward_quant", True)


def _te_gemm_suffixes(module: nn.Module, n: int) -> list[str]:
    if n <= 1:
        return [""] * n
    if type(module).__name__ == "LayerNormMLP" and n == 2:
        return [".fc1", ".fc2"]
    return [f".gemm{i}" for i in range(n)]
