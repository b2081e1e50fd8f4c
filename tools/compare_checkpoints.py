#!/usr/bin/env python3
"""Are two checkpoints of examples/pretrain_gpt.py bit-identical? (exact-resume check)

    python tools/compare_checkpoints.py STRAIGHT_DIR RESUMED_DIR [--logs STRAIGHT.jsonl RESUMED.jsonl]

Each DIR is a --save folder; the iteration named by its `latest` file is compared (every
(TP, PP)-rank file of it, whole or in parts). Tensors must be `torch.equal` with the same dtype
and shape; every other value equal. The run's flags (`args`, which hold the save paths) are
left out. With --logs, the per-iteration loss and grad norm of the two JSON-lines logs must be
equal too (a repeated iteration counts with its last record). Exit status 0: identical; 1: not
(the differing entries are listed).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any, Iterator

import torch

_DRIVER = Path(__file__).resolve().parents[1] / "examples" / "pretrain_gpt.py"
IGNORED = ("args",)


_driver: Any = None


def _read_ckpt(path: Path) -> dict:
    """The driver's reader (whole file or parts with their sha256 index)."""
    global _driver
    if _driver is None:
        spec = importlib.util.spec_from_file_location("pretrain_gpt_ckpt", _DRIVER)
        _driver = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_driver)
    return _driver.read_ckpt(path)


def rank_files(root: str | Path) -> dict[str, Path]:
    """{rank file name: path} of the iteration that `root/latest` names."""
    root = Path(root)
    it = int((root / "latest").read_text())
    folder = root / f"iter_{it:07d}"
    names = {p.name.split(".pt")[0] + ".pt" for p in folder.iterdir() if p.name.startswith("mp_rank_")}
    if not names:
        raise FileNotFoundError(f"{folder}: no checkpoint files")
    return {n: folder / n for n in sorted(names)}


def differences(a: Any, b: Any, where: str = "") -> Iterator[str]:
    """Paths at which `a` and `b` differ (tensors bitwise, containers recursively)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            yield f"{where}: tensor vs {type(b if isinstance(a, torch.Tensor) else a).__name__}"
        elif a.dtype != b.dtype or a.shape != b.shape:
            yield f"{where}: {a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}"
        elif not torch.equal(a, b):
            diff = (a.double() - b.double()).abs().max().item() if a.is_floating_point() else "n/a"
            yield f"{where}: values differ (max |diff| {diff})"
    elif isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                yield f"{where}/{k}: only in {'first' if k in a else 'second'}"
            else:
                yield from differences(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            yield f"{where}: length {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            yield from differences(x, y, f"{where}[{i}]")
    else:
        try:
            same = bool(a == b)
        except Exception:  # noqa: BLE001 (arrays and the like: compare their text)
            same = repr(a) == repr(b)
        if not same:
            yield f"{where}: {a!r:.80} vs {b!r:.80}"


def compare_checkpoints(root_a: str | Path, root_b: str | Path) -> list[str]:
    """Differences between the latest checkpoints of two --save folders (empty: identical)."""
    files_a, files_b = rank_files(root_a), rank_files(root_b)
    if set(files_a) != set(files_b):
        return [f"rank files differ: {sorted(files_a)} vs {sorted(files_b)}"]
    out = []
    for name in files_a:
        sa, sb = _read_ckpt(files_a[name]), _read_ckpt(files_b[name])
        for key in IGNORED:
            sa.pop(key, None)
            sb.pop(key, None)
        out += [f"{name}{d}" for d in differences(sa, sb)]
    return out


def read_log(path: str | Path) -> dict[int, dict]:
    """{iteration: last record} of a JSON-lines log."""
    lines = Path(path).read_text().splitlines()
    return {r["iteration"]: r for r in map(json.loads, filter(str.strip, lines))}


def compare_logs(path_a: str | Path, path_b: str | Path, keys=("loss", "grad_norm", "val_loss", "lr")) -> list[str]:
    """Iterations whose `keys` differ between two logs (empty: identical)."""
    a, b = read_log(path_a), read_log(path_b)
    if sorted(a) != sorted(b):
        return [f"iterations differ: {min(a)}..{max(a)} ({len(a)}) vs {min(b)}..{max(b)} ({len(b)})"]
    return [f"iteration {i} {k}: {a[i].get(k)!r} vs {b[i].get(k)!r}"
            for i in sorted(a) for k in keys if a[i].get(k) != b[i].get(k)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("first")
    p.add_argument("second")
    p.add_argument("--logs", nargs=2, metavar=("FIRST_LOG", "SECOND_LOG"))
    a = p.parse_args(argv)
    diffs = compare_checkpoints(a.first, a.second)
    if a.logs:
        log_diffs = compare_logs(*a.logs)
        diffs += log_diffs
        if log_diffs:
            la, lb = read_log(a.logs[0]), read_log(a.logs[1])
            gaps = [abs(la[i]["loss"] - lb[i]["loss"]) for i in sorted(set(la) & set(lb))]
            print(f"max |loss difference| over {len(gaps)} iterations: {max(gaps, default=0.0):.3e}")
    for d in diffs[:40]:
        print("DIFF", d)
    if len(diffs) > 40:
        print(f"... {len(diffs) - 40} more")
    print("bit-identical" if not diffs else f"NOT identical: {len(diffs)} differences")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
