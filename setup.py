"""Build and install quartet-te (static metadata: pyproject.toml).

`recipes/` and `integration/` install as `quartet_te.recipes` and `quartet_te.integration`, so
nothing generic lands at the top of site-packages. The CUDA extension `quartet_te._C` is built
only where both nvcc (CUDA_HOME) and a CUDA build of torch exist; everywhere else the package
installs as pure Python and runs on the reference implementation. torch must be importable here,
so build the extension with `pip install --no-build-isolation -e .` (pip's isolated build
environment has no torch, and the package then installs without the extension).

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


def _cublaslt(cuda_home: str) -> tuple[list[str], list[str]]:
    """(include dirs, link args) for cuBLASLt: the CUDA toolkit's, else the `nvidia-cublas` wheel's
    that CUDA builds of torch install (its library has only a versioned name)."""
    import sysconfig

    roots = [cuda_home] + [
        os.path.join(sysconfig.get_paths()["purelib"], "nvidia", sub) for sub in ("cu13", "cublas", "cu12")
    ]
    for root in roots:
        header = os.path.join(root, "include", "cublasLt.h")
        libs = sorted(glob.glob(os.path.join(root, "lib64", "libcublasLt.so*")))
        libs += sorted(glob.glob(os.path.join(root, "lib", "libcublasLt.so*")))
        if os.path.isfile(header) and libs:
            lib = min(libs, key=len)  # the unversioned name where it exists
            return [os.path.join(root, "include")], [lib, f"-Wl,-rpath,{os.path.dirname(lib)}"]
    raise RuntimeError(f"cuBLASLt (cublasLt.h and libcublasLt.so) not found under {roots}")


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
    lt_include, lt_link = _cublaslt(CUDA_HOME)
    ext = CUDAExtension(
        name="quartet_te._C",
        sources=sources,
        include_dirs=[os.path.abspath("csrc"), *lt_include],
        extra_link_args=lt_link,
        extra_compile_args={
            "cxx": ["-O3", "-std=c++17"],
            # No --use_fast_math: the kernels must match the reference bit for bit (docs/numerics.md).
            "nvcc": ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-lineinfo", *gencode],
        },
    )
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = _cuda_extensions()

# Name, version (quartet_te.__version__), dependencies and extras: pyproject.toml.
setup(
    packages=_existing(PACKAGES),
    package_dir=PACKAGE_DIR,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
