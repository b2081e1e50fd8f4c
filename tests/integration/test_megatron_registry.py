"""Registration of our recipe names with megatron-core, the Megatron-LM argument hook, the launcher.

Runs on the CPU without Transformer Engine (megatron-core >= 0.16.1 must be installed).
"""
from __future__ import annotations

import argparse
import re
import dataclasses
import sys
import textwrap
import typing
import warnings

import pytest

pytest.importorskip("megatron.core", reason="needs megatron-core (pip install megatron-core==0.16.1)")

from megatron.core import fp4_utils  # noqa: E402
from megatron.core.transformer import TransformerConfig  # noqa: E402

from quartet_te.integration.megatron import MEGATRON_RECIPES, add_quartet_args, register  # noqa: E402
from quartet_te.integration.megatron import registry  # noqa: E402
from quartet_te.recipes import NVFP4Recipe, Quartet2Recipe, get_recipe  # noqa: E402

_SMALL = dict(num_layers=2, hidden_size=128, num_attention_heads=4)


def _fp4_choices() -> tuple[str, ...]:
    """The choices Megatron-LM's ArgumentGroupFactory derives for --fp4-recipe (Optional[Literal])."""
    ftype = {f.name: f.type for f in dataclasses.fields(TransformerConfig)}["fp4_recipe"]
    inner = typing.get_args(ftype)[0]  # Optional[X] -> X
    assert typing.get_origin(inner) is typing.Literal
    return typing.get_args(inner)


def test_register_is_idempotent_and_keeps_megatron_names():
    register()
    wrapped = fp4_utils.get_fp4_recipe
    register()
    assert fp4_utils.get_fp4_recipe is wrapped, "a second register() must not wrap again"
    assert wrapped.__wrapped__ is registry._STATE["original_get_fp4_recipe"]
    choices = _fp4_choices()
    assert {"nvfp4", "custom"} <= set(choices)
    assert set(MEGATRON_RECIPES) <= set(choices)
    assert len(choices) == len(set(choices)), "names were added twice"
    field_type = {f.name: f.type for f in dataclasses.fields(TransformerConfig)}["fp4_recipe"]
    assert typing.get_type_hints(TransformerConfig)["fp4_recipe"] == field_type


@pytest.mark.parametrize("name", sorted(MEGATRON_RECIPES))
def test_config_validates_and_get_fp4_recipe_returns_ours(name):
    register()
    cfg = TransformerConfig(**_SMALL, fp4="e2m1", fp4_recipe=name)
    recipe = fp4_utils.get_fp4_recipe(cfg)
    # Without TE the local layers run it: get_fp4_recipe returns our recipe object.
    assert recipe == get_recipe(MEGATRON_RECIPES[name])
    assert isinstance(recipe, Quartet2Recipe if name.startswith("quartet2") else NVFP4Recipe)


def test_megatron_names_still_reach_megatron():
    register()
    cfg = TransformerConfig(**_SMALL, fp4="e2m1", fp4_recipe="nvfp4")
    assert fp4_utils.get_fp4_recipe(cfg) is registry._STATE["original_get_fp4_recipe"](cfg)
    with pytest.raises(ValueError, match="fp4_quantizer_factory must be provided"):
        TransformerConfig(**_SMALL, fp4="e2m1", fp4_recipe="custom")


def test_megatron_lm_style_parser_accepts_quartet2():
    register()
    parser = argparse.ArgumentParser()
    parser.add_argument("--fp4-recipe", type=str, choices=_fp4_choices(), default="nvfp4")
    assert parser.parse_args(["--fp4-recipe", "quartet2"]).fp4_recipe == "quartet2"
    with pytest.raises(SystemExit):
        parser.parse_args(["--fp4-recipe", "quartet3"])


def test_extra_args_provider_widens_an_existing_parser():
    parser = argparse.ArgumentParser()
    parser.add_argument("--fp4-recipe", type=str, choices=("nvfp4", "custom"), default="nvfp4")
    assert add_quartet_args(parser) is parser
    assert parser.parse_args(["--fp4-recipe", "nvfp4-sr"]).fp4_recipe == "nvfp4-sr"
    assert parser.parse_args(["--fp4-recipe", "custom"]).fp4_recipe == "custom"


def test_version_check():
    with pytest.raises(ImportError, match=r"0\.16\.1"):
        registry._check_version("0.15.3")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        registry._check_version("0.19.2")
        assert not caught
        registry._check_version("0.99.0")
        assert any("newer than the versions" in str(w.message) for w in caught)


def test_te_recipe_without_te_names_the_problem():
    cfg = TransformerConfig(**_SMALL, fp4="e2m1", fp4_recipe="nvfp4")
    with pytest.raises(ValueError, match="not a quartet_te recipe"):
        registry.te_recipe(cfg)


def test_launcher_registers_then_runs_the_script(tmp_path, monkeypatch):
    from quartet_te.integration.megatron import launch

    (tmp_path / "helper_mod.py").write_text("VALUE = 42\n")
    script = tmp_path / "train_script.py"
    out = tmp_path / "out.txt"
    script.write_text(textwrap.dedent(f"""
        import sys
        import helper_mod  # the script's folder is on sys.path, as for pretrain_gpt.py
        from quartet_te.integration.megatron import is_registered
        assert __name__ == "__main__"
        open({str(out)!r}, "w").write(f"{{is_registered()}} {{helper_mod.VALUE}} {{sys.argv[1:]}}")
    """))
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.setattr(sys, "path", list(sys.path))
    launch.main([str(script), "--transformer-impl", "local", "--fp4-recipe", "quartet2"])
    assert out.read_text() == "True 42 ['--transformer-impl', 'local', '--fp4-recipe', 'quartet2']"


def _fake_megatron_training(monkeypatch, **attrs):
    """A stand-in `megatron.training.training` module holding `attrs` (what the launcher wraps),
    seen from rank 0."""
    import types

    training = types.ModuleType("megatron.training.training")
    for name, value in attrs.items():
        setattr(training, name, value)
    package = types.ModuleType("megatron.training")
    package.training = training
    monkeypatch.setitem(sys.modules, "megatron.training", package)
    monkeypatch.setitem(sys.modules, "megatron.training.training", training)
    monkeypatch.delenv("RANK", raising=False)
    return training


def test_launcher_names_the_layers_of_megatron_lm_models(monkeypatch):
    """`wrap_get_model` makes Megatron-LM's get_model name every layer of the chunks it returns."""
    from quartet_te.integration.megatron import launch, layers

    named = []
    monkeypatch.setattr(layers, "name_layers", lambda chunk: named.append(chunk) or 0)
    training = _fake_megatron_training(monkeypatch, get_model=lambda *a, **k: ["chunk0", "chunk1"])
    assert launch.wrap_get_model()
    assert launch.wrap_get_model()  # idempotent
    assert training.get_model("provider") == ["chunk0", "chunk1"]
    assert named == ["chunk0", "chunk1"]


@pytest.mark.parametrize("fp4", ["e2m1", None], ids=["fp4", "no_fp4"])
def test_unknown_fp4_recipe_fails_at_config_time(fp4):
    """fp4_recipe='quartet3' used to be accepted (and train something else than asked)."""
    register()
    with pytest.raises(ValueError, match=r"fp4_recipe='quartet3' is not a known FP4 recipe; expected one of "
                                         r"\('nvfp4', 'custom', 'quartet2', .*'nvfp4-sr'\)"):
        TransformerConfig(**_SMALL, fp4=fp4, fp4_recipe="quartet3")


def test_our_recipe_without_fp4_format_warns():
    """--fp4-recipe quartet2 without --fp4-format e2m1 trains BF16: say so."""
    register()
    with pytest.warns(UserWarning, match=r"fp4_recipe='quartet2' has no effect without fp4='e2m1'"):
        TransformerConfig(**_SMALL, fp4_recipe="quartet2")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        TransformerConfig(**_SMALL)  # Megatron's default fp4_recipe ('nvfp4') without fp4: quiet
        TransformerConfig(**_SMALL, fp4="e2m1", fp4_recipe="quartet2")
    assert not [w for w in caught if "fp4_recipe" in str(w.message)]


@pytest.mark.parametrize("graphs", [{"cuda_graph_impl": "local"}, {"enable_cuda_graph": True}], ids=["impl", "legacy"])
def test_our_recipe_with_megatron_local_cuda_graphs_is_accepted(graphs):
    """Local graphs capture under the FP4 context once register() has fixed it (below)."""
    register()
    cfg = TransformerConfig(**_SMALL, fp4="e2m1", fp4_recipe="quartet2", **graphs)
    assert cfg.cuda_graph_impl == "local"


@pytest.mark.parametrize("graphs", [{"cuda_graph_impl": "transformer_engine"}, {"external_cuda_graph": True}],
                         ids=["te", "external"])
def test_our_recipe_with_other_megatron_cuda_graphs_is_refused(graphs):
    register()
    with pytest.raises(ValueError, match=r"fp4_recipe='quartet2' with Megatron's CUDA graphs .*only "
                                         r"cuda_graph_impl='local' is supported"):
        TransformerConfig(**_SMALL, fp4="e2m1", fp4_recipe="quartet2", **graphs)


def test_cuda_graph_capture_enters_the_fp4_context(monkeypatch):
    """Megatron's _CudaGraphRunner records a non-NVFP4BlockScaling recipe (our CustomRecipe) as
    FP8 and captured it under get_fp8_context, a no-op without fp8: the graphed layers trained in
    BF16. After register(), an FP4 config captures under get_fp4_context; FP8 configs and BF16
    layers keep Megatron's own choice."""
    import types

    from megatron.core import fp4_utils, fp8_utils
    from megatron.core.transformer import cuda_graphs

    register()
    runner = cuda_graphs._CudaGraphRunner
    assert getattr(runner.get_quantization_context, "__quartet_te__", False)
    calls = []
    monkeypatch.setattr(fp4_utils, "get_fp4_context", lambda cfg, layer: calls.append(("fp4", layer)) or "fp4-ctx")
    monkeypatch.setattr(fp8_utils, "get_fp8_context", lambda cfg, layer: calls.append(("fp8", layer)) or "fp8-ctx")

    def fake(config, fp8_runtime, fp4_runtime=None, layer_number=3):
        base = types.SimpleNamespace(config=config, layer_number=layer_number)
        return types.SimpleNamespace(base_module=base, fp8_runtime_enabled=fp8_runtime, fp4_runtime_enabled=fp4_runtime)

    fp4_cfg = TransformerConfig(**_SMALL, fp4="e2m1", fp4_recipe="quartet2", cuda_graph_impl="local")
    assert runner.get_quantization_context(fake(fp4_cfg, True)) == "fp4-ctx" and calls == [("fp4", 2)]
    assert runner.get_quantization_context(fake(fp4_cfg, None, True)) == "fp4-ctx"  # TE's NVFP4: unchanged
    fp8_cfg = TransformerConfig(**_SMALL, fp8="hybrid")
    assert runner.get_quantization_context(fake(fp8_cfg, True)) == "fp8-ctx" and calls[-1] == ("fp8", 2)
    bf16_layer = runner.get_quantization_context(fake(fp4_cfg, None))  # recorded outside any autocast
    assert bf16_layer not in ("fp4-ctx", "fp8-ctx") and len(calls) == 3


def test_one_name_per_recipe_on_every_path():
    """Megatron's names of our recipes are the quartet_te.recipes presets themselves."""
    from quartet_te.recipes import RECIPE_NAMES

    register()
    assert MEGATRON_RECIPES == {n: n for n in RECIPE_NAMES}
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # no deprecated alias on the way
        cfg = TransformerConfig(**_SMALL, fp4="e2m1", fp4_recipe="nvfp4-sr")
        assert fp4_utils.get_fp4_recipe(cfg) == get_recipe("nvfp4-sr") == NVFP4Recipe()


def test_quantizer_seed_is_checked_and_applied_to_our_recipes_only():
    register()
    try:
        registry.set_quantizer_seed(1235)
        assert registry.quantizer_seed() == 1235
        cfg = TransformerConfig(**_SMALL, fp4="e2m1", fp4_recipe="quartet2-rot")
        recipe = fp4_utils.get_fp4_recipe(cfg)
        assert recipe.seed == 1235 and recipe.forward_rotation and recipe.name == "quartet2-rot"
        for bad, error in ((True, TypeError), (1.5, TypeError), (-1, ValueError)):
            with pytest.raises(error, match="seed"):
                registry.set_quantizer_seed(bad)
        assert registry.quantizer_seed() == 1235, "a refused seed must leave the old one"
    finally:
        registry.set_quantizer_seed(None)
    assert fp4_utils.get_fp4_recipe(cfg).seed == 0


def test_host_profile_window_is_checked():
    from quartet_te.integration.megatron.launch import profile_window

    assert profile_window("20:30") == (20, 30)
    for bad in ("20", "a:b", "30:20", "-1:3", "5:5"):
        with pytest.raises(ValueError, match="QUARTET_TE_HOST_PROFILE"):
            profile_window(bad)


def test_wrap_train_step_profiles_only_the_window(monkeypatch):
    """Steps 2..3 of five run under cProfile; the report (printed after step 3) counts exactly the
    work of those two steps, summed by package, and every step still returns its own result."""
    import io

    from quartet_te.integration.megatron import launch

    calls = []

    def train_step(i):
        calls.append(i)
        sum(range(20000))  # some host work inside the profiled function
        return i * 10

    training = _fake_megatron_training(monkeypatch, train_step=train_step)
    out = io.StringIO()
    assert launch.wrap_train_step(2, 4, out=out)
    assert [training.train_step(i) for i in range(3)] == [0, 10, 20]
    assert out.getvalue() == ""  # nothing before the window closes
    assert [training.train_step(i) for i in range(3, 5)] == [30, 40]
    assert calls == [0, 1, 2, 3, 4]
    text = out.getvalue()
    assert "train_step 2..3" in text and "host ms per training step by package (2 steps" in text
    assert "other Python (torch, stdlib)" in text and "Megatron Python" in text
    assert text.count("cProfile, host ms") == 1
    # the profiled function ran twice (steps 2 and 3), not five times
    assert re.search(r"\n\s+2\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+ \S*test_megatron_registry.py:\d+\(train_step\)", text)


def test_wrap_train_step_device_profiles_only_the_window(monkeypatch):
    """Steps 1..2 of four run under the (here: fake) profiler, started before step 1 and stopped
    after step 2; the report sums the kernels it recorded per step, by category."""
    import io

    import torch

    from quartet_te.integration.megatron import launch

    log = []

    class Range:
        def elapsed_us(self):
            return 500.0

    class Event:
        device_type = torch.autograd.DeviceType.CUDA
        time_range = Range()

        def __init__(self, name):
            self.name = name

    class FakeProfiler:
        def start(self):
            log.append("start")

        def stop(self):
            log.append("stop")

        def events(self):
            return [Event("void quartet::(anonymous namespace)::row_kernel<1>"), Event("nvjet_sm90_gemm")] * 2

    def train_step(i):
        log.append(i)
        return -i

    training = _fake_megatron_training(monkeypatch, train_step=train_step)
    out = io.StringIO()
    assert launch.wrap_train_step_device(1, 3, out=out, profiler_factory=FakeProfiler)
    assert [training.train_step(i) for i in range(4)] == [0, -1, -2, -3]
    assert log == [0, "start", 1, 2, "stop", 3]
    text = out.getvalue()
    assert "[QUARTET_TE_DEVICE_PROFILE] train_step 1..2:" in text
    assert "(2 steps, 1.00 ms per step in all)" in text  # 4 kernels x 500 µs over 2 steps
    assert re.search(r"quartet_te quantize / amax\s+0\.500", text) and re.search(r"GEMM \(cuBLAS, CUTLASS\)\s+0\.500", text)
    with pytest.raises(ValueError, match="QUARTET_TE_DEVICE_PROFILE"):
        launch.profile_window("3:1", launch.DEVICE_PROFILE_ENV)


def test_wrap_train_step_device_runs_the_real_profiler(monkeypatch):
    """The default factory (torch.profiler; CPU activity without CUDA) starts, stops and reports."""
    import io

    import torch

    from quartet_te.integration.megatron import launch

    training = _fake_megatron_training(monkeypatch, train_step=lambda: torch.ones(64, 64).sum())
    out = io.StringIO()
    assert launch.wrap_train_step_device(0, 2, out=out)
    for _ in range(3):
        training.train_step()
    assert "GPU kernel time, ms per step by category (2 steps" in out.getvalue()
