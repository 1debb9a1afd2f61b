"""Compiled kernels behind ``msdetr_lite.ops.ms_deform_attn`` (installed as ``msdetr_lite.kernels``).

- ``ms_deform_attn_numba``: CPU forward / backward with numba (the readable, teaching version).
  Imported lazily by ``msdetr_lite.ops`` because importing numba costs about half a second.
- ``ms_deform_attn.cpp`` (binding) + ``ms_deform_attn_cuda.cu`` (kernels, launchers) +
  ``ms_deform_attn.h`` + ``ms_deform_attn_kernels.cuh`` (per-thread math, host/device): the CUDA
  extension, compiled on first use by :func:`load_cuda_extension` (``torch.utils.cpp_extension.load``).
  The same extension holds the opt-in throughput kernels of the ``cuda_v2`` backend:
  ``ms_deform_attn_cuda_v2.cu`` (kernels, launchers) + ``ms_deform_attn_v2.cuh`` (per-thread math).

Nothing heavy is imported here, so ``import msdetr_lite.kernels`` is cheap on any machine.
"""
from .cuda_loader import EXTENSION_NAME, find_cuda_home, load_cuda_extension, source_paths

__all__ = ["EXTENSION_NAME", "find_cuda_home", "load_cuda_extension", "source_paths"]
