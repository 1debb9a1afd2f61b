// Multi-scale deformable attention: CUDA forward and backward kernels.
//
// This is the GPU twin of kernels/ms_deform_attn_numba.py (read that one first: it is the same
// algorithm written for a learner). Conventions:
//   * bilinear sampling with align_corners=False and zero padding, i.e. exactly what
//     F.grid_sample(..., mode="bilinear", padding_mode="zeros", align_corners=False) computes:
//     pixel coordinate x = loc_x * W - 0.5, neighbours outside the feature map contribute zero;
//   * every index is int64_t, so tensors with more than 2^31 elements are addressed correctly;
//   * arithmetic happens in at::opmath_type<scalar_t> (float for float16 / bfloat16 / float32,
//     double for float64), only loads and stores use scalar_t.
//
// Work split:
//   forward   one thread per output element (n, q, m, d): neighbouring threads read neighbouring
//             channels of the same pixel, so value loads coalesce; no reduction between threads.
//   backward  one thread per sampling point (n, q, m, l, p): it owns its grad_sampling_locations and
//             grad_attention_weights entries (a loop over the D channels, no atomics needed there),
//             while grad_value is scattered with atomicAdd because many sampling points (of any query)
//             can hit the same pixel. grad_value is accumulated in opmath precision (float32 even for
//             half inputs: atomics on half would lose most of the gradient) and cast at the end.

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <vector>

#include "ms_deform_attn.h"

namespace msdetr_lite {
namespace {

constexpr int kThreadsPerBlock = 256;
// Grid-stride loops let us cap the grid: any problem size works with at most this many blocks.
constexpr int64_t kMaxBlocks = 1 << 20;

__device__ __forceinline__ float floor_(float v) { return floorf(v); }
__device__ __forceinline__ double floor_(double v) { return ::floor(v); }

// Where a normalised location lands on an H x W map. Returns false when none of the four
// neighbours is inside the map (then the sample is exactly zero); the negated comparison also
// rejects NaN, and it keeps the float -> int conversion below in range for huge coordinates.
template <typename acc_t>
__device__ __forceinline__ bool locate(acc_t loc_x, acc_t loc_y, int64_t H, int64_t W,
                                       int64_t& x0, int64_t& y0, acc_t& lx, acc_t& ly) {
  const acc_t x = loc_x * static_cast<acc_t>(W) - acc_t(0.5);
  const acc_t y = loc_y * static_cast<acc_t>(H) - acc_t(0.5);
  if (!(x > acc_t(-1) && y > acc_t(-1) && x < static_cast<acc_t>(W) && y < static_cast<acc_t>(H))) {
    return false;
  }
  const acc_t xf = floor_(x);
  const acc_t yf = floor_(y);
  x0 = static_cast<int64_t>(xf);
  y0 = static_cast<int64_t>(yf);
  lx = x - xf;  // distance to the left neighbour column, in [0, 1)
  ly = y - yf;  // distance to the top neighbour row, in [0, 1)
  return true;
}

template <typename scalar_t>
__global__ void ms_deform_attn_forward_kernel(
    const scalar_t* __restrict__ value,                 // [N, S, M, D]
    const int64_t* __restrict__ spatial_shapes,         // [L, 2]
    const int64_t* __restrict__ level_start_index,      // [L]
    const scalar_t* __restrict__ sampling_locations,    // [N, Lq, M, L, P, 2]
    const scalar_t* __restrict__ attention_weights,     // [N, Lq, M, L, P]
    scalar_t* __restrict__ output,                      // [N, Lq, M * D]
    int64_t N, int64_t S, int64_t M, int64_t D, int64_t Lq, int64_t L, int64_t P) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t total = N * Lq * M * D;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    // i is the flat index of output[n, q, m * D + d]
    const int64_t d = i % D;
    int64_t t = i / D;
    const int64_t m = t % M;
    t /= M;
    const int64_t q = t % Lq;
    const int64_t n = t / Lq;

    // value[n, s, m, d] lives at value_nmd + s * M * D
    const scalar_t* value_nmd = value + (n * S * M + m) * D + d;
    const int64_t pixel_stride = M * D;
    // first of the L * P sampling points of (n, q, m)
    const int64_t point0 = ((n * Lq + q) * M + m) * L * P;

    acc_t acc = acc_t(0);
    for (int64_t l = 0; l < L; ++l) {
      const int64_t H = spatial_shapes[2 * l];
      const int64_t W = spatial_shapes[2 * l + 1];
      const int64_t start = level_start_index[l];
      for (int64_t p = 0; p < P; ++p) {
        const int64_t pt = point0 + l * P + p;
        int64_t x0, y0;
        acc_t lx, ly;
        if (!locate<acc_t>(static_cast<acc_t>(sampling_locations[2 * pt]),
                           static_cast<acc_t>(sampling_locations[2 * pt + 1]), H, W, x0, y0, lx, ly)) {
          continue;
        }
        const acc_t hx = acc_t(1) - lx;
        const acc_t hy = acc_t(1) - ly;
        acc_t sample = acc_t(0);
        // the four neighbours (y0 + cy, x0 + cx); out-of-map ones are zero padding: skipped, never read
        for (int c = 0; c < 4; ++c) {
          const int cy = c >> 1;
          const int cx = c & 1;
          const int64_t yi = y0 + cy;
          const int64_t xi = x0 + cx;
          if (yi < 0 || yi >= H || xi < 0 || xi >= W) continue;
          const acc_t w = (cy ? ly : hy) * (cx ? lx : hx);
          sample += w * static_cast<acc_t>(value_nmd[(start + yi * W + xi) * pixel_stride]);
        }
        acc += static_cast<acc_t>(attention_weights[pt]) * sample;
      }
    }
    output[i] = static_cast<scalar_t>(acc);
  }
}

template <typename scalar_t>
__global__ void ms_deform_attn_backward_kernel(
    const scalar_t* __restrict__ value,                 // [N, S, M, D]
    const int64_t* __restrict__ spatial_shapes,         // [L, 2]
    const int64_t* __restrict__ level_start_index,      // [L]
    const scalar_t* __restrict__ sampling_locations,    // [N, Lq, M, L, P, 2]
    const scalar_t* __restrict__ attention_weights,     // [N, Lq, M, L, P]
    const scalar_t* __restrict__ grad_output,           // [N, Lq, M * D]
    at::opmath_type<scalar_t>* __restrict__ grad_value, // [N, S, M, D], zero-initialised, opmath dtype
    scalar_t* __restrict__ grad_sampling_locations,     // [N, Lq, M, L, P, 2]
    scalar_t* __restrict__ grad_attention_weights,      // [N, Lq, M, L, P]
    int64_t N, int64_t S, int64_t M, int64_t D, int64_t Lq, int64_t L, int64_t P) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t total = N * Lq * M * L * P;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    // i is the flat index of attention_weights[n, q, m, l, p]
    const int64_t p = i % P;
    int64_t t = i / P;
    const int64_t l = t % L;
    t /= L;
    const int64_t m = t % M;
    t /= M;
    const int64_t q = t % Lq;
    const int64_t n = t / Lq;

    const int64_t H = spatial_shapes[2 * l];
    const int64_t W = spatial_shapes[2 * l + 1];
    const int64_t start = level_start_index[l];
    const acc_t a = static_cast<acc_t>(attention_weights[i]);

    acc_t grad_a = acc_t(0);  // d loss / d attention_weights[i]
    acc_t grad_x = acc_t(0);  // d loss / d (pixel x), before the chain rule factor a * W
    acc_t grad_y = acc_t(0);
    int64_t x0, y0;
    acc_t lx, ly;
    if (locate<acc_t>(static_cast<acc_t>(sampling_locations[2 * i]),
                      static_cast<acc_t>(sampling_locations[2 * i + 1]), H, W, x0, y0, lx, ly)) {
      const acc_t hx = acc_t(1) - lx;
      const acc_t hy = acc_t(1) - ly;
      const scalar_t* go = grad_output + ((n * Lq + q) * M + m) * D;  // grad_output[n, q, m*D : (m+1)*D]
      for (int c = 0; c < 4; ++c) {
        const int cy = c >> 1;
        const int cx = c & 1;
        const int64_t yi = y0 + cy;
        const int64_t xi = x0 + cx;
        if (yi < 0 || yi >= H || xi < 0 || xi >= W) continue;
        const acc_t wy = cy ? ly : hy;
        const acc_t wx = cx ? lx : hx;
        const acc_t aw = a * wy * wx;
        const int64_t offset = ((n * S + start + yi * W + xi) * M + m) * D;  // value[n, s, m, 0]
        const scalar_t* v = value + offset;
        acc_t* gv = grad_value + offset;
        acc_t dot = acc_t(0);  // <grad_output, this neighbour's D channels>
        for (int64_t d = 0; d < D; ++d) {
          const acc_t g = static_cast<acc_t>(go[d]);
          dot += g * static_cast<acc_t>(v[d]);
          atomicAdd(gv + d, aw * g);
        }
        grad_a += wy * wx * dot;
        // the bilinear weight of this neighbour is wy * wx with wx = lx or 1 - lx, lx = x - floor(x):
        // d(wx)/dx is +1 for the right column and -1 for the left one (same for rows)
        grad_x += (cx ? wy : -wy) * dot;
        grad_y += (cy ? wx : -wx) * dot;
      }
    }
    grad_attention_weights[i] = static_cast<scalar_t>(grad_a);
    // x = loc_x * W - 0.5, so d/d loc_x = W * d/dx; the sample is scaled by the attention weight
    grad_sampling_locations[2 * i] = static_cast<scalar_t>(grad_x * static_cast<acc_t>(W) * a);
    grad_sampling_locations[2 * i + 1] = static_cast<scalar_t>(grad_y * static_cast<acc_t>(H) * a);
  }
}

int blocks_for(int64_t work) {
  const int64_t blocks = (work + kThreadsPerBlock - 1) / kThreadsPerBlock;
  return static_cast<int>(std::min<int64_t>(std::max<int64_t>(blocks, 1), kMaxBlocks));
}

// Defensive checks; the Python wrapper (msdetr_lite.ops) already raised readable ValueErrors.
void check_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes,
                  const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                  const at::Tensor& attention_weights) {
  TORCH_CHECK(value.is_cuda(), "value must be a CUDA tensor");
  TORCH_CHECK(value.dim() == 4, "value must be [N, S, M, D]");
  TORCH_CHECK(sampling_locations.dim() == 6, "sampling_locations must be [N, Lq, M, L, P, 2]");
  TORCH_CHECK(attention_weights.dim() == 5, "attention_weights must be [N, Lq, M, L, P]");
  TORCH_CHECK(spatial_shapes.dim() == 2 && spatial_shapes.size(1) == 2, "spatial_shapes must be [L, 2]");
  for (const at::Tensor* t : {&value, &spatial_shapes, &level_start_index, &sampling_locations,
                              &attention_weights}) {
    TORCH_CHECK(t->is_contiguous(), "ms_deform_attn CUDA inputs must be contiguous");
    TORCH_CHECK(t->device() == value.device(), "ms_deform_attn CUDA inputs must share one device");
  }
  TORCH_CHECK(spatial_shapes.scalar_type() == at::kLong && level_start_index.scalar_type() == at::kLong,
              "spatial_shapes and level_start_index must be int64");
  TORCH_CHECK(sampling_locations.scalar_type() == value.scalar_type() &&
                  attention_weights.scalar_type() == value.scalar_type(),
              "sampling_locations and attention_weights must have the dtype of value");
}

}  // namespace

at::Tensor ms_deform_attn_cuda_forward(const at::Tensor& value,
                                       const at::Tensor& spatial_shapes,
                                       const at::Tensor& level_start_index,
                                       const at::Tensor& sampling_locations,
                                       const at::Tensor& attention_weights) {
  check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  const c10::cuda::CUDAGuard guard(value.device());
  const int64_t N = value.size(0), S = value.size(1), M = value.size(2), D = value.size(3);
  const int64_t Lq = sampling_locations.size(1), L = sampling_locations.size(3),
                P = sampling_locations.size(4);
  at::Tensor output = at::empty({N, Lq, M * D}, value.options());
  const int64_t work = N * Lq * M * D;
  if (work == 0) return output;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_forward", [&] {
    ms_deform_attn_forward_kernel<scalar_t><<<blocks_for(work), kThreadsPerBlock, 0, stream>>>(
        value.const_data_ptr<scalar_t>(), spatial_shapes.const_data_ptr<int64_t>(),
        level_start_index.const_data_ptr<int64_t>(), sampling_locations.const_data_ptr<scalar_t>(),
        attention_weights.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>(),
        N, S, M, D, Lq, L, P);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

std::vector<at::Tensor> ms_deform_attn_cuda_backward(const at::Tensor& value,
                                                     const at::Tensor& spatial_shapes,
                                                     const at::Tensor& level_start_index,
                                                     const at::Tensor& sampling_locations,
                                                     const at::Tensor& attention_weights,
                                                     const at::Tensor& grad_output) {
  check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  TORCH_CHECK(grad_output.is_contiguous() && grad_output.device() == value.device() &&
                  grad_output.scalar_type() == value.scalar_type(),
              "grad_output must be contiguous, on the device and of the dtype of value");
  const c10::cuda::CUDAGuard guard(value.device());
  const int64_t N = value.size(0), S = value.size(1), M = value.size(2), D = value.size(3);
  const int64_t Lq = sampling_locations.size(1), L = sampling_locations.size(3),
                P = sampling_locations.size(4);
  TORCH_CHECK(grad_output.numel() == N * Lq * M * D, "grad_output must be [N, Lq, M * D]");

  at::Tensor grad_sampling_locations = at::empty_like(sampling_locations);
  at::Tensor grad_attention_weights = at::empty_like(attention_weights);
  at::Tensor grad_value;
  const int64_t work = N * Lq * M * L * P;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor grad_value_acc = at::zeros(value.sizes(), value.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    if (work > 0) {
      ms_deform_attn_backward_kernel<scalar_t><<<blocks_for(work), kThreadsPerBlock, 0, stream>>>(
          value.const_data_ptr<scalar_t>(), spatial_shapes.const_data_ptr<int64_t>(),
          level_start_index.const_data_ptr<int64_t>(), sampling_locations.const_data_ptr<scalar_t>(),
          attention_weights.const_data_ptr<scalar_t>(), grad_output.const_data_ptr<scalar_t>(),
          grad_value_acc.mutable_data_ptr<acc_t>(), grad_sampling_locations.mutable_data_ptr<scalar_t>(),
          grad_attention_weights.mutable_data_ptr<scalar_t>(), N, S, M, D, Lq, L, P);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    // no-op for float32 / float64; one cast for float16 / bfloat16
    grad_value = grad_value_acc.to(value.scalar_type());
  });
  return {grad_value, grad_sampling_locations, grad_attention_weights};
}

}  // namespace msdetr_lite
