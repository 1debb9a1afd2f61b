"""Training overhead of the supervision schemes: step time and peak memory at the same batch.

    python bench/overhead.py                          # tiny preset, o2o / ms / hybrid / group
    python bench/overhead.py --preset r50 --batch 2 --image-size 800 --steps 20   # on a GPU

On a GPU, before / after the batched criterion (issue 11), same card, same warm machine:

    python bench/overhead.py --device cuda --preset r50 --batch 2 --image-size 800 --steps 20 \
        --schemes o2o ms --json bench/results/overhead_cuda_batched.json
    python bench/overhead.py --device cuda --preset r50 --batch 2 --image-size 800 --steps 20 \
        --schemes o2o ms --reference-criterion --json bench/results/overhead_cuda_reference.json

One training step = forward + loss (matching included) + backward + clip + AdamW step, on a
fixed random batch (random images, 6 random GT boxes per image), measured after warm-up.
Each scheme runs in its own fresh subprocess, so the memory numbers do not leak into each other:

  * CUDA: torch.cuda.max_memory_allocated over the measured steps ("peak"), and the same minus
    the memory held before the first step (weights, i.e. "peak - weights": activations,
    gradients and optimizer state);
  * CPU: the process's peak resident set size (getrusage ru_maxrss) at the end, and that minus
    the RSS just before the first step. RSS is what the OS gave the process, allocator slack
    included: an honest upper bound, coarser than the CUDA counter.

The criterion (matching + losses) is timed on its own inside the step ("loss ms", and "crit %"
of the step). One extra, untimed step counts host syncs: on CUDA with
torch.cuda.set_sync_debug_mode("warn"), every synchronizing operation of the whole step and of
the criterion alone ("syncs": step/criterion); on the CPU there is no such thing ("n/a").
On both, "readbacks" counts the criterion's calls of Tensor.cpu / .item / .tolist and int() /
float() / bool() of a tensor, each of which is a host sync on a GPU (on the CPU the batched
criterion's count includes its one label-range check, skipped for targets already on a GPU). --reference-criterion measures the per-image criterion
(SetCriterion(batched=False)) for a before / after comparison.

The paper's claim (docs/method.md): `ms` costs a few percent over `o2o`, far less than
the extra queries of `hybrid` and `group`. On a shared CPU the times are noisy: use --repeats.
Writes bench/results/overhead.json (or --json).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SCHEMES = ("o2o", "ms", "hybrid", "group")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _random_batch(batch: int, size: int, num_classes: int, gts: int, device, seed: int = 0):
    import torch
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=g)
    masks = torch.zeros(batch, size, size, dtype=torch.bool)
    targets = []
    for i in range(batch):
        cxcy = 0.2 + 0.6 * torch.rand(gts, 2, generator=g)
        wh = 0.05 + 0.25 * torch.rand(gts, 2, generator=g)
        targets.append({"labels": torch.randint(0, num_classes, (gts,), generator=g).to(device),
                        "boxes": torch.cat([cxcy, wh], 1).to(device), "image_id": i,
                        "orig_size": torch.tensor([size, size], device=device),
                        "size": torch.tensor([size, size], device=device)})
    return images.to(device), masks.to(device), targets


# Tensor methods that read device data back to the host (each a sync on a GPU).
_READBACKS = ("cpu", "item", "tolist", "__int__", "__float__", "__bool__")


@contextmanager
def count_readbacks():
    """Counts calls of Tensor.cpu / .item / .tolist and int() / float() / bool() of a tensor
    inside the block: yields a dict with "n"."""
    import torch
    counts = {"n": 0}
    originals = {name: getattr(torch.Tensor, name) for name in _READBACKS}

    def counted(original):
        def method(self, *args, **kwargs):
            counts["n"] += 1
            return original(self, *args, **kwargs)
        return method
    for name, original in originals.items():
        setattr(torch.Tensor, name, counted(original))
    try:
        yield counts
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


@contextmanager
def count_cuda_syncs(device):
    """Synchronizing CUDA operations inside the block (torch.cuda.set_sync_debug_mode("warn")
    turns each into a warning, captured here): yields a dict with "n" (None on the CPU)."""
    import torch
    counts = {"n": None}
    if device.type != "cuda":
        yield counts
        return
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield counts
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    counts["n"] = sum("synchroniz" in str(w.message) for w in caught)


def worker(args) -> dict:
    """Measure one scheme in this process; returns a result dict."""
    import torch

    from msdetr_lite.config import apply_overrides, preset
    from msdetr_lite.engine import build_optimizer, resolve_device, seed_everything
    from msdetr_lite.losses import SetCriterion
    from msdetr_lite.models import build_model

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = apply_overrides(preset(args.preset), [f"model.supervision={args.worker}", *args.overrides])
    device = resolve_device(args.device)
    seed_everything(0)
    batch = args.batch or cfg.train.batch_size
    model = build_model(cfg.model).to(device).train()
    criterion = SetCriterion(cfg.model.num_classes, cfg.loss, cfg.matcher, cfg.model.supervision,
                             cfg.model.num_queries, cfg.model.group_num, generator=torch.Generator().manual_seed(0),
                             batched=not args.reference_criterion)
    optimizer = build_optimizer(model, cfg.train)
    params = [p for p in model.parameters() if p.requires_grad]
    images, masks, targets = _random_batch(batch, args.image_size, cfg.model.num_classes, args.gts, device)
    use_amp = args.amp and device.type == "cuda"

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base_mem = torch.cuda.memory_allocated(device) / 2**20
    else:
        base_mem = _rss_mb()

    times = {"step": [], "forward": [], "loss": [], "backward_opt": []}
    for i in range(args.warmup + args.steps):
        sync()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            outputs = model(images, masks)
        sync()
        t1 = time.perf_counter()
        losses = criterion(outputs, targets)
        sync()
        t2 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.train.clip_max_norm)
        optimizer.step()
        sync()
        t3 = time.perf_counter()
        if i >= args.warmup:
            times["step"].append(t3 - t0)
            times["forward"].append(t1 - t0)
            times["loss"].append(t2 - t1)
            times["backward_opt"].append(t3 - t2)

    # one more step, untimed: host syncs of the whole step and of the criterion alone
    sync()
    with count_cuda_syncs(device) as step_syncs:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            outputs = model(images, masks)
        with count_cuda_syncs(device) as criterion_syncs, count_readbacks() as readbacks:
            losses = criterion(outputs, targets)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.train.clip_max_norm)
        optimizer.step()
    sync()
    if step_syncs["n"] is not None:      # the inner block's warnings are not seen by the outer
        step_syncs["n"] += criterion_syncs["n"]

    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        mem_kind = "cuda max_memory_allocated"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        mem_kind = "cpu ru_maxrss"
    q = statistics.quantiles(times["step"], n=4) if len(times["step"]) >= 2 else [times["step"][0]] * 3
    return {"scheme": args.worker, "device": str(device), "batch": batch, "image_size": args.image_size,
            "preset": args.preset, "num_queries": cfg.model.num_queries,
            "extra_queries": {"hybrid": cfg.model.hybrid_num_queries,
                              "group": (cfg.model.group_num - 1) * cfg.model.num_queries}.get(args.worker, 0),
            "params": sum(p.numel() for p in params),
            "step_s": statistics.median(times["step"]), "step_p25_s": q[0], "step_p75_s": q[2],
            **{f"{k}_s": statistics.median(v) for k, v in times.items() if k != "step"},
            "criterion": "reference" if args.reference_criterion else "batched",
            "criterion_share": statistics.median(times["loss"]) / statistics.median(times["step"]),
            "host_syncs_step": step_syncs["n"], "host_syncs_criterion": criterion_syncs["n"],
            "criterion_readbacks": readbacks["n"],
            "peak_mem_mb": peak, "peak_minus_weights_mb": peak - base_mem, "mem_kind": mem_kind,
            "steps": args.steps, "warmup": args.warmup}


def run_scheme(scheme: str, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", scheme, "--preset", args.preset,
           "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--image-size", str(args.image_size), "--gts", str(args.gts), "--device", args.device,
           "--threads", str(args.threads), *(["--amp"] if args.amp else []),
           *(["--reference-criterion"] if args.reference_criterion else []), *args.overrides]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"scheme {scheme} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _syncs(r: dict) -> str:
    if r["host_syncs_step"] is None:
        return "n/a"
    return f"{r['host_syncs_step']}/{r['host_syncs_criterion']}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch", type=int, default=0, help="default: the preset's train.batch_size")
    p.add_argument("--steps", type=int, default=10, help="measured steps per scheme")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--image-size", type=int, default=160,
                   help="square images (default 160: hybrid's 100+300 queries need >= 400 encoder tokens)")
    p.add_argument("--gts", type=int, default=6, help="GT boxes per image")
    p.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=SCHEMES)
    p.add_argument("--repeats", type=int, default=1, help="rounds over the schemes; the median round is kept")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA only)")
    p.add_argument("--reference-criterion", action="store_true",
                   help="the per-image criterion (SetCriterion(batched=False)), for before / after")
    p.add_argument("--json", default=str(REPO / "bench" / "results" / "overhead.json"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", metavar="section.field=value")
    args = p.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args)))
        return 0

    rounds: dict[str, list[dict]] = {s: [] for s in args.schemes}
    for r in range(args.repeats):
        for s in args.schemes:                # interleaved, so a busy moment hits every scheme
            print(f"[round {r + 1}/{args.repeats}] {s} ...", file=sys.stderr, flush=True)
            rounds[s].append(run_scheme(s, args))
    results = []
    for s in args.schemes:
        ordered = sorted(rounds[s], key=lambda x: x["step_s"])
        res = dict(ordered[len(ordered) // 2])
        res["step_s_rounds"] = [x["step_s"] for x in rounds[s]]
        res["peak_mem_mb"] = statistics.median(x["peak_mem_mb"] for x in rounds[s])
        res["peak_minus_weights_mb"] = statistics.median(x["peak_minus_weights_mb"] for x in rounds[s])
        results.append(res)

    ref = next((r for r in results if r["scheme"] == "o2o"), results[0])
    for r in results:
        r["time_ratio"] = r["step_s"] / ref["step_s"]
        r["mem_ratio"] = r["peak_mem_mb"] / ref["peak_mem_mb"]
        r["mem_delta_ratio"] = r["peak_minus_weights_mb"] / max(ref["peak_minus_weights_mb"], 1e-9)

    first = results[0]
    print(f"\nstep time and peak memory, preset {first['preset']}, batch {first['batch']}, "
          f"{first['image_size']}x{first['image_size']} images, device {first['device']}, "
          f"median of {args.steps} steps after {args.warmup} warm-up, {args.repeats} round(s), "
          f"{first['criterion']} criterion")
    print(f"memory: {first['mem_kind']}"
          + ("; CPU RSS includes allocator slack, compare ratios rather than absolute values"
             if first["device"] == "cpu" else ""))
    head = (f"{'scheme':8} {'queries':>11} {'step ms':>9} {'x o2o':>6} {'fwd ms':>8} {'loss ms':>8} "
            f"{'bwd+opt ms':>10} {'peak MB':>9} {'x o2o':>6} {'peak-w MB':>10} {'x o2o':>6} "
            f"{'crit %':>6} {'syncs':>9} {'readbacks':>9}")
    print(head + "\n" + "-" * len(head))
    for r in results:
        queries = f"{r['num_queries']}+{r['extra_queries']}" if r["extra_queries"] else str(r["num_queries"])
        print(f"{r['scheme']:8} {queries:>11} {1e3 * r['step_s']:9.1f} {r['time_ratio']:6.2f} "
              f"{1e3 * r['forward_s']:8.1f} {1e3 * r['loss_s']:8.1f} {1e3 * r['backward_opt_s']:10.1f} "
              f"{r['peak_mem_mb']:9.0f} {r['mem_ratio']:6.2f} {r['peak_minus_weights_mb']:10.0f} "
              f"{r['mem_delta_ratio']:6.2f} {100 * r['criterion_share']:6.1f} {_syncs(r):>9} "
              f"{r['criterion_readbacks']:9d}")
    print("crit %: the criterion's share of the step; syncs: host syncs per step / of the criterion "
          "(CUDA only); readbacks: the criterion's Tensor.cpu/.item/.tolist/int/float/bool calls per step")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    from msdetr_lite.kernel_bench import describe_machine
    out.write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k != "worker"},
                               "machine": describe_machine(), "results": results}, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
