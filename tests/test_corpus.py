"""quartet_te.corpus on a tiny synthetic corpus (fast, no corpus packages needed), plus a slow
smoke test on the real sources where they are installed."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from quartet_te import corpus
from quartet_te.corpus import Document, Source

ALPHA_DOCS = {f"doc{i:02d}.txt": f"Alpha document {i}.\r\nIt has  café lines.\t \n\n\n\nThe end {i}." * (20 + i)
              for i in range(30)}
BETA_DOCS = {f"b{i}.txt": f"*** START OF THE PROJECT GUTENBERG EBOOK B{i} ***\nBeta text number {i}, "
             f"with a dash — here.\n*** END OF THE PROJECT GUTENBERG EBOOK B{i} ***\nlicence junk\n" * 1
             for i in range(12)}


def _sources(tmp_path: Path) -> tuple[Source, ...]:
    """Two directory sources written by the test, read through the same file reader as the
    real Python/Perl documentation sources."""
    out = []
    for name, files in (("alpha", ALPHA_DOCS), ("beta", BETA_DOCS)):
        root = tmp_path / "src" / name
        root.mkdir(parents=True, exist_ok=True)
        for fname, text in files.items():
            (root / fname).write_text(text, "utf-8")
        out.append(Source(name, f"pip:{name}-not-a-package", "test", f"synthetic {name}",
                          corpus.read_files(name, f"pip:{name}-not-a-package", root, ["*.txt"])))
    return tuple(out)


def _build(tmp_path: Path, out: str = "out", **kw) -> tuple[Path, dict]:
    root = tmp_path / out
    manifest = corpus.build(root, _sources(tmp_path), log=lambda m: None, **kw)
    return root, manifest


def test_clean_text() -> None:
    raw = "header\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\r\nBody  \x00line\t\n\n\n\nMore\n" \
          "*** END OF THE PROJECT GUTENBERG EBOOK X ***\nfooter"
    assert corpus.clean_text(raw) == "Body  line\n\nMore\n"
    assert corpus.clean_text(" \n\n") == ""


def test_shards_respect_size_limit_and_checksums(tmp_path: Path) -> None:
    limit_mib = 1 / 1024  # 1 KiB shards, so the tiny corpus spans several
    root, manifest = _build(tmp_path, val_permille=200, shard_mib=limit_mib)
    shards = manifest["splits"]["train"]["shards"]
    assert len(shards) > 3
    for split in manifest["splits"].values():
        for s in split["shards"]:
            size = (root / s["file"]).stat().st_size
            assert size <= 1024 and size == 2 * s["tokens"] == s["bytes"]
        assert sum(s["tokens"] for s in split["shards"]) == split["tokens"]
    assert corpus.verify(root) == []
    # a flipped byte is caught
    victim = root / shards[1]["file"]
    data = bytearray(victim.read_bytes())
    data[0] ^= 1
    victim.write_bytes(bytes(data))
    assert any("sha256" in p for p in corpus.verify(root))
    with pytest.raises(ValueError, match="verification"):
        corpus.load_shards(root, check=True)


def test_byte_round_trip_and_split(tmp_path: Path) -> None:
    root, manifest = _build(tmp_path, val_permille=200)
    train, val = corpus.load_shards(root, check=True)
    assert train.dtype == val.dtype and int(train.max()) < 256
    assert train.numel() == manifest["splits"]["train"]["tokens"]
    expected = {f"alpha/{k}": corpus.clean_text(v) for k, v in ALPHA_DOCS.items()}
    expected |= {f"beta/{k}": corpus.clean_text(v) for k, v in BETA_DOCS.items()}
    val_ids = manifest["val_documents"]
    train_ids = sorted(set(expected) - set(val_ids))
    # both sources are represented in validation; splits are disjoint by document
    assert {v.split("/")[0] for v in val_ids} == {"alpha", "beta"}
    assert corpus.decode_bytes(val) == [expected[k] for k in val_ids]
    train_docs = corpus.decode_bytes(train)
    assert train_docs == [expected[k] for k in train_ids]
    assert not set(train_docs) & set(corpus.decode_bytes(val))
    assert all("GUTENBERG" not in d and "licence junk" not in d for d in train_docs)
    assert sum(s["documents"] for s in manifest["sources"]) == len(expected)
    assert corpus.vocab_size(root) == 256 and "alpha, beta" in corpus.corpus_description(root)


def test_split_is_by_name_only() -> None:
    doc = Document("alpha", "doc01.txt", "x")
    assert corpus.is_validation(doc, 1000) and not corpus.is_validation(doc, 0)
    assert corpus.is_validation(doc, 37) == corpus.is_validation(Document("alpha", "doc01.txt", "other"), 37)


def test_every_source_in_validation(tmp_path: Path) -> None:
    _, manifest = _build(tmp_path, val_permille=1)  # too small for the hash alone
    assert sorted(v.split("/")[0] for v in manifest["val_documents"]) == ["alpha", "beta"]
    assert manifest["splits"]["val"]["documents"] == 2


def test_deterministic(tmp_path: Path) -> None:
    a, ma = _build(tmp_path, "a", val_permille=150)
    b, mb = _build(tmp_path, "b", val_permille=150)
    assert json.dumps(ma, sort_keys=True) == json.dumps(mb, sort_keys=True)
    for s in ma["splits"]["train"]["shards"] + ma["splits"]["val"]["shards"]:
        assert (a / s["file"]).read_bytes() == (b / s["file"]).read_bytes()


def test_missing_source_is_named(tmp_path: Path) -> None:
    gone = Source("gone", "apt:no-such-package", "-", "-",
                  corpus.read_files("gone", "apt:no-such-package", tmp_path / "nope", ["*.txt"]))
    with pytest.raises(FileNotFoundError, match="apt-get install no-such-package"):
        corpus.build(tmp_path / "o", (gone,), skip_missing=False, log=lambda m: None)
    root = tmp_path / "o2"
    manifest = corpus.build(root, (gone,) + _sources(tmp_path), log=lambda m: None)
    assert [s["name"] for s in manifest["sources"]] == ["alpha", "beta"]
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        corpus.load_shards(tmp_path / "nothing-here")


def test_bpe(tmp_path: Path) -> None:
    pytest.importorskip("tokenizers")
    root, manifest = _build(tmp_path, tokenizer="bpe", vocab=300, val_permille=200)
    again, manifest2 = _build(tmp_path, "again", tokenizer="bpe", vocab=300, val_permille=200)
    assert manifest == manifest2  # includes tokenizer.json's and every shard's sha256
    tok = manifest["tokenizer"]
    assert tok["kind"] == "bpe" and tok["vocab_size"] <= 300 and (root / "tokenizer.json").is_file()
    from tokenizers import Tokenizer

    t = Tokenizer.from_file(str(root / "tokenizer.json"))
    train, _ = corpus.load_shards(root, check=True)
    first = train[: int(np.argmax(train.numpy() == corpus.EOT_ID))].tolist()
    assert t.decode(first) == corpus.clean_text(ALPHA_DOCS[[k for k in sorted(ALPHA_DOCS)
                                                            if f"alpha/{k}" not in manifest["val_documents"]][0]])


@pytest.mark.slow
def test_real_corpus_smoke(tmp_path: Path) -> None:
    """Build from whichever real sources are installed (skips when none is)."""
    small = [s for s in corpus.DEFAULT_SOURCES if s.name in {"jargon", "devil", "shakespeare"}]
    try:
        manifest = corpus.build(tmp_path / "real", small, log=lambda m: None)
    except FileNotFoundError:
        pytest.skip("no real corpus source installed")
    assert manifest["splits"]["train"]["tokens"] > 100_000 and manifest["splits"]["val"]["tokens"] > 0
    assert corpus.verify(tmp_path / "real") == []


def test_damaged_manifest_is_named(tmp_path: Path) -> None:
    """A truncated manifest.json used to surface as a bare JSONDecodeError."""
    root, _ = _build(tmp_path, val_permille=200)
    path = root / "manifest.json"
    path.write_text(path.read_text("utf-8")[:200], "utf-8")
    with pytest.raises(ValueError, match=r"manifest.json is damaged \(not valid JSON.*rebuild"):
        corpus.load_shards(root)
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match="is damaged"):
        corpus.verify(root)
    path.write_text("[1, 2]", "utf-8")
    with pytest.raises(ValueError, match="is format 'list', expected 'quartet-te-corpus/1'"):
        corpus.load_manifest(root)


def test_corpus_without_validation_split_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"val_permille=0 puts 42 of 42 documents in train and 0 in validation"):
        _build(tmp_path, "none", val_permille=0)
    with pytest.raises(ValueError, match=r"val_permille=1000 puts 0 of 42 documents in train"):
        _build(tmp_path, "all", val_permille=1000)
    root, manifest = _build(tmp_path, val_permille=200)
    path = root / "manifest.json"
    empty = json.loads(json.dumps(manifest))
    empty["splits"]["val"].update(documents=0, tokens=0, shards=[])
    path.write_text(json.dumps(empty), "utf-8")
    with pytest.raises(ValueError, match=r"the 'val' split is empty \(built with val_permille=200"):
        corpus.load_shards(root)
    del empty["splits"]["val"]
    path.write_text(json.dumps(empty), "utf-8")
    with pytest.raises(ValueError, match=r"lists no 'val' split \(splits: \['train'\]\)"):
        corpus.load_shards(root)
