// Multi-scale deformable attention, throughput version ("cuda_v2" backend): kernels and launchers.
//
// The per-thread math is in ms_deform_attn_v2.cuh (host-testable); read its header comment for the
// thread layout. This file adds:
//   * the choice of the chunk width C (16-byte vectors when D and the pointers allow, else 1);
//   * the backward's warp-shuffle reduction of each point's three gradient sums over the G lanes
//     of its group (no shared memory, no __syncthreads);
//   * grad_value scattered with float4 / float2 atomicAdd on sm_90 (one L2 atomic per 16 bytes
//     instead of four), scalar atomics elsewhere; float32 accumulation for float16 / bfloat16;
//   * a launch configuration per shape (rules in ms_deform_attn_v2.cuh): the encoder (Lq = S, tens of
//     thousands of queries) runs the layout above in 256-thread blocks; a decoder (Lq of a few
//     hundred) would not fill the GPU with it, so its forward takes one channel per thread, its
//     backward splits each group's points over several teams of lanes, and blocks shrink to 128 or
//     64 threads until every multiprocessor has two.
// Same contract as ms_deform_attn_cuda.cu; not the default until a GPU measurement says so.

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "ms_deform_attn.h"
#include "ms_deform_attn_v2.cuh"

namespace msdetr_lite {
namespace {

constexpr int64_t kMaxBlocks = 1 << 20;  // grid-stride loops cover any size with at most this many

// grad_value scatter of one chunk: C neighbouring channels of one pixel, many points race on them.
struct VectorAtomicAccumulate {
  template <int C>
  __device__ __forceinline__ static void add_vec(float* address, const float (&v)[C]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    // sm_90 has 8- and 16-byte float atomics on global memory; address is 4 * C-byte aligned
    if constexpr (C % 4 == 0) {
#pragma unroll
      for (int k = 0; k < C; k += 4) {
        atomicAdd(reinterpret_cast<float4*>(address + k), make_float4(v[k], v[k + 1], v[k + 2], v[k + 3]));
      }
    } else if constexpr (C % 2 == 0) {
#pragma unroll
      for (int k = 0; k < C; k += 2) atomicAdd(reinterpret_cast<float2*>(address + k), make_float2(v[k], v[k + 1]));
    } else {
      add_scalars<C>(address, v);
    }
#else
    add_scalars<C>(address, v);
#endif
  }

  template <int C, typename T>
  __device__ __forceinline__ static void add_scalars(T* address, const T (&v)[C]) {
#pragma unroll
    for (int k = 0; k < C; ++k) atomicAdd(address + k, v[k]);
  }

  template <int C>
  __device__ __forceinline__ static void add_vec(double* address, const double (&v)[C]) {
    add_scalars<C>(address, v);  // no vector atomics for float64
  }
};

// Sum of v over the `lanes` lanes of an aligned group inside the warp (lanes: a power of two <= 32).
// Every lane of the warp must call it (the loop in the kernel is warp-uniform).
template <typename acc_t>
__device__ __forceinline__ acc_t group_sum(acc_t v, int lanes) {
  for (int offset = lanes / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

template <typename scalar_t, int C>
__global__ void forward_kernel_v2(MSDAShape sh, const scalar_t* __restrict__ value,
                                  const int64_t* __restrict__ spatial_shapes,
                                  const int64_t* __restrict__ level_start_index,
                                  const scalar_t* __restrict__ sampling_locations,
                                  const scalar_t* __restrict__ attention_weights, scalar_t* __restrict__ output) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t chunks = sh.D / C;
  const int64_t total = sh.N * sh.Lq * sh.M * chunks;  // one thread per (n, q, m, chunk)
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    v2::forward_chunk<scalar_t, acc_t, C>(i / chunks, i % chunks, sh, value, spatial_shapes, level_start_index,
                                          sampling_locations, attention_weights, output);
  }
}

// At most 256 threads per block (launch_config), and at least 3 blocks of them per multiprocessor:
// ptxas then caps registers at 80 per thread (the bf16 instantiation would take 110, i.e. only two
// blocks), so that 24 warps per multiprocessor hide the latency of the gathers and atomics; the
// price is 36 bytes of spills in the bf16 / fp16 instantiations (none for float32). A knob to
// re-measure on the GPU (unmeasured so far).
template <typename scalar_t, int C>
__global__ void __launch_bounds__(256, 3)
    backward_kernel_v2(MSDAShape sh, int lanes, int64_t slices, const scalar_t* __restrict__ value,
                       const int64_t* __restrict__ spatial_shapes, const int64_t* __restrict__ level_start_index,
                       const scalar_t* __restrict__ sampling_locations,
                       const scalar_t* __restrict__ attention_weights, const scalar_t* __restrict__ grad_output,
                       at::opmath_type<scalar_t>* __restrict__ grad_value,
                       scalar_t* __restrict__ grad_sampling_locations,
                       scalar_t* __restrict__ grad_attention_weights) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t chunks = sh.D / C;
  const int64_t points = sh.L * sh.P;
  const int64_t rounds = (points + slices - 1) / slices;  // points per slice, rounded up
  const int64_t total = sh.N * sh.Lq * sh.M * slices * lanes;  // `lanes` threads per (n, q, m, slice)
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  const int lane = static_cast<int>(threadIdx.x) & (lanes - 1);
  // Every loop bound below depends on the block only, so whole warps iterate together and the
  // shuffles in group_sum always see every lane; threads without a point take part with zero sums.
  // the usual case (D / C <= 32): each lane owns at most one chunk, whose grad_output it loads once
  const bool one_chunk_per_lane = chunks <= lanes;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * blockDim.x; base < total; base += stride) {
    const int64_t i = base + threadIdx.x;
    const bool active = i < total;
    const int64_t unit = active ? i / lanes : 0;
    const int64_t g = unit / slices;
    const int64_t slice = unit % slices;
    v2::RawChunk<scalar_t, C> go_raw = v2::zero_raw<scalar_t, C>();
    if (active && one_chunk_per_lane && lane < chunks) go_raw = v2::grad_output_chunk<scalar_t, C>(g, lane, sh, grad_output);
    for (int64_t k = 0; k < rounds; ++k) {
      const int64_t lp = slice + k * slices;  // l * P + p
      const bool live = active && lp < points;
      const int64_t l = live ? lp / sh.P : 0;
      const int64_t H = spatial_shapes[2 * l];
      const int64_t W = spatial_shapes[2 * l + 1];
      const int64_t pt = g * points + lp;
      v2::PointGrad<acc_t> pg{acc_t(0), acc_t(0), acc_t(0)};
      acc_t a = acc_t(0);
      if (live) {
        a = static_cast<acc_t>(attention_weights[pt]);
        v2::Bilinear<acc_t> b;
        if (v2::bilinear_point<acc_t>(static_cast<acc_t>(sampling_locations[2 * pt]),
                                      static_cast<acc_t>(sampling_locations[2 * pt + 1]), H, W,
                                      level_start_index[l], b)) {
          for (int64_t chunk = lane; chunk < chunks; chunk += lanes) {
            if (!one_chunk_per_lane) go_raw = v2::grad_output_chunk<scalar_t, C>(g, chunk, sh, grad_output);
            v2::backward_chunk<scalar_t, acc_t, C, VectorAtomicAccumulate>(g, chunk, sh, b, a, go_raw, value,
                                                                           grad_value, pg);
          }
        }
      }
      pg.a = group_sum(pg.a, lanes);
      pg.x = group_sum(pg.x, lanes);
      pg.y = group_sum(pg.y, lanes);
      if (live && lane == 0) {
        v2::finish_point<scalar_t, acc_t>(pt, a, H, W, pg, grad_sampling_locations, grad_attention_weights);
      }
    }
  }
}

bool aligned(const void* p, int64_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// The chunk width: a full 16-byte vector when D is a multiple of it and the tensors that are read
// in chunks start on a 16-byte boundary (a view with a storage offset may not), else 1 channel.
template <typename scalar_t>
int chunk_width(int64_t D, std::initializer_list<const void*> pointers) {
  constexpr int widest = v2::max_chunk<scalar_t>();
  if (D % widest != 0) return 1;
  for (const void* p : pointers) {
    if (!aligned(p, widest * static_cast<int64_t>(sizeof(scalar_t)))) return 1;
  }
  return widest;
}

// What the current GPU runs at once, for the per-shape choices in ms_deform_attn_v2.cuh. Attribute
// queries are cheap (cudaGetDeviceProperties would cost milliseconds per call).
struct DeviceSize {
  int multiprocessors;
  int64_t resident_threads;
};

DeviceSize device_size() {
  const int device = c10::cuda::current_device();
  int sms = 0, threads_per_sm = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&threads_per_sm, cudaDevAttrMaxThreadsPerMultiProcessor, device));
  return {sms, static_cast<int64_t>(sms) * threads_per_sm};
}

// Threads per block: 256 while that still gives every multiprocessor two blocks (the encoder,
// Lq = S in the tens of thousands); smaller blocks for small problems (decoder, Lq of a few
// hundred), so that they spread over all multiprocessors instead of queueing on a few.
struct LaunchConfig {
  int blocks, threads;
};

LaunchConfig launch_config(int64_t work_threads, const DeviceSize& gpu) {
  int threads = 256;
  while (threads > 64 && (work_threads + threads - 1) / threads < 2 * static_cast<int64_t>(gpu.multiprocessors)) {
    threads /= 2;
  }
  const int64_t blocks = (work_threads + threads - 1) / threads;
  return {static_cast<int>(std::min<int64_t>(std::max<int64_t>(blocks, 1), kMaxBlocks)), threads};
}

template <typename scalar_t, int C>
void launch_forward(const MSDAShape& sh, const DeviceSize& gpu, const at::Tensor& value, const at::Tensor& spatial_shapes,
                    const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                    const at::Tensor& attention_weights, at::Tensor& output) {
  const LaunchConfig cfg = launch_config(sh.N * sh.Lq * sh.M * (sh.D / C), gpu);
  forward_kernel_v2<scalar_t, C><<<cfg.blocks, cfg.threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      sh, value.const_data_ptr<scalar_t>(), spatial_shapes.const_data_ptr<int64_t>(),
      level_start_index.const_data_ptr<int64_t>(), sampling_locations.const_data_ptr<scalar_t>(),
      attention_weights.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, int C>
void launch_backward(const MSDAShape& sh, const at::Tensor& value, const at::Tensor& spatial_shapes,
                     const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                     const at::Tensor& attention_weights, const at::Tensor& grad_output, at::Tensor& grad_value_acc,
                     at::Tensor& grad_sampling_locations, at::Tensor& grad_attention_weights) {
  using acc_t = at::opmath_type<scalar_t>;
  const DeviceSize gpu = device_size();
  const int64_t groups = sh.N * sh.Lq * sh.M;
  const int lanes = v2::backward_group_lanes(sh.D / C);
  const int64_t slices = v2::backward_point_slices(groups, lanes, sh.L * sh.P, gpu.resident_threads);
  const LaunchConfig cfg = launch_config(groups * slices * lanes, gpu);
  backward_kernel_v2<scalar_t, C><<<cfg.blocks, cfg.threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      sh, lanes, slices, value.const_data_ptr<scalar_t>(), spatial_shapes.const_data_ptr<int64_t>(),
      level_start_index.const_data_ptr<int64_t>(), sampling_locations.const_data_ptr<scalar_t>(),
      attention_weights.const_data_ptr<scalar_t>(), grad_output.const_data_ptr<scalar_t>(),
      grad_value_acc.mutable_data_ptr<acc_t>(), grad_sampling_locations.mutable_data_ptr<scalar_t>(),
      grad_attention_weights.mutable_data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

MSDAShape shape_of(const at::Tensor& value, const at::Tensor& sampling_locations) {
  return {value.size(0), value.size(1), value.size(2), value.size(3), sampling_locations.size(1),
          sampling_locations.size(3), sampling_locations.size(4)};
}

}  // namespace

at::Tensor ms_deform_attn_cuda_forward_v2(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                          const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                                          const at::Tensor& attention_weights) {
  check_cuda_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  const c10::cuda::CUDAGuard guard(value.device());
  const MSDAShape sh = shape_of(value, sampling_locations);
  at::Tensor output = at::empty({sh.N, sh.Lq, sh.M * sh.D}, value.options());
  if (output.numel() == 0) return output;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_forward_v2", [&] {
    constexpr int widest = v2::max_chunk<scalar_t>();
    const DeviceSize gpu = device_size();
    if (chunk_width<scalar_t>(sh.D, {value.const_data_ptr(), output.const_data_ptr()}) == widest &&
        v2::forward_uses_chunks(sh.N * sh.Lq * sh.M, sh.D, widest, gpu.resident_threads)) {
      launch_forward<scalar_t, widest>(sh, gpu, value, spatial_shapes, level_start_index, sampling_locations,
                                       attention_weights, output);
    } else {
      launch_forward<scalar_t, 1>(sh, gpu, value, spatial_shapes, level_start_index, sampling_locations,
                                  attention_weights, output);
    }
  });
  return output;
}

std::vector<at::Tensor> ms_deform_attn_cuda_backward_v2(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                                        const at::Tensor& level_start_index,
                                                        const at::Tensor& sampling_locations,
                                                        const at::Tensor& attention_weights,
                                                        const at::Tensor& grad_output) {
  check_cuda_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  check_grad_output(grad_output, value, sampling_locations);
  const c10::cuda::CUDAGuard guard(value.device());
  const MSDAShape sh = shape_of(value, sampling_locations);

  at::Tensor grad_sampling_locations = at::empty_like(sampling_locations);
  at::Tensor grad_attention_weights = at::empty_like(attention_weights);
  at::Tensor grad_value;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_backward_v2", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor grad_value_acc =
        at::zeros(value.sizes(), value.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    if (grad_attention_weights.numel() > 0) {
      constexpr int widest = v2::max_chunk<scalar_t>();
      // grad_value_acc is a fresh allocation (aligned); value and grad_output may be offset views
      if (chunk_width<scalar_t>(sh.D, {value.const_data_ptr(), grad_output.const_data_ptr()}) == widest) {
        launch_backward<scalar_t, widest>(sh, value, spatial_shapes, level_start_index, sampling_locations,
                                          attention_weights, grad_output, grad_value_acc, grad_sampling_locations,
                                          grad_attention_weights);
      } else {
        launch_backward<scalar_t, 1>(sh, value, spatial_shapes, level_start_index, sampling_locations,
                                     attention_weights, grad_output, grad_value_acc, grad_sampling_locations,
                                     grad_attention_weights);
      }
    }
    grad_value = grad_value_acc.to(value.scalar_type());  // no-op for float32 / float64
  });
  return {grad_value, grad_sampling_locations, grad_attention_weights};
}

}  // namespace msdetr_lite
