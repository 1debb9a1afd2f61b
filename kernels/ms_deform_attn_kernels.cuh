// Multi-scale deformable attention: the per-thread math of the CUDA kernels.
//
// Everything here is __host__ __device__ and free of ATen, so the very same lines run
//   * on the GPU, called from the __global__ kernels in ms_deform_attn_cuda.cu, and
//   * on the CPU, in tests/test_cuda_build.py, which compiles a tiny host harness with nvcc and
//     checks these functions against the grid_sample reference on machines without a GPU.
//
// This is the GPU twin of kernels/ms_deform_attn_numba.py (read that one first: same algorithm,
// written for a learner). Conventions:
//   * bilinear sampling with align_corners=False and zero padding, exactly
//     F.grid_sample(..., mode="bilinear", padding_mode="zeros", align_corners=False): the pixel
//     coordinate is x = loc_x * W - 0.5 and neighbours outside the feature map contribute zero;
//   * every index is int64_t, so tensors with more than 2^31 elements are addressed correctly;
//   * arithmetic happens in acc_t (float for float16 / bfloat16 / float32, double for float64);
//     only loads and stores use scalar_t.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define MSDA_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define MSDA_HOST_DEVICE inline
#endif

namespace msdetr_lite {

// Sizes of one call; see ms_deform_attn.h for the tensor shapes.
struct MSDAShape {
  int64_t N, S, M, D, Lq, L, P;
};

MSDA_HOST_DEVICE float floor_(float v) { return floorf(v); }
MSDA_HOST_DEVICE double floor_(double v) { return ::floor(v); }

// Where a normalised location lands on an H x W map. Returns false when no neighbour inside the
// map contributes to the sample or to its gradient (then both are exactly zero). x == -1 is kept:
// there the column x = 0 has weight 0 but the slope d(weight)/dx = 1, and grid_sample's gradient
// is nonzero (likewise y == -1). The negated comparison also rejects NaN, and it keeps the
// float -> int conversion below in range for huge coordinates.
template <typename acc_t>
MSDA_HOST_DEVICE bool locate(acc_t loc_x, acc_t loc_y, int64_t H, int64_t W, int64_t& x0, int64_t& y0,
                             acc_t& lx, acc_t& ly) {
  const acc_t x = loc_x * static_cast<acc_t>(W) - acc_t(0.5);
  const acc_t y = loc_y * static_cast<acc_t>(H) - acc_t(0.5);
  if (!(x >= acc_t(-1) && y >= acc_t(-1) && x < static_cast<acc_t>(W) && y < static_cast<acc_t>(H))) {
    return false;
  }
  const acc_t xf = floor_(x);
  const acc_t yf = floor_(y);
  x0 = static_cast<int64_t>(xf);
  y0 = static_cast<int64_t>(yf);
  lx = x - xf;  // distance from the left neighbour column, in [0, 1)
  ly = y - yf;  // distance from the top neighbour row, in [0, 1)
  return true;
}

// Forward, one output element: i is the flat index of output[n, q, m * D + d] ([N, Lq, M * D]).
// Neighbouring i are neighbouring channels d of the same pixel, so on the GPU the value loads of a
// warp coalesce and no reduction between threads is needed.
template <typename scalar_t, typename acc_t>
MSDA_HOST_DEVICE void forward_element(int64_t i, const MSDAShape& sh,
                                      const scalar_t* __restrict__ value,             // [N, S, M, D]
                                      const int64_t* __restrict__ spatial_shapes,     // [L, 2]
                                      const int64_t* __restrict__ level_start_index,  // [L]
                                      const scalar_t* __restrict__ sampling_locations,
                                      const scalar_t* __restrict__ attention_weights,
                                      scalar_t* __restrict__ output) {
  const int64_t d = i % sh.D;
  int64_t t = i / sh.D;
  const int64_t m = t % sh.M;
  t /= sh.M;
  const int64_t q = t % sh.Lq;
  const int64_t n = t / sh.Lq;

  // value[n, s, m, d] lives at value_nmd + s * M * D
  const scalar_t* value_nmd = value + (n * sh.S * sh.M + m) * sh.D + d;
  const int64_t pixel_stride = sh.M * sh.D;
  // flat index of the first of the L * P sampling points of (n, q, m)
  const int64_t point0 = ((n * sh.Lq + q) * sh.M + m) * sh.L * sh.P;

  acc_t acc = acc_t(0);
  for (int64_t l = 0; l < sh.L; ++l) {
    const int64_t H = spatial_shapes[2 * l];
    const int64_t W = spatial_shapes[2 * l + 1];
    const int64_t start = level_start_index[l];
    for (int64_t p = 0; p < sh.P; ++p) {
      const int64_t pt = point0 + l * sh.P + p;
      int64_t x0, y0;
      acc_t lx, ly;
      if (!locate<acc_t>(static_cast<acc_t>(sampling_locations[2 * pt]),
                         static_cast<acc_t>(sampling_locations[2 * pt + 1]), H, W, x0, y0, lx, ly)) {
        continue;
      }
      acc_t sample = acc_t(0);
      // the four neighbours (y0 + cy, x0 + cx); out-of-map ones are zero padding: skipped, never read
      for (int c = 0; c < 4; ++c) {
        const int cy = c >> 1;
        const int cx = c & 1;
        const int64_t yi = y0 + cy;
        const int64_t xi = x0 + cx;
        if (yi < 0 || yi >= H || xi < 0 || xi >= W) continue;
        const acc_t w = (cy ? ly : acc_t(1) - ly) * (cx ? lx : acc_t(1) - lx);
        sample += w * static_cast<acc_t>(value_nmd[(start + yi * W + xi) * pixel_stride]);
      }
      acc += static_cast<acc_t>(attention_weights[pt]) * sample;
    }
  }
  output[i] = static_cast<scalar_t>(acc);
}

// Backward, one sampling point: i is the flat index of attention_weights[n, q, m, l, p].
// The point owns its grad_sampling_locations / grad_attention_weights entries (a loop over the D
// channels, no atomics needed), while grad_value is scattered through Accumulate::add (atomicAdd
// on the GPU) because many sampling points, of any query, can hit the same pixel. grad_value is
// in acc_t: float32 even for half inputs, where atomics in half precision would lose most of it.
template <typename scalar_t, typename acc_t, typename Accumulate>
MSDA_HOST_DEVICE void backward_point(int64_t i, const MSDAShape& sh,
                                     const scalar_t* __restrict__ value,             // [N, S, M, D]
                                     const int64_t* __restrict__ spatial_shapes,     // [L, 2]
                                     const int64_t* __restrict__ level_start_index,  // [L]
                                     const scalar_t* __restrict__ sampling_locations,
                                     const scalar_t* __restrict__ attention_weights,
                                     const scalar_t* __restrict__ grad_output,       // [N, Lq, M * D]
                                     acc_t* __restrict__ grad_value,                 // [N, S, M, D], zeroed
                                     scalar_t* __restrict__ grad_sampling_locations,
                                     scalar_t* __restrict__ grad_attention_weights) {
  int64_t t = i / sh.P;  // p itself is not needed
  const int64_t l = t % sh.L;
  t /= sh.L;
  const int64_t m = t % sh.M;
  t /= sh.M;
  const int64_t q = t % sh.Lq;
  const int64_t n = t / sh.Lq;

  const int64_t H = spatial_shapes[2 * l];
  const int64_t W = spatial_shapes[2 * l + 1];
  const int64_t start = level_start_index[l];
  const acc_t a = static_cast<acc_t>(attention_weights[i]);

  acc_t grad_a = acc_t(0);  // d loss / d attention_weights[i]
  acc_t grad_x = acc_t(0);  // d loss / d (pixel x), before the chain-rule factor a * W
  acc_t grad_y = acc_t(0);
  int64_t x0, y0;
  acc_t lx, ly;
  if (locate<acc_t>(static_cast<acc_t>(sampling_locations[2 * i]),
                    static_cast<acc_t>(sampling_locations[2 * i + 1]), H, W, x0, y0, lx, ly)) {
    const scalar_t* go = grad_output + ((n * sh.Lq + q) * sh.M + m) * sh.D;  // grad_output[n, q, m*D:]
    for (int c = 0; c < 4; ++c) {
      const int cy = c >> 1;
      const int cx = c & 1;
      const int64_t yi = y0 + cy;
      const int64_t xi = x0 + cx;
      if (yi < 0 || yi >= H || xi < 0 || xi >= W) continue;
      const acc_t wy = cy ? ly : acc_t(1) - ly;
      const acc_t wx = cx ? lx : acc_t(1) - lx;
      const acc_t aw = a * wy * wx;
      const int64_t offset = ((n * sh.S + start + yi * W + xi) * sh.M + m) * sh.D;  // value[n, s, m, 0]
      const scalar_t* v = value + offset;
      acc_t* gv = grad_value + offset;
      acc_t dot = acc_t(0);  // <grad_output, this neighbour's D channels>
      for (int64_t d = 0; d < sh.D; ++d) {
        const acc_t g = static_cast<acc_t>(go[d]);
        dot += g * static_cast<acc_t>(v[d]);
        Accumulate::add(gv + d, aw * g);
      }
      grad_a += wy * wx * dot;
      // the neighbour's weight is wy * wx with wx = lx or 1 - lx and lx = x - floor(x), so
      // d(wx)/dx is +1 for the right column and -1 for the left one (rows likewise)
      grad_x += (cx ? wy : -wy) * dot;
      grad_y += (cy ? wx : -wx) * dot;
    }
  }
  grad_attention_weights[i] = static_cast<scalar_t>(grad_a);
  // x = loc_x * W - 0.5, so d/d loc_x = W * d/dx; and the sample is scaled by the attention weight
  grad_sampling_locations[2 * i] = static_cast<scalar_t>(grad_x * static_cast<acc_t>(W) * a);
  grad_sampling_locations[2 * i + 1] = static_cast<scalar_t>(grad_y * static_cast<acc_t>(H) * a);
}

}  // namespace msdetr_lite
