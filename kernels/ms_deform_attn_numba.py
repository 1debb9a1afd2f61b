"""Multi-scale deformable attention on the CPU with numba: the teaching version of the CUDA kernel.

What the operator computes (Deformable DETR): every query q of image n has, for each head m, L * P
sampling points, P per feature level l. A point is a normalised location (x, y) in [0, 1] on level l
(an H x W map stored flat inside ``value``, starting at row ``level_start_index[l]``) plus an
attention weight. The output for (n, q, m) is the weighted sum of the bilinearly sampled D-channel
feature vectors of head m::

    output[n, q, m*D:(m+1)*D] = sum_{l, p} attention_weights[n, q, m, l, p]
                                * bilinear(value[n, level l, m, :], sampling_locations[n, q, m, l, p])

Bilinear sampling follows ``grid_sample(align_corners=False, padding_mode="zeros")``: the pixel
coordinate is ``x = loc_x * W - 0.5`` (pixel centres sit at half-integers of the normalised grid),
the four neighbours are (floor(y) + {0, 1}, floor(x) + {0, 1}) and neighbours outside the map count
as zero. With ``lx = x - floor(x)`` (``ly`` likewise), the neighbour weights are
``(1 - ly)(1 - lx)``, ``(1 - ly) lx``, ``ly (1 - lx)`` and ``ly lx``.

Shapes::

    value               [N, S, M, D]           float32 or float64, C-contiguous
    spatial_shapes      [L, 2]  int64          (H, W) per level, S == sum(H * W)
    level_start_index   [L]     int64          first row of each level inside S
    sampling_locations  [N, Lq, M, L, P, 2]    (x, y), same dtype as value
    attention_weights   [N, Lq, M, L, P]       same dtype as value
    output              [N, Lq, M * D]

The kernels take NumPy arrays (zero-copy views of torch CPU tensors) and write into caller-allocated,
zero-initialised outputs; ``msdetr_lite.ops`` wraps them in an ``autograd.Function``.

Parallelism: the forward runs one (image, query) pair per ``prange`` iteration: each iteration writes
its own output row, so no two threads touch the same memory. The backward must scatter into
``grad_value`` (many queries sample the same pixel), which would race; instead it runs one
(image, head) pair per iteration: pair (n, m) only ever reads and writes ``value[n, :, m, :]``, so the
iterations own disjoint slices of ``grad_value`` and need no atomics. (The CUDA kernel cannot afford so
few, so coarse work items and uses atomicAdd instead.)

Compilation: ``cache=True`` stores the machine code next to this file (or, if that folder is
read-only, in numba's user-wide cache), so only the first run pays the few seconds of compile time.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import prange

# "reassoc" lets LLVM vectorise the dot-product reductions over D (it reorders float additions, a
# rounding-level change); "contract" allows fused multiply-adds. Deliberately *not* full fastmath:
# that would assume no NaN / inf and could break the out-of-map test in ``_locate``.
_FASTMATH = {"reassoc", "contract"}


def _njit(**options):
    """``numba.njit(cache=True, **options)``, or without the on-disk cache when numba finds no
    writable cache folder (it raises at decoration time then): compiling every process is slower
    but still correct."""
    def decorate(fn):
        try:
            return numba.njit(cache=True, **options)(fn)
        except RuntimeError:
            return numba.njit(cache=False, **options)(fn)
    return decorate


@_njit(inline="always")
def _locate(loc_x, loc_y, H, W):
    """Pixel position of a normalised location on an H x W map.

    Returns (inside, x0, y0, lx, ly): the top-left neighbour (x0, y0) and the fractional offsets
    lx, ly in [0, 1). ``inside`` is False when none of the four neighbours lies on the map, i.e. the
    sample and its location gradient are exactly zero; written as a negated comparison it also rejects
    NaN locations, and it keeps the float -> int conversion in range for huge coordinates. x = -1 is
    inside: the sample is zero there, but its right neighbour (weight lx = 0) gives grid_sample's
    location gradient, as in the CUDA kernels.
    """
    x = loc_x * W - 0.5
    y = loc_y * H - 0.5
    if not (x >= -1.0 and y >= -1.0 and x < W and y < H):
        return False, 0, 0, 0.0, 0.0
    xf = np.floor(x)
    yf = np.floor(y)
    return True, int(xf), int(yf), x - xf, y - yf


@_njit(parallel=True, fastmath=_FASTMATH)
def ms_deform_attn_forward(value, spatial_shapes, level_start_index, sampling_locations,
                           attention_weights, output):
    """Forward pass: fills ``output`` [N, Lq, M * D] (must be zero on entry) in place."""
    N, S, M, D = value.shape
    Lq = sampling_locations.shape[1]
    L = sampling_locations.shape[3]
    P = sampling_locations.shape[4]
    for nq in prange(N * Lq):  # one (image, query) pair per iteration; rows never overlap
        n = nq // Lq
        q = nq - n * Lq
        for m in range(M):
            out = output[n, q, m * D:(m + 1) * D]  # view: the D output channels of head m
            for l in range(L):
                H = spatial_shapes[l, 0]
                W = spatial_shapes[l, 1]
                start = level_start_index[l]
                for p in range(P):
                    inside, x0, y0, lx, ly = _locate(sampling_locations[n, q, m, l, p, 0],
                                                     sampling_locations[n, q, m, l, p, 1], H, W)
                    if not inside:
                        continue
                    a = attention_weights[n, q, m, l, p]
                    for c in range(4):  # neighbours (y0 + cy, x0 + cx)
                        cy = c >> 1
                        cx = c & 1
                        yi = y0 + cy
                        xi = x0 + cx
                        if yi < 0 or yi >= H or xi < 0 or xi >= W:
                            continue  # zero padding: skip, never read outside the map
                        wy = ly if cy == 1 else 1.0 - ly
                        wx = lx if cx == 1 else 1.0 - lx
                        # Cast the scalar weight to the value dtype once, so the loop over D stays in
                        # float32 for float32 inputs (Python floats are float64 in numba and would
                        # promote every multiply) and vectorises.
                        w = value.dtype.type(a * wy * wx)
                        v = value[n, start + yi * W + xi, m]  # view: D channels of this pixel
                        for d in range(D):
                            out[d] += w * v[d]


@_njit(parallel=True, fastmath=_FASTMATH)
def ms_deform_attn_backward(value, spatial_shapes, level_start_index, sampling_locations,
                            attention_weights, grad_output, grad_value, grad_sampling_locations,
                            grad_attention_weights):
    """Backward pass. ``grad_output`` [N, Lq, M * D]; fills, in place, ``grad_value`` [N, S, M, D]
    (must be zero on entry: it is accumulated), ``grad_sampling_locations`` [N, Lq, M, L, P, 2] and
    ``grad_attention_weights`` [N, Lq, M, L, P] (every entry is written).

    For one point with attention weight a and sample s = sum_c w_c v_c (c over the neighbours):
      d out / d a           = s                  -> grad_a = <g, s> = sum_c w_c <g, v_c>
      d out / d v_c         = a w_c              -> grad_value[pixel c] += a w_c g
      d out / d loc_x       = a W sum_c (d w_c / d x) v_c, where d w_c / d x = +wy for the right
                              column and -wy for the left one (w_c = wy * wx, wx = lx or 1 - lx)
    with g = grad_output[n, q, m*D:(m+1)*D]; loc_y likewise with H and the rows.
    """
    N, S, M, D = value.shape
    Lq = sampling_locations.shape[1]
    L = sampling_locations.shape[3]
    P = sampling_locations.shape[4]
    for nm in prange(N * M):  # one (image, head) pair per iteration: it owns grad_value[n, :, m, :]
        n = nm // M
        m = nm - n * M
        for q in range(Lq):
            g = grad_output[n, q, m * D:(m + 1) * D]
            for l in range(L):
                H = spatial_shapes[l, 0]
                W = spatial_shapes[l, 1]
                start = level_start_index[l]
                for p in range(P):
                    a = attention_weights[n, q, m, l, p]
                    grad_a = 0.0
                    grad_x = 0.0  # d out / d (pixel x), before the chain-rule factor a * W
                    grad_y = 0.0
                    inside, x0, y0, lx, ly = _locate(sampling_locations[n, q, m, l, p, 0],
                                                     sampling_locations[n, q, m, l, p, 1], H, W)
                    if inside:
                        for c in range(4):
                            cy = c >> 1
                            cx = c & 1
                            yi = y0 + cy
                            xi = x0 + cx
                            if yi < 0 or yi >= H or xi < 0 or xi >= W:
                                continue
                            wy = ly if cy == 1 else 1.0 - ly
                            wx = lx if cx == 1 else 1.0 - lx
                            aw = value.dtype.type(a * wy * wx)  # see the forward: keep D-loop in dtype
                            s = start + yi * W + xi
                            v = value[n, s, m]
                            gv = grad_value[n, s, m]
                            dot = value.dtype.type(0.0)  # <g, v_c>
                            for d in range(D):
                                dot += g[d] * v[d]
                                gv[d] += aw * g[d]
                            grad_a += wy * wx * dot
                            grad_x += (wy if cx == 1 else -wy) * dot
                            grad_y += (wx if cy == 1 else -wx) * dot
                    grad_attention_weights[n, q, m, l, p] = grad_a
                    grad_sampling_locations[n, q, m, l, p, 0] = grad_x * W * a
                    grad_sampling_locations[n, q, m, l, p, 1] = grad_y * H * a
