"""One process timing training steps of the `tiny` preset on real shapes batches: what
bench/contention.py and bench/throughput.py launch, once per configuration, in a fresh process.

    python bench/step_worker.py --threads 1 --steps 20 [--channels-last] [--flops] [overrides...]

A step = forward + loss (matching included) + backward + clip + AdamW step, as the engine runs
it, on `--batches` real training batches (batch 4, the demo's multi-scale transforms, seed 0)
taken in turn. Threads: `--threads` (torch.set_num_threads), or with --library-policy what
msdetr_lite.threads.configure() chooses; the OpenMP environment is whatever this process was
started with (the caller sets OMP_* / GOMP_* variables). Prints one JSON line: median / quartile step seconds, and with --flops the
FLOP of one step (torch.utils.flop_counter: matmuls and convolutions, forward and backward; the
deformable sampling and elementwise work are not counted, so GFLOP/s is a lower bound).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def launch(worker_args, omp_env=None) -> dict:
    """Run this worker in a fresh process with `worker_args`, from an environment without the
    caller's OMP_* / GOMP_* / MSDETR_THREADS (plus `omp_env`); returns its JSON line."""
    import os
    import subprocess
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_", "MSDETR_THREADS"))}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(omp_env or {})
    res = subprocess.run([sys.executable, str(Path(__file__).resolve()), *worker_args], capture_output=True,
                         text=True, env=env, cwd=REPO)
    if res.returncode != 0:
        raise SystemExit(f"step_worker {' '.join(worker_args)} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def write_report(path, rows, raw, started: float, **meta) -> None:
    """Print `rows` as a table and write {machine, date, the tiny ms step at batch 4, **meta,
    wall_s, rows, raw} to the JSON file `path`."""
    from msdetr_lite.kernel_bench import describe_machine
    from msdetr_lite.viz import markdown_table
    print(markdown_table(rows))
    doc = {"machine": describe_machine(), "date": time.strftime("%Y-%m-%d"), "preset": "tiny", "scheme": "ms",
           "batch": 4, **meta, "wall_s": round(time.perf_counter() - started, 1), "rows": rows, "raw": raw}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {path}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--scheme", default="ms")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--flops", action="store_true")
    p.add_argument("--library-policy", action="store_true", help="threads chosen by msdetr_lite.threads")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    import os
    policy = os.environ.get("OMP_WAIT_POLICY", "(default)")     # what libgomp reads when torch loads it
    omp_env = {k: v for k, v in os.environ.items() if k.startswith(("OMP_", "GOMP_"))}
    import torch

    from msdetr_lite.config import apply_overrides, preset
    from msdetr_lite.data import build_dataset, build_train_loader
    from msdetr_lite.engine import build_optimizer, seed_everything
    from msdetr_lite.losses import SetCriterion
    from msdetr_lite.models import build_model

    if args.library_policy:
        from msdetr_lite import threads
        args.threads = threads.configure()
    else:
        torch.set_num_threads(args.threads)
    cfg = apply_overrides(preset("tiny"), [f"model.supervision={args.scheme}", "data.num_workers=0",
                                           *args.overrides])
    seed_everything(0)
    ds = build_dataset(cfg.data, "train")
    cfg.model.num_classes = ds.num_classes
    loader, sampler, gen = build_train_loader(cfg, ds, cfg.train.batch_size)
    sampler.set_epoch(0)
    gen.manual_seed(0)
    batches = []
    for images, masks, targets in loader:
        batches.append((images, masks, targets))
        if len(batches) == args.batches:
            break
    model = build_model(cfg.model).train()
    if args.channels_last:                      # NHWC activations for the trunk's convolutions
        model = model.to(memory_format=torch.channels_last)
        batches = [(im.contiguous(memory_format=torch.channels_last), m, t) for im, m, t in batches]
    criterion = SetCriterion(cfg.model.num_classes, cfg.loss, cfg.matcher, cfg.model.supervision,
                             cfg.model.num_queries, cfg.model.group_num, generator=torch.Generator().manual_seed(0))
    optimizer = build_optimizer(model, cfg.train)
    params = [q for q in model.parameters() if q.requires_grad]

    def step(i: int) -> None:
        images, masks, targets = batches[i % len(batches)]
        losses = criterion(model(images, masks), targets)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.train.clip_max_norm)
        optimizer.step()

    flops = None
    if args.flops:
        from torch.utils.flop_counter import FlopCounterMode
        counts = []
        for i in range(len(batches)):           # the batches differ in size (multi-scale): average them
            with FlopCounterMode(display=False) as fc:
                step(i)
            counts.append(fc.get_total_flops())
        flops = statistics.mean(counts)
    for i in range(args.warmup):
        step(i)
    times = []
    for i in range(args.steps):
        t0 = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - t0)
    q = statistics.quantiles(times, n=4)
    print(json.dumps({"threads": args.threads, "omp_wait_policy": policy, "omp_env": omp_env,
                      "channels_last": args.channels_last, "step_s": statistics.median(times),
                      "step_p25_s": q[0], "step_p75_s": q[2], "steps": args.steps, "flops": flops,
                      "gflops_per_s": flops / statistics.median(times) / 1e9 if flops else None}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
