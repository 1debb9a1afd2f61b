"""Build-on-first-use loader for the CUDA multi-scale deformable attention extension.

The sources (``ms_deform_attn.cpp``, ``ms_deform_attn_cuda.cu``, ``ms_deform_attn_cuda_v2.cu`` and
the headers ``ms_deform_attn.h``, ``ms_deform_attn_kernels.cuh``, ``ms_deform_attn_v2.cuh``) ship inside
the package (pyproject's package-data) and are compiled into one extension by
``torch.utils.cpp_extension.load`` the first time the ``cuda`` or ``cuda_v2`` backend is used.
``cpp_extension`` keeps the build in ``$TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``)
and ninja only recompiles when a source changed, so later
processes import the cached ``.so`` in about a second; within one process the module is memoised.
"""
from __future__ import annotations

import glob
import os
import shutil
import sys
import threading
from pathlib import Path

_HERE = Path(__file__).resolve().parent
EXTENSION_NAME = "msdetr_lite_ms_deform_attn"
SOURCES = ("ms_deform_attn.cpp", "ms_deform_attn_cuda.cu", "ms_deform_attn_cuda_v2.cu")
HEADERS = ("ms_deform_attn.h", "ms_deform_attn_kernels.cuh", "ms_deform_attn_v2.cuh")  # ninja tracks them via -MD

_lock = threading.Lock()
_loaded: dict = {}


def source_paths() -> list[str]:
    """Absolute paths of the translation units handed to the compiler (.cpp binding first)."""
    return [str(_HERE / name) for name in SOURCES]


def include_dir() -> str:
    """Folder of the headers (``ms_deform_attn.h``, ``ms_deform_attn_kernels.cuh``)."""
    return str(_HERE)


# -O3 for the host code; for device code nvcc already optimises by default and we deliberately do
# not pass --use_fast_math: the kernels must match grid_sample to float32 rounding.
EXTRA_CFLAGS = ["-O3"]
EXTRA_CUDA_CFLAGS = ["-O3", "-lineinfo"]


def _is_cuda_home(path: str | None) -> bool:
    return bool(path) and os.path.isfile(os.path.join(path, "bin", "nvcc")) and os.path.isfile(
        os.path.join(path, "include", "cuda_runtime.h"))


def find_cuda_home() -> str | None:
    """The CUDA toolkit folder (with bin/nvcc and include/cuda_runtime.h), or None.

    cpp_extension guesses ``dirname(dirname(which nvcc))``, which is wrong when ``nvcc`` on PATH is a
    wrapper script or symlink farm (here /usr/local/bin/nvcc execs /usr/local/cuda-13.0/bin/nvcc, so
    it would guess /usr/local and fail to link -lcudart). We check each candidate for the files a
    build needs, honouring CUDA_HOME / CUDA_PATH first.
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates.append("/usr/local/cuda")
    candidates.extend(sorted(glob.glob("/usr/local/cuda-*"), reverse=True))
    for path in candidates:
        if _is_cuda_home(path):
            return path
    return None


def _point_cpp_extension_at_cuda() -> None:
    """Make cpp_extension use ``find_cuda_home()``. It reads CUDA_HOME once, when it is first
    imported, so set the environment variable before that; if it was imported earlier with an
    unusable guess, correct its module-level ``CUDA_HOME``."""
    home = find_cuda_home()
    if home is None:
        return  # let cpp_extension raise its own "CUDA not found" error
    if not _is_cuda_home(os.environ.get("CUDA_HOME")):
        os.environ["CUDA_HOME"] = home
    already = sys.modules.get("torch.utils.cpp_extension")
    if already is not None and not _is_cuda_home(getattr(already, "CUDA_HOME", None)):
        already.CUDA_HOME = home


def load_cuda_extension(*, name: str = EXTENSION_NAME, build_directory: str | None = None,
                        verbose: bool = False, extra_cuda_cflags: list[str] | None = None):
    """Compile (if needed) and import the extension; returns the module with ``forward`` and
    ``backward`` (see ms_deform_attn.cpp). Raises whatever the build raises (no nvcc, no ninja,
    compiler error): callers decide whether to fall back.

    ``name`` must be unique per build configuration inside one process (it is the Python module
    name); ``build_directory`` defaults to cpp_extension's cache folder. The GPU architectures
    come from ``TORCH_CUDA_ARCH_LIST`` or, when unset, from the visible GPUs.
    """
    key = (name, build_directory)
    with _lock:  # two threads must not run ninja in the same folder
        if key not in _loaded:
            _point_cpp_extension_at_cuda()
            from torch.utils import cpp_extension  # imported lazily: it probes for CUDA on import

            if build_directory is not None:
                os.makedirs(build_directory, exist_ok=True)
            _loaded[key] = cpp_extension.load(
                name=name,
                sources=source_paths(),
                extra_include_paths=[include_dir()],
                extra_cflags=list(EXTRA_CFLAGS),
                extra_cuda_cflags=list(EXTRA_CUDA_CFLAGS) + list(extra_cuda_cflags or []),
                build_directory=build_directory,
                verbose=verbose,
            )
        return _loaded[key]
