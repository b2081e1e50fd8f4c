"""quartet_te.corpus.pack: packed corpora unpack to the exact shards, and damage is caught."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from quartet_te import corpus
from quartet_te.corpus.__main__ import _main

from test_corpus import _build


def _files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


@pytest.mark.parametrize("tokenizer", ["byte", "bpe"])
def test_pack_round_trip_is_exact(tmp_path: Path, tokenizer: str) -> None:
    if tokenizer == "bpe":
        pytest.importorskip("tokenizers")
    root, manifest = _build(tmp_path, tokenizer=tokenizer, vocab=300, val_permille=200,
                            shard_mib=1 / 256)
    index = corpus.pack(root, tmp_path / "packed", workers=1)
    assert index["dtype"] == ("u1" if tokenizer == "byte" else "<u2")
    assert len(index["parts"]) == sum(len(s["shards"]) for s in manifest["splits"].values()) > 2
    if tokenizer == "byte":  # narrowing + xz: the packed corpus is much smaller than the shards
        packed_bytes = sum(p["bytes"] for p in index["parts"])
        assert packed_bytes < 0.25 * sum(s["tokens"] * 2 for s in manifest["splits"].values()
                                         for s in s["shards"])
    out = corpus.unpack(tmp_path / "packed", tmp_path / "restored")
    assert _files(out) == _files(root)  # every shard, manifest.json and tokenizer.json


def test_damaged_part_is_named(tmp_path: Path) -> None:
    root, _ = _build(tmp_path, val_permille=200)
    index = corpus.pack(root, tmp_path / "packed", workers=1)
    victim = tmp_path / "packed" / index["parts"][0]["file"]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x40
    victim.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=index["parts"][0]["file"]):
        corpus.unpack(tmp_path / "packed", tmp_path / "restored")


def test_unpack_rejects_non_pack(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="pack.json"):
        corpus.unpack(tmp_path, tmp_path / "out")
    (tmp_path / "pack.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="format"):
        corpus.unpack(tmp_path, tmp_path / "out")


def test_pack_refuses_corrupt_corpus(tmp_path: Path) -> None:
    root, manifest = _build(tmp_path, val_permille=200)
    shard = root / manifest["splits"]["train"]["shards"][0]["file"]
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(ValueError, match="verification"):
        corpus.pack(root, tmp_path / "packed", workers=1)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, _ = _build(tmp_path, val_permille=200)
    assert _main(["pack", str(root), str(tmp_path / "p"), "--workers", "1"]) == 0
    assert _main(["unpack", str(tmp_path / "p"), str(tmp_path / "r")]) == 0
    assert "all shards match" in capsys.readouterr().out
    assert _files(tmp_path / "r") == _files(root)
