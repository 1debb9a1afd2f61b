"""Training beside a busy neighbour: the step time quiet vs with one other busy process, per
thread count and OpenMP wait policy, side by side in one run.

    python bench/contention.py                   # tiny preset, ms, 20 steps per measurement
    python bench/contention.py --steps 40 --repeats 2

Why (issue 24): torch's CPU kernels run on OpenMP threads, and libgomp's default lets a thread
that waits at a barrier spin for a while. With two threads on a 2-core machine and a browser or a
notebook kernel busy on one core, every parallel region waits for a descheduled thread. The
neighbour here is a plain busy loop in another process (one core's worth of work, like a kernel
executing a cell). Each configuration runs bench/step_worker.py in a fresh process: quiet, then
with the neighbour running; the measurements alternate so that drift in the machine's speed
touches every configuration alike. "library" is what msdetr_lite chooses by itself
(msdetr_lite.threads: the worker imports msdetr_lite before torch, with no OMP_* set in its
environment). The table gives the median step, busy / quiet, and each against the quiet 2-thread
default. Writes --json (default docs/results/contention.json) with the machine.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from step_worker import launch, write_report  # noqa: E402

# (label, threads, OpenMP environment, threads chosen by msdetr_lite.threads instead)
CONFIGS = [("2 threads, OpenMP default wait", 2, {}, False),
           ("2 threads, OMP_WAIT_POLICY=PASSIVE", 2, {"OMP_WAIT_POLICY": "PASSIVE"}, False),
           ("2 threads, GOMP_SPINCOUNT=10000", 2, {"GOMP_SPINCOUNT": "10000"}, False),
           ("2 threads, GOMP_SPINCOUNT=1000", 2, {"GOMP_SPINCOUNT": "1000"}, False),
           ("1 thread", 1, {}, False),
           ("library (msdetr_lite.threads)", 0, {}, True)]


def measure(threads: int, omp_env: dict, library: bool, steps: int) -> dict:
    return launch(["--steps", str(steps), *(["--library-policy"] if library else ["--threads", str(threads)])],
                  omp_env)


def busy_neighbour() -> subprocess.Popen:
    """Another process that keeps one core busy until killed."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=1, help="alternating rounds; medians over them")
    p.add_argument("--configs", nargs="+", type=int, help="indices into CONFIGS (default: all)")
    p.add_argument("--json", default=str(REPO / "docs" / "results" / "contention.json"))
    args = p.parse_args(argv)
    configs = [CONFIGS[i] for i in args.configs] if args.configs else CONFIGS

    results = {label: {"quiet": [], "busy": []} for label, *_ in configs}
    meta = {}
    t0 = time.perf_counter()
    for r in range(args.repeats):
        for label, threads, omp_env, library in configs:
            for kind in ("quiet", "busy"):
                neighbour = busy_neighbour() if kind == "busy" else None
                try:
                    time.sleep(0.5 if neighbour else 0)
                    out = measure(threads, omp_env, library, args.steps)
                finally:
                    if neighbour:
                        neighbour.kill()
                        neighbour.wait()
                results[label][kind].append(out["step_s"])
                meta[label] = {"threads": out["threads"], "omp_wait_policy": out["omp_wait_policy"],
                               "omp_env": " ".join(f"{k}={v}" for k, v in sorted(out["omp_env"].items())) or "-"}
                print(f"round {r + 1}: {label:38s} {kind:5s} {out['step_s']:.3f} s/step", flush=True)

    def med(xs):
        xs = sorted(xs)
        return xs[len(xs) // 2]

    base = med(results[configs[0][0]]["quiet"])
    rows = []
    for label, *_ in configs:
        q, b = med(results[label]["quiet"]), med(results[label]["busy"])
        rows.append({"configuration": label, "threads": meta[label]["threads"],
                     "OpenMP environment": meta[label]["omp_env"], "OMP_WAIT_POLICY": meta[label]["omp_wait_policy"],
                     "quiet s/step": round(q, 3),
                     "busy s/step": round(b, 3), "busy / quiet": round(b / q, 2),
                     "quiet vs 2-thread default": round(q / base, 2), "busy vs 2-thread default quiet": round(b / base, 2)})
    write_report(args.json, rows, results, t0, steps=args.steps, repeats=args.repeats,
                 neighbour="one busy-looping Python process")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
