// Python binding of the CUDA multi-scale deformable attention kernels. Built on first use by
// msdetr_lite.kernels.load_cuda_extension() (torch.utils.cpp_extension.load), which defines
// TORCH_EXTENSION_NAME. Argument checks with readable messages live in msdetr_lite/ops.py.
// torch/csrc/utils/pybind.h holds the pybind11 casters for at::Tensor (and pulls in pybind11/stl.h
// for std::vector). It is what torch/extension.h provides for bindings, without the whole C++
// frontend (torch/all.h), which made this file take ~5x longer to compile (70 s vs 14 s here).
#include <torch/csrc/utils/pybind.h>

#include "ms_deform_attn.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "msdetr_lite multi-scale deformable attention (CUDA)";
  m.def("forward", &msdetr_lite::ms_deform_attn_cuda_forward,
        "value [N,S,M,D], spatial_shapes [L,2], level_start_index [L], "
        "sampling_locations [N,Lq,M,L,P,2], attention_weights [N,Lq,M,L,P] -> [N,Lq,M*D]",
        pybind11::arg("value"), pybind11::arg("spatial_shapes"), pybind11::arg("level_start_index"),
        pybind11::arg("sampling_locations"), pybind11::arg("attention_weights"));
  m.def("backward", &msdetr_lite::ms_deform_attn_cuda_backward,
        "same inputs plus grad_output [N,Lq,M*D] -> [grad_value, grad_sampling_locations, "
        "grad_attention_weights]",
        pybind11::arg("value"), pybind11::arg("spatial_shapes"), pybind11::arg("level_start_index"),
        pybind11::arg("sampling_locations"), pybind11::arg("attention_weights"),
        pybind11::arg("grad_output"));
  m.def("forward_v2", &msdetr_lite::ms_deform_attn_cuda_forward_v2,
        "throughput kernel (16-byte channel chunks, warp-shuffle backward); arguments as forward",
        pybind11::arg("value"), pybind11::arg("spatial_shapes"), pybind11::arg("level_start_index"),
        pybind11::arg("sampling_locations"), pybind11::arg("attention_weights"));
  m.def("backward_v2", &msdetr_lite::ms_deform_attn_cuda_backward_v2,
        "throughput kernel; arguments and results as backward",
        pybind11::arg("value"), pybind11::arg("spatial_shapes"), pybind11::arg("level_start_index"),
        pybind11::arg("sampling_locations"), pybind11::arg("attention_weights"),
        pybind11::arg("grad_output"));
}
