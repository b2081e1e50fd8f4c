"""quartet-te: Quartet II NVFP4 training for PyTorch, Transformer Engine and Megatron-Core.

Public surface:
- recipes: `Quartet2Recipe`, `NVFP4Recipe`, `get_recipe`
- plain PyTorch: `QuartetLinear`, `quartet_linear`, `convert`
- numerics: `quartet_te.ops` (kernels or reference), `quartet_te.reference` (the oracle),
  `NVFP4Tensor`
Transformer Engine support lives in `quartet_te.te` and Megatron in `quartet_te.integration`;
both import their framework lazily, so `import quartet_te` needs only torch.
"""
from . import _checkout

_checkout.install(__path__[0])  # a plain checkout: recipes/ and integration/ are our subpackages

from . import ops, reference
from .linear import QuartetLinear, convert, quartet_linear
from .recipes import NVFP4Recipe, Quartet2Recipe, get_recipe
from .rotation import RotationState
from .telemetry import Telemetry
from .tensor import NVFP4Tensor

__version__ = "0.1.0"


def autocast(enabled: bool = True, recipe=None, **te_kwargs):
    """Transformer Engine autocast with the Quartet II recipe by default (imports TE on call).

    See `quartet_te.te.autocast`; raises ImportError naming `transformer_engine` without TE.
    """
    from .te import autocast as _autocast

    return _autocast(enabled=enabled, recipe=recipe, **te_kwargs)


__all__ = [
    "autocast",
    "NVFP4Recipe",
    "NVFP4Tensor",
    "Quartet2Recipe",
    "QuartetLinear",
    "RotationState",
    "Telemetry",
    "convert",
    "get_recipe",
    "ops",
    "quartet_linear",
    "reference",
]
