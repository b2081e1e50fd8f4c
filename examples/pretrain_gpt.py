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

Runs longer than one machine (docs/evidence_plan.md): `--exp-avg-dtype bf16 --exp-avg-sq-dtype
bf16` trains with BF16 Adam moments (8 bytes of state per parameter with the FP32 masters),
`--ckpt-part-mib N` writes checkpoints in parts of N MiB, `--exit-duration-in-mins` /
`--exit-interval` save and stop, and `--load` continues bit for bit.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import os
import random
import socket
import sys
import time
import zlib
from pathlib import Path
from typing import Any, Iterator

_T0 = time.time()  # process start, for --exit-duration-in-mins (before the slow imports)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from quartet_te.integration.megatron import MEGATRON_RECIPES, register, set_quantizer_seed  # noqa: E402
from quartet_te.integration.megatron.cpu import cpu_device_mode, enable_cpu_mode  # noqa: E402


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
    par.add_argument("--fp4-recipe", default=None, choices=[*MEGATRON_RECIPES, "nvfp4", "custom"],
                     help="quartet2, quartet2-rot, quartet2-no46, nvfp4-sr (ours); nvfp4 (the default "
                          "with --fp4-format), custom (Megatron's, TE only). Needs --fp4-format e2m1")
    par.add_argument("--fp4-quantizer-factory", default=None)
    par.add_argument("--fp4-seed", type=int, default=None,
                     help="base seed of our recipes' random streams (rotations, stochastic "
                          "rounding); default: the recipe's own (0). Give each --seed its own to "
                          "make seeds independent in the quantizers too")
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
    t.add_argument("--data-seed", type=int, default=None,
                   help="seed of the training-batch order (default: --seed); fix it to give runs of "
                        "different --seed the same data order")
    t.add_argument("--exp-avg-dtype", choices=["fp32", "bf16"], default="fp32",
                   help="storage dtype of Adam's first moment. bf16 (either moment): the driver's "
                        "AdamW (LowPrecisionAdamW) keeps the moment in BF16 during training, "
                        "computing in FP32, on CPU and GPU alike; fp32 for both: Megatron's Adam")
    t.add_argument("--exp-avg-sq-dtype", choices=["fp32", "bf16"], default="fp32",
                   help="storage dtype of Adam's second moment (see --exp-avg-dtype)")
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
    io.add_argument("--ckpt-part-mib", type=int, default=0,
                    help="write each checkpoint file as parts of at most this many MiB plus a "
                         "sha256 index (<file>.parts.json); 0: one file")
    io.add_argument("--exit-interval", type=int, default=0,
                    help="stop (after saving, with --save) once the iteration is a multiple of this")
    io.add_argument("--exit-duration-in-mins", type=float, default=0.0,
                    help="stop (after saving, with --save) at the first iteration that ends this many "
                         "minutes after the process started")
    io.add_argument("--telemetry-csv", default=None,
                    help="per-GEMM quantization telemetry (docs/telemetry.md) of the last "
                         "--telemetry-last-iters iterations, appended to this CSV (FP4 runs)")
    io.add_argument("--telemetry-last-iters", type=int, default=1)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check flags (clear errors for inconsistent sizes)."""
    args = build_parser().parse_args(argv)
    args.ffn_hidden_size = args.ffn_hidden_size or 4 * args.hidden_size
    args.max_position_embeddings = args.max_position_embeddings or args.seq_length
    args.num_query_groups = args.num_query_groups or args.num_attention_heads
    args.lr_decay_iters = args.lr_decay_iters or args.train_iters
    args.data_seed = args.seed if args.data_seed is None else args.data_seed
    if args.fp4_recipe is not None and args.fp4 is None:
        raise ValueError(f"--fp4-recipe {args.fp4_recipe} needs --fp4-format e2m1 (without it the run "
                         "would be BF16); drop --fp4-recipe for a BF16 run")
    args.fp4_recipe = args.fp4_recipe or "nvfp4"
    if args.fp4_seed is not None and not (args.fp4 and args.fp4_recipe in MEGATRON_RECIPES):
        raise ValueError(f"--fp4-seed seeds quartet_te's recipes ({', '.join(MEGATRON_RECIPES)}); "
                         f"this run has {'--fp4-recipe ' + args.fp4_recipe if args.fp4 else 'no FP4'}")
    if args.fp4_seed is not None and args.fp4_quantizer_factory:
        raise ValueError("--fp4-seed does not reach --fp4-quantizer-factory (the factory owns its "
                         "recipe and seed); drop one of them")
    if args.transformer_impl is None:
        args.transformer_impl = "transformer_engine" if _have_te() else "local"
    elif args.transformer_impl == "transformer_engine" and not _have_te():
        # Fail here, not with Megatron's NameError (TESpecProvider) while it builds the model.
        raise ValueError("--transformer-impl transformer_engine needs Transformer Engine on a CUDA GPU: "
                         f"{_te_missing_reason()}. Use --transformer-impl local (Megatron's local "
                         "layers, which run our recipes too) or install TE: pip install "
                         "--no-build-isolation transformer-engine[pytorch]")
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
    return not _te_missing_reason()


def _te_missing_reason() -> str:
    """Why TE layers cannot run here ("" if they can)."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    from quartet_te.te import is_available

    return is_available(return_reason=True)[1]


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
    random.seed(args.seed)  # as Megatron-LM's _set_random_seed: Python, NumPy, torch, CUDA
    with contextlib.suppress(ImportError):
        import numpy as np

        np.random.seed(args.seed)
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

        self.sampler = BatchSampler(tokens, args.global_batch_size, args.seq_length, seed=args.data_seed)
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


# ---------------------------------------------------------------------------------- optimizer
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class LowPrecisionAdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay, torch.optim.AdamW's update) whose moments are *stored* in a
    low-precision dtype (BF16) and computed in FP32: each step reads the stored moments, updates
    them in FP32, applies the update with those FP32 values and stores them rounded to nearest.
    The stored moments are the whole optimizer state, so a checkpoint of them (8 bytes per
    parameter with the FP32 master weights) resumes bit for bit. Pure PyTorch (foreach ops): the
    same code on CPU and GPU. Megatron's mixed-precision wrapper stays around it (FP32 master
    weights, gradient clipping, the BF16 copy into the model after each step).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 exp_avg_dtype=torch.bfloat16, exp_avg_sq_dtype=torch.bfloat16):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.moment_dtypes = {"exp_avg": exp_avg_dtype, "exp_avg_sq": exp_avg_sq_dtype}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)  # torch casts the moments to the parameter's dtype
        for state in self.state.values():
            if "step" in state:
                state["step"] = int(state["step"])
            for key, dtype in self.moment_dtypes.items():
                if key in state:
                    state[key] = state[key].to(dtype)  # lossless: the saved values are in dtype

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("LowPrecisionAdamW.step takes no closure")
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            beta1, beta2 = group["betas"]
            grads = [p.grad.float() for p in params]
            states = [self.state[p] for p in params]
            for p, st in zip(params, states):
                if not st:
                    st["step"] = 0
                    for key, dtype in self.moment_dtypes.items():
                        st[key] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
                st["step"] += 1
            m = [st["exp_avg"].float() for st in states]
            v = [st["exp_avg_sq"].float() for st in states]
            torch._foreach_lerp_(m, grads, 1 - beta1)
            torch._foreach_mul_(v, beta2)
            torch._foreach_addcmul_(v, grads, grads, value=1 - beta2)
            if group["weight_decay"]:
                torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
            for steps in sorted({st["step"] for st in states}):  # one value unless params joined late
                idx = [i for i, st in enumerate(states) if st["step"] == steps]
                bc1, bc2 = 1 - beta1 ** steps, 1 - beta2 ** steps
                denom = torch._foreach_sqrt([v[i] for i in idx])
                torch._foreach_div_(denom, bc2 ** 0.5)
                torch._foreach_add_(denom, group["eps"])
                torch._foreach_addcdiv_([params[i] for i in idx], [m[i] for i in idx], denom,
                                        value=-group["lr"] / bc1)
            torch._foreach_copy_([st["exp_avg"] for st in states], m)
            torch._foreach_copy_([st["exp_avg_sq"] for st in states], v)
        return None


def use_low_precision_adam(args: argparse.Namespace, optimizer: Any) -> None:
    """Swap the inner Adam of each of Megatron's (chained) optimizers for `LowPrecisionAdamW`
    over the same parameter groups (the FP32 master weights; the LR scheduler keeps writing
    their lr and weight decay). Only where --exp-avg-dtype / --exp-avg-sq-dtype ask for it."""
    if args.exp_avg_dtype == "fp32" and args.exp_avg_sq_dtype == "fp32":
        return
    for sub in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = sub.optimizer
        if inner is None:
            continue
        if inner.state:
            raise RuntimeError("use_low_precision_adam must run before the first optimizer step")
        sub.optimizer = LowPrecisionAdamW(
            inner.param_groups, lr=args.lr, betas=(args.adam_beta1, args.adam_beta2),
            eps=args.adam_eps, weight_decay=args.weight_decay,
            exp_avg_dtype=_DTYPES[args.exp_avg_dtype], exp_avg_sq_dtype=_DTYPES[args.exp_avg_sq_dtype])


# ------------------------------------------------------------------------------- checkpoints
def _ckpt_file(root: str, iteration: int) -> Path:
    from megatron.core import parallel_state as ps

    tp, pp = ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank()
    return Path(root) / f"iter_{iteration:07d}" / f"mp_rank_{tp:02d}_{pp:03d}.pt"


def _rng_state() -> dict:
    from megatron.core import tensor_parallel

    state = {"cpu": torch.get_rng_state(), "python": random.getstate(),
             "tracker": tensor_parallel.get_cuda_rng_tracker().get_states()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    with contextlib.suppress(ImportError):
        import numpy as np

        state["numpy"] = np.random.get_state()
    return state


def _set_rng_state(state: dict) -> None:
    from megatron.core import tensor_parallel

    torch.set_rng_state(state["cpu"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    if "python" in state:
        random.setstate(state["python"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])


def _write_ckpt(obj: dict, path: Path, part_mib: int) -> None:
    """torch.save `obj` to `path`, or with part_mib > 0 to `path.000`, `path.001`, ... (each at
    most part_mib MiB) plus `path.parts.json` ({parts, bytes, sha256} of the whole stream)."""
    if part_mib <= 0:
        torch.save(obj, path)
        return
    buf = io.BytesIO()
    torch.save(obj, buf)
    data, step = buf.getbuffer(), part_mib << 20
    names = []
    for i, off in enumerate(range(0, len(data), step)):
        names.append(f"{path.name}.{i:03d}")
        (path.parent / names[-1]).write_bytes(data[off:off + step])
    index = {"parts": names, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (path.parent / f"{path.name}.parts.json").write_text(json.dumps(index, indent=1) + "\n")


def read_ckpt(path: str | Path) -> dict:
    """A checkpoint file written by `_write_ckpt`: whole, or reassembled from its parts (the
    sha256 of the index is checked)."""
    path = Path(path)
    if path.exists():
        return torch.load(path, map_location="cpu", weights_only=False)
    index_file = path.parent / f"{path.name}.parts.json"
    if not index_file.exists():
        raise FileNotFoundError(f"no checkpoint {path} (nor {index_file.name})")
    index = json.loads(index_file.read_text())
    data = b"".join((path.parent / name).read_bytes() for name in index["parts"])
    if len(data) != index["bytes"] or hashlib.sha256(data).hexdigest() != index["sha256"]:
        raise ValueError(f"{path}: parts do not match {index_file.name} (size or sha256)")
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)


def _ckpt_exists(path: Path) -> bool:
    return path.exists() or (path.parent / f"{path.name}.parts.json").exists()


def _model_state(model: torch.nn.Module) -> dict:
    """The model's state dict without the BF16 parameters that have FP32 master weights in the
    optimizer (they are those masters rounded to BF16, restored from them on load)."""
    return {k: v.detach() if isinstance(v, torch.Tensor) else v
            for k, v in unwrap(model).state_dict(keep_vars=True).items() if not hasattr(v, "main_param")}


def _load_model_state(model: torch.nn.Module, state: dict) -> None:
    """Load `_model_state` output (or a full state dict); the left-out BF16 parameters come next
    from their masters (`_copy_masters_to_model`)."""
    inner = unwrap(model)
    missing, unexpected = inner.load_state_dict(state, strict=False)
    masters = {k for k, v in inner.state_dict(keep_vars=True).items() if hasattr(v, "main_param")}
    if unexpected or set(missing) - masters:
        raise KeyError(f"checkpoint does not match the model: missing {sorted(set(missing) - masters)[:5]}, "
                       f"unexpected {sorted(unexpected)[:5]}")


def _copy_masters_to_model(model: torch.nn.Module) -> None:
    """BF16 parameters := their FP32 masters rounded to nearest (the copy Megatron's optimizer
    makes after every step)."""
    with torch.no_grad():
        for p in unwrap(model).parameters():
            if hasattr(p, "main_param"):
                p.copy_(p.main_param)


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
    """Per-(TP, PP)-rank file with model (incl. quartet_te rotation states; BF16 parameters only
    as their FP32 masters in the optimizer state), optimizer, LR schedule, data position and RNG
    states (torch CPU/CUDA, Megatron's tracker, Python, NumPy); `latest` names the iteration.
    With --ckpt-part-mib the file is written in parts (`_write_ckpt`)."""
    from megatron.core import parallel_state as ps

    if ps.get_data_parallel_rank() == 0:
        path = _ckpt_file(args.save, iteration)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_ckpt({"iteration": iteration, "model": _model_state(model),
                     "te_rotation": _te_rotation_state(args, model),
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "data": data.sampler._gen.get_state(), "rng": _rng_state(),
                     "args": vars(args)}, path, args.ckpt_part_mib)
    dist.barrier()
    if dist.get_rank() == 0:
        tmp = Path(args.save) / "latest.tmp"
        tmp.write_text(str(iteration))
        tmp.replace(Path(args.save) / "latest")
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
    if not _ckpt_exists(_ckpt_file(args.load, iteration)):
        raise FileNotFoundError(f"--load {args.load}: no checkpoint {_ckpt_file(args.load, iteration)}")
    state = read_ckpt(_ckpt_file(args.load, iteration))
    _load_model_state(model, state["model"])
    optimizer.load_state_dict(state["optimizer"])
    _copy_masters_to_model(model)
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


def _attach_telemetry(args: argparse.Namespace, model: torch.nn.Module) -> Any:
    """A `quartet_te.telemetry.Telemetry` sampling every backward step, hooked to every
    quantized linear (Megatron's local linears, or TE modules under our recipe), or None while
    there is nothing to hook (TE builds its quantizers at a module's first forward)."""
    from quartet_te.telemetry import LayerProbe, Telemetry, _draws

    inner = unwrap(model)
    local = [m for m in inner.modules()
             if getattr(m, "quartet_rotation", None) is not None and getattr(m, "quartet_recipe", None) is not None]
    te_built = any(isinstance(getattr(m, "quantizers", None), dict) for m in inner.modules())
    if not local and not te_built:
        return None
    path = args.telemetry_csv
    if dist.get_world_size() > 1:
        path = f"{path}.rank{dist.get_rank()}"
    tel = Telemetry(every=1, csv_path=path, console=False)
    try:
        for m in local:  # Telemetry.attach hooks QuartetLinear and TE modules; these carry the same state
            tel._hook(m.quartet_rotation, "telemetry",
                      LayerProbe(tel, m.quartet_name, m.quartet_rotation, _draws(m.quartet_recipe)))
        if not local:
            tel.attach(inner)
    except ValueError:
        tel.detach()
        tel.close()
        return None
    return tel


def _should_exit(args: argparse.Namespace, iteration: int) -> bool:
    """--exit-interval / --exit-duration-in-mins reached (the same answer on every rank)."""
    stop = bool(args.exit_interval and iteration % args.exit_interval == 0)
    if args.exit_duration_in_mins:
        late = (time.time() - _T0) / 60.0 >= args.exit_duration_in_mins
        dev = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else "cpu"
        flag = torch.tensor([float(late or stop)], device=dev)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        stop = bool(flag.item())
    return stop


def train(args: argparse.Namespace) -> list[dict]:
    """Train; returns the per-iteration records (also written to --loss-log on rank 0)."""
    from megatron.core import parallel_state as ps
    from megatron.core.distributed import finalize_model_grads
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from quartet_te.data import eval_batches

    register()
    set_quantizer_seed(args.fp4_seed)
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
    use_low_precision_adam(args, optimizer)
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
    tel = None
    for iteration in range(start + 1, args.train_iters + 1):
        if (args.telemetry_csv and args.fp4 and tel is None
                and iteration > args.train_iters - args.telemetry_last_iters):
            tel = _attach_telemetry(args, model)  # measures, never alters, the GEMMs
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
        if tel is not None:  # telemetry's reference GEMMs add memory: summaries leave these out
            rec["telemetry"] = True
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
        saved = bool(args.save and ((args.save_interval and iteration % args.save_interval == 0) or last))
        if saved:
            save_checkpoint(args, iteration, model, optimizer, scheduler, data)
        if not last and _should_exit(args, iteration):
            if args.save and not saved:
                save_checkpoint(args, iteration, model, optimizer, scheduler, data)
            if rank0:
                print(f" exiting at iteration {iteration} of {args.train_iters} (--exit-interval / "
                      f"--exit-duration-in-mins)", flush=True)
            break
    if tel is not None:
        tel.detach()
        tel.close()
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
