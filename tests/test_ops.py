"""msdetr_lite.ops.ms_deform_attn: every available backend against the grid_sample reference.

Shapes are kept tiny so the whole file (numba compile time included) stays well under a minute on
two cores. CUDA cases run only when a GPU is present.
"""
from __future__ import annotations

import warnings

import pytest
import torch

try:  # the GPU machine has no hypothesis: there only the property-based test is skipped
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:
    given = None

from msdetr_lite import ops
from msdetr_lite.ops import ms_deform_attn, ms_deform_attn_torch

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")


def _numba_loads() -> bool:
    return ops._backend_module("numba") is not None


needs_numba = pytest.mark.skipif(not _numba_loads(), reason="numba backend unavailable")

# the two CUDA kernels: the default one and the opt-in throughput rewrite
CUDA_BACKENDS = [pytest.param(name, marks=[needs_cuda, pytest.mark.gpu], id=name) for name in ("cuda", "cuda_v2")]
# (backend, device) pairs of the compiled backends, each skipped where it cannot run
COMPILED = [
    pytest.param("numba", "cpu", marks=needs_numba, id="numba"),
    *[pytest.param(name, "cuda", marks=[needs_cuda, pytest.mark.gpu], id=name) for name in ("cuda", "cuda_v2")],
]


def make_inputs(shapes, N, Lq, M, D, P, *, dtype=torch.float64, device="cpu", seed=0,
                lo=-0.25, hi=1.25, away_from_kinks=False):
    """Random inputs. Locations are uniform in [lo, hi] (so some fall outside the map), or, with
    ``away_from_kinks``, placed so that the pixel coordinate loc * size - 0.5 is at least 0.15 from
    any integer: bilinear sampling is not differentiable at integer pixel positions, and a finite
    difference across such a kink would disagree with either one-sided derivative."""
    gen = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64)
    sizes = spatial_shapes[:, 0] * spatial_shapes[:, 1]
    level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    L, S = len(shapes), int(sizes.sum())
    value = torch.randn(N, S, M, D, generator=gen, dtype=torch.float64)
    if away_from_kinks:
        # per level: (W, H) in the (x, y) order of the last axis
        size = spatial_shapes.flip(1).to(torch.float64).view(1, 1, 1, L, 1, 2)
        whole = torch.floor(torch.rand(N, Lq, M, L, P, 2, generator=gen, dtype=torch.float64) * (size + 3)) - 2
        frac = 0.15 + 0.7 * torch.rand(N, Lq, M, L, P, 2, generator=gen, dtype=torch.float64)
        loc = (whole + frac + 0.5) / size  # pixel coordinate in (-2, size + 1), some neighbours padded
    else:
        loc = lo + (hi - lo) * torch.rand(N, Lq, M, L, P, 2, generator=gen, dtype=torch.float64)
    weights = torch.rand(N, Lq, M, L, P, generator=gen, dtype=torch.float64)
    cast = dict(dtype=dtype, device=device)
    return (value.to(**cast), spatial_shapes.to(device), level_start_index.to(device), loc.to(**cast),
            weights.to(**cast))


def forward_backward(fn, value, spatial_shapes, level_start_index, loc, weights, grad_out=None):
    """Output and the gradients of <output, grad_out> w.r.t. value, locations and weights."""
    leaves = [t.detach().clone().requires_grad_(True) for t in (value, loc, weights)]
    out = fn(leaves[0], spatial_shapes, level_start_index, leaves[1], leaves[2])
    if grad_out is None:
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1),
                               dtype=torch.float64).to(out)
    grads = torch.autograd.grad(out, leaves, grad_out)
    return out.detach(), grads, grad_out


def reference(*inputs, grad_out=None):
    return forward_backward(ms_deform_attn_torch, *inputs, grad_out=grad_out)


def with_backend(backend):
    return lambda *args: ms_deform_attn(*args, backend=backend)


# (spatial_shapes, N, Lq, M, D, P): several L, P, M, D (odd D included), N = 1 and N = 5
CASES = [
    ([[4, 5]], 1, 3, 1, 1, 1),
    ([[6, 3], [3, 2]], 5, 4, 2, 3, 2),
    ([[5, 7], [3, 4], [1, 1]], 1, 6, 3, 5, 3),
    ([[8, 8], [4, 4], [2, 2], [1, 1]], 5, 7, 2, 4, 4),
    ([[2, 9], [7, 1], [3, 3], [1, 2]], 1, 5, 4, 7, 2),
    ([[3, 4], [2, 2]], 1, 4, 1, 2, 5),
]


@pytest.mark.parametrize("backend,device", COMPILED)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_matches_reference_float64(backend, device, case):
    shapes, N, Lq, M, D, P = CASES[case]
    inputs = make_inputs(shapes, N, Lq, M, D, P, seed=case, lo=-0.3, hi=1.3)
    ref_out, ref_grads, grad_out = reference(*inputs)
    moved = [t.to(device) for t in inputs]
    out, grads, _ = forward_backward(with_backend(backend), *moved, grad_out=grad_out.to(device))
    assert out.shape == (N, Lq, M * D) and out.dtype == torch.float64
    torch.testing.assert_close(out.cpu(), ref_out, rtol=1e-10, atol=1e-10)
    for name, got, want in zip(("value", "sampling_locations", "attention_weights"), grads, ref_grads):
        torch.testing.assert_close(got.cpu(), want, rtol=1e-9, atol=1e-9, msg=lambda m: f"grad {name}: {m}")


def _random_shapes_match_reference(backend, device, data):
    """Random level sizes, L, P, M, D (odd included) and N in {1, 5}, locations partly outside."""
    L = data.draw(st.integers(1, 4), label="L")
    shapes = [[data.draw(st.integers(1, 9)), data.draw(st.integers(1, 9))] for _ in range(L)]
    N = data.draw(st.sampled_from([1, 5]), label="N")
    Lq, M, D, P = (data.draw(st.integers(1, hi), label=k) for k, hi in (("Lq", 6), ("M", 3), ("D", 7), ("P", 4)))
    inputs = make_inputs(shapes, N, Lq, M, D, P, seed=data.draw(st.integers(0, 2**16), label="seed"),
                         lo=-0.3, hi=1.3)
    ref_out, ref_grads, grad_out = reference(*inputs)
    out, grads, _ = forward_backward(with_backend(backend), *[t.to(device) for t in inputs],
                                     grad_out=grad_out.to(device))
    torch.testing.assert_close(out.cpu(), ref_out, rtol=1e-10, atol=1e-10)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got.cpu(), want, rtol=1e-9, atol=1e-9)


if given is not None:
    test_random_shapes_match_reference = pytest.mark.parametrize("backend,device", COMPILED)(
        settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])(
            given(data=st.data())(_random_shapes_match_reference)))
else:
    test_random_shapes_match_reference = pytest.mark.skip(reason="hypothesis is not installed")(
        _random_shapes_match_reference)


@pytest.mark.parametrize("backend,device", COMPILED)
def test_gradcheck_float64(backend, device):
    value, shapes, starts, loc, weights = make_inputs([[4, 5], [2, 3]], 2, 3, 2, 3, 2, device=device,
                                                      seed=7, away_from_kinks=True)
    fn = lambda v, l, w: ms_deform_attn(v, shapes, starts, l, w, backend=backend)  # noqa: E731
    args = tuple(t.clone().requires_grad_(True) for t in (value, loc, weights))
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_gradcheck_torch_reference():
    """The reference itself is what the others are compared to; check it too (tiny shape)."""
    value, shapes, starts, loc, weights = make_inputs([[3, 4], [2, 2]], 1, 2, 1, 2, 2, seed=3,
                                                      away_from_kinks=True)
    fn = lambda v, l, w: ms_deform_attn(v, shapes, starts, l, w, backend="torch")  # noqa: E731
    args = tuple(t.clone().requires_grad_(True) for t in (value, loc, weights))
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-6, rtol=1e-5)


def _max_rel(got, want):
    return ((got.double() - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("backend,device", COMPILED)
def test_float32_agrees_with_float64_reference(backend, device):
    inputs = make_inputs([[16, 16], [8, 8], [4, 4], [2, 2]], 2, 50, 4, 8, 4, seed=11)
    ref_out, ref_grads, grad_out = reference(*inputs)
    moved = [t.to(device=device, dtype=torch.float32) if t.is_floating_point() else t.to(device)
             for t in inputs]
    out, grads, _ = forward_backward(with_backend(backend), *moved, grad_out=grad_out.float().to(device))
    assert out.dtype == torch.float32
    assert _max_rel(out.cpu(), ref_out) < 1e-4
    for got, want in zip(grads, ref_grads):
        assert got.dtype == torch.float32
        assert _max_rel(got.cpu(), want) < 1e-4


def test_numba_half_inputs_are_computed_in_float32():
    """float16 / bfloat16 on the CPU: numba computes in float32, output and grads keep the dtype."""
    if not _numba_loads():
        pytest.skip("numba backend unavailable")
    inputs = make_inputs([[5, 6], [3, 3]], 1, 4, 2, 4, 2, seed=5)
    ref_out, _, _ = reference(*inputs)
    for dtype in (torch.float16, torch.bfloat16):
        value, shapes, starts, loc, weights = inputs
        args = [value.to(dtype).requires_grad_(), shapes, starts, loc.to(dtype).requires_grad_(),
                weights.to(dtype).requires_grad_()]
        out = ms_deform_attn(*args, backend="numba")
        assert out.dtype == dtype
        out.float().sum().backward()
        assert all(t.grad.dtype == dtype for t in (args[0], args[3], args[4]))
        assert _max_rel(out.float(), ref_out) < 2e-2


@needs_numba
def test_numba_leaves_torch_thread_count_alone():
    """A process told to use one thread keeps one after numba's kernels ran: numba's OpenMP pool
    shares libgomp with torch and its start used to raise torch's count to the pool's size (two
    one-thread trainings on 2 cores then ran 4 threads). A fresh process, so the pool starts here."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    root = str(Path(__file__).resolve().parents[1])
    code = ("import torch\n"
            "from msdetr_lite.ops import ms_deform_attn\n"
            "torch.set_num_threads(1)\n"
            "shapes, starts = torch.tensor([[4, 4], [2, 2]]), torch.tensor([0, 16])\n"
            "value = torch.randn(1, 20, 2, 4, requires_grad=True)\n"
            "loc, w = torch.rand(1, 5, 2, 2, 2, 2), torch.rand(1, 5, 2, 2, 2)\n"
            "counts = []\n"
            "for _ in range(2):\n"
            "    ms_deform_attn(value, shapes, starts, loc, w, backend='numba').sum().backward()\n"
            "    counts.append(torch.get_num_threads())\n"
            "print(counts)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
           "NUMBA_NUM_THREADS": "2"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "[1, 1]"


# Half-precision results against float64 on the *same* half-precision numbers: the kernels read
# float16 / bfloat16 inputs exactly, compute in float32 and round each result once to the dtype (at
# most eps / 2 relative). float32 accumulation adds about 1e-7 of the summed magnitudes, far below a
# half-precision eps, so a factor of 2 on eps covers both; atol (2 eps of the largest reference
# entry) covers entries that are small because their float32 sums cancel.
HALF_EPS_FACTOR = 2.0


def _quantized(t, dtype):
    """t rounded to dtype and back to float64: the numbers a dtype kernel actually sees."""
    return t.to(dtype).double() if t.is_floating_point() else t


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_precision(backend, dtype):
    inputs = [_quantized(t, dtype) for t in
              make_inputs([[16, 16], [8, 8], [4, 4], [2, 2]], 2, 50, 4, 8, 4, seed=12)]
    grad_out = _quantized(torch.randn(2, 50, 4 * 8, generator=torch.Generator().manual_seed(1),
                                      dtype=torch.float64), dtype)
    ref_out, ref_grads, _ = reference(*inputs, grad_out=grad_out)
    moved = [t.to(device="cuda", dtype=dtype) if t.is_floating_point() else t.cuda() for t in inputs]
    out, grads, _ = forward_backward(with_backend(backend), *moved, grad_out=grad_out.to("cuda", dtype))
    eps = torch.finfo(dtype).eps
    for name, got, want in zip(("output", "grad value", "grad sampling_locations", "grad attention_weights"),
                               (out, *grads), (ref_out, *ref_grads)):
        assert got.dtype == dtype, name
        torch.testing.assert_close(got.cpu().double(), want, rtol=HALF_EPS_FACTOR * eps,
                                   atol=HALF_EPS_FACTOR * eps * want.abs().max().item(),
                                   msg=lambda m, name=name: f"{name} ({dtype}): {m}")


@pytest.mark.parametrize("backend,device", COMPILED + [pytest.param("torch", "cpu", id="torch")])
def test_non_contiguous_inputs(backend, device):
    value, shapes, starts, loc, weights = make_inputs([[5, 4], [2, 3]], 2, 5, 3, 4, 2, seed=21)
    ref_out, ref_grads, grad_out = reference(value, shapes, starts, loc, weights)
    # Same numbers, but stored transposed / with gaps, on the device (.to(device) copies into a
    # contiguous tensor, so the strided views are taken after the move).
    value, shapes, starts, loc, weights = (t.to(device) for t in (value, shapes, starts, loc, weights))
    value_nc = value.transpose(0, 1).contiguous().transpose(0, 1)
    loc_nc = torch.stack([loc, torch.zeros_like(loc)], dim=-1)[..., 0]
    weights_nc = weights.permute(4, 3, 2, 1, 0).contiguous().permute(4, 3, 2, 1, 0)
    shapes_nc = torch.stack([shapes, shapes], dim=1)[:, 0]
    starts_nc = torch.stack([starts, starts], dim=1)[:, 1]
    assert not any(t.is_contiguous() for t in (value_nc, loc_nc, weights_nc, shapes_nc, starts_nc))
    out, grads, _ = forward_backward(with_backend(backend), value_nc, shapes_nc, starts_nc, loc_nc,
                                     weights_nc, grad_out=grad_out.to(device))
    torch.testing.assert_close(out.cpu(), ref_out, rtol=1e-10, atol=1e-10)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got.cpu(), want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("backend,device", COMPILED)
def test_far_out_of_range_locations_read_zeros(backend, device):
    """Huge, infinite and NaN locations must neither crash nor read out of bounds: output and every
    gradient are zero (the reference is not used: grid_sample does its own thing with NaN / inf)."""
    value, shapes, starts, loc, weights = make_inputs([[3, 3], [2, 2]], 1, 6, 2, 3, 2, device=device)
    loc = loc.clone()
    specials = torch.tensor([1e12, -1e12, float("inf"), -float("inf"), float("nan"), 1.0 + 1e-3],
                            dtype=loc.dtype, device=device)
    loc[:, :, :, :, :, 0] = specials.view(1, 6, 1, 1, 1)  # x of query q is specials[q]
    out, grads, _ = forward_backward(with_backend(backend), value, shapes, starts, loc, weights)
    # x = (1 + 1e-3) * W - 0.5 > W - 0.5 still touches the last column; everything else is outside
    assert torch.all(out[:, :5] == 0)
    assert torch.all(torch.isfinite(out))
    assert all(torch.all(torch.isfinite(g)) for g in grads)
    assert torch.all(grads[1][:, :5] == 0) and torch.all(grads[2][:, :5] == 0)


@pytest.mark.parametrize("backend,device", COMPILED)
def test_pixel_minus_one_matches_grid_sample(backend, device):
    """A location whose pixel coordinate is exactly -1 (x = loc * W - 0.5): the sample is zero, but
    its right / lower neighbour lies on the map, so grid_sample's location gradient is not (half
    precision rounding lands there often)."""
    value, shapes, starts, loc, weights = make_inputs([[4, 5], [2, 3]], 1, 4, 2, 3, 2, seed=5)
    loc = loc.clone()
    size = shapes.flip(1).to(loc.dtype).view(1, 1, 1, 2, 1, 2)     # (W, H) per level
    loc[:, 0, ..., 0] = (-1 + 0.5) / size[..., 0]                   # x = -1 for query 0
    loc[:, 1, ..., 1] = (-1 + 0.5) / size[..., 1]                   # y = -1 for query 1
    loc[:, 2] = (-1 + 0.5) / size                                    # both for query 2
    ref_out, ref_grads, grad_out = reference(value, shapes, starts, loc, weights)
    assert ref_grads[1][:, :2].abs().sum() > 0                       # the case under test is real
    moved = [t.to(device) for t in (value, shapes, starts, loc, weights)]
    out, grads, _ = forward_backward(with_backend(backend), *moved, grad_out=grad_out.to(device))
    torch.testing.assert_close(out.cpu(), ref_out, rtol=1e-10, atol=1e-10)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got.cpu(), want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("backend,device", COMPILED)
def test_empty_query_set(backend, device):
    value, shapes, starts, loc, weights = make_inputs([[3, 3]], 2, 0, 2, 3, 2, device=device)
    out, grads, _ = forward_backward(with_backend(backend), value, shapes, starts, loc, weights)
    assert out.shape == (2, 0, 6)
    assert torch.all(grads[0] == 0)


# --------------------------------------------------------------------------------------------------
# argument checks

def _good():
    return list(make_inputs([[4, 4], [2, 2]], 2, 3, 2, 5, 2))  # value [2, 20, 2, 5]


def _bad(index, new):
    args = _good()
    args[index] = new(args)
    return args


BAD_ARGS = [
    ("value 3-d", _bad(0, lambda a: a[0][0]), r"value must be \[N, S, M, D\], got \[20, 2, 5\]"),
    ("value int", _bad(0, lambda a: a[0].long()), "value must be a floating-point tensor"),
    # Lq and P are read off sampling_locations, so a P mismatch is reported on attention_weights
    ("locations other P", _bad(3, lambda a: a[3][..., :1, :]),
     r"attention_weights must be \[N, Lq, M, L, P\] = \[2, 3, 2, 2, 1\], got \[2, 3, 2, 2, 2\]"),
    ("locations no xy", _bad(3, lambda a: a[3][..., :1]),
     r"sampling_locations must be \[N, Lq, M, L, P, 2\] = \[2, 3, 2, 2, 2, 2\], got \[2, 3, 2, 2, 2, 1\]"),
    ("locations wrong L", _bad(3, lambda a: a[3][:, :, :, :1]),
     r"sampling_locations must be \[N, Lq, M, L, P, 2\] = \[2, 3, 2, 2, 2, 2\], got \[2, 3, 2, 1, 2, 2\]"),
    ("locations 5-d", _bad(3, lambda a: a[3][..., 0]),
     r"sampling_locations must be \[N, Lq, M, L, P, 2\] = \[2, Lq, 2, 2, P, 2\], got \[2, 3, 2, 2, 2\]"),
    ("weights wrong shape", _bad(4, lambda a: a[4][:, :2]),
     r"attention_weights must be \[N, Lq, M, L, P\] = \[2, 3, 2, 2, 2\], got \[2, 2, 2, 2, 2\]"),
    ("locations dtype", _bad(3, lambda a: a[3].float()), "sampling_locations must have the dtype of value"),
    ("weights dtype", _bad(4, lambda a: a[4].float()), "attention_weights must have the dtype of value"),
    ("shapes float", _bad(1, lambda a: a[1].double()), "spatial_shapes must be an int64 tensor"),
    ("shapes 1-d", _bad(1, lambda a: a[1].flatten()), r"spatial_shapes must be \[L, 2\]"),
    ("starts wrong length", _bad(2, lambda a: a[2][:1]), r"level_start_index must be \[L\] = \[2\], got \[1\]"),
    ("starts int32", _bad(2, lambda a: a[2].int()), "level_start_index must be an int64 tensor"),
    ("S mismatch", _bad(1, lambda a: torch.tensor([[4, 4], [2, 3]])),
     r"value has S = 20 rows but spatial_shapes \[\(4, 4\), \(2, 3\)\] give sum\(H\*W\) = 22"),
    ("starts inconsistent", _bad(2, lambda a: torch.tensor([0, 15])),
     r"level_start_index must be \[0, 16\] .*got \[0, 15\]"),
    ("shapes not positive", _bad(1, lambda a: torch.tensor([[0, 4], [4, 5]])), "positive"),
    ("not a tensor", _bad(4, lambda a: a[4].tolist()), "attention_weights must be a torch.Tensor, got list"),
]


@pytest.mark.parametrize("args,pattern", [pytest.param(a, p, id=i) for i, a, p in BAD_ARGS])
def test_bad_arguments_raise_value_error(args, pattern):
    with pytest.raises(ValueError, match=pattern):
        ms_deform_attn(*args)


def test_device_mismatch_and_backend_errors():
    args = _good()
    with pytest.raises(ValueError, match="backend must be one of"):
        ms_deform_attn(*args, backend="triton")
    for name in ("cuda", "cuda_v2"):
        with pytest.raises(ValueError, match=f"backend='{name}' needs CUDA tensors"):
            ms_deform_attn(*args, backend=name)
    meta = _bad(3, lambda a: a[3].to("meta"))
    with pytest.raises(ValueError, match=r"sampling_locations must be on value's device \(cpu\), got meta"):
        ms_deform_attn(*meta)


# --------------------------------------------------------------------------------------------------
# backend selection

@pytest.fixture
def broken_compiled_backends(monkeypatch):
    """Pretend numba and the CUDA build are missing; restore the real loaders afterwards."""
    def broken(name):
        def load():
            raise ImportError(f"pretend {name} is not installed")
        return load

    monkeypatch.setattr(ops, "_LOADERS", {name: broken(name) for name in ("numba", "cuda", "cuda_v2")})
    ops._reset_backends()
    yield
    ops._reset_backends()


def test_auto_falls_back_to_torch_with_one_warning(broken_compiled_backends):
    args = make_inputs([[4, 4], [2, 2]], 1, 3, 2, 3, 2)
    with pytest.warns(RuntimeWarning, match="numba backend is unavailable .*pretend numba"):
        out = ms_deform_attn(*args)
    torch.testing.assert_close(out, ms_deform_attn_torch(*args))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call must stay silent
        ms_deform_attn(*args)
    with pytest.raises(RuntimeError, match="backend 'numba' is unavailable"):
        ms_deform_attn(*args, backend="numba")


@needs_numba
def test_auto_picks_numba_on_cpu():
    assert ops._resolve_backend("auto", torch.zeros(1)) == "numba"
    assert "numba" in ops.available_backends("cpu")


@needs_cuda
@pytest.mark.gpu
def test_auto_picks_cuda_on_gpu():
    """cuda_v2 is offered but stays opt-in until a GPU measurement makes it the default."""
    assert ops._resolve_backend("auto", torch.zeros(1, device="cuda")) == "cuda"
    assert ops.available_backends("cuda")[-2:] == ["cuda", "cuda_v2"]


# cuda_v2 picks its work split from the problem size (ms_deform_attn_v2.cuh): a few queries get the
# decoder split (one channel per forward thread, points dealt to several backward teams), an
# encoder-sized call (Lq = S = 8500, 68k groups) the 16-byte chunks with one team per group.
V2_SPLITS = [pytest.param(([[9, 7], [5, 4], [2, 3]], 2, 11), id="decoder-split"),
             pytest.param(([[80, 80], [40, 40], [20, 20], [10, 10]], 1, 8500), id="encoder-split")]


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("split", V2_SPLITS)
def test_cuda_v2_both_work_splits_match_reference(split, dtype):
    shapes, N, Lq = split
    # the reference sees the float32-rounded numbers too: with 8500 queries, some location would
    # otherwise round across a pixel knot, where the location gradient jumps
    inputs = [_quantized(t, dtype).cuda() for t in make_inputs(shapes, N, Lq, 8, 32, 4, seed=41)]
    grad_out = _quantized(torch.randn(N, Lq, 8 * 32, generator=torch.Generator().manual_seed(1),
                                      dtype=torch.float64), dtype).cuda()
    ref_out, ref_grads, _ = reference(*inputs, grad_out=grad_out)
    moved = [t.to(dtype) if t.is_floating_point() else t for t in inputs]
    out, grads, _ = forward_backward(with_backend("cuda_v2"), *moved, grad_out=grad_out.to(dtype))
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    assert _max_rel(out, ref_out) < tol
    for got, want in zip(grads, ref_grads):
        assert _max_rel(got, want) < tol


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_v2_misaligned_storage_matches_aligned(dtype):
    """cuda_v2 reads 16-byte chunks only from 16-byte aligned tensors; a contiguous view that starts
    one element into its storage takes the one-channel path and must give the same numbers."""
    value, shapes, starts, loc, weights = (t.cuda() for t in make_inputs(
        [[9, 7], [5, 4], [2, 3]], 2, 11, 2, 16, 3, dtype=dtype, seed=31))
    storage = torch.empty(value.numel() + 1, dtype=dtype, device="cuda")
    shifted = storage[1:].view(value.shape).copy_(value)
    assert shifted.is_contiguous() and shifted.data_ptr() % 16 != 0
    grad_out = torch.randn(2, 11, 2 * 16, device="cuda").to(dtype)
    aligned = forward_backward(with_backend("cuda_v2"), value, shapes, starts, loc, weights, grad_out=grad_out)
    misaligned = forward_backward(with_backend("cuda_v2"), shifted, shapes, starts, loc, weights,
                                  grad_out=grad_out)
    # the same float32 arithmetic, summed in another order (lanes, atomics), then rounded to dtype
    eps = torch.finfo(dtype).eps
    for got, want in zip((misaligned[0], *misaligned[1]), (aligned[0], *aligned[1])):
        torch.testing.assert_close(got.double(), want.double(), rtol=2 * eps, atol=2 * eps * want.abs().max().item())


@needs_numba
def test_numba_compiles_without_cache_when_no_cache_dir_is_writable(monkeypatch):
    """numba raises at decoration time when it finds no writable cache folder; _njit then compiles
    without the on-disk cache instead of failing the import."""
    import numba

    kernels_numba = ops._backend_module("numba")
    real_njit = numba.njit
    seen = []

    def njit(*args, cache=False, **kwargs):
        seen.append(cache)
        if cache:
            raise RuntimeError("cannot cache function 'f': no locator available")
        return real_njit(*args, **kwargs)

    monkeypatch.setattr(kernels_numba.numba, "njit", njit)
    compiled = kernels_numba._njit()(lambda x: x + 1)
    assert seen == [True, False]
    assert compiled(1) == 2
