"""Pack a built corpus small enough to copy to another machine, and unpack it back to verified shards.

A byte-token corpus stores each token in a uint16 whose high byte is always zero, and English
text compresses about 4x: `pack` narrows tokens to the smallest unsigned dtype that holds the
vocabulary and LZMA-compresses each shard (the 280 MB byte corpus packs into ~31 MB). `unpack`
rebuilds the exact uint16 shards and checks every sha256 against the corpus's own
`manifest.json`, so a damaged or partial transfer fails loudly.
"""
from __future__ import annotations

import json
import lzma
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from .shards import _sha256, load_manifest, verify

PACK_FORMAT = "quartet-te-corpus-pack/1"
PACK_INDEX = "pack.json"
_SIDE_FILES = ("manifest.json", "tokenizer.json")  # travel as they are (BPE needs its tokenizer)


def _narrow_dtype(vocab_size: int) -> str:
    return "u1" if vocab_size <= 256 else "<u2"


def _compress_one(job: tuple[str, str, str, int]) -> int:
    src, dst, dtype, preset = job
    tokens = np.fromfile(src, dtype="<u2")
    if tokens.size and int(tokens.max()) > np.iinfo(dtype).max:
        raise ValueError(f"{src}: token {int(tokens.max())} does not fit {dtype}")
    Path(dst).write_bytes(lzma.compress(tokens.astype(dtype).tobytes(), preset=preset))
    return Path(dst).stat().st_size


def pack(src: Path | str, out: Path | str, preset: int = 6, max_part_mib: float = 60.0,
         workers: int = 2) -> dict:
    """Write ``out/`` = manifest.json (+ tokenizer.json) + pack.json + one ``<shard>.xz`` per shard; returns pack.json.

    Raises if ``src`` fails verification or a compressed part exceeds ``max_part_mib``.
    """
    src, out = Path(src), Path(out)
    problems = verify(src)
    if problems:
        raise ValueError(f"corpus {src} fails verification, not packing it: {problems}")
    manifest = load_manifest(src)
    dtype = _narrow_dtype(int(manifest["tokenizer"]["vocab_size"]))
    out.mkdir(parents=True, exist_ok=True)
    shards = [s for split in manifest["splits"].values() for s in split["shards"]]
    jobs = [(str(src / s["file"]), str(out / (s["file"] + ".xz")), dtype, preset) for s in shards]
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        sizes = list(pool.map(_compress_one, jobs))
    limit = int(max_part_mib * 2**20)
    too_big = [s["file"] for s, n in zip(shards, sizes) if n > limit]
    if too_big:
        raise ValueError(f"packed parts over {max_part_mib} MiB: {too_big}; rebuild with smaller "
                         "--shard-mib")
    for extra in _SIDE_FILES:
        if (src / extra).is_file():
            shutil.copyfile(src / extra, out / extra)
    index = {"format": PACK_FORMAT, "dtype": dtype, "codec": f"xz-preset{preset}",
             "parts": [{"shard": s["file"], "file": s["file"] + ".xz", "bytes": n,
                        "sha256": _sha256(out / (s["file"] + ".xz"))} for s, n in zip(shards, sizes)]}
    (out / PACK_INDEX).write_text(json.dumps(index, indent=1) + "\n", "utf-8")
    return index


def unpack(packed: Path | str, out: Path | str) -> Path:
    """Rebuild the uint16 shards of a packed corpus in ``out`` and verify them; returns ``out``."""
    packed, out = Path(packed), Path(out)
    index_path = packed / PACK_INDEX
    if not index_path.is_file():
        raise FileNotFoundError(f"no {PACK_INDEX} in {packed}: make it with "
                                "`python -m quartet_te.corpus pack SRC OUT`")
    index = json.loads(index_path.read_text("utf-8"))
    if index.get("format") != PACK_FORMAT:
        raise ValueError(f"{index_path} is format {index.get('format')!r}, expected {PACK_FORMAT!r}")
    load_manifest(packed)  # the corpus manifest travels with the pack
    out.mkdir(parents=True, exist_ok=True)
    for part in index["parts"]:
        path = packed / part["file"]
        if not path.is_file() or _sha256(path) != part["sha256"]:
            raise ValueError(f"packed part {part['file']} is missing or damaged")
        tokens = np.frombuffer(lzma.decompress(path.read_bytes()), dtype=index["dtype"])
        tokens.astype("<u2").tofile(out / part["shard"])
    for extra in _SIDE_FILES:
        if (packed / extra).is_file():
            shutil.copyfile(packed / extra, out / extra)
    problems = verify(out)
    if problems:
        raise ValueError(f"unpacked corpus {out} fails verification: {problems}")
    return out
