"""Time ms_deform_attn backends: forward and forward+backward, at an encoder and a decoder shape.

    python bench/kernels.py [--repeats 10] [--warmup 2] [--threads N] [--out bench/results/kernels.json]

Shapes (float32, M = 8 heads of D = 32 channels, P = 4 points per level, 4 levels at strides 8..64):

    encoder  N = 2, 320 x 320 image -> levels 40x40, 20x20, 10x10, 5x5, every token queries (Lq = S = 2125)
    decoder  N = 2, 640 x 640 image -> levels 80x80, 40x40, 20x20, 10x10 (S = 8500), Lq = 300 queries

Every available backend runs on every available device (the CPU; the GPU too when present) and is
compared with the torch reference on the same device: the table shows median milliseconds and the
speed-up over the reference ("x ref"), plus the largest deviation of the output from the reference as
a sanity check. Results go to a JSON file as well.

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
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # runnable from a source checkout without installing
    sys.path.insert(0, str(ROOT))

from msdetr_lite import ops  # noqa: E402

SHAPES = {
    # name: (N, levels (H, W), Lq or None for "every token", M, D, P)
    "encoder": (2, [(40, 40), (20, 20), (10, 10), (5, 5)], None, 8, 32, 4),
    "decoder": (2, [(80, 80), (40, 40), (20, 20), (10, 10)], 300, 8, 32, 4),
}


def make_inputs(shape_name: str, device: str, seed: int = 0):
    N, levels, Lq, M, D, P = SHAPES[shape_name]
    gen = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(levels, dtype=torch.int64)
    sizes = spatial_shapes[:, 0] * spatial_shapes[:, 1]
    level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    S = int(sizes.sum())
    Lq = S if Lq is None else Lq
    L = len(levels)
    value = torch.randn(N, S, M, D, generator=gen)
    loc = torch.rand(N, Lq, M, L, P, 2, generator=gen)
    weights = torch.rand(N, Lq, M, L, P, generator=gen).softmax(-1)
    grad_out = torch.randn(N, Lq, M * D, generator=gen)
    to = lambda t: t.to(device)  # noqa: E731
    return dict(value=to(value), spatial_shapes=to(spatial_shapes), level_start_index=to(level_start_index),
                sampling_locations=to(loc), attention_weights=to(weights), grad_out=to(grad_out),
                dims=dict(N=N, S=S, Lq=Lq, M=M, D=D, L=L, P=P))


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_ms(fn, device: str, warmup: int, repeats: int) -> float:
    """Median wall time of fn() in milliseconds, after warm-up calls (numba compile, CUDA build,
    allocator and cache warm-up all happen there)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def copy_bandwidth_gbs(device: str, warmup: int, repeats: int, mib: int = 256) -> float:
    """GB/s of a device-local tensor copy (bytes read + bytes written per second)."""
    src = torch.empty(mib * 2**20 // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device, warmup, repeats)
    return 2 * src.numel() * src.element_size() / (ms * 1e-3) / 1e9


def ideal_bytes(inputs) -> tuple[int, int]:
    """(forward, forward+backward) bytes when every tensor is read or written exactly once."""
    size = lambda t: t.numel() * t.element_size()  # noqa: E731
    ins = sum(size(inputs[k]) for k in ("value", "sampling_locations", "attention_weights"))
    out = size(inputs["grad_out"])  # the output has grad_output's shape and dtype
    # backward: reads the three inputs and grad_output, writes a gradient of each input's size
    return ins + out, (ins + out) + (ins + out) + ins


def bench_one(inputs, backend: str, device: str, warmup: int, repeats: int):
    args = [inputs[k] for k in ("value", "spatial_shapes", "level_start_index", "sampling_locations",
                                "attention_weights")]

    def forward():
        with torch.no_grad():
            return ops.ms_deform_attn(*args, backend=backend)

    leaves = [args[0].clone().requires_grad_(), args[3].clone().requires_grad_(),
              args[4].clone().requires_grad_()]

    def forward_backward():
        for t in leaves:
            t.grad = None
        out = ops.ms_deform_attn(leaves[0], args[1], args[2], leaves[1], leaves[2], backend=backend)
        out.backward(inputs["grad_out"])

    fwd = time_ms(forward, device, warmup, repeats)
    fwd_bwd = time_ms(forward_backward, device, warmup, repeats)
    return fwd, fwd_bwd, forward()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per measurement (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls before timing")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch.set_num_threads (numba follows it); default: torch's default")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "kernels.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows, bandwidth = [], {}
    for device in devices:
        backends = ops.available_backends(device)  # "torch" first: it is the reference
        bandwidth[device] = copy_bandwidth_gbs(device, args.warmup, args.repeats)
        for shape in args.shapes:
            inputs = make_inputs(shape, device)
            bytes_fwd, bytes_fwd_bwd = ideal_bytes(inputs)
            floor_fwd_ms = bytes_fwd / (bandwidth[device] * 1e9) * 1e3
            floor_fwd_bwd_ms = bytes_fwd_bwd / (bandwidth[device] * 1e9) * 1e3
            ref_fwd = ref_fwd_bwd = ref_out = None
            for backend in backends:
                fwd, fwd_bwd, out = bench_one(inputs, backend, device, args.warmup, args.repeats)
                if backend == "torch":
                    ref_fwd, ref_fwd_bwd, ref_out = fwd, fwd_bwd, out
                rows.append(dict(shape=shape, device=device, backend=backend, dims=inputs["dims"],
                                 forward_ms=round(fwd, 3), forward_backward_ms=round(fwd_bwd, 3),
                                 forward_speedup=round(ref_fwd / fwd, 2),
                                 forward_backward_speedup=round(ref_fwd_bwd / fwd_bwd, 2),
                                 ideal_bytes_forward=bytes_fwd, ideal_bytes_forward_backward=bytes_fwd_bwd,
                                 forward_x_floor=round(fwd / floor_fwd_ms, 2),
                                 forward_backward_x_floor=round(fwd_bwd / floor_fwd_bwd_ms, 2),
                                 max_abs_diff_vs_reference=float((out - ref_out).abs().max())))
                print(f"  done {shape:8s} {device:4s} {backend}", file=sys.stderr, flush=True)

    header = (f"{'shape':8s} {'device':6s} {'backend':7s} {'fwd ms':>9s} {'x ref':>7s} {'x floor':>8s} "
              f"{'fwd+bwd ms':>11s} {'x ref':>7s} {'x floor':>8s} {'max |diff|':>11s}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['shape']:8s} {r['device']:6s} {r['backend']:7s} {r['forward_ms']:9.2f} "
              f"{r['forward_speedup']:6.1f}x {r['forward_x_floor']:7.1f}x {r['forward_backward_ms']:11.2f} "
              f"{r['forward_backward_speedup']:6.1f}x {r['forward_backward_x_floor']:7.1f}x "
              f"{r['max_abs_diff_vs_reference']:11.1e}")
    print("copy bandwidth (the floor's denominator): "
          + ", ".join(f"{d} {gbs:.1f} GB/s" for d, gbs in bandwidth.items()))

    import numba  # noqa: PLC0415 - only for the record

    result = dict(
        settings=dict(repeats=args.repeats, warmup=args.warmup, threads=torch.get_num_threads(),
                      dtype="float32", statistic="median"),
        copy_bandwidth_gbs=bandwidth,
        environment=dict(torch=torch.__version__, numba=numba.__version__, python=platform.python_version(),
                         cpu_count=os.cpu_count(), load_average=list(os.getloadavg()),
                         gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None),
        results=rows,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {args.out}")
    return result


if __name__ == "__main__":
    main()
