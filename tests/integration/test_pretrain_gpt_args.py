"""Flags of the example driver (examples/pretrain_gpt.py): recipe names fail at parse time."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("megatron.core", reason="needs megatron-core (pip install megatron-core==0.16.1)")

DRIVER = Path(__file__).resolve().parents[2] / "examples" / "pretrain_gpt.py"


@pytest.fixture(scope="module")
def driver():
    spec = importlib.util.spec_from_file_location("pretrain_gpt_args_test", DRIVER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_unknown_recipe_is_a_usage_error_naming_the_choices(driver, capsys):
    with pytest.raises(SystemExit):
        driver.parse_args(["--fp4-format", "e2m1", "--fp4-recipe", "quartet3"])
    err = capsys.readouterr().err
    assert "invalid choice: 'quartet3'" in err
    for name in ("quartet2", "quartet2-rot", "quartet2-no46", "nvfp4-sr", "nvfp4", "custom"):
        assert f"'{name}'" in err


def test_recipe_without_fp4_format_is_refused(driver):
    """It used to train BF16 without a word."""
    with pytest.raises(ValueError, match="--fp4-recipe quartet2 needs --fp4-format e2m1"):
        driver.parse_args(["--fp4-recipe", "quartet2"])


def test_recipe_flags_that_stay_valid(driver):
    assert driver.parse_args(["--fp4-format", "e2m1", "--fp4-recipe", "nvfp4-sr"]).fp4_recipe == "nvfp4-sr"
    assert driver.parse_args(["--fp4-format", "e2m1"]).fp4_recipe == "nvfp4"  # Megatron's default
    bf16 = driver.parse_args([])
    assert bf16.fp4 is None and bf16.fp4_recipe == "nvfp4"


def test_fp4_seed_needs_one_of_our_recipes(driver):
    assert driver.parse_args(["--fp4-format", "e2m1", "--fp4-recipe", "quartet2", "--fp4-seed", "5"]).fp4_seed == 5
    with pytest.raises(ValueError, match="--fp4-seed seeds quartet_te's recipes"):
        driver.parse_args(["--fp4-seed", "5"])
    with pytest.raises(ValueError, match="--fp4-seed seeds quartet_te's recipes"):
        driver.parse_args(["--fp4-format", "e2m1", "--fp4-seed", "5"])  # Megatron's nvfp4
    with pytest.raises(ValueError, match="does not reach --fp4-quantizer-factory"):
        driver.parse_args(["--fp4-format", "e2m1", "--fp4-recipe", "quartet2", "--fp4-seed", "5",
                           "--fp4-quantizer-factory", "quartet_te.recipes.factories.quartet2_factory"])
