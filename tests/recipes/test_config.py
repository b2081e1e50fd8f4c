"""Recipe configs: validation, presets, immutability, one name per recipe."""
import dataclasses
import pickle
import warnings

import pytest

from quartet_te.recipes import RECIPE_NAMES, NVFP4Recipe, Quartet2Recipe, get_recipe


def test_defaults_follow_the_paper():
    r = Quartet2Recipe()
    assert (r.four_over_six, r.forward_rotation, r.backward_quant, r.high_precision_gemms) == (True, False, True, ())
    b = NVFP4Recipe()
    assert (b.weight_2d, b.stochastic_rounding, b.wgrad_rht) == (True, True, True)


def test_presets():
    assert set(RECIPE_NAMES) == {"quartet2", "quartet2-rot", "quartet2-no46", "nvfp4-sr"}
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


@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_every_preset_is_named_after_itself(name):
    """repr and `name` say which preset a recipe is (quartet2-rot used to print name='quartet2')."""
    r = get_recipe(name)
    assert r.name == name and f"name={name!r}" in repr(r)
    assert get_recipe(r.name) == r
    assert pickle.loads(pickle.dumps(r)).name == name


def test_old_pickles_get_the_current_name():
    """A recipe pickled when the baseline's name field said 'nvfp4' loads with 'nvfp4-sr'."""
    old = NVFP4Recipe(seed=4)
    object.__setattr__(old, "name", "nvfp4")
    clone = pickle.loads(pickle.dumps(old))
    assert clone.name == "nvfp4-sr" and clone == NVFP4Recipe(seed=4)


def test_old_baseline_name_is_a_deprecated_alias():
    with pytest.warns(FutureWarning, match=r"'nvfp4' is deprecated.*0\.2\.0.*'nvfp4-sr'"):
        r = get_recipe("nvfp4", seed=3)
    assert r == NVFP4Recipe(seed=3) and r.name == "nvfp4-sr"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert get_recipe("nvfp4-sr") == NVFP4Recipe()  # the new name does not warn


@pytest.mark.parametrize("cls", [Quartet2Recipe, NVFP4Recipe], ids=["quartet2", "nvfp4_sr"])
@pytest.mark.parametrize("value", ["false", 0, 1, None], ids=["str_false", "int0", "int1", "none"])
def test_flags_must_be_bools(cls, value):
    flags = [f.name for f in dataclasses.fields(cls) if f.type == "bool"]
    assert len(flags) == 3
    for flag in flags:
        with pytest.raises(TypeError, match=rf"{cls.__name__}\.{flag} must be True or False, got"):
            cls(**{flag: value})
    assert cls(**{flags[0]: False}) != cls()


@pytest.mark.parametrize("seed", [True, False, 1.7, 2.0, "3", None], ids=["true", "false", "float", "float_int",
                                                                       "str", "none"])
def test_seeds_must_be_ints_not_bools(seed):
    for cls in (Quartet2Recipe, NVFP4Recipe):
        with pytest.raises(TypeError, match=rf"{cls.__name__}\.seed must be an int, got {type(seed).__name__}"):
            cls(seed=seed)
    assert Quartet2Recipe(seed=1).seed == 1


def test_high_precision_gemms_as_a_single_str_is_refused():
    with pytest.raises(TypeError, match=r"high_precision_gemms must be a tuple.*\('wgrad',\)"):
        Quartet2Recipe(high_precision_gemms="wgrad")


def test_recipe_of_the_wrong_type_is_a_type_error():
    with pytest.raises(TypeError, match="recipe must be a preset name .* got NoneType"):
        get_recipe(None)
