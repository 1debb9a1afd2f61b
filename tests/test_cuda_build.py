"""The CUDA extension in kernels/ compiles (no GPU needed: this is a compile-and-link check).

Skipped when nvcc is not installed. On a GPU machine test_ops.py then runs the kernels; here we only
prove that nvcc accepts both kernel sources (ms_deform_attn_cuda.cu, the default ``cuda`` backend, and
ms_deform_attn_cuda_v2.cu, the ``cuda_v2`` backend) for sm_80 and sm_90 (Hopper, where cuda_v2 uses
vector atomics that sm_80 lacks), and that the extension links into a .so.

Normal path: the same ``torch.utils.cpp_extension.load`` call the ``cuda`` backend uses, into a
temporary build folder. Fallback: cpp_extension refuses an nvcc whose CUDA *major* version differs
from the one torch was built with (its ``_check_cuda_version``), because such a module could not be
loaded next to torch's CUDA runtime. That is a statement about loading, not about our source, so in
that case we run the identical compile and link commands ourselves (torch's include folders, torch's
nvcc flags) and only check that the .so is produced. ``MSDETR_CUDA_BUILD_DIRECT=1`` forces the
fallback (to test it on a machine where torch would accept nvcc).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sysconfig
import time
from pathlib import Path

import pytest
import torch

NVCC = shutil.which("nvcc")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(NVCC is None, reason="nvcc not installed"),
    pytest.mark.skipif(torch.version.cuda is None, reason="CPU-only torch build: no CUDA libraries to link"),
    pytest.mark.timeout(900),
]

# Without a GPU to read the architecture from, build for sm_80 (A100, supported by every CUDA 11-13
# nvcc: the generic code path) and sm_90 (H100 / H200: the vector-atomic path of cuda_v2).
COMPILE_ONLY_ARCHS = "8.0;9.0"


def _cuda_major(version: str) -> int:
    return int(version.split(".")[0])


def _nvcc_release() -> str:
    out = subprocess.run([NVCC, "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"release (\d+\.\d+)", out)
    assert match, out
    return match.group(1)


def _torch_accepts_nvcc() -> bool:
    return _cuda_major(_nvcc_release()) == _cuda_major(torch.version.cuda)


def _run(cmd):
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(map(str, cmd))}\n{result.stdout}\n{result.stderr}"


def _build_directly(build_dir: Path, name: str) -> Path:
    """Compile the .cu with nvcc and the .cpp with c++ using torch's headers and flags, then link."""
    from torch.utils import cpp_extension

    from msdetr_lite.kernels import cuda_loader

    cuda_home = cuda_loader.find_cuda_home()
    assert cuda_home, "nvcc found but no CUDA toolkit folder with include/cuda_runtime.h"
    sources = cuda_loader.source_paths()
    cpp, cus = sources[0], [Path(p) for p in sources if p.endswith(".cu")]
    includes = [cuda_loader.include_dir(), *cpp_extension.include_paths(),
                os.path.join(cuda_home, "include"), sysconfig.get_paths()["include"]]
    common = [f"-DTORCH_EXTENSION_NAME={name}", "-DTORCH_API_INCLUDE_EXTENSION_H", "-std=c++20",
              *[f"-I{p}" for p in includes]]
    gencodes = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in COMPILE_ONLY_ARCHS.replace(".", "").split(";")]
    cu_os, cpp_o, so = [build_dir / f"{cu.stem}.o" for cu in cus], build_dir / "ms_deform_attn.o", build_dir / f"{name}.so"
    for cu, cu_o in zip(cus, cu_os):
        _run([NVCC, *common, *cpp_extension.COMMON_NVCC_FLAGS, *gencodes, "--compiler-options", "-fPIC",
              *cuda_loader.EXTRA_CUDA_CFLAGS, "-c", cu, "-o", cu_o])
    _run(["c++", *common, "-fPIC", *cuda_loader.EXTRA_CFLAGS, "-c", cpp, "-o", cpp_o])
    torch_lib = Path(torch.__file__).parent / "lib"
    _run(["c++", "-shared", cpp_o, *cu_os, f"-L{torch_lib}", "-lc10", "-lc10_cuda", "-ltorch_cpu",
          "-ltorch_cuda", "-ltorch", "-ltorch_python", f"-L{os.path.join(cuda_home, 'lib64')}", "-lcudart",
          "-o", so])
    return so


def test_cuda_extension_compiles(tmp_path, monkeypatch, record_property):
    from msdetr_lite.kernels import cuda_loader

    forced_archs = not torch.cuda.is_available() and not os.environ.get("TORCH_CUDA_ARCH_LIST")
    if forced_archs:
        # Without a GPU, cpp_extension has no device to read the target architecture from.
        monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", COMPILE_ONLY_ARCHS)
    name = "msdetr_lite_ms_deform_attn_buildtest"  # distinct from the backend's module name
    direct = os.environ.get("MSDETR_CUDA_BUILD_DIRECT") == "1" or not _torch_accepts_nvcc()

    start = time.perf_counter()
    if direct:
        so = _build_directly(tmp_path, name)
    else:
        module = cuda_loader.load_cuda_extension(name=name, build_directory=str(tmp_path))
        assert all(callable(getattr(module, f)) for f in ("forward", "backward", "forward_v2", "backward_v2"))
        so = tmp_path / f"{name}.so"
        # cpp_extension really ran nvcc on both kernel sources (not just the C++ binding)
        ninja = (tmp_path / "build.ninja").read_text()
        assert "ms_deform_attn_cuda.cu" in ninja and "ms_deform_attn_cuda_v2.cu" in ninja and "nvcc" in ninja
        assert any(tmp_path.glob("ms_deform_attn_cuda.*o")) and any(tmp_path.glob("ms_deform_attn_cuda_v2*.o"))
        if forced_archs:
            assert "sm_90" in ninja and "sm_80" in ninja
    seconds = time.perf_counter() - start

    assert so.is_file() and so.stat().st_size > 0
    record_property("cuda_build_seconds", round(seconds, 1))
    print(f"\nCUDA extension ({'nvcc directly' if direct else 'cpp_extension.load'}) built in {seconds:.0f} s")


# --------------------------------------------------------------------------------------------------
# The kernel math on the CPU. ms_deform_attn_kernels.cuh holds the per-thread functions of the CUDA
# kernels as __host__ __device__ code without ATen, so nvcc can build them into a plain host library
# (seconds, no torch headers). Running them serially over every index checks the index arithmetic,
# bilinear weights and gradients of the GPU code against grid_sample even where no GPU exists; only
# the grid-stride loops, atomics and dtype dispatch in ms_deform_attn_cuda.cu are left to GPU runs.

HARNESS = r"""
#include "ms_deform_attn_kernels.cuh"
using namespace msdetr_lite;

struct PlainAccumulate {  // serial execution: no atomics needed
  template <typename T>
  __host__ __device__ static void add(T* address, T v) { *address += v; }
};

template <typename scalar_t>
static void forward(const scalar_t* value, const int64_t* shapes, const int64_t* starts, const scalar_t* loc,
                    const scalar_t* weights, scalar_t* out, const int64_t* dims) {
  const MSDAShape sh{dims[0], dims[1], dims[2], dims[3], dims[4], dims[5], dims[6]};
  for (int64_t i = 0; i < sh.N * sh.Lq * sh.M * sh.D; ++i)
    forward_element<scalar_t, scalar_t>(i, sh, value, shapes, starts, loc, weights, out);
}

template <typename scalar_t>
static void backward(const scalar_t* value, const int64_t* shapes, const int64_t* starts, const scalar_t* loc,
                     const scalar_t* weights, const scalar_t* grad_out, scalar_t* grad_value,
                     scalar_t* grad_loc, scalar_t* grad_weights, const int64_t* dims) {
  const MSDAShape sh{dims[0], dims[1], dims[2], dims[3], dims[4], dims[5], dims[6]};
  for (int64_t i = 0; i < sh.N * sh.Lq * sh.M * sh.L * sh.P; ++i)
    backward_point<scalar_t, scalar_t, PlainAccumulate>(i, sh, value, shapes, starts, loc, weights, grad_out,
                                                        grad_value, grad_loc, grad_weights);
}

#define EXPORT(T, SUFFIX)                                                                              \
  extern "C" void forward_##SUFFIX(const T* v, const int64_t* s, const int64_t* st, const T* l,      \
                                   const T* w, T* o, const int64_t* d) { forward<T>(v, s, st, l, w, o, d); } \
  extern "C" void backward_##SUFFIX(const T* v, const int64_t* s, const int64_t* st, const T* l,     \
                                    const T* w, const T* g, T* gv, T* gl, T* gw, const int64_t* d) { \
    backward<T>(v, s, st, l, w, g, gv, gl, gw, d);                                                   \
  }
EXPORT(double, f64)
EXPORT(float, f32)
"""


def _build_host_harness(tmp_path_factory, name: str, source: str):
    """Compile a host harness of the kernels' header math with nvcc into a shared library."""
    import ctypes

    from msdetr_lite.kernels import cuda_loader

    folder = tmp_path_factory.mktemp(f"msda_{name}")
    (folder / f"{name}.cu").write_text(source)
    lib = folder / f"{name}.so"
    _run([NVCC, "-shared", "-std=c++17", "--compiler-options", "-fPIC", "-O2", f"-I{cuda_loader.include_dir()}",
          folder / f"{name}.cu", "-o", lib])
    return ctypes.CDLL(str(lib))


@pytest.fixture(scope="module")
def host_kernels(tmp_path_factory):
    return _build_host_harness(tmp_path_factory, "harness", HARNESS)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_kernel_math_matches_reference_on_host(host_kernels, dtype):
    import ctypes

    from msdetr_lite.ops import ms_deform_attn_torch

    gen = torch.Generator().manual_seed(0)
    spatial_shapes = torch.tensor([[6, 5], [3, 4], [2, 1]])
    sizes = spatial_shapes.prod(1)
    level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    N, S, M, D, Lq, L, P = 2, int(sizes.sum()), 3, 5, 7, 3, 2
    value = torch.randn(N, S, M, D, generator=gen, dtype=torch.float64)
    loc = torch.rand(N, Lq, M, L, P, 2, generator=gen, dtype=torch.float64) * 1.6 - 0.3  # some outside
    loc[0, 1, 2, 1, 0, 0] = -0.125  # pixel x = -0.125 * 4 - 0.5 = -1 exactly: grid_sample's gradient is not 0
    weights = torch.rand(N, Lq, M, L, P, generator=gen, dtype=torch.float64)
    grad_out = torch.randn(N, Lq, M * D, generator=gen, dtype=torch.float64)

    leaves = [t.clone().requires_grad_() for t in (value, loc, weights)]
    ref = ms_deform_attn_torch(leaves[0], spatial_shapes, level_start_index, leaves[1], leaves[2])
    ref_grads = torch.autograd.grad(ref, leaves, grad_out)

    value, loc, weights, grad_out = (t.to(dtype).contiguous() for t in (value, loc, weights, grad_out))
    out = torch.zeros(N, Lq, M * D, dtype=dtype)
    grads = [torch.zeros_like(value), torch.zeros_like(loc), torch.zeros_like(weights)]
    dims = torch.tensor([N, S, M, D, Lq, L, P])
    ptr = lambda t: ctypes.c_void_p(t.data_ptr())  # noqa: E731
    suffix = "f64" if dtype == torch.float64 else "f32"
    getattr(host_kernels, f"forward_{suffix}")(ptr(value), ptr(spatial_shapes), ptr(level_start_index), ptr(loc),
                                               ptr(weights), ptr(out), ptr(dims))
    getattr(host_kernels, f"backward_{suffix}")(ptr(value), ptr(spatial_shapes), ptr(level_start_index), ptr(loc),
                                                ptr(weights), ptr(grad_out), *map(ptr, grads), ptr(dims))

    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.double(), ref.detach(), **tol)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got.double(), want, **tol)


# --------------------------------------------------------------------------------------------------
# The "cuda_v2" kernel math on the CPU (ms_deform_attn_v2.cuh). The harness emulates the GPU thread
# layout serially: forward, one call per (group, chunk); backward, per group and sampling point, one
# backward_chunk call per chunk of each lane, the lanes' PointGrad sums added (what the warp
# shuffles do on the GPU), then finish_point. C = 1 and the 16-byte chunk width are both built.

HARNESS_V2 = r"""
#include <cuda_bf16.h>

#include "ms_deform_attn_v2.cuh"
using namespace msdetr_lite;

struct PlainAccumulate {  // serial execution: no atomics needed
  template <int C, typename T>
  static void add_vec(T* address, const T (&v)[C]) { for (int k = 0; k < C; ++k) address[k] += v[k]; }
};

// T: the tensors' dtype, A: the arithmetic (acc_t) type, C: channels per chunk
template <typename T, typename A, int C>
static void forward(const T* value, const int64_t* shapes, const int64_t* starts, const T* loc, const T* weights,
                    T* out, const int64_t* dims) {
  const MSDAShape sh{dims[0], dims[1], dims[2], dims[3], dims[4], dims[5], dims[6]};
  for (int64_t g = 0; g < sh.N * sh.Lq * sh.M; ++g)
    for (int64_t chunk = 0; chunk < sh.D / C; ++chunk)
      v2::forward_chunk<T, A, C>(g, chunk, sh, value, shapes, starts, loc, weights, out);
}

template <typename T, typename A, int C>
static void backward(const T* value, const int64_t* shapes, const int64_t* starts, const T* loc, const T* weights,
                     const T* grad_out, A* grad_value, T* grad_loc, T* grad_weights, const int64_t* dims) {
  const MSDAShape sh{dims[0], dims[1], dims[2], dims[3], dims[4], dims[5], dims[6]};
  const int64_t chunks = sh.D / C;
  const int lanes = v2::backward_group_lanes(chunks);
  for (int64_t g = 0; g < sh.N * sh.Lq * sh.M; ++g) {
    for (int64_t l = 0; l < sh.L; ++l) {
      for (int64_t p = 0; p < sh.P; ++p) {
        const int64_t pt = (g * sh.L + l) * sh.P + p;
        const A a = static_cast<A>(weights[pt]);
        v2::PointGrad<A> total{0, 0, 0};
        v2::Bilinear<A> b;
        if (v2::bilinear_point<A>(static_cast<A>(loc[2 * pt]), static_cast<A>(loc[2 * pt + 1]), shapes[2 * l],
                                  shapes[2 * l + 1], starts[l], b)) {
          for (int lane = 0; lane < lanes; ++lane) {
            v2::PointGrad<A> pg{0, 0, 0};
            for (int64_t chunk = lane; chunk < chunks; chunk += lanes)
              v2::backward_chunk<T, A, C, PlainAccumulate>(g, chunk, sh, b, a,
                                                           v2::grad_output_chunk<T, C>(g, chunk, sh, grad_out),
                                                           value, grad_value, pg);
            total.a += pg.a;  // the warp-shuffle sum over the group's lanes
            total.x += pg.x;
            total.y += pg.y;
          }
        }
        v2::finish_point<T, A>(pt, a, shapes[2 * l], shapes[2 * l + 1], total, grad_loc, grad_weights);
      }
    }
  }
}

#define EXPORT(T, A, C, SUFFIX)                                                                           \
  extern "C" void forward_##SUFFIX(const T* v, const int64_t* s, const int64_t* st, const T* l, const T* w, \
                                   T* o, const int64_t* d) { forward<T, A, C>(v, s, st, l, w, o, d); }    \
  extern "C" void backward_##SUFFIX(const T* v, const int64_t* s, const int64_t* st, const T* l, const T* w, \
                                    const T* g, A* gv, T* gl, T* gw, const int64_t* d) {                  \
    backward<T, A, C>(v, s, st, l, w, g, gv, gl, gw, d);                                                  \
  }
EXPORT(double, double, 1, f64_c1)
EXPORT(double, double, 2, f64_c2)
EXPORT(float, float, 1, f32_c1)
EXPORT(float, float, 4, f32_c4)
// bf16 tensors, float32 arithmetic and grad_value, 16-byte chunks of 8: what the GPU runs for bf16
EXPORT(__nv_bfloat16, float, 8, bf16_c8)
extern "C" int lanes_for(int64_t chunks) { return v2::backward_group_lanes(chunks); }
extern "C" int64_t point_slices(int64_t groups, int lanes, int64_t points, int64_t resident) {
  return v2::backward_point_slices(groups, lanes, points, resident);
}
extern "C" bool uses_chunks(int64_t groups, int64_t D, int widest, int64_t resident) {
  return v2::forward_uses_chunks(groups, D, widest, resident);
}
"""


@pytest.fixture(scope="module")
def host_kernels_v2(tmp_path_factory):
    return _build_host_harness(tmp_path_factory, "harness_v2", HARNESS_V2)


def test_v2_group_lanes_are_powers_of_two_up_to_a_warp(host_kernels_v2):
    got = [host_kernels_v2.lanes_for(chunks) for chunks in (1, 2, 3, 5, 8, 9, 32, 33, 64)]
    assert got == [1, 2, 4, 8, 8, 16, 32, 32, 32]


H100_RESIDENT_THREADS = 132 * 2048


def test_v2_launch_configuration_per_shape(host_kernels_v2):
    """The paper's shapes (M = 8, D = 32, L * P = 16) on an H100: the encoder keeps 16-byte chunks and
    one team of lanes per group; the Lq = 300 decoder gets one channel per forward thread and its
    backward points dealt to 8 teams; the Lq = 900, N = 8 decoder fills the GPU without either."""
    import ctypes

    lib = host_kernels_v2
    lib.point_slices.restype = ctypes.c_int64
    lib.point_slices.argtypes = [ctypes.c_int64, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    lib.uses_chunks.restype = ctypes.c_bool
    lib.uses_chunks.argtypes = [ctypes.c_int64, ctypes.c_int64, ctypes.c_int, ctypes.c_int64]
    groups = {"encoder": 2 * 22223 * 8, "decoder_300": 2 * 300 * 8, "decoder_900": 8 * 900 * 8}
    lanes_fp32 = lib.lanes_for(32 // 4)
    slices = {k: lib.point_slices(g, lanes_fp32, 16, H100_RESIDENT_THREADS) for k, g in groups.items()}
    assert slices == {"encoder": 1, "decoder_300": 8, "decoder_900": 1}
    chunks = {k: lib.uses_chunks(g, 32, 4, H100_RESIDENT_THREADS) for k, g in groups.items()}
    assert chunks == {"encoder": True, "decoder_300": False, "decoder_900": True}
    # never more teams than points, and one point per team for a single tiny query
    assert lib.point_slices(1, 1, 3, H100_RESIDENT_THREADS) == 3


# (D, chunk width C): vector chunks (D = 8: 2 float32 chunks, 4 float64 chunks), single channels with
# idle lanes (D = 5: 8 lanes for 5 chunks) and lanes owning several chunks (D = 40: 32 lanes, 40 chunks)
V2_CASES = [(8, "vector"), (5, "single"), (40, "single"), (40, "vector")]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("D,width", V2_CASES)
def test_cuda_v2_kernel_math_matches_reference_on_host(host_kernels_v2, dtype, D, width):
    import ctypes

    from msdetr_lite.ops import ms_deform_attn_torch

    gen = torch.Generator().manual_seed(D)
    spatial_shapes = torch.tensor([[6, 5], [3, 4], [2, 1]])
    sizes = spatial_shapes.prod(1)
    level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    N, S, M, Lq, L, P = 2, int(sizes.sum()), 3, 7, 3, 2
    value = torch.randn(N, S, M, D, generator=gen, dtype=torch.float64)
    loc = torch.rand(N, Lq, M, L, P, 2, generator=gen, dtype=torch.float64) * 1.6 - 0.3  # some outside
    loc[0, 1, 2, 1, 0, 0] = -0.125  # pixel x = -0.125 * 4 - 0.5 = -1 exactly: grid_sample's gradient is not 0
    loc[0, 0, 0, 0, 0] = float("nan")  # NaN / inf locations read zeros and get zero gradients
    loc[1, 2, 1, 1, 1, 0] = float("inf")
    weights = torch.rand(N, Lq, M, L, P, generator=gen, dtype=torch.float64)
    grad_out = torch.randn(N, Lq, M * D, generator=gen, dtype=torch.float64)

    finite = torch.nan_to_num(loc, nan=-10.0, posinf=-10.0)  # what grid_sample must see: far outside
    leaves = [t.clone().requires_grad_() for t in (value, finite, weights)]
    ref = ms_deform_attn_torch(leaves[0], spatial_shapes, level_start_index, leaves[1], leaves[2])
    ref_grads = list(torch.autograd.grad(ref, leaves, grad_out))

    value, loc, weights, grad_out = (t.to(dtype).contiguous() for t in (value, loc, weights, grad_out))
    out = torch.zeros(N, Lq, M * D, dtype=dtype)
    grads = [torch.zeros_like(value), torch.zeros_like(loc), torch.zeros_like(weights)]
    dims = torch.tensor([N, S, M, D, Lq, L, P])
    ptr = lambda t: ctypes.c_void_p(t.data_ptr())  # noqa: E731
    vector = {torch.float64: "c2", torch.float32: "c4"}[dtype]
    suffix = ("f64_" if dtype == torch.float64 else "f32_") + (vector if width == "vector" else "c1")
    getattr(host_kernels_v2, f"forward_{suffix}")(ptr(value), ptr(spatial_shapes), ptr(level_start_index),
                                                  ptr(loc), ptr(weights), ptr(out), ptr(dims))
    getattr(host_kernels_v2, f"backward_{suffix}")(ptr(value), ptr(spatial_shapes), ptr(level_start_index),
                                                   ptr(loc), ptr(weights), ptr(grad_out), *map(ptr, grads),
                                                   ptr(dims))

    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.double(), ref.detach(), **tol)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got.double(), want, **tol)


def test_cuda_v2_bfloat16_math_on_host(host_kernels_v2):
    """bf16 tensors, float32 arithmetic, 8-channel chunks (the GPU's bf16 path) against float64 on the
    same bf16 numbers: one rounding to bf16 per result (grad_value stays float32), so 2 eps."""
    import ctypes

    from msdetr_lite.ops import ms_deform_attn_torch

    gen = torch.Generator().manual_seed(5)
    spatial_shapes = torch.tensor([[6, 5], [3, 4], [2, 1]])
    sizes = spatial_shapes.prod(1)
    level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    N, S, M, D, Lq, L, P = 2, int(sizes.sum()), 3, 16, 7, 3, 2
    bf16 = lambda t: t.to(torch.bfloat16).double()  # noqa: E731 - the numbers the kernel sees
    value = bf16(torch.randn(N, S, M, D, generator=gen, dtype=torch.float64))
    loc = torch.rand(N, Lq, M, L, P, 2, generator=gen, dtype=torch.float64) * 1.6 - 0.3
    loc[0, 1, 2, 1, 0, 0] = -0.125  # pixel x = -1 exactly, as bf16 rounding often produces
    loc = bf16(loc)
    weights = bf16(torch.rand(N, Lq, M, L, P, generator=gen, dtype=torch.float64))
    grad_out = bf16(torch.randn(N, Lq, M * D, generator=gen, dtype=torch.float64))
    leaves = [t.clone().requires_grad_() for t in (value, loc, weights)]
    ref = ms_deform_attn_torch(leaves[0], spatial_shapes, level_start_index, leaves[1], leaves[2])
    ref_grads = torch.autograd.grad(ref, leaves, grad_out)

    value, loc, weights, grad_out = (t.to(torch.bfloat16).contiguous() for t in (value, loc, weights, grad_out))
    out = torch.zeros(N, Lq, M * D, dtype=torch.bfloat16)
    grads = [torch.zeros(value.shape), torch.zeros_like(loc), torch.zeros_like(weights)]  # grad_value float32
    dims = torch.tensor([N, S, M, D, Lq, L, P])
    ptr = lambda t: ctypes.c_void_p(t.data_ptr())  # noqa: E731
    host_kernels_v2.forward_bf16_c8(ptr(value), ptr(spatial_shapes), ptr(level_start_index), ptr(loc),
                                    ptr(weights), ptr(out), ptr(dims))
    host_kernels_v2.backward_bf16_c8(ptr(value), ptr(spatial_shapes), ptr(level_start_index), ptr(loc),
                                     ptr(weights), ptr(grad_out), *map(ptr, grads), ptr(dims))
    eps = torch.finfo(torch.bfloat16).eps
    for got, want in zip((out, *grads), (ref.detach(), *ref_grads)):
        torch.testing.assert_close(got.double(), want, rtol=2 * eps, atol=2 * eps * want.abs().max().item())
