// Multi-scale deformable attention, throughput version ("cuda_v2" backend): the per-thread math.
//
// Same contract and same numbers as ms_deform_attn_kernels.cuh (grid_sample bilinear sampling,
// align_corners=False, zero padding, acc_t arithmetic, int64 indices), reorganised for memory
// throughput. Like that header it is __host__ __device__ and ATen-free, so tests/test_cuda_build.py
// builds it into a host library and emulates the GPU thread layout on the CPU.
//
// Thread layout (ms_deform_attn_cuda_v2.cu launches it):
//   * a "group" is one (n, q, m) triple: a query's head. Its D channels are cut into D / C chunks of
//     C neighbouring channels, C = 16 bytes / sizeof(scalar_t) when D allows it (4 float32, 8 bf16 /
//     fp16, 2 float64), so every value / grad_output access is one 16-byte load;
//   * forward: one thread per (group, chunk). The thread computes each sampling point's bilinear
//     corners once (Bilinear) and applies them to its C channels; no communication between threads;
//   * backward: G lanes of one warp per group (G = D / C rounded up to a power of two, at most 32;
//     lane j owns chunks j, j + G, ...), or, for small problems, per (group, slice of its points;
//     see backward_point_slices). Per sampling point every lane adds its channels'
//     contributions to the point's three gradient sums (PointGrad) and scatters grad_value with
//     vector atomics (Accumulate::add_vec); the G partial sums are then combined with warp shuffles
//     and lane 0 writes the point's grad_sampling_locations / grad_attention_weights (finish_point).
//     The host test replaces the shuffles by a plain sum over lanes.
#pragma once

#include <cstdint>
#include <cstring>

#include "ms_deform_attn_kernels.cuh"  // MSDAShape, locate, MSDA_HOST_DEVICE

namespace msdetr_lite {
namespace v2 {

// The widest vector load: 16 bytes (LDG.128), as C elements of scalar_t.
template <typename scalar_t>
constexpr int max_chunk() {
  return static_cast<int>(16 / sizeof(scalar_t));
}

// An unsigned type of exactly Bytes bytes, so a chunk is loaded / stored in one instruction.
template <int Bytes>
struct RawBits;
template <>
struct RawBits<16> { using type = uint4; };
template <>
struct RawBits<8> { using type = uint2; };
template <>
struct RawBits<4> { using type = unsigned int; };
template <>
struct RawBits<2> { using type = unsigned short; };

// A chunk as it sits in memory: C elements of scalar_t in one unsigned word of 2..16 bytes. Corners
// are loaded raw and converted to acc_t only when used, so four bf16 / fp16 chunks in flight take
// 16 registers instead of 32.
template <typename scalar_t, int C>
using RawChunk = typename RawBits<static_cast<int>(sizeof(scalar_t)) * C>::type;

// The C elements at p, which must be aligned to C * sizeof(scalar_t) (the launcher checks this).
template <typename scalar_t, int C>
MSDA_HOST_DEVICE RawChunk<scalar_t, C> load_raw(const scalar_t* __restrict__ p) {
  return *reinterpret_cast<const RawChunk<scalar_t, C>*>(p);
}

// All-zero bits: +0 in every floating-point type (the padding of a corner outside the map).
template <typename scalar_t, int C>
MSDA_HOST_DEVICE RawChunk<scalar_t, C> zero_raw() {
  RawChunk<scalar_t, C> raw;
  memset(&raw, 0, sizeof(raw));
  return raw;
}

template <typename scalar_t, typename acc_t, int C>
MSDA_HOST_DEVICE void unpack(const RawChunk<scalar_t, C>& raw, acc_t (&out)[C]) {
  scalar_t vals[C];
  memcpy(vals, &raw, sizeof(raw));  // a register move after optimisation
#pragma unroll
  for (int k = 0; k < C; ++k) out[k] = static_cast<acc_t>(vals[k]);
}

// out[k] = p[k] for k < C (p aligned as for load_raw).
template <typename scalar_t, typename acc_t, int C>
MSDA_HOST_DEVICE void load_chunk(const scalar_t* __restrict__ p, acc_t (&out)[C]) {
  unpack<scalar_t, acc_t, C>(load_raw<scalar_t, C>(p), out);
}

template <typename scalar_t, typename acc_t, int C>
MSDA_HOST_DEVICE void store_chunk(scalar_t* __restrict__ p, const acc_t (&in)[C]) {
  using raw_t = typename RawBits<static_cast<int>(sizeof(scalar_t)) * C>::type;
  scalar_t vals[C];
#pragma unroll
  for (int k = 0; k < C; ++k) vals[k] = static_cast<scalar_t>(in[k]);
  raw_t raw;
  memcpy(&raw, vals, sizeof(raw_t));
  *reinterpret_cast<raw_t*>(p) = raw;
}

// (n, q, m) of group g = (n * Lq + q) * M + m.
MSDA_HOST_DEVICE void group_coords(int64_t g, const MSDAShape& sh, int64_t& n, int64_t& m) {
  m = g % sh.M;
  n = g / (sh.M * sh.Lq);
}

// One sampling point's four neighbours, computed once and shared by all C channels of a chunk.
// Corner c is (row y0 + (c >> 1), column x0 + (c & 1)); outside ones have inside[c] == false and
// weight 0, and are never read.
template <typename acc_t>
struct Bilinear {
  int64_t pixel[4];  // row of value inside S: start + y * W + x
  acc_t weight[4];   // wy * wx
  bool inside[4];
  acc_t lx, ly;      // fractional position, for the location gradient
};

// Fills b for a point at normalised (loc_x, loc_y) on level (H, W, start); false when no neighbour
// is inside the map (then b is untouched and the sample is exactly zero).
template <typename acc_t>
MSDA_HOST_DEVICE bool bilinear_point(acc_t loc_x, acc_t loc_y, int64_t H, int64_t W, int64_t start,
                                     Bilinear<acc_t>& b) {
  int64_t x0, y0;
  if (!locate<acc_t>(loc_x, loc_y, H, W, x0, y0, b.lx, b.ly)) return false;
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    const int cy = c >> 1;
    const int cx = c & 1;
    const int64_t yi = y0 + cy;
    const int64_t xi = x0 + cx;
    b.inside[c] = yi >= 0 && yi < H && xi >= 0 && xi < W;
    b.pixel[c] = b.inside[c] ? start + yi * W + xi : 0;
    b.weight[c] = b.inside[c] ? (cy ? b.ly : acc_t(1) - b.ly) * (cx ? b.lx : acc_t(1) - b.lx) : acc_t(0);
  }
  return true;
}

// Forward: output[n, q, m * D + chunk * C + k] for k < C, where g = (n * Lq + q) * M + m.
template <typename scalar_t, typename acc_t, int C>
MSDA_HOST_DEVICE void forward_chunk(int64_t g, int64_t chunk, const MSDAShape& sh,
                                    const scalar_t* __restrict__ value,             // [N, S, M, D]
                                    const int64_t* __restrict__ spatial_shapes,     // [L, 2]
                                    const int64_t* __restrict__ level_start_index,  // [L]
                                    const scalar_t* __restrict__ sampling_locations,
                                    const scalar_t* __restrict__ attention_weights,
                                    scalar_t* __restrict__ output) {
  int64_t n, m;
  group_coords(g, sh, n, m);
  const int64_t pixel_stride = sh.M * sh.D;
  // value[n, s, m, chunk * C] lives at value_chunk + s * M * D
  const scalar_t* value_chunk = value + n * sh.S * pixel_stride + m * sh.D + chunk * C;
  const int64_t point0 = g * sh.L * sh.P;  // the group's L * P points are contiguous

  acc_t acc[C];
#pragma unroll
  for (int k = 0; k < C; ++k) acc[k] = acc_t(0);
  for (int64_t l = 0; l < sh.L; ++l) {
    const int64_t H = spatial_shapes[2 * l];
    const int64_t W = spatial_shapes[2 * l + 1];
    const int64_t start = level_start_index[l];
    for (int64_t p = 0; p < sh.P; ++p) {
      const int64_t pt = point0 + l * sh.P + p;
      Bilinear<acc_t> b;
      if (!bilinear_point<acc_t>(static_cast<acc_t>(sampling_locations[2 * pt]),
                                 static_cast<acc_t>(sampling_locations[2 * pt + 1]), H, W, start, b)) {
        continue;
      }
      const acc_t a = static_cast<acc_t>(attention_weights[pt]);
      // all four loads first (independent, in flight together), then the arithmetic
      RawChunk<scalar_t, C> raw[4];
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        raw[c] = b.inside[c] ? load_raw<scalar_t, C>(value_chunk + b.pixel[c] * pixel_stride)
                             : zero_raw<scalar_t, C>();
      }
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        acc_t v[C];
        unpack<scalar_t, acc_t, C>(raw[c], v);
        const acc_t aw = a * b.weight[c];
#pragma unroll
        for (int k = 0; k < C; ++k) acc[k] += aw * v[k];
      }
    }
  }
  store_chunk<scalar_t, acc_t, C>(output + g * sh.D + chunk * C, acc);
}

// A lane's share of one sampling point's gradient sums, over the channels it owns.
template <typename acc_t>
struct PointGrad {
  acc_t a;  // sum over corners and channels of weight * grad_out * value  (d loss / d attention weight)
  acc_t x;  // d loss / d (pixel x), before the chain-rule factor attention_weight * W
  acc_t y;
};

// Backward, one chunk of one sampling point: adds the chunk's share to pg and scatters
// grad_value[n, pixel, m, chunk * C : chunk * C + C] += a * weight * grad_out through
// Accumulate::add_vec. a is the point's attention weight, b its corners (bilinear_point), go the
// chunk of grad_output[n, q, m * D + chunk * C ...] (grad_output_chunk; the kernel loads it once per
// group, not once per point, when a lane owns a single chunk).
template <typename scalar_t, typename acc_t, int C, typename Accumulate>
MSDA_HOST_DEVICE void backward_chunk(int64_t g, int64_t chunk, const MSDAShape& sh, const Bilinear<acc_t>& b,
                                     acc_t a, const RawChunk<scalar_t, C>& go_raw,
                                     const scalar_t* __restrict__ value,  // [N, S, M, D]
                                     acc_t* __restrict__ grad_value,      // [N, S, M, D]
                                     PointGrad<acc_t>& pg) {
  int64_t n, m;
  group_coords(g, sh, n, m);
  const int64_t pixel_stride = sh.M * sh.D;
  const int64_t chunk_offset = n * sh.S * pixel_stride + m * sh.D + chunk * C;
  acc_t go[C];
  unpack<scalar_t, acc_t, C>(go_raw, go);
  RawChunk<scalar_t, C> raw[4];  // all four loads first, in flight together
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    raw[c] = b.inside[c] ? load_raw<scalar_t, C>(value + chunk_offset + b.pixel[c] * pixel_stride)
                         : zero_raw<scalar_t, C>();
  }
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    if (!b.inside[c]) continue;
    const int cy = c >> 1;
    const int cx = c & 1;
    acc_t v[C];
    unpack<scalar_t, acc_t, C>(raw[c], v);
    acc_t dot = acc_t(0);  // <grad_out, this corner's C channels>
    acc_t scattered[C];
    const acc_t aw = a * b.weight[c];
#pragma unroll
    for (int k = 0; k < C; ++k) {
      dot += go[k] * v[k];
      scattered[k] = aw * go[k];
    }
    Accumulate::template add_vec<C>(grad_value + chunk_offset + b.pixel[c] * pixel_stride, scattered);
    const acc_t wy = cy ? b.ly : acc_t(1) - b.ly;
    const acc_t wx = cx ? b.lx : acc_t(1) - b.lx;
    pg.a += b.weight[c] * dot;
    // weight = wy * wx with wx = lx or 1 - lx and lx = x - floor(x): d(wx)/dx = +1 for the right
    // column, -1 for the left one (rows likewise)
    pg.x += (cx ? wy : -wy) * dot;
    pg.y += (cy ? wx : -wx) * dot;
  }
}

// The chunk of grad_output [N, Lq, M * D] that backward_chunk(g, chunk, ...) needs.
template <typename scalar_t, int C>
MSDA_HOST_DEVICE RawChunk<scalar_t, C> grad_output_chunk(int64_t g, int64_t chunk, const MSDAShape& sh,
                                                         const scalar_t* __restrict__ grad_output) {
  return load_raw<scalar_t, C>(grad_output + g * sh.D + chunk * C);
}

// Writes point pt's gradients from the group's summed PointGrad (zero for a point outside the map).
template <typename scalar_t, typename acc_t>
MSDA_HOST_DEVICE void finish_point(int64_t pt, acc_t a, int64_t H, int64_t W, const PointGrad<acc_t>& total,
                                   scalar_t* __restrict__ grad_sampling_locations,
                                   scalar_t* __restrict__ grad_attention_weights) {
  grad_attention_weights[pt] = static_cast<scalar_t>(total.a);
  // x = loc_x * W - 0.5, so d/d loc_x = W * d/dx; the sample is scaled by the attention weight a
  grad_sampling_locations[2 * pt] = static_cast<scalar_t>(total.x * static_cast<acc_t>(W) * a);
  grad_sampling_locations[2 * pt + 1] = static_cast<scalar_t>(total.y * static_cast<acc_t>(H) * a);
}

// Lanes per group in the backward: D / C chunks rounded up to a power of two, at most a warp.
MSDA_HOST_DEVICE int backward_group_lanes(int64_t chunks) {
  int lanes = 1;
  while (lanes < chunks && lanes < 32) lanes *= 2;
  return lanes;
}

// Launch configuration per shape. resident_threads is what the GPU runs at once (multiprocessors
// times threads per multiprocessor, 270k on an H100). The encoder (Lq = S, hundreds of thousands
// of groups) fills it many times over with the layout above; a decoder (Lq of a few hundred, a few
// thousand groups) would leave most multiprocessors idle, so it gets more, smaller work items.

// Forward: 16-byte chunks when they still give one full GPU of threads, else one channel per
// thread (4-8x as many threads, each with the same four loads in flight per point).
MSDA_HOST_DEVICE bool forward_uses_chunks(int64_t groups, int64_t D, int widest, int64_t resident_threads) {
  return groups * (D / widest) >= resident_threads;
}

// Backward: each group's L * P points are dealt to `slices` teams of lanes (slice s takes points
// s, s + slices, ...; a point's gradients never need another slice). One slice when the groups fill
// the GPU, doubling up to one point per team until they do.
MSDA_HOST_DEVICE int64_t backward_point_slices(int64_t groups, int lanes, int64_t points, int64_t resident_threads) {
  int64_t slices = 1;
  while (slices < points && groups * lanes * slices < resident_threads) slices *= 2;
  return slices < points ? slices : points;
}

}  // namespace v2
}  // namespace msdetr_lite
