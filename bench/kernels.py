"""Time ms_deform_attn backends: forward and forward+backward, at encoder and decoder shapes.

    python bench/kernels.py [--shapes small|paper|NAME ...] [--dtypes float32 bfloat16] [--repeats 10]
                            [--warmup 2] [--threads N] [--out bench/results/kernels.json]

Shapes (msdetr_lite.kernel_bench.SHAPES; M = 8 heads of D = 32 channels, P = 4 points on each of
L = 4 levels at strides 8..64):

    small (default, quick on a CPU)
      encoder            N = 2, 320 x 320 image: levels 40x40 .. 5x5, every token queries (Lq = S = 2125)
      decoder            N = 2, 640 x 640 image: levels 80x80 .. 10x10 (S = 8500), Lq = 300
    paper (the 800 x 1333 images of the paper: levels 100x167, 50x84, 25x42, 13x21, S = 22223; for GPUs)
      paper_encoder      N = 2, Lq = S = 22223
      paper_decoder_300  N = 2, Lq = 300
      paper_decoder_900  N = 8, Lq = 900

Every available backend (torch, numba on the CPU; torch, cuda, cuda_v2 on a GPU) runs on every
available device, in each dtype (default float32 on the CPU, float32 and bfloat16 on a GPU), and is
compared with the torch reference (grid_sample) on the same device and dtype: the table shows median
milliseconds (torch.utils.benchmark; on a GPU each sample is 10 back-to-back calls), the speed-up over
the reference ("x ref"), the peak memory that one forward+backward allocates on a GPU, and the largest
deviation of the output from the reference as a sanity check. When the ``deformops`` package is
importable (an optional benchmark-only dependency), its Triton kernel runs as a side-by-side row on
the GPU. Results go to a JSON file as well.

Memory-bandwidth floor ("x floor"): the bytes an ideal kernel must move, each input read once and
each output written once (forward: value, sampling_locations, attention_weights in, output out;
forward+backward adds grad_output in and the three gradients out), divided by the bandwidth this
device reaches in a plain tensor copy of 256 MiB (measured in the same run). "x floor" is the
measured time over that floor: 1.0 would be a kernel limited by memory traffic alone. (The decoder
shape samples only part of ``value``, and small inputs sit in cache, so values below 1 happen there.)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # runnable from a source checkout without installing
    sys.path.insert(0, str(ROOT))

from msdetr_lite import kernel_bench, ops  # noqa: E402
from msdetr_lite.kernel_bench import SHAPE_SETS, SHAPES  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFORMOPS = "deformops_triton"  # the row name of deformops' Triton kernel
ARG_NAMES = ("value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights")


def make_inputs(shape_name: str, device: str, dtype=torch.float32, seed: int = 0) -> dict:
    """kernel_bench.deform_inputs at a named shape, plus grad_out [N, Lq, M * D] and the sizes."""
    kw = SHAPES[shape_name]
    inputs = kernel_bench.deform_inputs(device=device, dtype=dtype, seed=seed, **kw)
    N, S, M, D = inputs["value"].shape
    _, Lq, _, L, P, _ = inputs["sampling_locations"].shape
    gen = torch.Generator().manual_seed(seed + 1)
    inputs["grad_out"] = torch.randn(N, Lq, M * D, generator=gen).to(device=device, dtype=dtype)
    inputs["dims"] = dict(N=N, S=S, Lq=Lq, M=M, D=D, L=L, P=P)
    return inputs


def deformops_kernel():
    """deformops' Triton multi-scale deformable attention as an ms_deform_attn-like callable, or None
    when the package is not installed (it is never a runtime dependency)."""
    try:
        from deformops.registry import Backend, msda
    except ImportError:
        return None

    def run(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        # deformops takes float32 locations whatever the value dtype; its output viewed as ours
        out = msda(value, spatial_shapes, level_start_index, sampling_locations.float(), attention_weights,
                   backend=Backend.TRITON)
        return out.reshape(value.shape[0], sampling_locations.shape[1], -1)

    return run


def kernel_for(backend: str):
    if backend == DEFORMOPS:
        return deformops_kernel()
    return lambda *args: ops.ms_deform_attn(*args, backend=backend)


def copy_bandwidth_gbs(device: str, warmup: int, repeats: int, mib: int = 256) -> float:
    """GB/s of a device-local tensor copy (bytes read + bytes written per second)."""
    src = torch.empty(mib * 2**20 // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = kernel_bench.time_ms(lambda: dst.copy_(src), warmup=warmup, repeats=repeats,
                              calls=kernel_bench.calls_per_sample(device))
    return 2 * src.numel() * src.element_size() / (ms * 1e-3) / 1e9


def bench_one(inputs: dict, backend: str, device: str, warmup: int, repeats: int):
    """(forward ms, forward+backward ms, peak MiB of one forward+backward or None, output)."""
    kernel = kernel_for(backend)
    args = [inputs[k] for k in ARG_NAMES]

    def forward():
        with torch.no_grad():
            return kernel(*args)

    leaves = [args[0].clone().requires_grad_(), args[3].clone().requires_grad_(),
              args[4].clone().requires_grad_()]

    def forward_backward():
        for t in leaves:
            t.grad = None
        out = kernel(leaves[0], args[1], args[2], leaves[1], leaves[2])
        out.backward(inputs["grad_out"])

    calls = kernel_bench.calls_per_sample(device)
    fwd = kernel_bench.time_ms(forward, warmup=warmup, repeats=repeats, calls=calls)
    fwd_bwd = kernel_bench.time_ms(forward_backward, warmup=warmup, repeats=repeats, calls=calls)
    return fwd, fwd_bwd, kernel_bench.peak_memory_mb(forward_backward, device), forward()


def backends_on(device: str) -> list[str]:
    """Backends to time on device, the torch reference first."""
    names = ops.available_backends(device)
    if device == "cuda" and deformops_kernel() is not None:
        names.append(DEFORMOPS)
    return names


def shape_names(requested: list[str]) -> list[str]:
    names = []
    for name in requested:
        for shape in SHAPE_SETS.get(name, (name,)):
            if shape not in names:
                names.append(shape)
    return names


def run_rows(device: str, shapes: list[str], dtypes: list[str], warmup: int, repeats: int, bandwidth: float,
             rows: list[dict], on_row) -> None:
    """Appends one row per (shape, dtype, backend) to rows, calling on_row() after each (the JSON is
    rewritten every time, so a run cut short by a timeout still leaves what it measured)."""
    for shape in shapes:
        for dtype_name in dtypes:
            inputs = make_inputs(shape, device, DTYPES[dtype_name])
            bytes_fwd, bytes_fwd_bwd = kernel_bench.ideal_bytes(inputs, inputs["grad_out"])
            floor_fwd_ms = bytes_fwd / (bandwidth * 1e9) * 1e3
            floor_fwd_bwd_ms = bytes_fwd_bwd / (bandwidth * 1e9) * 1e3
            ref = None
            for backend in backends_on(device):
                row = dict(shape=shape, device=device, dtype=dtype_name, backend=backend, dims=inputs["dims"])
                try:
                    fwd, fwd_bwd, peak_mb, out = bench_one(inputs, backend, device, warmup, repeats)
                except Exception as exc:  # noqa: BLE001 - an optional comparison kernel may not run here
                    if backend == "torch":
                        raise
                    rows.append(dict(row, error=f"{type(exc).__name__}: {exc}"[:200]))
                    on_row()
                    continue
                if backend == "torch":
                    ref = (fwd, fwd_bwd, out)
                rows.append(dict(row, forward_ms=round(fwd, 4), forward_backward_ms=round(fwd_bwd, 4),
                                 forward_speedup=round(ref[0] / fwd, 2),
                                 forward_backward_speedup=round(ref[1] / fwd_bwd, 2),
                                 peak_mem_forward_backward_mb=None if peak_mb is None else round(peak_mb, 1),
                                 ideal_bytes_forward=bytes_fwd, ideal_bytes_forward_backward=bytes_fwd_bwd,
                                 forward_x_floor=round(fwd / floor_fwd_ms, 2),
                                 forward_backward_x_floor=round(fwd_bwd / floor_fwd_bwd_ms, 2),
                                 max_abs_diff_vs_reference=float((out.float() - ref[2].float()).abs().max())))
                on_row()
                print(f"  done {format_row(rows[-1])}", file=sys.stderr, flush=True)


def format_row(r: dict) -> str:
    lead = f"{r['shape']:18s} {r['device']:6s} {r['dtype']:8s} {r['backend']:16s}"
    if "error" in r:
        return f"{lead} {r['error']}"
    peak = "-" if r["peak_mem_forward_backward_mb"] is None else f"{r['peak_mem_forward_backward_mb']:.1f}"
    return (f"{lead} {r['forward_ms']:9.3f} {r['forward_speedup']:6.1f}x {r['forward_x_floor']:7.1f}x "
            f"{r['forward_backward_ms']:11.3f} {r['forward_backward_speedup']:6.1f}x "
            f"{r['forward_backward_x_floor']:7.1f}x {peak:>9s} {r['max_abs_diff_vs_reference']:11.1e}")


def print_table(rows: list[dict], bandwidth: dict) -> None:
    header = (f"{'shape':18s} {'device':6s} {'dtype':8s} {'backend':16s} {'fwd ms':>9s} {'x ref':>7s} "
              f"{'x floor':>8s} {'fwd+bwd ms':>11s} {'x ref':>7s} {'x floor':>8s} {'peak MiB':>9s} {'max |diff|':>11s}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(format_row(r))
    print("copy bandwidth (the floor's denominator): "
          + ", ".join(f"{d} {gbs:.1f} GB/s" for d, gbs in bandwidth.items()))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10, help="timed samples per measurement (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls before timing")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch.set_num_threads (numba follows it); default: torch's default")
    parser.add_argument("--shapes", nargs="+", default=["small"], choices=[*SHAPE_SETS, *SHAPES],
                        help="shape names or sets: small (default), paper (800 x 1333, for GPUs)")
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=None,
                        help="default: float32 on the CPU, float32 and bfloat16 on a GPU")
    parser.add_argument("--devices", nargs="+", choices=["cpu", "cuda"], default=None,
                        help="default: the CPU, and the GPU when present")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "kernels.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    shapes = shape_names(args.shapes)
    rows, bandwidth = [], {}

    import numba  # noqa: PLC0415 - only for the record

    result = dict(
        settings=dict(repeats=args.repeats, warmup=args.warmup, threads=torch.get_num_threads(),
                      statistic="median", timer="torch.utils.benchmark.Timer",
                      calls_per_sample={d: kernel_bench.calls_per_sample(d) for d in devices}),
        copy_bandwidth_gbs=bandwidth,
        machine=kernel_bench.describe_machine(),
        environment=dict(torch=torch.__version__, numba=numba.__version__, python=platform.python_version(),
                         cpu_count=os.cpu_count(), load_average=list(os.getloadavg()),
                         gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None),
        results=rows,  # filled in place as the rows come
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")

    for device in devices:
        dtypes = args.dtypes or (["float32", "bfloat16"] if device == "cuda" else ["float32"])
        bandwidth[device] = copy_bandwidth_gbs(device, args.warmup, args.repeats)
        run_rows(device, shapes, dtypes, args.warmup, args.repeats, bandwidth[device], rows, save)
    print_table(rows, bandwidth)
    save()
    print(f"saved {args.out}")
    return result


if __name__ == "__main__":
    main()
