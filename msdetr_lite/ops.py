"""Multi-scale deformable attention (Deformable DETR): one entry point, several backends.

``ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
backend="auto")`` samples, for every query and head, L * P points on the L feature levels and returns
their attention-weighted sum. Shapes::

    value               [N, S, M, D]         S = sum over levels of H * W, M heads of D channels
    spatial_shapes      [L, 2]  int64        (H, W) of each level
    level_start_index   [L]     int64        first row of each level inside S (0, H0*W0, ...)
    sampling_locations  [N, Lq, M, L, P, 2]  normalised (x, y); [0, 1] covers the map, outside is zero
    attention_weights   [N, Lq, M, L, P]
    -> output           [N, Lq, M * D]

Sampling is bilinear with ``align_corners=False`` and zero padding (pixel x = loc_x * W - 0.5),
exactly ``F.grid_sample``. Gradients flow to value, sampling_locations and attention_weights.

Backends:

``torch``  ``ms_deform_attn_torch``: grid_sample per level; the readable reference, any device/dtype.
``numba``  CPU kernels in ``msdetr_lite.kernels.ms_deform_attn_numba`` (float32 / float64; float16 and
           bfloat16 inputs are computed in float32 and the result cast back).
``cuda``   our CUDA extension (``kernels/ms_deform_attn_cuda.cu``), built on first use; float64,
           float32, float16 and bfloat16 (float32 accumulation).
``cuda_v2`` the throughput rewrite in the same extension (``kernels/ms_deform_attn_cuda_v2.cu``: 16-byte
           channel chunks, warp-shuffle gradient sums, vector atomics on sm_90), same contract and
           dtypes. Opt-in only (``backend="cuda_v2"``, or ``model.deform_backend=cuda_v2``) until a GPU
           measurement (bench/gpu_check.sh) shows it faster than ``cuda``.
``auto``   cuda for CUDA tensors, numba on the CPU; if that backend cannot be loaded (numba missing,
           no nvcc, build error) it warns once and uses ``torch``. Asking for ``numba`` or ``cuda``
           explicitly raises instead of falling back.
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import sys
import threading
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

BACKENDS = ("auto", "torch", "numba", "cuda", "cuda_v2")
# the backends that run our CUDA extension, and the names of their (forward, backward) functions in it
_CUDA_KERNELS = {"cuda": ("forward", "backward"), "cuda_v2": ("forward_v2", "backward_v2")}


def ms_deform_attn_torch(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Reference with ``F.grid_sample``: value [N, S, M, D], spatial_shapes [L, 2] (H, W),
    sampling_locations [N, Lq, M, L, P, 2] in [0, 1] (x, y), attention_weights [N, Lq, M, L, P]
    -> [N, Lq, M*D]. ``level_start_index`` is implied by spatial_shapes and unused here."""
    N, S, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    sizes = [int(h) * int(w) for h, w in spatial_shapes.tolist()]
    value_list = value.split(sizes, dim=1)
    grids = 2 * sampling_locations - 1            # grid_sample wants [-1, 1]
    sampled = []
    for lvl, (h, w) in enumerate(spatial_shapes.tolist()):
        # [N, H*W, M, D] -> [N*M, D, H, W]: one "image" per (batch, head) pair
        v = value_list[lvl].flatten(2).transpose(1, 2).reshape(N * M, D, int(h), int(w))
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)   # [N*M, Lq, P, 2]
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    # [N*M, D, Lq, L*P] weighted by [N*M, 1, Lq, L*P]
    stacked = torch.stack(sampled, dim=-2).flatten(-2)
    w = attention_weights.transpose(1, 2).reshape(N * M, 1, Lq, L * P)
    out = (stacked * w).sum(-1).view(N, M * D, Lq)
    return out.transpose(1, 2).contiguous()


# --------------------------------------------------------------------------------------------------
# argument checks

def _shape(t) -> list:
    return list(t.shape)


def _check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Raise ValueError naming the argument and its expected shape; return (N, S, M, D, Lq, L, P)."""
    names = ("value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights")
    for name, t in zip(names, (value, spatial_shapes, level_start_index, sampling_locations,
                               attention_weights)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")

    if value.dim() != 4:
        raise ValueError(f"value must be [N, S, M, D], got {_shape(value)}")
    if not value.is_floating_point():
        raise ValueError(f"value must be a floating-point tensor, got {value.dtype}")
    N, S, M, D = value.shape

    if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2 or spatial_shapes.shape[0] == 0:
        raise ValueError(f"spatial_shapes must be [L, 2] (H, W) with L >= 1, got {_shape(spatial_shapes)}")
    L = spatial_shapes.shape[0]
    if level_start_index.dim() != 1 or level_start_index.shape[0] != L:
        raise ValueError(f"level_start_index must be [L] = [{L}], got {_shape(level_start_index)}")
    for name, t in (("spatial_shapes", spatial_shapes), ("level_start_index", level_start_index)):
        if t.dtype != torch.int64:
            raise ValueError(f"{name} must be an int64 tensor, got {t.dtype}")
        if t.device.type != "cpu" and t.device != value.device:
            raise ValueError(f"{name} must be on the CPU or on value's device ({value.device}), got {t.device}")

    # Lq and P are only defined by sampling_locations itself; everything else must agree with value
    # and spatial_shapes.
    if sampling_locations.dim() != 6:
        raise ValueError(f"sampling_locations must be [N, Lq, M, L, P, 2] = [{N}, Lq, {M}, {L}, P, 2], "
                         f"got {_shape(sampling_locations)}")
    Lq, P = sampling_locations.shape[1], sampling_locations.shape[4]
    expected = [N, Lq, M, L, P, 2]
    if _shape(sampling_locations) != expected:
        raise ValueError(f"sampling_locations must be [N, Lq, M, L, P, 2] = {expected}, "
                         f"got {_shape(sampling_locations)}")
    expected = [N, Lq, M, L, P]
    if _shape(attention_weights) != expected:
        raise ValueError(f"attention_weights must be [N, Lq, M, L, P] = {expected}, "
                         f"got {_shape(attention_weights)}")

    for name, t in (("sampling_locations", sampling_locations), ("attention_weights", attention_weights)):
        if t.dtype != value.dtype:
            raise ValueError(f"{name} must have the dtype of value ({value.dtype}), got {t.dtype}")
        if t.device != value.device:
            raise ValueError(f"{name} must be on value's device ({value.device}), got {t.device}")

    # One host transfer for both index tensors (a single sync when they live on the GPU).
    host = torch.cat([spatial_shapes.reshape(-1), level_start_index.reshape(-1).to(spatial_shapes.device)]
                     ).tolist()
    hw = [(host[2 * i], host[2 * i + 1]) for i in range(L)]
    starts = host[2 * L:]
    if any(h <= 0 or w <= 0 for h, w in hw):
        raise ValueError(f"spatial_shapes must hold positive (H, W) pairs, got {hw}")
    sizes = [h * w for h, w in hw]
    if sum(sizes) != S:
        raise ValueError(f"value has S = {S} rows but spatial_shapes {hw} give sum(H*W) = {sum(sizes)}")
    expected_starts = [sum(sizes[:i]) for i in range(L)]
    if starts != expected_starts:
        raise ValueError(f"level_start_index must be {expected_starts} (running sum of H*W over "
                         f"spatial_shapes), got {starts}")
    return N, S, M, D, Lq, L, P


# --------------------------------------------------------------------------------------------------
# loading the compiled backends (once per process; failures are remembered, not retried)

def _kernels_package():
    """``msdetr_lite.kernels``. pyproject maps it to the top-level ``kernels/`` folder, which only an
    install (``pip install -e .``) knows about; from a bare source checkout on PYTHONPATH, load that
    folder under the same name instead."""
    try:
        import msdetr_lite.kernels as kernels
        return kernels
    except ImportError:
        folder = Path(__file__).resolve().parent.parent / "kernels"
        spec = importlib.util.spec_from_file_location(
            "msdetr_lite.kernels", folder / "__init__.py", submodule_search_locations=[str(folder)])
        if spec is None or spec.loader is None:
            raise
        module = importlib.util.module_from_spec(spec)
        sys.modules["msdetr_lite.kernels"] = module
        spec.loader.exec_module(module)
        return module


def _load_numba():
    _kernels_package()
    import msdetr_lite.kernels.ms_deform_attn_numba as kernels_numba
    return kernels_numba


def _load_cuda():
    # The first build in a fresh cache takes about a minute (nvcc); say so instead of hanging silently.
    logging.getLogger(__name__).info("ms_deform_attn: loading / building the CUDA extension")
    return _kernels_package().load_cuda_extension()


_LOADERS = {"numba": _load_numba, "cuda": _load_cuda, "cuda_v2": _load_cuda}  # cuda_v2: the same extension
_modules: dict = {}
_errors: dict = {}
_warned: set = set()
_load_lock = threading.Lock()


def _backend_module(name: str):
    """The loaded backend module, or None if it cannot be loaded (the reason is in ``_errors``)."""
    with _load_lock:
        if name not in _modules and name not in _errors:
            try:
                _modules[name] = _LOADERS[name]()
            except Exception as exc:  # noqa: BLE001 - any import / build failure means "unavailable"
                _errors[name] = exc
        return _modules.get(name)


def _reset_backends() -> None:
    """Forget loaded backends, load failures and warnings (for tests)."""
    with _load_lock:
        _modules.clear()
        _errors.clear()
        _warned.clear()


def available_backends(device: str | torch.device = "cpu") -> list[str]:
    """Backends that run on ``device`` here (loads / builds them on first call)."""
    device = torch.device(device)
    names = ["torch"]
    if device.type == "cpu" and _backend_module("numba") is not None:
        names.append("numba")
    if device.type == "cuda":
        names += [name for name in _CUDA_KERNELS if _backend_module(name) is not None]
    return names


def _resolve_backend(backend: str, value: torch.Tensor) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    device = value.device.type
    if backend == "auto":
        preferred = {"cpu": "numba", "cuda": "cuda"}.get(device)
        if preferred is None:
            return "torch"
        if _backend_module(preferred) is None:
            if preferred not in _warned:
                _warned.add(preferred)
                warnings.warn(f"ms_deform_attn: the {preferred} backend is unavailable "
                              f"({type(_errors[preferred]).__name__}: {_errors[preferred]}); "
                              f"falling back to the slower torch reference", RuntimeWarning, stacklevel=3)
            return "torch"
        return preferred
    if backend == "numba" and device != "cpu":
        raise ValueError(f"backend='numba' runs on CPU tensors, value is on {value.device}")
    if backend in _CUDA_KERNELS and device != "cuda":
        raise ValueError(f"backend={backend!r} needs CUDA tensors, value is on {value.device}")
    if backend in _LOADERS and _backend_module(backend) is None:
        raise RuntimeError(f"ms_deform_attn backend {backend!r} is unavailable: "
                           f"{type(_errors[backend]).__name__}: {_errors[backend]}") from _errors[backend]
    return backend


# --------------------------------------------------------------------------------------------------
# autograd wrappers of the compiled kernels (inputs: checked, contiguous, index tensors on the
# right device)

class _NumbaMSDeformAttn(torch.autograd.Function):
    """numba CPU kernels; float32 / float64 tensors."""

    @staticmethod
    def forward(ctx, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        kernels = _modules["numba"]
        N, S, M, D = value.shape
        Lq = sampling_locations.shape[1]
        output = value.new_zeros((N, Lq, M * D))
        with _torch_thread_count():
            kernels.ms_deform_attn_forward(_np(value), _np(spatial_shapes), _np(level_start_index),
                                           _np(sampling_locations), _np(attention_weights), _np(output))
        ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations,
                              attention_weights)
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        kernels = _modules["numba"]
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights = ctx.saved_tensors
        grad_output = grad_output.contiguous()
        grad_value = torch.zeros_like(value)
        grad_locations = torch.empty_like(sampling_locations)
        grad_weights = torch.empty_like(attention_weights)
        with _torch_thread_count():
            kernels.ms_deform_attn_backward(_np(value), _np(spatial_shapes), _np(level_start_index),
                                            _np(sampling_locations), _np(attention_weights), _np(grad_output),
                                            _np(grad_value), _np(grad_locations), _np(grad_weights))
        return grad_value, None, None, grad_locations, grad_weights


class _CudaMSDeformAttn(torch.autograd.Function):
    """Our CUDA extension; float64 / float32 / float16 / bfloat16 tensors on one GPU. ``name`` is the
    backend ("cuda" or "cuda_v2"), which picks the kernel pair inside the extension."""

    @staticmethod
    def forward(ctx, value, spatial_shapes, level_start_index, sampling_locations, attention_weights, name):
        forward_fn, _ = _CUDA_KERNELS[name]
        output = getattr(_modules[name], forward_fn)(value, spatial_shapes, level_start_index,
                                                     sampling_locations, attention_weights)
        ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations,
                              attention_weights)
        ctx.backend_name = name
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights = ctx.saved_tensors
        _, backward_fn = _CUDA_KERNELS[ctx.backend_name]
        grad_value, grad_locations, grad_weights = getattr(_modules[ctx.backend_name], backward_fn)(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
            grad_output.contiguous())
        return grad_value, None, None, grad_locations, grad_weights, None


def _np(t: torch.Tensor):
    """Zero-copy NumPy view of a contiguous CPU tensor (detached: numpy() refuses tensors that
    require grad; the kernels write into the output views in place)."""
    return t.detach().numpy()


@contextlib.contextmanager
def _torch_thread_count():
    """Run numba's parallel loops on as many threads as torch uses (torch.set_num_threads), capped
    by the size of numba's pool, and leave torch's count as it was.

    Why the restore: numba's OpenMP threading layer shares libgomp with torch, and starting its
    pool sets the calling thread's OpenMP thread count to the pool's size (the machine's cores),
    which torch then reports and uses as its own. Without it, a process told to use one thread
    (OMP_NUM_THREADS=1, torch.set_num_threads(1)) ran two after its first numba call: two such
    trainings on 2 cores ran 4 threads and took up to twice as long per step."""
    import numba

    n = torch.get_num_threads()
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)


# --------------------------------------------------------------------------------------------------
# the entry point

def ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                   backend: str = "auto"):
    """Multi-scale deformable attention.

    Args:
        value: [N, S, M, D] float tensor, the flattened feature levels split into M heads.
        spatial_shapes: [L, 2] int64 (H, W) per level, with sum(H * W) == S.
        level_start_index: [L] int64, the running sum of H * W (first row of each level).
        sampling_locations: [N, Lq, M, L, P, 2] normalised (x, y); outside [0, 1] reads zeros.
        attention_weights: [N, Lq, M, L, P].
        backend: "auto" | "torch" | "numba" | "cuda" | "cuda_v2" (see the module docstring).

    Returns:
        [N, Lq, M * D] in value's dtype. Differentiable in value, sampling_locations and
        attention_weights. Raises ValueError for wrong shapes, dtypes, devices or index tensors.
    """
    _check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    name = _resolve_backend(backend, value)
    if name == "torch":
        return ms_deform_attn_torch(value, spatial_shapes, level_start_index, sampling_locations,
                                    attention_weights)

    # The kernels index raw memory, so hand them contiguous tensors (a no-op when already so).
    if name == "numba":
        spatial_shapes = spatial_shapes.cpu().contiguous()
        level_start_index = level_start_index.cpu().contiguous()
        if value.dtype in (torch.float32, torch.float64):
            return _NumbaMSDeformAttn.apply(value.contiguous(), spatial_shapes, level_start_index,
                                            sampling_locations.contiguous(), attention_weights.contiguous())
        # float16 / bfloat16: numba has no such arithmetic; compute in float32 and cast back
        # (the casts are differentiable, so gradients come back in the input dtype).
        out = _NumbaMSDeformAttn.apply(value.float().contiguous(), spatial_shapes, level_start_index,
                                       sampling_locations.float().contiguous(),
                                       attention_weights.float().contiguous())
        return out.to(value.dtype)

    device = value.device
    return _CudaMSDeformAttn.apply(value.contiguous(), spatial_shapes.to(device).contiguous(),
                                   level_start_index.to(device).contiguous(),
                                   sampling_locations.contiguous(), attention_weights.contiguous(), name)
