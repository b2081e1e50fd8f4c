"""Megatron's local ColumnParallelLinear / RowParallelLinear running the Quartet II linear (CPU, TP=1).

The parallel layers must compute exactly what `quartet_linear` computes on the same weight with
the same per-layer seed (forward and both gradients, bitwise: same code path, same draws), bind
their seed to a rank-free name, stay in high precision where asked, and carry the rotation state
through the state dict.
"""
from __future__ import annotations

import os
import socket

import pytest
import torch

pytest.importorskip("megatron.core", reason="needs megatron-core (pip install megatron-core==0.16.1)")

import torch.distributed as dist  # noqa: E402
from megatron.core import parallel_state, tensor_parallel  # noqa: E402
from megatron.core.models.gpt import GPTModel  # noqa: E402
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec  # noqa: E402
from megatron.core.transformer import TransformerConfig  # noqa: E402

from quartet_te.integration.megatron import (  # noqa: E402
    QuartetColumnParallelLinear,
    QuartetRowParallelLinear,
    cpu_device_mode,
    enable_cpu_mode,
    quartet_layer_spec,
    register,
)
from quartet_te.linear import quartet_linear  # noqa: E402
from quartet_te.recipes import get_recipe  # noqa: E402
from quartet_te.rotation import RotationState, layer_seed  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def megatron_world():
    """One-process gloo world with Megatron's TP=PP=1 groups, on the CPU."""
    register()
    enable_cpu_mode()
    if not dist.is_initialized():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=0, world_size=1)
    parallel_state.initialize_model_parallel(1, 1)
    tensor_parallel.model_parallel_cuda_manual_seed(123)
    with cpu_device_mode():
        yield
    parallel_state.destroy_model_parallel()
    dist.destroy_process_group()


def _config(**kw) -> TransformerConfig:
    base = dict(num_layers=3, hidden_size=128, ffn_hidden_size=256, num_attention_heads=4,
                num_query_groups=2, hidden_dropout=0.0, attention_dropout=0.0,
                fp4="e2m1", fp4_recipe="quartet2")
    base.update(kw)
    return TransformerConfig(**base)


def _init(w: torch.Tensor) -> torch.Tensor:
    return torch.nn.init.normal_(w, std=0.05)


@pytest.mark.parametrize("kind", ["column", "row"])
def test_parallel_linear_equals_quartet_linear(kind, gen):
    cfg = _config()
    if kind == "column":
        layer = QuartetColumnParallelLinear(128, 256, config=cfg, init_method=_init, bias=True)
    else:
        layer = QuartetRowParallelLinear(256, 128, config=cfg, init_method=_init, bias=True,
                                         input_is_parallel=True, skip_bias_add=False)
    layer.bind_quartet("layer0.test")
    x = torch.randn(64, 2, layer.weight.shape[1], generator=gen, requires_grad=True)
    y, _ = layer(x)
    (y * torch.linspace(-1, 1, y.shape[-1])).sum().backward()

    w = layer.weight.detach().clone().requires_grad_()
    b = layer.bias.detach().clone().requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    rot = RotationState(layer_seed(0, "layer0.test"))
    y2 = quartet_linear(x2, w, b, get_recipe("quartet2"), rot)
    (y2 * torch.linspace(-1, 1, y2.shape[-1])).sum().backward()

    torch.testing.assert_close(y, y2, rtol=0, atol=0)
    torch.testing.assert_close(x.grad, x2.grad, rtol=0, atol=0)
    torch.testing.assert_close(layer.weight.grad, w.grad, rtol=0, atol=0)
    torch.testing.assert_close(layer.bias.grad, b.grad, rtol=0, atol=0)
    assert layer.quartet_rotation.step == rot.step == 1


def test_quantized_output_differs_from_high_precision(gen):
    """Guards against the override silently running Megatron's BF16 path."""
    layer = QuartetColumnParallelLinear(128, 256, config=_config(), init_method=_init, bias=False)
    layer.bind_quartet("layer0.q")
    x = torch.randn(32, 2, 128, generator=gen)
    y, _ = layer(x)
    exact = x @ layer.weight.detach().t()
    rel = ((y - exact).norm() / exact.norm()).item()
    assert 1e-3 < rel < 0.2, rel


def test_unbound_layer_and_bad_shard_raise(gen):
    layer = QuartetColumnParallelLinear(128, 256, config=_config(), init_method=_init, bias=False)
    with pytest.raises(RuntimeError, match="no name/seed"):
        layer(torch.randn(8, 1, 128, generator=gen))
    odd = QuartetColumnParallelLinear(120, 256, config=_config(), init_method=_init, bias=False)
    with pytest.raises(ValueError, match="layer0.odd.*in_features=120.*multiple of 16"):
        odd.bind_quartet("layer0.odd")


def test_megatron_nvfp4_name_is_rejected_on_local_layers():
    with pytest.raises(ValueError, match="nvfp4-sr"):
        QuartetColumnParallelLinear(128, 256, config=_config(fp4_recipe="nvfp4"), init_method=_init)


def test_without_fp4_the_layer_is_megatrons(gen):
    with pytest.warns(UserWarning, match="has no effect without fp4='e2m1'"):
        cfg = _config(fp4=None)
    layer = QuartetColumnParallelLinear(128, 256, config=cfg, init_method=_init, bias=False)
    layer.bind_quartet("layer0.bf16")
    assert not layer.quartet_active
    x = torch.randn(16, 2, 128, generator=gen)
    torch.testing.assert_close(layer(x)[0], x @ layer.weight.detach().t())


def _gpt(cfg: TransformerConfig) -> GPTModel:
    return GPTModel(config=cfg, transformer_layer_spec=quartet_layer_spec(get_gpt_layer_local_spec()),
                    vocab_size=256, max_sequence_length=64)


def test_gpt_layers_get_global_names_and_bf16_ends():
    model = _gpt(_config(first_last_layers_bf16=True, num_layers_at_start_in_bf16=1,
                         num_layers_at_end_in_bf16=1))
    active = {}
    for name, m in model.named_modules():
        if isinstance(m, (QuartetColumnParallelLinear, QuartetRowParallelLinear)):
            active[name] = (m.quartet_active, m.quartet_name)
    assert len(active) == 12  # 3 layers x (qkv, proj, fc1, fc2); the output layer stays Megatron's
    for name, (is_active, qname) in active.items():
        layer_no = int(name.split(".")[2])
        assert is_active == (layer_no == 1), name
        if is_active:
            assert qname == "layer1." + name.split(".", 3)[3]
    assert type(model.output_layer).__name__ == "ColumnParallelLinear"


def test_rotation_state_travels_in_the_state_dict(gen):
    cfg = _config(num_layers=1)
    model = _gpt(cfg)
    tokens = torch.randint(0, 256, (2, 64), generator=gen)
    pos = torch.arange(64).expand(2, -1)
    for _ in range(2):
        model(tokens, pos, None, labels=tokens).mean().backward()
    state = model.state_dict()
    key = "decoder.layers.0.mlp.linear_fc1._extra_state"
    assert state[key]["quartet_te"]["step"] == 2
    assert state[key]["quartet_te"]["name"] == "layer0.mlp.linear_fc1"
    fresh = _gpt(cfg)
    assert fresh.decoder.layers[0].mlp.linear_fc1.quartet_rotation.step == 0
    fresh.load_state_dict(state)
    rot = fresh.decoder.layers[0].mlp.linear_fc1.quartet_rotation
    assert (rot.seed, rot.step) == (layer_seed(0, "layer0.mlp.linear_fc1"), 2)


def test_megatrons_own_local_spec_fails_loudly(gen):
    """get_gpt_layer_local_spec() without quartet_layer_spec used to build a model with no
    quantized linear (bit-identical to BF16) under fp4_recipe='quartet2', without a word."""
    with pytest.raises(ValueError, match=r"transformer layer 0 \(fp4_recipe='quartet2'\): Megatron's local "
                                         r"linears \['self_attention.linear_proj', .*quartet_layer_spec"):
        GPTModel(config=_config(), transformer_layer_spec=get_gpt_layer_local_spec(), vocab_size=256,
                 max_sequence_length=64)
    with pytest.raises(ValueError, match="fp4_recipe='nvfp4-sr'.*quartet_layer_spec"):
        GPTModel(config=_config(fp4_recipe="nvfp4-sr"), transformer_layer_spec=get_gpt_layer_local_spec(),
                 vocab_size=256, max_sequence_length=64)


def test_megatrons_local_spec_still_builds_where_nothing_is_quantized(gen):
    """No FP4, or every layer kept in BF16: Megatron's own spec is what the user gets."""
    bf16 = GPTModel(config=_config(fp4=None, fp4_recipe="nvfp4"), transformer_layer_spec=get_gpt_layer_local_spec(),
                    vocab_size=256, max_sequence_length=64)
    ends = _config(num_layers=2, first_last_layers_bf16=True, num_layers_at_start_in_bf16=1,
                   num_layers_at_end_in_bf16=1)
    all_bf16 = GPTModel(config=ends, transformer_layer_spec=get_gpt_layer_local_spec(), vocab_size=256,
                        max_sequence_length=64)
    for model in (bf16, all_bf16):
        assert not any(isinstance(m, (QuartetColumnParallelLinear, QuartetRowParallelLinear)) for m in model.modules())


@pytest.mark.parametrize("saved, error, message", [
    ({"name": "layer0.x"}, ValueError, "malformed quartet_te extra state .*'seed' and 'step'"),
    ("garbage", ValueError, "malformed quartet_te extra state 'garbage'"),
    ({"name": "layer0.x", "seed": 5, "step": -1}, ValueError, r"'step' must be in \[0, "),
    ({"name": "layer0.x", "seed": 5, "step": 2.5}, TypeError, "'step' must be an int, got float"),
], ids=["no_seed", "str", "negative_step", "float_step"])
def test_malformed_local_extra_state_is_refused_at_load(saved, error, message):
    layer = QuartetColumnParallelLinear(128, 256, config=_config(), init_method=_init, bias=False)
    layer.bind_quartet("layer0.x")
    with pytest.raises(error, match=message):
        layer.set_extra_state({"quartet_te": saved})
    assert layer.quartet_rotation.step == 0


def test_quantizer_seed_reaches_every_layer_and_changes_the_gradient(gen):
    """`set_quantizer_seed` (the driver's --fp4-seed) gives each run its own quantizer streams."""
    from quartet_te.integration.megatron import set_quantizer_seed

    cfg = _config(num_layers=1)
    tokens = torch.randint(0, 256, (2, 64), generator=gen)
    pos = torch.arange(64).expand(2, -1)
    grads = {}
    try:
        for seed in (None, 7):
            set_quantizer_seed(seed)
            torch.manual_seed(0)
            model = _gpt(cfg)
            rot = model.decoder.layers[0].mlp.linear_fc1.quartet_rotation
            assert rot.seed == layer_seed(0 if seed is None else seed, "layer0.mlp.linear_fc1")
            model(tokens, pos, None, labels=tokens).mean().backward()
            grads[seed] = model.decoder.layers[0].mlp.linear_fc1.weight.grad.clone()
    finally:
        set_quantizer_seed(None)
    # same weights and data, other random rotations / roundings: another (unbiased) gradient
    assert not torch.equal(grads[None], grads[7])
