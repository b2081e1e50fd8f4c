"""Split, tokenize and write uint16 shards with a manifest; load and verify them."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from .sources import DEFAULT_SOURCES, Document, Source, clean_text

FORMAT = "quartet-te-corpus/1"
EOT_ID = 0  # document separator; byte 0 never survives clean_text
SHARD_MIB = 60  # default shard size limit, in MiB
BPE_EOT = "<|endoftext|>"

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------- split
def is_validation(doc: Document, val_permille: int) -> bool:
    """Whether ``doc`` is held out: the first 4 bytes of sha256("source/doc_id") mod 1000 is
    below ``val_permille``. Depends on nothing but the name, so it is stable across builds."""
    h = hashlib.sha256(f"{doc.source}/{doc.doc_id}".encode()).digest()
    return int.from_bytes(h[:4], "big") % 1000 < val_permille


def _split(docs: list[Document], val_permille: int) -> tuple[list[Document], list[Document]]:
    """Hash split, applied per source; a source with two or more documents but none held out
    gives its lowest-hash document to validation, so every source is represented there."""
    train: list[Document] = []
    val: list[Document] = []
    by_source: dict[str, list[Document]] = {}
    for d in docs:
        by_source.setdefault(d.source, []).append(d)
    for group in by_source.values():
        held = [d for d in group if is_validation(d, val_permille)]
        if val_permille > 0 and not held and len(group) >= 2:
            held = [min(group, key=lambda d: hashlib.sha256(f"{d.source}/{d.doc_id}".encode()).digest())]
        held_ids = {d.doc_id for d in held}
        train.extend(d for d in group if d.doc_id not in held_ids)
        val.extend(d for d in group if d.doc_id in held_ids)
    return train, val


# ------------------------------------------------------------------------------ tokenizers
class _ByteCodec:
    kind = "byte"
    vocab_size = 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16)

    def meta(self) -> dict:
        return {"kind": "byte", "vocab_size": 256, "eot_id": EOT_ID,
                "note": "token = UTF-8 byte; 0 separates documents (never in cleaned text)"}


class _BPECodec:
    kind = "bpe"

    def __init__(self, texts: Iterable[str], vocab: int, out: Path) -> None:
        try:
            from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("--tokenizer bpe needs the 'tokenizers' package: "
                              "pip install torch==2.13.0 tokenizers") from e
        if not 256 < vocab <= 65535:
            raise ValueError(f"BPE vocabulary must be in (256, 65535] to fit uint16, got {vocab}")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=[BPE_EOT], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer=trainer)
        if tok.token_to_id(BPE_EOT) != EOT_ID:
            raise RuntimeError(f"{BPE_EOT} should be token {EOT_ID}")
        self.path = out / "tokenizer.json"
        tok.save(str(self.path))
        self.tok = tok
        self.vocab_size = tok.get_vocab_size()

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tok.encode(text).ids, dtype=np.uint16)

    def meta(self) -> dict:
        return {"kind": "bpe", "vocab_size": self.vocab_size, "eot_id": EOT_ID, "eot": BPE_EOT,
                "file": self.path.name, "sha256": _sha256(self.path),
                "note": "byte-level BPE (tokenizers), trained on the train split only"}


# ---------------------------------------------------------------------------------- shards
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class _ShardWriter:
    """Appends uint16 tokens to ``<split>_NNNNN.bin`` files of at most ``max_bytes`` each."""

    def __init__(self, out: Path, split: str, max_bytes: int) -> None:
        self.out, self.split, self.max_tokens = out, split, max_bytes // 2
        self.shards: list[dict] = []
        self._f = None
        self._n = 0

    def _open(self) -> None:
        name = f"{self.split}_{len(self.shards):05d}.bin"
        self._f = open(self.out / name, "wb")
        self.shards.append({"file": name, "tokens": 0})
        self._n = 0

    def write(self, tokens: np.ndarray) -> None:
        tokens = np.ascontiguousarray(tokens, dtype="<u2")
        while tokens.size:
            if self._f is None or self._n == self.max_tokens:
                self.close_current()
                self._open()
            take = min(tokens.size, self.max_tokens - self._n)
            self._f.write(tokens[:take].tobytes())
            self._n += take
            self.shards[-1]["tokens"] = self._n
            tokens = tokens[take:]

    def close_current(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
            shard = self.shards[-1]
            path = self.out / shard["file"]
            shard.update(bytes=path.stat().st_size, sha256=_sha256(path))

    def finish(self) -> list[dict]:
        self.close_current()
        return self.shards


# ----------------------------------------------------------------------------------- build
def _collect(sources: Sequence[Source], skip_missing: bool, log: Callable[[str], None]
             ) -> tuple[list[Document], list[dict]]:
    docs: list[Document] = []
    info: list[dict] = []
    for src in sources:
        try:
            found = [dataclasses.replace(d, text=clean_text(d.text)) for d in src.read()]
        except FileNotFoundError as e:
            if not skip_missing:
                raise
            log(f"skip {src.name}: {e}")
            continue
        found = sorted((d for d in found if d.text), key=lambda d: d.doc_id)
        ids = [d.doc_id for d in found]
        if len(set(ids)) != len(ids):
            raise ValueError(f"source {src.name} has duplicate document ids")
        docs.extend(found)
        info.append({"name": src.name, "package": src.package, "version": src.version(),
                     "licence": src.licence, "description": src.description,
                     "documents": len(found), "bytes": sum(len(d.text.encode()) for d in found)})
        log(f"{src.name}: {len(found)} documents, {info[-1]['bytes'] / 1e6:.1f} MB")
    if not docs:
        raise FileNotFoundError("no corpus source is installed; see `python -m quartet_te.corpus list`")
    return docs, info


def build(out: Path | str, sources: Sequence[Source] = DEFAULT_SOURCES, tokenizer: str = "byte",
          vocab: int = 8192, val_permille: int = 10, shard_mib: float = SHARD_MIB,
          skip_missing: bool = True, log: Callable[[str], None] | None = None) -> dict:
    """Read, clean and split ``sources``, tokenize, write shards and ``manifest.json`` to ``out``.

    Returns the manifest. ``val_permille`` is the held-out share in thousandths (by documents).
    ``skip_missing``: leave out sources whose package is absent (recorded in the log) instead of
    failing. Progress goes to ``log`` (default: INFO on the ``quartet_te.corpus.shards`` logger).
    The same inputs and arguments give byte-identical output.
    """
    log = logger.info if log is None else log
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stale = [*out.glob("train_*.bin"), *out.glob("val_*.bin"), out / "manifest.json", out / "tokenizer.json"]
    for old in stale:  # a failed build must not leave a manifest that describes old shards
        old.unlink(missing_ok=True)
    docs, info = _collect(sources, skip_missing, log)
    train, val = _split(docs, val_permille)
    if not train or not val:
        raise ValueError(f"val_permille={val_permille} puts {len(train)} of {len(docs)} documents in train and "
                         f"{len(val)} in validation: both splits need documents (use 0 < val_permille < 1000; a "
                         "source needs two documents to be sure of one held out)")
    if tokenizer == "byte":
        codec: _ByteCodec | _BPECodec = _ByteCodec()
    elif tokenizer == "bpe":
        log(f"training BPE (vocab {vocab}) on {len(train)} train documents")
        codec = _BPECodec((d.text for d in train), vocab, out)
    else:
        raise ValueError(f"unknown tokenizer {tokenizer!r}: use 'byte' or 'bpe'")
    max_bytes = int(shard_mib * 2**20)
    splits = {}
    eot = np.array([EOT_ID], dtype=np.uint16)
    for split, part in (("train", train), ("val", val)):
        writer = _ShardWriter(out, split, max_bytes)
        n_tokens = 0
        for d in part:
            toks = codec.encode(d.text)
            writer.write(np.concatenate([toks, eot]))
            n_tokens += toks.size + 1
        splits[split] = {"documents": len(part), "tokens": n_tokens, "shards": writer.finish()}
        log(f"{split}: {len(part)} documents, {n_tokens:,} tokens, {len(splits[split]['shards'])} shards")
    manifest = {
        "format": FORMAT, "dtype": "uint16", "byte_order": "little",
        "tokenizer": codec.meta(), "val_permille": val_permille, "shard_max_bytes": max_bytes,
        "split_rule": "sha256('source/doc_id')[:4] big-endian mod 1000 < val_permille",
        "sources": info, "splits": splits,
        "val_documents": [f"{d.source}/{d.doc_id}" for d in val],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", "utf-8")
    return manifest


# ------------------------------------------------------------------------------------ load
def load_manifest(root: Path | str) -> dict:
    """The ``manifest.json`` of a built corpus, with a clear error if it is not one."""
    path = Path(root) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"no manifest.json in {root}: build it with "
                                f"`python -m quartet_te.corpus build --out {root}`")
    try:
        manifest = json.loads(path.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is damaged (not valid JSON: {exc}); rebuild the corpus with "
                         f"`python -m quartet_te.corpus build --out {root}`") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ValueError(f"{path} is format {got!r}, expected {FORMAT!r}")
    _check_splits(path, manifest)
    return manifest


def _check_splits(path: Path, manifest: dict) -> None:
    """ValueError unless the manifest lists a non-empty train and validation split: a corpus
    without held-out documents cannot give the validation loss every run reports."""
    splits = manifest.get("splits")
    for split in ("train", "val"):
        entry = splits.get(split) if isinstance(splits, dict) else None
        if not isinstance(entry, dict) or not isinstance(entry.get("shards"), list):
            raise ValueError(f"{path} lists no {split!r} split (splits: "
                             f"{sorted(splits) if isinstance(splits, dict) else splits!r}); rebuild the corpus")
        if not entry.get("tokens"):
            hint = (f" (built with val_permille={manifest.get('val_permille')!r}: use --val-permille > 0)"
                    if split == "val" else "")
            raise ValueError(f"{path}: the {split!r} split is empty{hint}; rebuild the corpus")


def verify(root: Path | str) -> list[str]:
    """Problems found (missing shards, wrong sizes or sha256); an empty list means all good."""
    root = Path(root)
    manifest = load_manifest(root)
    problems = []
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            path = root / shard["file"]
            if not path.is_file():
                problems.append(f"missing {shard['file']}")
            elif path.stat().st_size != shard["bytes"] or path.stat().st_size != 2 * shard["tokens"]:
                problems.append(f"wrong size {shard['file']}")
            elif _sha256(path) != shard["sha256"]:
                problems.append(f"sha256 mismatch {shard['file']}")
    return problems


def _load_split(root: Path, shards: list[dict]) -> torch.Tensor:
    arrays = [np.fromfile(root / s["file"], dtype="<u2") for s in shards]
    joined = np.concatenate(arrays) if arrays else np.empty(0, dtype="<u2")
    return torch.from_numpy(joined.astype(np.int32))


def load_shards(root: Path | str, check: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and validation tokens of a built corpus as int32 tensors (uint16 widened, since
    torch indexes uint16 poorly); ``check`` verifies the sha256 of every shard first.

    These plug into ``quartet_te.data.BatchSampler`` / ``eval_batches`` like ``load_splits()``;
    the vocabulary size is ``load_manifest(root)["tokenizer"]["vocab_size"]``.
    """
    root = Path(root)
    manifest = load_manifest(root)
    if check:
        problems = verify(root)
        if problems:
            raise ValueError(f"corpus {root} fails verification: {problems}")
    return (_load_split(root, manifest["splits"]["train"]["shards"]),
            _load_split(root, manifest["splits"]["val"]["shards"]))


def vocab_size(root: Path | str) -> int:
    """The tokenizer's vocabulary size recorded in a built corpus (256 for bytes)."""
    return int(load_manifest(root)["tokenizer"]["vocab_size"])


def corpus_description(root: Path | str) -> str:
    """One line naming a built corpus (sources, tokenizer, token counts), for logs and plots."""
    m = load_manifest(root)
    names = ", ".join(s["name"] for s in m["sources"])
    sp = m["splits"]
    return (f"offline corpus {Path(root).name} ({names}); {m['tokenizer']['kind']} tokens, vocab "
            f"{m['tokenizer']['vocab_size']}; train {sp['train']['tokens']:,} / val {sp['val']['tokens']:,} "
            f"tokens, validation = {sp['val']['documents']} held-out documents")


def decode_bytes(tokens: torch.Tensor | np.ndarray | Sequence[int]) -> list[str]:
    """Byte-tokenizer tokens back to the documents' text (split at the end-of-text token)."""
    data = bytes(int(t) for t in (tokens.tolist() if hasattr(tokens, "tolist") else tokens))
    return [p.decode("utf-8", errors="replace") for p in data.split(bytes([EOT_ID]))[:-1]] if data else []
