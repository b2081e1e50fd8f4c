"""Megatron-LM argument hook: `--fp4-format e2m1 --fp4-recipe quartet2` on Megatron-LM's parser.

Megatron-LM builds `--fp4-recipe` from `TransformerConfig`'s type hints when the parser is created
(`megatron/training/argument_utils.py`, `ArgumentGroupFactory`), and its `choices` are fixed then.
`register()` widens those type hints, so parsers built *after* it accept our names. For a parser
that already exists, `add_quartet_args` also widens the `choices` of its `--fp4-recipe` action.
It adds no new flags.

Usage in a training script of your own Megatron-LM checkout::

    from megatron.training import pretrain
    from quartet_te.integration.megatron import add_quartet_args
    pretrain(..., extra_args_provider=add_quartet_args)

`pretrain_gpt.py` itself passes no user hook; run it through the launcher instead
(`python -m quartet_te.integration.megatron.launch pretrain_gpt.py ...`).
"""
from __future__ import annotations

import argparse

from .registry import MEGATRON_RECIPES, register

__all__ = ["add_quartet_args", "widen_fp4_recipe_choices"]


def widen_fp4_recipe_choices(parser: argparse.ArgumentParser) -> bool:
    """Add our recipe names to the choices of `parser`'s `--fp4-recipe`; True if one was found."""
    found = False
    for action in parser._actions:  # argparse keeps no public list of actions
        if "--fp4-recipe" in action.option_strings:
            found = True
            if action.choices is not None:
                choices = list(action.choices)
                action.choices = choices + [n for n in MEGATRON_RECIPES if n not in choices]
    return found


def add_quartet_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`extra_args_provider` for Megatron-LM: registers our recipes and widens `--fp4-recipe`.

    Returns the parser, as Megatron-LM's `parse_args` expects.
    """
    register()
    widen_fp4_recipe_choices(parser)
    return parser
