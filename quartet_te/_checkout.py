"""Import `quartet_te.recipes` and `quartet_te.integration` from a plain checkout.

The repository keeps `recipes/` and `integration/` at its top level; setup.py installs them as
subpackages of `quartet_te` (`package_dir`). Run from a checkout without installing
(``PYTHONPATH=<repo>``), `quartet_te` is found but those two are not: `install()` then adds a
meta-path finder that maps exactly these two names to the sibling folders. Their submodules
resolve through the packages' own ``__path__``. Installed copies (regular or editable) carry
the subpackages themselves and leave this module inactive.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys

SIBLINGS = ("recipes", "integration")


class SiblingFinder(importlib.abc.MetaPathFinder):
    """Finds `quartet_te.<name>` in `<checkout>/<name>/` for the names in `folders`."""

    def __init__(self, folders: dict[str, str]) -> None:
        self.folders = folders

    def find_spec(self, fullname: str, path=None, target=None) -> importlib.machinery.ModuleSpec | None:
        folder = self.folders.get(fullname)
        if folder is None:
            return None
        return importlib.util.spec_from_file_location(
            fullname, os.path.join(folder, "__init__.py"), submodule_search_locations=[folder]
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.folders})"


def checkout_folders(package_dir: str) -> dict[str, str]:
    """`{"quartet_te.recipes": <checkout>/recipes, ...}` where `package_dir` (the folder of
    `quartet_te`) sits in a source checkout without those subpackages; else `{}`."""
    root = os.path.dirname(package_dir)
    if not os.path.isfile(os.path.join(root, "setup.py")):  # not our checkout (e.g. site-packages)
        return {}
    folders = {}
    for name in SIBLINGS:
        if os.path.isdir(os.path.join(package_dir, name)):  # already a real subpackage
            continue
        folder = os.path.join(root, name)
        if os.path.isfile(os.path.join(folder, "__init__.py")):
            folders[f"quartet_te.{name}"] = folder
    return folders


def install(package_dir: str) -> None:
    """Add the finder (first on `sys.meta_path`, so this checkout's folders win over another
    checkout's editable install) if `package_dir` is a plain checkout; idempotent."""
    folders = checkout_folders(package_dir)
    if folders and not any(isinstance(f, SiblingFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, SiblingFinder(folders))
