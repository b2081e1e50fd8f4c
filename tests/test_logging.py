"""Library code logs through `logging` and never prints; only command-line entry points
(`__main__.py` files and modules run with `python -m`) write to stdout/stderr themselves."""
from __future__ import annotations

import ast
import logging
import subprocess
import sys
from pathlib import Path

from quartet_te import corpus

from test_corpus import _sources

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = [ROOT / "quartet_te", ROOT / "recipes", ROOT / "integration"]


def _is_cli(tree: ast.Module, path: Path) -> bool:
    """`__main__.py`, or a module with an `if __name__ == "__main__":` block (python -m ...)."""
    if path.name == "__main__.py":
        return True
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare):
            left = node.test.left
            if isinstance(left, ast.Name) and left.id == "__name__":
                return True
    return False


def test_library_modules_do_not_print():
    """No `print` (called or passed as a callback, e.g. `log=print`) outside CLI modules."""
    offenders = []
    for folder in LIBRARY:
        for path in sorted(folder.rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            if _is_cli(tree, path):
                continue
            offenders += [f"{path.relative_to(ROOT)}:{n.lineno}" for n in ast.walk(tree)
                          if isinstance(n, ast.Name) and n.id == "print"]
    assert offenders == []


def test_corpus_build_logs_progress_instead_of_printing(tmp_path, capsys, caplog):
    with caplog.at_level(logging.INFO, logger="quartet_te.corpus"):
        corpus.build(tmp_path / "out", _sources(tmp_path), val_permille=200)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    messages = [r.getMessage() for r in caplog.records if r.name == "quartet_te.corpus.shards"]
    assert any(m.startswith("alpha: 30 documents") for m in messages)
    assert any(m.startswith("train: ") for m in messages) and any(m.startswith("val: ") for m in messages)


def test_corpus_cli_shows_the_progress_on_stderr(tmp_path):
    """The CLI configures logging, so `python -m quartet_te.corpus build` still reports progress."""
    src = tmp_path / "src"
    src.mkdir()
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from pathlib import Path\n"
        "from quartet_te.corpus import __main__ as cli\n"
        "from test_corpus import _sources\n"
        "cli.DEFAULT_SOURCES = _sources(Path(sys.argv[2]))\n"
        "raise SystemExit(cli._main(['build', '--out', sys.argv[3], '--val-permille', '200']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(ROOT / "tests"), str(tmp_path), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert "alpha: 30 documents" in proc.stderr and "train: " in proc.stderr
