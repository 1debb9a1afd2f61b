"""Several trainings at once, one `msdetr train` subprocess each, with a progress bar per run.

    train_side_by_side({"ms": ["--overwrite", *overrides], "o2o": [...]}, totals={"ms": 1200, "o2o": 1200},
                       log_dir=Path("runs/demo"), output_dirs={"ms": ..., "o2o": ...}, threads=1)

Why side by side: on a 2-core CPU two one-thread trainings finish sooner than the same two one
after the other at two threads each (the tiny model's small kernels do not keep two threads
busy), and a one-thread process does not wait on a descheduled partner thread when something
else takes a core (msdetr_lite/threads.py; bench/contention.py). Each child's output goes to
`<log_dir>/<name>.log`; the bars read each run's metrics.jsonl (the engine appends a record every
train.log_every steps), so the children stay quiet.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Mapping, Sequence

from ..threads import subprocess_env
from . import PROJECT_ROOT, relative

__all__ = ["train_side_by_side", "steps_done"]


def steps_done(metrics: Path) -> int:
    """The last optimizer step a run's metrics.jsonl records (0 if none yet); a torn last line is skipped."""
    if not metrics.is_file():
        return 0
    done = 0
    with open(metrics, "rb") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("step"), int):
                done = max(done, rec["step"])
    return done


def train_side_by_side(runs: Mapping[str, Sequence[str]], totals: Mapping[str, int], log_dir: Path,
                       output_dirs: Mapping[str, Path], preset: str = "tiny", threads: int = 1,
                       progress: bool = True, poll_s: float = 2.0) -> dict:
    """Train every run of `runs` ({name: `msdetr train` flags and config overrides, e.g.
    ["--resume", "model.supervision=ms", ...]}) at once and wait for all of them.

    totals: optimizer steps per run (for the bars); output_dirs: each run's train.output_dir
    (where its metrics.jsonl appears).
    Returns {name: wall seconds}. A failed run raises RuntimeError with the end of its log once
    the others have finished; Ctrl-C stops them all."""
    from tqdm.auto import tqdm

    log_dir.mkdir(parents=True, exist_ok=True)
    env = subprocess_env(threads)
    procs, logs, bars, started, walls = {}, {}, {}, {}, {}
    try:
        for i, (name, args) in enumerate(runs.items()):
            cmd = [sys.executable, "-m", "msdetr_lite", "train", "--preset", preset, "--no-progress", *args]
            logs[name] = log_dir / f"{name}.log"
            with open(logs[name], "w") as f:
                f.write(" ".join(cmd[1:]) + "\n")
                f.flush()
                procs[name] = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=PROJECT_ROOT)
            started[name] = time.perf_counter()
            bars[name] = tqdm(total=totals[name], desc=f"{name:>6s}", unit="step", position=i, disable=not progress,
                              dynamic_ncols=True)
        while procs.keys() - walls.keys():
            time.sleep(poll_s)
            for name, proc in procs.items():
                bar = bars[name]
                bar.update(min(totals[name], steps_done(Path(output_dirs[name]) / "metrics.jsonl")) - bar.n)
                if name not in walls and proc.poll() is not None:
                    walls[name] = time.perf_counter() - started[name]
                    if proc.returncode == 0:
                        bar.update(totals[name] - bar.n)
    except KeyboardInterrupt:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            proc.wait()
        raise
    finally:
        for bar in bars.values():
            bar.close()
    failed = [n for n, p in procs.items() if p.returncode != 0]
    if failed:
        tails = "\n".join(f"--- {n} (exit {procs[n].returncode}, {relative(logs[n])}):\n"
                          + "".join(logs[n].read_text().splitlines(keepends=True)[-15:]) for n in failed)
        raise RuntimeError(f"training {', '.join(failed)} failed:\n{tails}")
    return walls
