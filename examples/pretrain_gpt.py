"""Pre-train a GPT with Megatron-Core (no Megatron-LM checkout needed), in BF16 or NVFP4.

Megatron-style flags; `@file` reads flags from a file in `examples/configs/` (one or more per
line, `#` comments), later flags override earlier ones. Data: Shakespeare's plays through
`quartet_te.data` (byte tokens, vocabulary 256, held-out plays for validation).

    # tiny model on the CPU (2 processes, TP=2), 5 iterations
    torchrun --nproc-per-node 2 examples/pretrain_gpt.py @examples/configs/tiny-cpu.args \\
        --tensor-model-parallel-size 2 --fp4-format e2m1 --fp4-recipe quartet2 --train-iters 5
    # ~125M GPT on one GPU, Transformer Engine layers, Quartet II
    torchrun --nproc-per-node 1 examples/pretrain_gpt.py @examples/configs/gpt-125m-1gpu.args \\
        --fp4-format e2m1 --fp4-recipe quartet2 --loss-log runs/q2.jsonl

`--fp4-recipe`: `quartet2` (also `quartet2-rot`, `quartet2-no46`) or `nvfp4-sr` (our
reimplementation of NVIDIA's recipe, any GPU); Megatron's own `nvfp4` and `custom` work with TE.
`--transformer-impl local` runs Megatron's local layers (our Quartet II linear on each TP shard);
`transformer_engine` (default when TE is installed) runs TE layers under our TE recipe.
Simplifications against Megatron-LM: untied input/output embeddings, one model chunk (no virtual
pipeline), non-distributed optimizer, per-rank `torch.save` checkpoints.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import socket
import sys
import time
import zlib
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist

from quartet_te.integration.megatron import register
from quartet_te.integration.megatron.cpu import cpu_device_mode, enable_cpu_mode


# ----------------------------------------------------------------------------------------- flags
class _ArgsFileParser(argparse.ArgumentParser):
    def convert_arg_line_to_args(self, arg_line: str) -> list[str]:
        return arg_line.split("#", 1)[0].split()


def build_parser() -> argparse.ArgumentParser:
    """Megatron-LM's flag names for everything the driver supports."""
    p = _ArgsFileParser(description=__doc__.split("\n")[0], fromfile_prefix_chars="@",
                        allow_abbrev=False)
    m = p.add_argument_group("model")
    m.add_argument("--num-layers", type=int, default=2)
    m.add_argument("--hidden-size", type=int, default=128)
    m.add_argument("--ffn-hidden-size", type=int, default=None, help="default 4 x hidden")
    m.add_argument("--num-attention-heads", type=int, default=4)
    m.add_argument("--num-query-groups", type=int, default=None, help="GQA groups (default: MHA)")
    m.add_argument("--seq-length", type=int, default=128)
    m.add_argument("--max-position-embeddings", type=int, default=None)
    m.add_argument("--position-embedding-type", choices=["learned_absolute", "rope"], default="rope")
    m.add_argument("--normalization", choices=["LayerNorm", "RMSNorm"], default="LayerNorm")
    m.add_argument("--swiglu", action="store_true")
    m.add_argument("--disable-bias-linear", action="store_true")
    m.add_argument("--hidden-dropout", type=float, default=0.0)
    m.add_argument("--attention-dropout", type=float, default=0.0)
    m.add_argument("--init-method-std", type=float, default=0.02)
    m.add_argument("--transformer-impl", choices=["local", "transformer_engine"], default=None)
    par = p.add_argument_group("parallelism and precision")
    par.add_argument("--tensor-model-parallel-size", type=int, default=1)
    par.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    par.add_argument("--sequence-parallel", action="store_true")
    par.add_argument("--bf16", action="store_true")
    par.add_argument("--fp4-format", dest="fp4", choices=["e2m1"], default=None)
    par.add_argument("--fp4-recipe", default="nvfp4", help="quartet2, quartet2-rot, quartet2-no46, "
                     "nvfp4-sr (ours); nvfp4, custom (Megatron's, TE only)")
    par.add_argument("--fp4-quantizer-factory", default=None)
    par.add_argument("--first-last-layers-bf16", action="store_true")
    par.add_argument("--num-layers-at-start-in-bf16", type=int, default=1)
    par.add_argument("--num-layers-at-end-in-bf16", type=int, default=1)
    t = p.add_argument_group("training")
    t.add_argument("--micro-batch-size", type=int, default=4)
    t.add_argument("--global-batch-size", type=int, default=None, help="default micro x DP")
    t.add_argument("--train-iters", type=int, default=20)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--min-lr", type=float, default=0.0)
    t.add_argument("--lr-warmup-iters", type=int, default=0)
    t.add_argument("--lr-decay-style", choices=["constant", "linear", "cosine"], default="cosine")
    t.add_argument("--lr-decay-iters", type=int, default=None)
    t.add_argument("--weight-decay", type=float, default=0.1)
    t.add_argument("--adam-beta1", type=float, default=0.9)
    t.add_argument("--adam-beta2", type=float, default=0.95)
    t.add_argument("--adam-eps", type=float, default=1e-8)
    t.add_argument("--clip-grad", type=float, default=1.0)
    t.add_argument("--seed", type=int, default=1234)
    t.add_argument("--data-path", default=None,
                   help="a corpus built by `python -m quartet_te.corpus build` (default: Shakespeare, quartet_te.data)")
    io = p.add_argument_group("logging and checkpoints")
    io.add_argument("--log-interval", type=int, default=1)
    io.add_argument("--eval-interval", type=int, default=0, help="0: evaluate only at the end")
    io.add_argument("--eval-iters", type=int, default=2)
    io.add_argument("--loss-log", default=None, help="JSON-lines file of per-iteration metrics")
    io.add_argument("--save", default=None)
    io.add_argument("--save-interval", type=int, default=0)
    io.add_argument("--load", default=None)
    io.add_argument("--ckpt-step", type=int, default=None, help="iteration to load (default: latest)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check flags (clear errors for inconsistent sizes)."""
    args = build_parser().parse_args(argv)
    args.ffn_hidden_size = args.ffn_hidden_size or 4 * args.hidden_size
    args.max_position_embeddings = args.max_position_embeddings or args.seq_length
    args.num_query_groups = args.num_query_groups or args.num_attention_heads
    args.lr_decay_iters = args.lr_decay_iters or args.train_iters
    if args.transformer_impl is None:
        args.transformer_impl = "transformer_engine" if _have_te() else "local"
    if args.sequence_parallel and args.transformer_impl == "local" and not _have_apex():
        raise ValueError("--sequence-parallel with --transformer-impl local needs NVIDIA apex "
                         "(Megatron's torch LayerNorm refuses sequence parallelism); use "
                         "--transformer-impl transformer_engine or drop --sequence-parallel")
    if args.lr_warmup_iters >= args.lr_decay_iters:
        raise ValueError(f"--lr-warmup-iters {args.lr_warmup_iters} must be below the decay length "
                         f"({args.lr_decay_iters}: --lr-decay-iters, default --train-iters)")
    if args.num_layers % args.pipeline_model_parallel_size:
        raise ValueError(f"--num-layers {args.num_layers} is not divisible by "
                         f"--pipeline-model-parallel-size {args.pipeline_model_parallel_size}")
    return args


def _have_apex() -> bool:
    try:
        import apex.normalization  # noqa: F401  (NVIDIA apex; optional, never required)
    except ImportError:
        return False
    return True


def _have_te() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import transformer_engine.pytorch  # noqa: F401
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------------------------ setup
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(args: argparse.Namespace) -> None:
    """torch.distributed from torchrun's environment (or one process), then Megatron's groups."""
    from megatron.core import parallel_state, tensor_parallel

    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "nccl"
    else:
        enable_cpu_mode()
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    world = dist.get_world_size()
    tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
    if world % (tp * pp):
        raise ValueError(f"world size {world} is not divisible by TP {tp} x PP {pp}")
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp,
                                             pipeline_model_parallel_size=pp)
    args.data_parallel_size = parallel_state.get_data_parallel_world_size()
    args.global_batch_size = args.global_batch_size or args.micro_batch_size * args.data_parallel_size
    per_dp = args.micro_batch_size * args.data_parallel_size
    if args.global_batch_size % per_dp:
        raise ValueError(f"--global-batch-size {args.global_batch_size} is not a multiple of "
                         f"micro-batch-size x data-parallel-size = {per_dp}")
    args.num_microbatches = args.global_batch_size // per_dp
    torch.manual_seed(args.seed)
    tensor_parallel.model_parallel_cuda_manual_seed(args.seed)


def transformer_config(args: argparse.Namespace) -> Any:
    """The TransformerConfig for these flags (our recipe names are valid after `register()`)."""
    import torch.nn.functional as F
    from megatron.core.transformer import TransformerConfig

    dtype = torch.bfloat16 if args.bf16 else torch.float32
    return TransformerConfig(
        num_layers=args.num_layers, hidden_size=args.hidden_size,
        ffn_hidden_size=args.ffn_hidden_size, num_attention_heads=args.num_attention_heads,
        num_query_groups=args.num_query_groups, init_method_std=args.init_method_std,
        hidden_dropout=args.hidden_dropout, attention_dropout=args.attention_dropout,
        normalization=args.normalization, add_bias_linear=not args.disable_bias_linear,
        gated_linear_unit=args.swiglu, activation_func=F.silu if args.swiglu else F.gelu,
        tensor_model_parallel_size=args.tensor_model_parallel_size,
        pipeline_model_parallel_size=args.pipeline_model_parallel_size,
        sequence_parallel=args.sequence_parallel, bf16=args.bf16, params_dtype=dtype,
        pipeline_dtype=dtype, use_cpu_initialization=False, perform_initialization=True,
        fp4=args.fp4, fp4_recipe=args.fp4_recipe if args.fp4 else "nvfp4",
        fp4_quantizer_factory=args.fp4_quantizer_factory,
        first_last_layers_bf16=args.first_last_layers_bf16,
        num_layers_at_start_in_bf16=args.num_layers_at_start_in_bf16,
        num_layers_at_end_in_bf16=args.num_layers_at_end_in_bf16,
        bias_activation_fusion=False, masked_softmax_fusion=False, persist_layer_norm=False,
        bias_dropout_fusion=False, apply_rope_fusion=False, gradient_accumulation_fusion=False,
    )


def layer_spec(args: argparse.Namespace) -> Any:
    """Megatron's GPT layer spec for --transformer-impl, passed through `quartet_layer_spec`."""
    from megatron.core.models.gpt import gpt_layer_specs as specs

    from quartet_te.integration.megatron import quartet_layer_spec

    if args.transformer_impl == "transformer_engine":
        base = specs.get_gpt_layer_with_transformer_engine_spec()
    else:
        base = specs.get_gpt_layer_local_spec(normalization=args.normalization)
    return quartet_layer_spec(base)


def _global_name(model: torch.nn.Module, name: str) -> str:
    """`decoder.layers.<local>.…` renamed with the global layer number (PP-independent)."""
    parts = name.split(".")
    if parts[:2] == ["decoder", "layers"]:
        parts[2] = str(model.decoder.layers[int(parts[2])].layer_number - 1)
    return ".".join(parts)


def init_weights(model: torch.nn.Module, args: argparse.Namespace) -> None:
    """Initialize every parameter from its global name alone, so any TP/PP layout starts from the
    same full weights: N(0, std) for matrices (std / sqrt(2 L) for output projections), ones for
    norm weights, zeros for biases. TP shards are cut from the full tensor (Megatron's own init
    runs first only because it sets the `tensor_model_parallel` attributes on the shards)."""
    from megatron.core import parallel_state

    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    tp = parallel_state.get_tensor_model_parallel_world_size()
    with torch.no_grad():
        for name, param in model.named_parameters():
            gname = _global_name(model, name)
            shape = list(param.shape)
            sharded = getattr(param, "tensor_model_parallel", False) and tp > 1
            if sharded:
                shape[param.partition_dim] *= tp
            if param.dim() >= 2:
                std = args.init_method_std
                if gname.endswith(("linear_proj.weight", "linear_fc2.weight")):
                    std /= math.sqrt(2.0 * args.num_layers)
                gen = torch.Generator().manual_seed(zlib.crc32(f"{args.seed}/{gname}".encode()))
                full = torch.randn(shape, generator=gen) * std
            elif "norm" in gname and gname.endswith("weight"):
                full = torch.ones(shape)
            else:
                full = torch.zeros(shape)
            if sharded:
                full = full.chunk(tp, dim=param.partition_dim)[tp_rank]
            param.copy_(full.to(param.dtype))


def vocab_size(args: argparse.Namespace) -> int:
    """The tokenizer's vocabulary: bytes for the default corpus, the manifest's for --data-path."""
    if args.data_path:
        from quartet_te.corpus import vocab_size as corpus_vocab

        return corpus_vocab(args.data_path)
    from quartet_te.data import ByteTokenizer

    return ByteTokenizer.vocab_size


def load_corpus(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(train tokens, validation tokens, description) of the chosen corpus."""
    if args.data_path:
        from quartet_te import corpus

        train, val = corpus.load_shards(args.data_path, check=True)
        return train, val, corpus.corpus_description(args.data_path)
    from quartet_te.data import corpus_description, load_splits

    train, val = load_splits()
    return train, val, corpus_description()


def build_model(args: argparse.Namespace, config: Any) -> torch.nn.Module:
    """This pipeline stage's GPTModel, initialized by name and wrapped in Megatron's DDP."""
    from megatron.core import parallel_state
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.models.gpt import GPTModel
    from megatron.core.transformer.module import Float16Module

    model = GPTModel(
        config=config, transformer_layer_spec=layer_spec(args),
        vocab_size=vocab_size(args), max_sequence_length=args.max_position_embeddings,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        share_embeddings_and_output_weights=False,
        position_embedding_type=args.position_embedding_type,
    )
    init_weights(model, args)
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    if args.bf16:
        model = Float16Module(config, model)
    ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False,
                                               use_distributed_optimizer=False)
    return DistributedDataParallel(config=config, ddp_config=ddp_config, module=model)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The GPTModel inside DDP / Float16Module."""
    while hasattr(model, "module"):
        model = model.module
    return model


# -------------------------------------------------------------------------------------- data
class TextBatches:
    """Global batches of byte windows, sliced for this data-parallel rank into micro-batches.

    Every rank draws the same global batch (same seed), so TP/PP/DP layouts see the same data.
    """

    def __init__(self, tokens: torch.Tensor, args: argparse.Namespace, dp_rank: int, device: Any):
        from quartet_te.data import BatchSampler

        self.sampler = BatchSampler(tokens, args.global_batch_size, args.seq_length, seed=args.seed)
        self.args, self.dp_rank, self.device = args, dp_rank, device

    def split(self, x: torch.Tensor, y: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        a = self.args
        per_dp = x.shape[0] // a.data_parallel_size
        sl = slice(self.dp_rank * per_dp, (self.dp_rank + 1) * per_dp)
        xs, ys = x[sl].split(a.micro_batch_size), y[sl].split(a.micro_batch_size)
        return [(xi.to(self.device), yi.to(self.device)) for xi, yi in zip(xs, ys)]

    def next(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Micro-batches of the next global batch for this rank."""
        return self.split(*self.sampler.next())


def forward_step(data_iterator: Iterator, model: torch.nn.Module):
    """Megatron's forward-step contract: output tensor and a loss function for it."""
    tokens, labels = next(data_iterator)
    positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
    output = model(tokens, positions, None, labels=labels)

    def loss_func(losses: torch.Tensor):
        loss = losses.float().mean()
        return loss, {"lm loss": loss.detach().clone()}  # the schedule scales `loss` in place

    return output, loss_func


def _mean_loss(losses_reduced: list[dict]) -> float:
    """Loss averaged over micro-batches and DP ranks, the same value on every rank."""
    from megatron.core import parallel_state

    local = torch.zeros(1, dtype=torch.float64)
    if parallel_state.is_pipeline_last_stage() and losses_reduced:
        local[0] = torch.stack([d["lm loss"].double().cpu() for d in losses_reduced]).mean()
    dev = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else "cpu"
    local = local.to(dev)
    dist.all_reduce(local)
    n_last = (parallel_state.get_tensor_model_parallel_world_size()
              * parallel_state.get_data_parallel_world_size())
    return float(local.item() / n_last)


# ------------------------------------------------------------------------------- checkpoints
def _ckpt_file(root: str, iteration: int) -> Path:
    from megatron.core import parallel_state as ps

    tp, pp = ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank()
    return Path(root) / f"iter_{iteration:07d}" / f"mp_rank_{tp:02d}_{pp:03d}.pt"


def _rng_state() -> dict:
    from megatron.core import tensor_parallel

    state = {"cpu": torch.get_rng_state(),
             "tracker": tensor_parallel.get_cuda_rng_tracker().get_states()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    from megatron.core import tensor_parallel

    torch.set_rng_state(state["cpu"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _uses_te_recipe(args) -> bool:
    from quartet_te.integration.megatron import MEGATRON_RECIPES

    return bool(args.fp4) and args.transformer_impl == "transformer_engine" and (
        args.fp4_recipe in MEGATRON_RECIPES)


def _te_rotation_state(args, model) -> dict:
    """TE path: our grad quantizers' rotation states (TE's own extra state does not carry them)."""
    if not _uses_te_recipe(args):
        return {}
    from quartet_te.te import rotation_state_dict

    return rotation_state_dict(unwrap(model))


def save_checkpoint(args, iteration, model, optimizer, scheduler, data) -> None:
    """Per-(TP, PP)-rank file with model (incl. quartet_te rotation states), optimizer, LR
    schedule, data position and RNG states; `latest` names the iteration."""
    from megatron.core import parallel_state as ps

    if ps.get_data_parallel_rank() == 0:
        path = _ckpt_file(args.save, iteration)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"iteration": iteration, "model": unwrap(model).state_dict(),
                    "te_rotation": _te_rotation_state(args, model),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "data": data.sampler._gen.get_state(), "rng": _rng_state(),
                    "args": vars(args)}, path)
    dist.barrier()
    if dist.get_rank() == 0:
        (Path(args.save) / "latest").write_text(str(iteration))
        print(f" saved checkpoint at iteration {iteration} to {args.save}", flush=True)


def load_checkpoint(args, model, optimizer, scheduler, data) -> int:
    """Restore what `save_checkpoint` wrote; returns the iteration to continue from."""
    latest = Path(args.load) / "latest"
    if args.ckpt_step is not None:
        iteration = args.ckpt_step
    elif latest.exists():
        iteration = int(latest.read_text())
    else:
        raise FileNotFoundError(f"--load {args.load}: no 'latest' file (nothing saved there?)")
    if not _ckpt_file(args.load, iteration).exists():
        raise FileNotFoundError(f"--load {args.load}: no checkpoint {_ckpt_file(args.load, iteration)}")
    state = torch.load(_ckpt_file(args.load, iteration), map_location="cpu", weights_only=False)
    unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    data.sampler._gen.set_state(state["data"])
    _set_rng_state(state["rng"])
    if dist.get_rank() == 0:
        print(f" loaded checkpoint from {args.load} at iteration {iteration}", flush=True)
    return iteration, state


def restore_te_rotation(args, model, state, batches, forward_backward) -> None:
    """TE path: TE makes our quantizers at a module's first forward, so run one forward-only
    micro-batch, then load the saved rotation states and put the RNG states back."""
    if not state.get("te_rotation"):
        return
    from quartet_te.te import load_rotation_state_dict

    evaluate(args, model, batches[:1], forward_backward)
    load_rotation_state_dict(unwrap(model), state["te_rotation"])
    _set_rng_state(state["rng"])


# ---------------------------------------------------------------------------------- training
def evaluate(args, model, batches, forward_backward) -> float:
    """Mean validation loss over fixed held-out batches."""
    model.eval()
    losses = []
    with torch.no_grad():
        for mbs in batches:
            out = forward_backward(forward_step_func=forward_step, data_iterator=iter(mbs),
                                   model=[model], num_microbatches=len(mbs),
                                   seq_length=args.seq_length, micro_batch_size=args.micro_batch_size,
                                   forward_only=True)
            losses.append(_mean_loss(out))
    model.train()
    return sum(losses) / len(losses)


def train(args: argparse.Namespace) -> list[dict]:
    """Train; returns the per-iteration records (also written to --loss-log on rank 0)."""
    from megatron.core import parallel_state as ps
    from megatron.core.distributed import finalize_model_grads
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from quartet_te.data import eval_batches

    register()
    init_distributed(args)
    config = transformer_config(args)
    config.finalize_model_grads_func = finalize_model_grads
    model = build_model(args, config)
    optimizer = get_megatron_optimizer(
        OptimizerConfig(optimizer="adam", lr=args.lr, min_lr=args.min_lr,
                        weight_decay=args.weight_decay, adam_beta1=args.adam_beta1,
                        adam_beta2=args.adam_beta2, adam_eps=args.adam_eps,
                        clip_grad=args.clip_grad, bf16=args.bf16,
                        params_dtype=config.params_dtype), [model])
    scheduler = OptimizerParamScheduler(
        optimizer, init_lr=0.0 if args.lr_warmup_iters else args.lr, max_lr=args.lr,
        min_lr=args.min_lr, lr_warmup_steps=args.lr_warmup_iters,
        lr_decay_steps=args.lr_decay_iters, lr_decay_style=args.lr_decay_style,
        start_wd=args.weight_decay, end_wd=args.weight_decay, wd_incr_steps=args.train_iters,
        wd_incr_style="constant")
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else "cpu"
    train_tokens, val_tokens, corpus_text = load_corpus(args)
    data = TextBatches(train_tokens, args, ps.get_data_parallel_rank(), device)
    val = [data.split(x, y) for x, y in eval_batches(val_tokens, args.global_batch_size,
                                                      args.seq_length, args.eval_iters)]
    forward_backward = get_forward_backward_func()
    start = 0
    if args.load:
        start, state = load_checkpoint(args, model, optimizer, scheduler, data)
        restore_te_rotation(args, model, state, val, forward_backward)
    rank0 = dist.get_rank() == 0
    if rank0:
        print(f" corpus: {corpus_text}\n model: {args.num_layers} layers, hidden "
              f"{args.hidden_size}, TP={args.tensor_model_parallel_size} "
              f"PP={args.pipeline_model_parallel_size} DP={args.data_parallel_size}, "
              f"impl={args.transformer_impl}, fp4={args.fp4 and args.fp4_recipe}", flush=True)
    log = open(args.loss_log, "a" if args.load else "w") if (rank0 and args.loss_log) else None
    tokens_per_iter = args.global_batch_size * args.seq_length
    records: list[dict] = []
    for iteration in range(start + 1, args.train_iters + 1):
        t0 = time.perf_counter()
        model.zero_grad_buffer()
        optimizer.zero_grad()
        out = forward_backward(forward_step_func=forward_step, data_iterator=iter(data.next()),
                               model=[model], num_microbatches=args.num_microbatches,
                               seq_length=args.seq_length, micro_batch_size=args.micro_batch_size,
                               forward_only=False)
        ok, grad_norm, _ = optimizer.step()
        scheduler.step(increment=1)
        loss = _mean_loss(out)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        rec = {"iteration": iteration, "loss": loss, "lr": optimizer.param_groups[0]["lr"],
               "grad_norm": None if grad_norm is None else float(grad_norm),
               "iter_ms": 1e3 * dt, "tokens_per_s": tokens_per_iter / dt, "skipped": not ok}
        if torch.cuda.is_available():  # peak since the start: weights, optimizer, activations
            rec["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        last = iteration == args.train_iters
        if (args.eval_interval and iteration % args.eval_interval == 0) or last:
            rec["val_loss"] = evaluate(args, model, val, forward_backward)
        records.append(rec)
        if rank0 and (iteration % args.log_interval == 0 or last):
            val_txt = f" | val loss: {rec['val_loss']:.4f}" if "val_loss" in rec else ""
            mem_txt = f" | peak mem (GiB): {rec['peak_mem_gib']:.2f}" if "peak_mem_gib" in rec else ""
            print(f" iteration {iteration:6d}/{args.train_iters} | elapsed time per iteration (ms): "
                  f"{rec['iter_ms']:.1f} | tokens/s: {rec['tokens_per_s']:.0f} | learning rate: "
                  f"{rec['lr']:.3e} | lm loss: {loss:.4f} | grad norm: {rec['grad_norm'] or 0:.3f}"
                  f"{mem_txt}{val_txt}", flush=True)
        if log:
            log.write(json.dumps(rec) + "\n")
            log.flush()
        if args.save and ((args.save_interval and iteration % args.save_interval == 0) or last):
            save_checkpoint(args, iteration, model, optimizer, scheduler, data)
    if log:
        log.close()
    return records


def main(argv: list[str] | None = None) -> list[dict]:
    """Parse flags, train, tear down the process groups; returns the records."""
    args = parse_args(argv)
    ctx = cpu_device_mode() if not torch.cuda.is_available() else contextlib.nullcontext()
    try:
        with ctx:
            return train(args)
    finally:
        from megatron.core import parallel_state

        if parallel_state.model_parallel_is_initialized():
            parallel_state.destroy_model_parallel()
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
