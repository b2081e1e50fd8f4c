"""CPU CI: nvcc compile-only check of every csrc/*.cu for sm_90a, sm_100a and sm_120a.

The .cu files include no torch headers (csrc/bindings.cpp holds the torch glue), so this runs on
the CPU machine with nvcc and a CPU build of torch. The three architectures compile in parallel;
the flags are setup.py's (no fast math: the kernels must match the reference bit for bit).
"""
from __future__ import annotations

import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[2] / "csrc"
ARCHS = ("90a", "100a", "120a")
NVCC = shutil.which("nvcc")


def _compile(src: Path, arch: str, out_dir: Path) -> tuple[str, int, str]:
    cmd = [
        NVCC, "-std=c++17", "-O3", "--expt-relaxed-constexpr", "-Werror", "all-warnings",
        f"-I{CSRC}", "-gencode", f"arch=compute_{arch},code=sm_{arch}",
        "-c", str(src), "-o", str(out_dir / f"{src.stem}.sm_{arch}.o"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    return f"{src.name} sm_{arch}", proc.returncode, proc.stderr[-4000:]


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
def test_csrc_compiles_for_hopper_and_blackwell(tmp_path):
    sources = sorted(CSRC.glob("*.cu"))
    assert sources, f"no .cu files in {CSRC}"
    jobs = [(src, arch) for src in sources for arch in ARCHS]
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda j: _compile(j[0], j[1], tmp_path), jobs))
    failures = [f"{name}:\n{err}" for name, rc, err in results if rc != 0]
    assert not failures, "\n\n".join(failures)
