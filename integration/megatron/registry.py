"""Make our recipes valid `fp4_recipe` values of megatron-core (0.16.1 to 0.20).

megatron-core reads the FP4 recipe in two places that we extend, without editing its files:

1. `TransformerConfig.fp4_recipe` is typed `Optional[Literal['nvfp4', 'custom']]`; Megatron-LM
   builds the `--fp4-recipe` choices from that type when it creates its parser. We widen the
   Literal (dataclass field and `__annotations__`) with our names.
2. `megatron.core.fp4_utils.get_fp4_recipe(config)` maps the name to a Transformer Engine recipe;
   `get_fp4_context` (used per layer, with `--first-last-layers-bf16` and the amax reduction
   group) calls it through the module global. We wrap it: our names give a `CustomRecipe`
   around our quantizer factory, everything else goes to Megatron's own function.

3. Megatron's local CUDA graphs (`cuda_graph_impl="local"`, `_CudaGraphRunner`) decide at record
   time whether a layer ran FP8 or FP4 by checking for TE's `NVFP4BlockScaling`; any other recipe
   (our `CustomRecipe`, and Megatron's own `custom`) counts as FP8, and the capture then enters
   `get_fp8_context`, which is a no-op without `fp8`: the graphed layers trained in BF16
   (docs/fastpath_h200.md). We wrap `get_quantization_context` so that a layer with `fp4` set
   and `fp8` unset captures under `get_fp4_context`, the context eager execution uses.

The TE recipe is `quartet_te.te.custom_recipe(recipe)`: one cached `CustomRecipe` per recipe
around our `QuantizerFactory`, so the per-layer, per-step `get_fp4_context` calls cost nothing
and TE keeps each module's quantizers (and their rotation state) across steps.

Usage::

    from quartet_te.integration.megatron import register
    register()                                   # idempotent
    cfg = TransformerConfig(..., fp4="e2m1", fp4_recipe="quartet2")
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import threading
import typing
import warnings
from typing import Any, Literal, Optional

from quartet_te.recipes import RECIPE_NAMES

__all__ = [
    "MEGATRON_RECIPES",
    "MIN_MEGATRON_CORE",
    "TESTED_MEGATRON_CORE",
    "check_fp4_config",
    "is_registered",
    "megatron_core_version",
    "quartet_recipe",
    "quantizer_seed",
    "register",
    "set_quantizer_seed",
    "te_recipe",
    "valid_fp4_recipes",
]

# Megatron `fp4_recipe` name -> quartet_te.recipes preset: the same names on every path.
# Megatron's own "nvfp4" means TE's NVFP4BlockScaling (Blackwell only); our reimplementation of
# it is "nvfp4-sr" here as everywhere.
MEGATRON_RECIPES: dict[str, str] = {name: name for name in RECIPE_NAMES}
MIN_MEGATRON_CORE = "0.16.1"
TESTED_MEGATRON_CORE = ("0.16.1", "0.19.2", "0.20.0")  # 0.20: Megatron-LM main, in-tree

_LOCK = threading.Lock()
_STATE: dict[str, Any] = {"registered": False, "original_get_fp4_recipe": None, "seed": None,
                          "graph_context_patched": False}


def set_quantizer_seed(seed: Optional[int]) -> None:
    """Set the base seed of our recipes' random streams for this process (None: the preset's, 0).

    Every layer derives its stream from this seed and its name (`quartet_te.rotation.layer_seed`),
    so runs that differ in `seed` draw independent rotations and stochastic roundings. Call it
    before the model is built: layers take their seed when they are created (a loaded checkpoint
    brings its own). Not applied to a user's `fp4_quantizer_factory`, which owns its recipe.
    """
    if seed is not None:
        from quartet_te.recipes.config import _check_seed

        _check_seed(seed, "set_quantizer_seed")
    _STATE["seed"] = seed


def quantizer_seed() -> Optional[int]:
    """The seed set by `set_quantizer_seed` (None: each preset's own)."""
    return _STATE["seed"]


def megatron_core_version() -> str:
    """The installed megatron-core version; ImportError naming the pip line if it is missing."""
    try:
        from megatron.core.package_info import __version__
    except ImportError as exc:
        raise ImportError(
            "quartet_te.integration.megatron needs megatron-core >= "
            f"{MIN_MEGATRON_CORE}: pip install 'megatron-core>={MIN_MEGATRON_CORE}' "
            "(pin torch in the same command so pip keeps your torch build)"
        ) from exc
    return __version__


def _check_version(version: str) -> None:
    from packaging.version import Version

    v = Version(version)
    if v < Version(MIN_MEGATRON_CORE):
        raise ImportError(
            f"megatron-core {version} is too old: fp4_quantizer_factory and the FP4 config fields "
            f"arrived in {MIN_MEGATRON_CORE}; upgrade with pip install 'megatron-core>={MIN_MEGATRON_CORE}'"
        )
    newest = max(Version(t) for t in TESTED_MEGATRON_CORE)
    if v.release[:2] > newest.release[:2]:
        warnings.warn(
            f"megatron-core {version} is newer than the versions quartet_te was tested with "
            f"({', '.join(TESTED_MEGATRON_CORE)}); registration checks its assumptions and "
            "raises if one no longer holds",
            stacklevel=3,
        )


def _recipe_name(value: Any) -> Optional[str]:
    """`config.fp4_recipe` as a plain string (it may be a str or a `Fp4Recipe` enum member)."""
    if value is None:
        return None
    return str(getattr(value, "value", value))


def _widen_literal(annotation: Any, names: tuple[str, ...]) -> Any:
    """`Optional[Literal[old..., new...]]` from `Optional[Literal[old...]]`."""
    args = typing.get_args(annotation)
    literal = next((a for a in args if typing.get_origin(a) is Literal), None)
    if literal is None and typing.get_origin(annotation) is Literal:
        literal = annotation
    if literal is None:
        raise RuntimeError(
            f"TransformerConfig.fp4_recipe has type {annotation!r}, not Optional[Literal[...]]; "
            "this megatron-core version changed how FP4 recipes are declared"
        )
    old = list(typing.get_args(literal))
    new = tuple(old + [n for n in names if n not in old])
    return Optional[Literal[new]]  # type: ignore[valid-type]


def _widen_config_field(names: tuple[str, ...]) -> None:
    from megatron.core.transformer.transformer_config import TransformerConfig

    fields = getattr(TransformerConfig, "__dataclass_fields__", {})
    if "fp4_recipe" not in fields:
        raise RuntimeError(
            "TransformerConfig has no fp4_recipe field; megatron-core >= "
            f"{MIN_MEGATRON_CORE} is required"
        )
    fld = fields["fp4_recipe"]
    fld.type = _widen_literal(fld.type, names)
    for cls in TransformerConfig.__mro__:
        ann = cls.__dict__.get("__annotations__", {})
        if "fp4_recipe" in ann:
            ann["fp4_recipe"] = _widen_literal(ann["fp4_recipe"], names)


def _literal_names(annotation: Any) -> tuple[str, ...]:
    """The strings of the `Literal` inside `Optional[Literal[...]]` (empty if there is none)."""
    if typing.get_origin(annotation) is Literal:
        return tuple(typing.get_args(annotation))
    for arg in typing.get_args(annotation):
        if typing.get_origin(arg) is Literal:
            return tuple(typing.get_args(arg))
    return ()


def valid_fp4_recipes() -> tuple[str, ...]:
    """Every `fp4_recipe` value `TransformerConfig` accepts now (Megatron's and, once
    registered, ours)."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    return _literal_names(TransformerConfig.__dataclass_fields__["fp4_recipe"].type)


def check_fp4_config(config: Any) -> None:
    """Fail at config time instead of training something else than asked (run by every
    `TransformerConfig.__post_init__` after `register()`):

    - an `fp4_recipe` that no one implements (a typo such as "quartet3") is a ValueError naming
      the valid names;
    - one of our recipe names without `fp4="e2m1"` warns: the model would train in high
      precision (Megatron reads `fp4_recipe` only when `fp4` is set);
    - one of our recipes with Megatron's CUDA graphs is a ValueError: the graphed layers would
      train in BF16.
    """
    name = _recipe_name(getattr(config, "fp4_recipe", None))
    if name is None:
        return
    valid = valid_fp4_recipes()
    if name not in valid:
        raise ValueError(
            f"fp4_recipe={name!r} is not a known FP4 recipe; expected one of {valid} "
            f"(quartet_te's: {tuple(MEGATRON_RECIPES)}; Megatron's: nvfp4, custom)"
        )
    impl = getattr(config, "cuda_graph_impl", "none")
    local = impl == "local" or (impl in (None, "none") and getattr(config, "enable_cuda_graph", False))
    graphs = impl not in (None, "none") or any(
        getattr(config, flag, False) for flag in ("enable_cuda_graph", "external_cuda_graph")
    )
    if name in MEGATRON_RECIPES and getattr(config, "fp4", None) and graphs:
        if not local or getattr(config, "external_cuda_graph", False):
            raise ValueError(
                f"fp4_recipe={name!r} with Megatron's CUDA graphs (cuda_graph_impl={impl!r}): only "
                "cuda_graph_impl='local' is supported with quartet_te's recipes (the "
                "transformer_engine / external capture paths are untested with them)"
            )
        if not _STATE["graph_context_patched"]:
            # Unpatched, the captured layers train like BF16 (H200, docs/fastpath_h200.md).
            raise ValueError(
                f"fp4_recipe={name!r} with Megatron's local CUDA graphs needs quartet_te's fix of "
                "their quantization context, which this megatron-core version does not allow "
                "(no _CudaGraphRunner.get_quantization_context); use cuda_graph_impl='none'"
            )
    if name in MEGATRON_RECIPES and not getattr(config, "fp4", None):
        warnings.warn(
            f"fp4_recipe={name!r} has no effect without fp4='e2m1' (--fp4-format e2m1): this model "
            "trains in high precision",
            UserWarning,
            stacklevel=4,
        )


def _wrap_post_init() -> None:
    """Make `TransformerConfig.__post_init__` (and its subclasses', which call it) run
    `check_fp4_config` first."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    original = TransformerConfig.__post_init__
    if getattr(original, "__quartet_te__", False):
        return

    @functools.wraps(original)
    def __post_init__(self) -> None:
        check_fp4_config(self)
        original(self)

    __post_init__.__quartet_te__ = True  # type: ignore[attr-defined]
    TransformerConfig.__post_init__ = __post_init__


def quartet_recipe(config: Any) -> Any:
    """The quartet_te recipe object selected by `config` (a TransformerConfig), or None.

    None when FP4 is off or `config.fp4_recipe` is not one of ours (e.g. Megatron's `nvfp4`).
    """
    if not getattr(config, "fp4", None):
        return None
    name = _recipe_name(getattr(config, "fp4_recipe", None))
    if name not in MEGATRON_RECIPES:
        return None
    return get_recipe_for(name)


@functools.lru_cache(maxsize=None)
def _custom_recipe_from_path(factory_path: str) -> Any:
    import transformer_engine.common.recipe as te_recipe_module

    module_path, _, attr = factory_path.rpartition(".")
    try:
        factory = getattr(importlib.import_module(module_path), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ImportError(f"fp4_quantizer_factory {factory_path!r} could not be imported: {exc}") from exc
    if not callable(factory):
        raise ValueError(f"fp4_quantizer_factory {factory_path!r} is not callable")
    return te_recipe_module.CustomRecipe(qfactory=factory)


def te_recipe(config: Any) -> Any:
    """The Transformer Engine recipe for one of our names (cached: the same object every call).

    `config.fp4_quantizer_factory`, when set, replaces our factory (a dotted path, as for
    Megatron's `custom`), e.g. to keep extra layers in high precision.
    """
    name = _recipe_name(config.fp4_recipe)
    if name not in MEGATRON_RECIPES:
        raise ValueError(f"fp4_recipe {name!r} is not a quartet_te recipe; ours: {sorted(MEGATRON_RECIPES)}")
    path = getattr(config, "fp4_quantizer_factory", None)
    if path:
        return _custom_recipe_from_path(path)
    from quartet_te.te import custom_recipe

    return custom_recipe(get_recipe_for(name))


def get_recipe_for(name: str) -> Any:
    """The quartet_te recipe object for a Megatron `fp4_recipe` name of ours (with the seed of
    `set_quantizer_seed`, when one is set)."""
    from quartet_te.recipes import get_recipe

    recipe = get_recipe(MEGATRON_RECIPES[name])
    seed = _STATE["seed"]
    return recipe if seed is None else dataclasses.replace(recipe, seed=seed)


def _have_te() -> bool:
    from megatron.core import fp4_utils

    return bool(getattr(fp4_utils, "HAVE_TE", False))


def _make_get_fp4_recipe(original):
    @functools.wraps(original)
    def get_fp4_recipe(config):
        """Megatron's get_fp4_recipe, extended by quartet_te with its recipe names."""
        if _recipe_name(getattr(config, "fp4_recipe", None)) in MEGATRON_RECIPES:
            if _have_te():
                return te_recipe(config)
            return quartet_recipe(config)  # no TE: the local layers run it (local_linear.py)
        return original(config)

    get_fp4_recipe.__quartet_te__ = True  # type: ignore[attr-defined]
    return get_fp4_recipe


def _make_graph_quantization_context(original):
    @functools.wraps(original)
    def get_quantization_context(self):
        """Megatron's CUDA-graph quantization context, fixed by quartet_te for FP4 recipes that
        are not TE's NVFP4BlockScaling: they record as "FP8", whose context is a no-op without
        `fp8`; capture them under `get_fp4_context`, as eager execution runs them."""
        config = self.base_module.config
        if getattr(self, "fp8_runtime_enabled", False) and getattr(config, "fp4", None) and not getattr(
            config, "fp8", None
        ):
            from megatron.core.fp4_utils import get_fp4_context

            return get_fp4_context(config, self.base_module.layer_number - 1)
        return original(self)

    get_quantization_context.__quartet_te__ = True  # type: ignore[attr-defined]
    return get_quantization_context


def _patch_graph_quantization_context() -> bool:
    """Install the fix above on `megatron.core.transformer.cuda_graphs._CudaGraphRunner`; False if
    this megatron-core has no such method (then `check_fp4_config` refuses local graphs)."""
    try:
        from megatron.core.transformer import cuda_graphs
    except ImportError:
        return False
    runner = getattr(cuda_graphs, "_CudaGraphRunner", None)
    original = getattr(runner, "get_quantization_context", None)
    if original is None:
        return False
    if not getattr(original, "__quartet_te__", False):
        runner.get_quantization_context = _make_graph_quantization_context(original)
    return True


def is_registered() -> bool:
    """True once `register()` has run in this process."""
    return bool(_STATE["registered"])


def register() -> None:
    """Register our recipe names with megatron-core (idempotent, thread-safe, version-checked).

    After it, `TransformerConfig(fp4="e2m1", fp4_recipe="quartet2")` validates, Megatron-LM
    parsers built afterwards accept `--fp4-recipe quartet2`, and `fp4_utils.get_fp4_recipe`
    (hence `get_fp4_context`, the TE layers' autocast) returns our recipe. Names: see
    `MEGATRON_RECIPES`. Raises ImportError if megatron-core is missing or older than 0.16.1.

    It also makes silent fallbacks to high precision loud: `TransformerConfig` rejects unknown
    `fp4_recipe` names (`check_fp4_config`), and a `TransformerLayer` whose local linears would
    ignore our recipe raises (`layers.check_layer_quantized`). Megatron's local CUDA graphs
    (`--cuda-graph-impl local`) capture FP4 layers under the FP4 recipe (see the module doc);
    the other graph implementations are refused with our recipes.
    """
    with _LOCK:
        if _STATE["registered"]:
            return
        _check_version(megatron_core_version())
        from megatron.core import fp4_utils

        if not hasattr(fp4_utils, "get_fp4_recipe") or not hasattr(fp4_utils, "get_fp4_context"):
            raise RuntimeError(
                "megatron.core.fp4_utils lacks get_fp4_recipe/get_fp4_context; this megatron-core "
                "version is not supported by quartet_te"
            )
        names = tuple(MEGATRON_RECIPES)
        _widen_config_field(names)
        _wrap_post_init()
        from .layers import install_layer_check

        install_layer_check()
        original = fp4_utils.get_fp4_recipe
        if not getattr(original, "__quartet_te__", False):
            _STATE["original_get_fp4_recipe"] = original
            fp4_utils.get_fp4_recipe = _make_get_fp4_recipe(original)
        _STATE["graph_context_patched"] = _patch_graph_quantization_context()
        _STATE["registered"] = True
