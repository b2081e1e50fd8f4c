"""Run an unmodified Megatron-LM training script with our recipes registered.

    python -m quartet_te.integration.megatron.launch pretrain_gpt.py --fp4-format e2m1 \\
        --fp4-recipe quartet2 <the usual Megatron-LM flags>
    torchrun --nproc-per-node 8 -m quartet_te.integration.megatron.launch pretrain_gpt.py ...

Why a launcher: Megatron-LM's `pretrain_gpt.py` builds its parser (and the `--fp4-recipe`
choices) inside `main`, and passes `extra_args_provider` only for ModelOpt, so registration must
happen before the script runs. The launcher calls `register()`, then names each transformer
layer's linears (`name_layers`, so TE hands our factory a per-layer, TP-rank-free name) by
wrapping `megatron.training.training.get_model`, then runs the script as `__main__` with its
own folder on `sys.path` (it imports `gpt_builders`, `model_provider` from there).

Without the launcher (zero patches): `--fp4-format e2m1 --fp4-recipe custom
--fp4-quantizer-factory quartet_te.recipes.factories.quartet2_factory`. The numerics are the same;
the difference is that Megatron gives TE layers no names, so our factory seeds layers by their
order of first use (consistent across TP ranks, but not between PP=1 and PP=2 runs).
"""
from __future__ import annotations

import functools
import runpy
import sys
from pathlib import Path
from typing import Any, Callable

from .registry import register

__all__ = ["main", "wrap_get_model"]

_USAGE = "usage: python -m quartet_te.integration.megatron.launch <script.py> [script flags...]"


def wrap_get_model() -> bool:
    """Make Megatron-LM's `get_model` name the layers of the chunks it returns; False if
    `megatron.training` is not importable (then nothing is patched)."""
    try:
        from megatron.training import training
    except ImportError:
        return False
    original: Callable[..., Any] = training.get_model
    if getattr(original, "__quartet_te__", False):
        return True

    @functools.wraps(original)
    def get_model(*args: Any, **kwargs: Any) -> Any:
        from .layers import name_layers

        chunks = original(*args, **kwargs)
        for chunk in chunks if isinstance(chunks, (list, tuple)) else [chunks]:
            name_layers(chunk)
        return chunks

    get_model.__quartet_te__ = True  # type: ignore[attr-defined]
    training.get_model = get_model
    return True


def main(argv: list[str] | None = None) -> None:
    """Register, then run `argv[0]` as `__main__` with `argv[1:]` as its arguments."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_USAGE + "\n\n" + (__doc__ or ""), file=sys.stderr)
        raise SystemExit(0 if argv else 2)
    script = Path(argv[0]).resolve()
    if not script.is_file():
        raise SystemExit(f"{_USAGE}\nno such script: {argv[0]}")
    register()
    sys.path.insert(0, str(script.parent))
    wrap_get_model()
    sys.argv = [str(script), *argv[1:]]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
