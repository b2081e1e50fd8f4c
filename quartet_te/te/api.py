"""User entry points for Transformer Engine: `autocast`, `custom_recipe`, rotation checkpoints.

Every function imports TE on call (never at import), raising an ImportError that names
`transformer_engine` when it is missing.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
from typing import Any, Iterable, Iterator, Optional

from ..recipes import Recipe, get_recipe

MIN_TE = (2, 9)
_INSTALL_HINT = "pip install 'transformer-engine[pytorch]>=2.9' (or use the NVIDIA PyTorch container)"


def _version_tuple(version: str) -> tuple[int, int]:
    parts = []
    for piece in version.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts + [0] * (2 - len(parts)))  # type: ignore[return-value]


@functools.lru_cache(maxsize=1)
def _probe() -> tuple[Optional[Any], str]:
    try:
        te = importlib.import_module("transformer_engine.pytorch")
    except ImportError as exc:
        return None, f"quartet_te.te needs transformer_engine, which failed to import ({exc}); {_INSTALL_HINT}"
    version = getattr(importlib.import_module("transformer_engine"), "__version__", "0.0")
    if _version_tuple(version) < MIN_TE:
        need = f"{MIN_TE[0]}.{MIN_TE[1]}"
        return None, f"quartet_te.te needs transformer_engine >= {need} (CustomRecipe), found {version}"
    return te, ""


def is_available(return_reason: bool = False):
    """Whether Transformer Engine (>= 2.9, with `CustomRecipe`) can be used; optionally why not."""
    te, reason = _probe()
    return (te is not None, reason) if return_reason else te is not None


def require_te() -> Any:
    """`transformer_engine.pytorch`, or an ImportError naming the missing package."""
    te, reason = _probe()
    if te is None:
        raise ImportError(reason)
    return te


@functools.lru_cache(maxsize=None)
def _cached_recipe(recipe: Recipe, skip: tuple[str, ...]) -> Any:
    from transformer_engine.common.recipe import CustomRecipe

    from ..recipes.factories import QuantizerFactory

    return CustomRecipe(qfactory=QuantizerFactory(recipe, skip=skip))


def custom_recipe(recipe: "str | Recipe | None" = None, *, skip: Iterable[str] = ()) -> Any:
    """A TE `CustomRecipe` running `recipe` (default Quartet II) through our factory.

    One object per (recipe, skip) per process, so repeated calls (one per step) never make TE
    rebuild a module's quantizers. A TE recipe object is returned unchanged.
    """
    require_te()
    from transformer_engine.common.recipe import Recipe as TERecipe

    from .roles import check_skip

    if isinstance(recipe, TERecipe):
        if tuple(skip):
            raise ValueError("skip= applies to quartet_te recipes, not to a TE recipe object")
        return recipe
    return _cached_recipe(get_recipe("quartet2" if recipe is None else recipe), check_skip(skip))


@contextlib.contextmanager
def autocast(
    enabled: bool = True, recipe: "str | Recipe | Any | None" = None, *, skip: Iterable[str] = (), **te_kwargs: Any
) -> Iterator[None]:
    """`te.autocast` with the Quartet II recipe by default (an `fp8_autocast`-style context).

    Args:
        enabled: run TE modules under the recipe (False: TE's high precision).
        recipe: `Quartet2Recipe` / `NVFP4Recipe` / preset name ("quartet2", "quartet2-rot",
            "quartet2-no46", "nvfp4-sr") / any TE recipe object; None means Quartet II defaults.
        skip: module names (TE `name=`) kept in high precision, e.g. ("lm_head",).
        te_kwargs: passed to `te.autocast` (e.g. `amax_reduction_group`).
    """
    te = require_te()
    te_recipe = custom_recipe(recipe, skip=skip)
    if hasattr(te, "autocast"):
        ctx = te.autocast(enabled=enabled, recipe=te_recipe, **te_kwargs)
    else:  # TE < 2.10 spells it fp8_autocast(fp8_recipe=...)
        ctx = te.fp8_autocast(enabled=enabled, fp8_recipe=te_recipe, **te_kwargs)
    with ctx:
        yield


def _grad_quantizers(model: Any) -> Iterator[tuple[str, Any]]:
    from .quantizer import QuartetGradQuantizer

    for module_name, module in model.named_modules():
        quantizers = getattr(module, "quantizers", None)
        if not isinstance(quantizers, dict):
            continue
        for slot, q in enumerate(quantizers.get("scaling_bwd") or ()):
            if isinstance(q, QuartetGradQuantizer):
                yield f"{module_name}/{slot}", q


def rotation_state_dict(model: Any) -> dict[str, dict[str, int]]:
    """The backward randomness of every TE module of `model` ({"<module>/<slot>": {seed, step}}).

    Save it next to `model.state_dict()` to resume the exact rotation stream; TE's own extra
    state does not carry it. Empty until the modules have run one forward under the recipe.
    """
    require_te()
    return {key: q.rotation.state_dict() for key, q in _grad_quantizers(model)}


def load_rotation_state_dict(model: Any, state: dict[str, dict[str, int]], strict: bool = True) -> None:
    """Restore `rotation_state_dict` output. The modules' quantizers must exist (run one forward
    under the recipe first, e.g. under `torch.no_grad()`); with `strict`, keys must match.

    All or nothing: every entry is checked (ValueError / TypeError naming the key) before any
    is loaded."""
    require_te()
    from ..rotation import RotationState

    found = dict(_grad_quantizers(model))
    missing, unexpected = sorted(set(found) - set(state)), sorted(set(state) - set(found))
    if strict and (missing or unexpected):
        raise KeyError(
            f"rotation state mismatch: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''} "
            "(run one forward under the recipe before loading)"
        )
    for key in found:
        if key in state:
            try:
                RotationState(0).load_state_dict(state[key])  # a scratch state: validation only
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"rotation state {key!r}: {exc}") from exc
    for key, q in found.items():
        if key in state:
            q.rotation.load_state_dict(state[key])
