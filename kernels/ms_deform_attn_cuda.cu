// Multi-scale deformable attention: CUDA kernels and their launchers.
//
// The per-thread math (bilinear sampling, gradients, index arithmetic) lives in
// ms_deform_attn_kernels.cuh so that it can also be run and tested on the CPU; this file adds the
// __global__ grid-stride loops, dtype dispatch and memory management. Work split:
//   forward   one thread per output element (n, q, m, d): a warp reads neighbouring channels of the
//             same pixel (coalesced loads), no reduction between threads;
//   backward  one thread per sampling point (n, q, m, l, p): it loops over the D channels for its own
//             grad_sampling_locations / grad_attention_weights entries and scatters grad_value with
//             atomicAdd, accumulated in float32 for float16 / bfloat16 and cast at the end.
// float64 atomicAdd needs sm_60 or newer.

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
#include "ms_deform_attn_kernels.cuh"

namespace msdetr_lite {
namespace {

constexpr int kThreadsPerBlock = 256;
// Grid-stride loops let us cap the grid: any problem size works with at most this many blocks.
constexpr int64_t kMaxBlocks = 1 << 20;

// grad_value scatter: many sampling points can hit the same pixel at once.
struct AtomicAccumulate {
  template <typename T>
  __device__ __forceinline__ static void add(T* address, T v) { atomicAdd(address, v); }
};

template <typename scalar_t>
__global__ void ms_deform_attn_forward_kernel(MSDAShape sh, const scalar_t* __restrict__ value,
                                              const int64_t* __restrict__ spatial_shapes,
                                              const int64_t* __restrict__ level_start_index,
                                              const scalar_t* __restrict__ sampling_locations,
                                              const scalar_t* __restrict__ attention_weights,
                                              scalar_t* __restrict__ output) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t total = sh.N * sh.Lq * sh.M * sh.D;  // one thread per output element
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    forward_element<scalar_t, acc_t>(i, sh, value, spatial_shapes, level_start_index, sampling_locations,
                                     attention_weights, output);
  }
}

template <typename scalar_t>
__global__ void ms_deform_attn_backward_kernel(MSDAShape sh, const scalar_t* __restrict__ value,
                                               const int64_t* __restrict__ spatial_shapes,
                                               const int64_t* __restrict__ level_start_index,
                                               const scalar_t* __restrict__ sampling_locations,
                                               const scalar_t* __restrict__ attention_weights,
                                               const scalar_t* __restrict__ grad_output,
                                               at::opmath_type<scalar_t>* __restrict__ grad_value,
                                               scalar_t* __restrict__ grad_sampling_locations,
                                               scalar_t* __restrict__ grad_attention_weights) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t total = sh.N * sh.Lq * sh.M * sh.L * sh.P;  // one thread per sampling point
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    backward_point<scalar_t, acc_t, AtomicAccumulate>(i, sh, value, spatial_shapes, level_start_index,
                                                      sampling_locations, attention_weights, grad_output,
                                                      grad_value, grad_sampling_locations,
                                                      grad_attention_weights);
  }
}

int blocks_for(int64_t work) {
  const int64_t blocks = (work + kThreadsPerBlock - 1) / kThreadsPerBlock;
  return static_cast<int>(std::min<int64_t>(std::max<int64_t>(blocks, 1), kMaxBlocks));
}

}  // namespace

// Defensive checks; the Python wrapper (msdetr_lite.ops) already raised readable ValueErrors.
// Shared with ms_deform_attn_cuda_v2.cu (declared in ms_deform_attn.h).
void check_cuda_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes,
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

void check_grad_output(const at::Tensor& grad_output, const at::Tensor& value,
                       const at::Tensor& sampling_locations) {
  TORCH_CHECK(grad_output.is_contiguous() && grad_output.device() == value.device() &&
                  grad_output.scalar_type() == value.scalar_type(),
              "grad_output must be contiguous, on the device and of the dtype of value");
  TORCH_CHECK(grad_output.numel() == value.size(0) * sampling_locations.size(1) * value.size(2) * value.size(3),
              "grad_output must be [N, Lq, M * D]");
}

at::Tensor ms_deform_attn_cuda_forward(const at::Tensor& value,
                                       const at::Tensor& spatial_shapes,
                                       const at::Tensor& level_start_index,
                                       const at::Tensor& sampling_locations,
                                       const at::Tensor& attention_weights) {
  check_cuda_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  const c10::cuda::CUDAGuard guard(value.device());
  const int64_t N = value.size(0), S = value.size(1), M = value.size(2), D = value.size(3);
  const int64_t Lq = sampling_locations.size(1), L = sampling_locations.size(3),
                P = sampling_locations.size(4);
  const MSDAShape shape{N, S, M, D, Lq, L, P};
  at::Tensor output = at::empty({N, Lq, M * D}, value.options());
  const int64_t work = N * Lq * M * D;
  if (work == 0) return output;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_forward", [&] {
    ms_deform_attn_forward_kernel<scalar_t><<<blocks_for(work), kThreadsPerBlock, 0, stream>>>(
        shape, value.const_data_ptr<scalar_t>(), spatial_shapes.const_data_ptr<int64_t>(),
        level_start_index.const_data_ptr<int64_t>(), sampling_locations.const_data_ptr<scalar_t>(),
        attention_weights.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>());
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
  check_cuda_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  check_grad_output(grad_output, value, sampling_locations);
  const c10::cuda::CUDAGuard guard(value.device());
  const int64_t N = value.size(0), S = value.size(1), M = value.size(2), D = value.size(3);
  const int64_t Lq = sampling_locations.size(1), L = sampling_locations.size(3),
                P = sampling_locations.size(4);
  const MSDAShape shape{N, S, M, D, Lq, L, P};

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
          shape, value.const_data_ptr<scalar_t>(), spatial_shapes.const_data_ptr<int64_t>(),
          level_start_index.const_data_ptr<int64_t>(), sampling_locations.const_data_ptr<scalar_t>(),
          attention_weights.const_data_ptr<scalar_t>(), grad_output.const_data_ptr<scalar_t>(),
          grad_value_acc.mutable_data_ptr<acc_t>(), grad_sampling_locations.mutable_data_ptr<scalar_t>(),
          grad_attention_weights.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    // no-op for float32 / float64; one cast for float16 / bfloat16
    grad_value = grad_value_acc.to(value.scalar_type());
  });
  return {grad_value, grad_sampling_locations, grad_attention_weights};
}

}  // namespace msdetr_lite
