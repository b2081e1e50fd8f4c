"""Recipe configs: validation, presets, immutability."""
import dataclasses

import pytest

from quartet_te.recipes import RECIPE_NAMES, NVFP4Recipe, Quartet2Recipe, get_recipe


def test_defaults_follow_the_paper():
    r = Quartet2Recipe()
    assert (r.four_over_six, r.forward_rotation, r.backward_quant, r.high_precision_gemms) == (True, False, True, ())
    b = NVFP4Recipe()
    assert (b.weight_2d, b.stochastic_rounding, b.wgrad_rht) == (True, True, True)


def test_presets():
    assert set(RECIPE_NAMES) >= {"quartet2", "nvfp4"}
    assert get_recipe("quartet2-rot").forward_rotation
    assert not get_recipe("quartet2-no46").four_over_six
    assert get_recipe("quartet2", seed=7).seed == 7
    r = Quartet2Recipe(seed=3)
    assert get_recipe(r) is r
    with pytest.raises(ValueError, match="overrides"):
        get_recipe(r, seed=1)
    with pytest.raises(ValueError, match="unknown recipe 'fp8'"):
        get_recipe("fp8")


def test_validation():
    with pytest.raises(ValueError, match="unknown GEMM"):
        Quartet2Recipe(high_precision_gemms=("bprop",))
    with pytest.raises(ValueError, match="seed"):
        NVFP4Recipe(seed=-1)
    assert Quartet2Recipe(high_precision_gemms=["wgrad"]).high_precision_gemms == ("wgrad",)


def test_frozen_and_hashable():
    r = Quartet2Recipe()
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.seed = 1  # type: ignore[misc]
    assert hash(r) == hash(Quartet2Recipe())
    assert r != Quartet2Recipe(forward_rotation=True)
