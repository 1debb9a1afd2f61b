"""Inputs, timer and backend comparison for the multi-scale deformable attention kernels.

One implementation shared by ``bench/kernels.py`` (the benchmark tables) and the notebooks'
``widgets.compare_backends`` (re-exported there):

- :func:`deform_inputs`: random ``ms_deform_attn`` arguments shaped like the model's attention on an
  image of a given size (levels at strides 8, 16, 32, 64, rounded up as the backbone does); the
  decoder's queries sample around random reference points, the encoder's (``n_queries=None``: every
  token is a query) around their own pixel.
- :data:`SHAPES`: the benchmark shapes, the small CPU ones and the paper's 800 x 1333 ones.
- :func:`time_ms`: median time of a call (``torch.utils.benchmark`` where CUDA runs: it synchronises).
- :func:`compare_backends`: every backend on the same inputs, with timings and deviations.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Optional, Sequence

import torch

STRIDES = (8, 16, 32, 64)

# name: deform_inputs keyword arguments (M = 8 heads of D = 32 channels, L = 4 levels, P = 4 points)
_COMMON = dict(n_heads=8, head_dim=32, n_levels=4, n_points=4)
SHAPES = {
    # small, for a quick CPU run: levels 40x40 .. 5x5 (S = Lq = 2125); 80x80 .. 10x10 (S = 8500)
    "encoder": dict(n=2, image_hw=(320, 320), n_queries=None, **_COMMON),
    "decoder": dict(n=2, image_hw=(640, 640), n_queries=300, **_COMMON),
    # the paper's 800 x 1333 images: levels 100x167, 50x84, 25x42, 13x21 (S = 22223)
    "paper_encoder": dict(n=2, image_hw=(800, 1333), n_queries=None, **_COMMON),
    "paper_decoder_300": dict(n=2, image_hw=(800, 1333), n_queries=300, **_COMMON),
    "paper_decoder_900": dict(n=8, image_hw=(800, 1333), n_queries=900, **_COMMON),
}
SHAPE_SETS = {"small": ("encoder", "decoder"),
              "paper": ("paper_encoder", "paper_decoder_300", "paper_decoder_900")}


def describe_machine() -> str:
    """The machine a benchmark ran on, for its JSON and captions: CPU model and cores, and the
    GPU's name when CUDA is available, e.g. "Intel(R) Xeon(R) Processor, 2 cores; NVIDIA H200"."""
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} cores"
    if torch.cuda.is_available():
        text += f"; {torch.cuda.get_device_name()}"
    return text


def level_shapes(image_hw: Sequence[int], n_levels: int = 4) -> list[tuple[int, int]]:
    """(H, W) of the feature levels of an image: strides 8, 16, 32, 64, rounded up."""
    h, w = int(image_hw[0]), int(image_hw[1])
    return [(-(-h // s), -(-w // s)) for s in STRIDES[:n_levels]]


def _token_centres(shapes: Sequence[tuple[int, int]]) -> torch.Tensor:
    """[S, 2] normalised (x, y) centre of every token of every level, in value's row order."""
    centres = []
    for h, w in shapes:
        ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
        centres.append(torch.stack([xs, ys], -1).reshape(-1, 2))
    return torch.cat(centres)


def deform_inputs(n: int = 2, n_queries: Optional[int] = 100, image_hw: Sequence[int] = (128, 128),
                  n_heads: int = 8, head_dim: int = 16, n_levels: int = 4, n_points: int = 4, device="cpu",
                  dtype=torch.float32, seed: int = 0) -> dict:
    """Random ``ms_deform_attn`` inputs for images of ``image_hw`` (levels of strides 8 .. 64).

    Sampling locations scatter (std 0.15 of the image) around a reference point per query: a random
    one for decoder queries, the token's own centre when ``n_queries`` is None (encoder: Lq = S);
    some fall outside [0, 1], as real ones do. Attention weights are a softmax over the L * P
    points. Keys are ``ms_deform_attn``'s argument names: value [n, S, M, D], spatial_shapes [L, 2],
    level_start_index [L], sampling_locations [n, Lq, M, L, P, 2], attention_weights [n, Lq, M, L, P].
    """
    g = torch.Generator().manual_seed(seed)
    shapes = level_shapes(image_hw, n_levels)
    spatial_shapes = torch.tensor(shapes, dtype=torch.long)
    level_start_index = torch.cat([torch.zeros(1, dtype=torch.long), spatial_shapes.prod(1).cumsum(0)[:-1]])
    S = int(spatial_shapes.prod(1).sum())
    if n_queries is None:
        ref = _token_centres(shapes).view(1, S, 1, 1, 1, 2).expand(n, S, 1, 1, 1, 2)
    else:
        ref = torch.rand(n, n_queries, 1, 1, 1, 2, generator=g)
    Lq = ref.shape[1]
    loc = (ref + 0.15 * torch.randn(n, Lq, n_heads, n_levels, n_points, 2, generator=g)).clamp(-0.1, 1.1)
    weights = torch.rand(n, Lq, n_heads, n_levels * n_points, generator=g).softmax(-1)
    value = torch.randn(n, S, n_heads, head_dim, generator=g)
    to = dict(device=device, dtype=dtype)
    return {"value": value.to(**to), "spatial_shapes": spatial_shapes.to(device),
            "level_start_index": level_start_index.to(device), "sampling_locations": loc.to(**to),
            "attention_weights": weights.view(n, Lq, n_heads, n_levels, n_points).to(**to)}


def time_ms(fn: Callable[[], object], *, warmup: int = 1, repeats: int = 5, calls: int = 1) -> float:
    """Median milliseconds per call of ``fn()``: ``repeats`` samples of ``calls`` back-to-back calls
    each, after ``warmup`` untimed calls (numba compile, CUDA build, allocator warm-up happen there).
    Where CUDA runs, ``torch.utils.benchmark.Timer`` synchronises it around every sample; use
    ``calls`` > 1 for sub-millisecond GPU kernels so that the launch and sync overhead is spread out.

    Without CUDA the samples are plain ``time.perf_counter`` spans (what the Timer measures on a
    CPU): importing ``torch.utils.benchmark`` imports ``torch.utils.cpp_extension``, whose CUDA probe
    logs "No CUDA runtime is found" on every machine with an ``nvcc`` but no GPU, the pink block that
    opened every rendered notebook."""
    for _ in range(warmup):
        fn()
    if not torch.cuda.is_available():
        def sample() -> float:
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            return (time.perf_counter() - t0) / calls
        return statistics.median(sample() * 1e3 for _ in range(max(1, repeats)))
    from torch.utils import benchmark      # lazily: see above

    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn})
    return statistics.median(timer.timeit(calls).mean * 1e3 for _ in range(max(1, repeats)))


def calls_per_sample(device) -> int:
    """Back-to-back calls per timed sample: 1 on the CPU, 10 on a GPU (kernels well under 1 ms)."""
    return 10 if torch.device(device).type == "cuda" else 1


def peak_memory_mb(fn: Callable[[], object], device) -> Optional[float]:
    """MiB that one ``fn()`` allocates on top of what is already allocated (CUDA only, else None)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def compare_backends(backends: Optional[Sequence[str]] = None, repeats: int = 5, device="cpu", **input_kw) -> list[dict]:
    """Run ``ms_deform_attn`` with each backend on the same inputs (see :func:`deform_inputs`).

    Returns one row per backend: "backend", "device", "first call (s)" (includes numba's JIT
    compile or the CUDA build), "forward_ms" and "backward_ms" (median of ``repeats``), and
    "max |diff| vs torch" of the output and of the gradients (value, locations, weights); a backend
    that cannot run here gets an "error" row instead. backends: default ``ops.available_backends(device)``.
    """
    from . import ops

    device = torch.device(device)
    names = list(backends) if backends is not None else ops.available_backends(device)
    if "torch" in names:
        names.remove("torch")
    names.insert(0, "torch")
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    base = deform_inputs(device=device, **input_kw)
    diff_keys = ("value", "sampling_locations", "attention_weights")
    ref = None
    rows = []
    for name in names:
        x = {k: (v.clone().requires_grad_(True) if k in diff_keys else v) for k, v in base.items()}
        t0 = time.perf_counter()
        try:
            out = ops.ms_deform_attn(**x, backend=name)
        except Exception as e:                            # a backend that cannot run here
            rows.append({"backend": name, "device": device.type, "error": f"{type(e).__name__}: {e}"[:120]})
            continue
        grad_out = torch.ones_like(out) / out.numel() ** 0.5
        out.backward(grad_out)
        sync()
        first = time.perf_counter() - t0
        grads = [x[k].grad.detach().clone() for k in diff_keys]
        if ref is None:
            ref = (out.detach(), grads)
        x_ng = {k: v.detach() for k, v in x.items()}
        fwd = time_ms(lambda: ops.ms_deform_attn(**x_ng, backend=name), warmup=0, repeats=repeats)

        def fwd_bwd():
            xs = {k: (v.detach().requires_grad_(True) if k in diff_keys else v) for k, v in x.items()}
            ops.ms_deform_attn(**xs, backend=name).backward(grad_out)

        both = time_ms(fwd_bwd, warmup=0, repeats=repeats)
        rows.append({"backend": name, "device": device.type, "first call (s)": round(first, 3),
                     "forward_ms": round(fwd, 3), "backward_ms": round(max(both - fwd, 0.0), 3),
                     "max |diff| vs torch": float((out.detach() - ref[0]).abs().max()),
                     "max |grad diff| vs torch": max(float((a - b).abs().max()) for a, b in zip(grads, ref[1]))})
    return rows


def ideal_bytes(inputs: dict, grad_out: torch.Tensor) -> tuple[int, int]:
    """(forward, forward+backward) bytes when every tensor is read or written exactly once: forward
    reads value, sampling_locations, attention_weights and writes the output (grad_out's size);
    backward reads those three and grad_output and writes a gradient of each input's size."""
    size = lambda t: t.numel() * t.element_size()  # noqa: E731
    ins = sum(size(inputs[k]) for k in ("value", "sampling_locations", "attention_weights"))
    out = size(grad_out)
    return ins + out, (ins + out) + (ins + out) + ins


__all__ = ["SHAPES", "SHAPE_SETS", "STRIDES", "calls_per_sample", "compare_backends", "deform_inputs",
           "ideal_bytes", "level_shapes", "peak_memory_mb", "time_ms"]
