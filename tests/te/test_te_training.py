"""A 2-layer `te.TransformerLayer` language model trains 200 steps under each recipe.

Task (synthetic, self-contained, learnable only with attention): sequences of 128 byte tokens
whose first half is a sample of a fixed random bigram chain and whose second half repeats the
first half. Margin: the mean loss of the last 20 steps under Quartet II and under the NVFP4
baseline must be within 0.15 nats and 5% of BF16's (same init, same batches). For scale: the
paper's NVFP4-vs-BF16 gaps after full pre-training are 0.055 (Quartet II) and 0.076 nats (NVIDIA);
200 toy steps are noisier, so the margin only catches broken training, and the measured gaps are
printed and recorded in docs/te_gpu_results.md.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from te_helpers import fresh_recipe, needs_te_gpu

pytestmark = [*needs_te_gpu, pytest.mark.slow]

VOCAB, HIDDEN, FFN, HEADS, LAYERS, SEQ, BATCH, STEPS = 256, 256, 1024, 4, 2, 128, 16, 200
MARGIN_NATS, MARGIN_REL = 0.15, 0.05


class TinyTE(nn.Module):
    """Embedding -> 2 te.TransformerLayer -> te.LayerNorm -> BF16 head (the head stays BF16)."""

    def __init__(self) -> None:
        import transformer_engine.pytorch as te

        super().__init__()
        kw = dict(params_dtype=torch.bfloat16, device="cuda")
        self.emb = nn.Embedding(VOCAB, HIDDEN, device="cuda", dtype=torch.bfloat16)
        self.layers = nn.ModuleList(
            te.TransformerLayer(HIDDEN, FFN, HEADS, hidden_dropout=0.0, attention_dropout=0.0,
                                self_attn_mask_type="causal", name=f"layers.{i}", **kw)
            for i in range(LAYERS)
        )
        self.norm = te.LayerNorm(HIDDEN, **kw)
        self.head = nn.Linear(HIDDEN, VOCAB, bias=False, device="cuda", dtype=torch.bfloat16)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.emb(tokens).transpose(0, 1).contiguous()  # (S, B, H)
        for layer in self.layers:
            h = layer(h)
        return self.head(self.norm(h)).transpose(0, 1)


def make_batches(steps: int, seed: int = 0) -> torch.Tensor:
    """(steps, BATCH, SEQ) tokens: a bigram-chain half, then the same half again."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    trans = torch.softmax(torch.randn(VOCAB, VOCAB, device="cuda", generator=gen) * 2.5, dim=-1)
    half = SEQ // 2
    n = steps * BATCH
    tok = torch.randint(0, VOCAB, (n,), device="cuda", generator=gen)
    cols = [tok]
    for _ in range(half - 1):
        tok = torch.multinomial(trans[tok], 1, generator=gen).squeeze(1)
        cols.append(tok)
    first = torch.stack(cols, 1)
    return torch.cat((first, first), 1).view(steps, BATCH, SEQ)


def train(recipe, batches: torch.Tensor, seed: int = 0) -> list[float]:
    """Losses of `STEPS` AdamW steps (recipe None: BF16)."""
    import transformer_engine.pytorch as te

    torch.manual_seed(seed)
    model = TinyTE()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    te_recipe = fresh_recipe(recipe) if recipe is not None else None
    losses = []
    for tokens in batches:
        with te.autocast(enabled=te_recipe is not None, recipe=te_recipe):
            logits = model(tokens[:, :-1])
        loss = nn.functional.cross_entropy(logits.float().reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_training_within_margin_of_bf16():
    batches = make_batches(STEPS)
    tail = lambda losses: sum(losses[-20:]) / 20  # noqa: E731
    ref = train(None, batches)
    assert ref[-1] < ref[0] - 1.0, f"BF16 did not learn: {ref[0]:.3f} -> {ref[-1]:.3f}"
    results = {"bf16": tail(ref)}
    for name in ("quartet2", "nvfp4-sr"):
        losses = train(name, batches)
        assert all(map(lambda v: v == v and v < 1e4, losses)), f"{name}: non-finite loss"
        results[name] = tail(losses)
    print("\nfinal loss (mean of last 20 of 200 steps): " + ", ".join(f"{k}={v:.4f}" for k, v in results.items()))
    for name in ("quartet2", "nvfp4-sr"):
        gap = results[name] - results["bf16"]
        assert gap < MARGIN_NATS and gap < MARGIN_REL * results["bf16"], f"{name}: gap {gap:.4f} nats over BF16"
