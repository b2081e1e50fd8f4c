"""CPU tests of the TE recipe's pure-Python parts: role mapping, factory identity and pickling,
rotation keys, and the behaviour without Transformer Engine installed."""
from __future__ import annotations

import pickle
from dataclasses import dataclass

import pytest

from quartet_te import NVFP4Recipe, Quartet2Recipe
from quartet_te.recipes.factories import QuantizerFactory, make_factory, nvfp4_sr_factory, quartet2_factory
from quartet_te.rotation import layer_seed
from quartet_te.te import is_available
from quartet_te.te.roles import RoleFields, SlotKind, check_skip, is_skipped, rotation_key, slot_kind


@dataclass(frozen=True)
class Role:
    """Stands in for TE's QuantizerRole (same three string fields)."""

    module_type: str = ""
    tensor_type: str = ""
    name: str = ""


ROLE_CASES = [
    pytest.param(Role("linear", "input", "qkv"), SlotKind.INPUT, id="linear_input"),
    pytest.param(Role("linear", "weight", "qkv"), SlotKind.WEIGHT, id="linear_weight"),
    pytest.param(Role("linear", "grad_output", "proj"), SlotKind.GRAD_OUTPUT, id="linear_grad_output"),
    pytest.param(Role("grouped_linear", "input", "experts"), SlotKind.INPUT, id="grouped_input"),
    pytest.param(Role("grouped_linear", "grad_output", ""), SlotKind.GRAD_OUTPUT, id="grouped_grad_unnamed"),
    pytest.param(Role("linear", "output", "proj"), SlotKind.PASSTHROUGH, id="linear_output"),
    pytest.param(Role("linear", "grad_input", "proj"), SlotKind.PASSTHROUGH, id="linear_grad_input"),
    pytest.param(Role("dpa", "qkv", "attn"), SlotKind.PASSTHROUGH, id="attention_qkv"),
    pytest.param(Role("dpa", "s", "attn"), SlotKind.PASSTHROUGH, id="attention_s"),
    pytest.param(Role(), SlotKind.PASSTHROUGH, id="empty_role"),
    pytest.param(None, SlotKind.PASSTHROUGH, id="none_role"),
]


@pytest.mark.parametrize("role, expected", ROLE_CASES)
def test_slot_kind(role, expected):
    assert slot_kind(role) is expected


def test_skip_keeps_whole_modules_in_high_precision():
    skip = check_skip(["lm_head", "layers.0.mlp"])
    for tensor_type in ("input", "weight", "grad_output"):
        assert slot_kind(Role("linear", tensor_type, "lm_head"), skip) is SlotKind.PASSTHROUGH
        assert slot_kind(Role("linear", tensor_type, "model.lm_head"), skip) is SlotKind.PASSTHROUGH
        # LayerNormMLP names its GEMMs "<name>.fc1" / "<name>.fc2"
        assert slot_kind(Role("linear", tensor_type, "layers.0.mlp.fc2"), skip) is SlotKind.PASSTHROUGH
        assert slot_kind(Role("linear", tensor_type, "layers.1.mlp.fc2"), skip) is not SlotKind.PASSTHROUGH
    assert not is_skipped("my_lm_head", skip), "suffix matching must respect dots"
    assert not is_skipped("", skip)


@pytest.mark.parametrize("bad, error", [("lm_head", TypeError), ([""], ValueError), ([3], ValueError)])
def test_check_skip_rejects(bad, error):
    with pytest.raises(error):
        check_skip(bad)


def test_role_fields_validation():
    assert RoleFields.of(Role("linear", "input", "x")) == RoleFields("linear", "input", "x")
    assert RoleFields.of(None) == RoleFields()
    with pytest.raises(TypeError, match="module_type"):
        RoleFields.of(Role(module_type=7))  # type: ignore[arg-type]


def test_rotation_key_matches_quartet_linear_names():
    assert rotation_key("blk.proj", 0) == "blk.proj"
    assert rotation_key("blk.proj", 2) == "blk.proj#2"
    assert rotation_key("", 1) == "#1"
    with pytest.raises(ValueError):
        rotation_key("x", -1)


def test_factory_equality_hash_and_pickle():
    """Equal (recipe, skip) -> equal factories, so TE's `recipe == old_recipe` check keeps the
    quantizers when a fresh CustomRecipe is built per step (Megatron does)."""
    a, b = QuantizerFactory("quartet2"), QuantizerFactory(Quartet2Recipe())
    assert a == b and hash(a) == hash(b) and a == quartet2_factory
    assert a != QuantizerFactory("quartet2", skip=["lm_head"])
    assert a != QuantizerFactory(Quartet2Recipe(seed=1))
    assert a != nvfp4_sr_factory and nvfp4_sr_factory.recipe == NVFP4Recipe()
    a._ordinals["x"] = 5  # runtime counters are not part of the value
    clone = pickle.loads(pickle.dumps(a))
    assert clone == a and clone._ordinals == {}
    assert make_factory("nvfp4-sr", skip=("head",)).skip == ("head",)
    with pytest.raises(ValueError, match="unknown recipe"):
        QuantizerFactory("fp3")


def test_factory_seeds_follow_quartet_linear():
    """The grad-output quantizer of a module named n uses layer_seed(seed, n), like
    QuartetLinear(name=n); later slots with the same name get '#k'."""
    recipe = Quartet2Recipe(seed=7)
    assert layer_seed(recipe.seed, rotation_key("fc1", 0)) == layer_seed(7, "fc1")
    assert layer_seed(7, rotation_key("fc1", 1)) != layer_seed(7, "fc1")


@pytest.mark.skipif(is_available(), reason="Transformer Engine is installed here")
def test_without_te_the_api_names_the_missing_package():
    import quartet_te
    import quartet_te.te as qte

    assert quartet_te.Quartet2Recipe  # the package itself imports fine
    ok, reason = qte.is_available(return_reason=True)
    assert not ok and "transformer_engine" in reason
    with pytest.raises(ImportError, match="transformer_engine"):
        quartet2_factory(Role("linear", "input", "x"))
    with pytest.raises(ImportError, match="transformer_engine"):
        with qte.autocast():
            pass
    with pytest.raises(ImportError, match="transformer_engine"):
        qte.custom_recipe("nvfp4-sr")


def test_old_factory_path_is_a_deprecated_alias():
    """`...factories.nvfp4_factory` (Megatron's --fp4-quantizer-factory) still resolves, with a
    FutureWarning naming the new path and the release that removes it."""
    import importlib

    factories = importlib.import_module("quartet_te.recipes.factories")
    with pytest.warns(FutureWarning, match=r"nvfp4_factory is deprecated .* 0\.2\.0: use nvfp4_sr_factory"):
        old = getattr(factories, "nvfp4_factory")
    assert old is nvfp4_sr_factory and old.recipe.name == "nvfp4-sr"
    with pytest.raises(AttributeError, match="has no attribute 'nvfp5_factory'"):
        getattr(factories, "nvfp5_factory")


def test_factory_repr_names_the_preset():
    assert "name='quartet2-rot'" in repr(make_factory("quartet2-rot"))
    assert "name='nvfp4-sr'" in repr(nvfp4_sr_factory)
