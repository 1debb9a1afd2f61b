// Multi-scale deformable attention, CUDA implementation: the launchers shared by
// ms_deform_attn_cuda.cu / ms_deform_attn_cuda_v2.cu (kernels) and ms_deform_attn.cpp (Python binding).
// The v2 launchers (the "cuda_v2" backend) take and return exactly what the first ones do.
//
// Shapes (Deformable DETR conventions, all tensors contiguous and on one CUDA device):
//   value               [N, S, M, D]     float64 / float32 / float16 / bfloat16
//   spatial_shapes      [L, 2]  int64    (H, W) of each level, sum(H * W) == S
//   level_start_index   [L]     int64    offset of each level inside S
//   sampling_locations  [N, Lq, M, L, P, 2]   normalised (x, y), same dtype as value
//   attention_weights   [N, Lq, M, L, P]      same dtype as value
//   output              [N, Lq, M * D]
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace msdetr_lite {

at::Tensor ms_deform_attn_cuda_forward(const at::Tensor& value,
                                       const at::Tensor& spatial_shapes,
                                       const at::Tensor& level_start_index,
                                       const at::Tensor& sampling_locations,
                                       const at::Tensor& attention_weights);

// Returns {grad_value [N, S, M, D], grad_sampling_locations [N, Lq, M, L, P, 2],
//          grad_attention_weights [N, Lq, M, L, P]} in the dtype of value.
std::vector<at::Tensor> ms_deform_attn_cuda_backward(const at::Tensor& value,
                                                     const at::Tensor& spatial_shapes,
                                                     const at::Tensor& level_start_index,
                                                     const at::Tensor& sampling_locations,
                                                     const at::Tensor& attention_weights,
                                                     const at::Tensor& grad_output);

// Throughput version (ms_deform_attn_cuda_v2.cu): same arguments and results as the two above.
at::Tensor ms_deform_attn_cuda_forward_v2(const at::Tensor& value,
                                          const at::Tensor& spatial_shapes,
                                          const at::Tensor& level_start_index,
                                          const at::Tensor& sampling_locations,
                                          const at::Tensor& attention_weights);

std::vector<at::Tensor> ms_deform_attn_cuda_backward_v2(const at::Tensor& value,
                                                        const at::Tensor& spatial_shapes,
                                                        const at::Tensor& level_start_index,
                                                        const at::Tensor& sampling_locations,
                                                        const at::Tensor& attention_weights,
                                                        const at::Tensor& grad_output);

// TORCH_CHECKs of device, contiguity, rank and dtype shared by every launcher.
void check_cuda_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes,
                       const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                       const at::Tensor& attention_weights);

// TORCH_CHECKs of a backward's grad_output: contiguous [N, Lq, M * D] on value's device and dtype.
void check_grad_output(const at::Tensor& grad_output, const at::Tensor& value,
                       const at::Tensor& sampling_locations);

}  // namespace msdetr_lite
