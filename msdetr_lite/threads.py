"""CPU threads for training: how many a process uses, chosen by the library.

    from msdetr_lite import threads
    threads.configure()                 # torch.set_num_threads(threads.choose()); returns the count
    threads.subprocess_env(1)           # the environment for a one-thread training subprocess

**Why.** torch's CPU kernels run on OpenMP threads that meet at a barrier after every parallel
region, and libgomp lets a waiting thread spin before it sleeps. With as many threads as cores and
one other busy process (a browser, a notebook kernel executing a cell), every region waits for the
thread that shares its core with the neighbour. bench/contention.py measured it side by side
(2-core AMD EPYC VM, 2026-12-07, tiny step at batch 4; docs/results.md, Threads): two threads
0.27 s per step quiet and 0.86-0.99 s beside one busy process (3.2-3.6x); one thread 0.40-0.41 s
quiet and 0.42 s beside it (1.04x). A passive wait (OMP_WAIT_POLICY=PASSIVE) or a short spin
(GOMP_SPINCOUNT) does not rescue two threads: passive costs 1.7x when the machine is quiet, a
short spin still loses 2.8x when it is not.

**The policy.** `choose()`: $MSDETR_THREADS or $OMP_NUM_THREADS if set, else half the cores (1 to 8),
so that one busy neighbour never shares a core with a training thread; on a 2-core laptop that is
one thread, 1.5x slower than two when nothing else runs and 2.1-2.4x faster when something does.
`msdetr train` applies it (set MSDETR_THREADS=2 on a machine you know is quiet); the zoo and the
demo train side by side, one thread per process, so both cores work. The OpenMP wait policy is
left at libgomp's default: with one thread there is no barrier to wait at.
"""
from __future__ import annotations

import os
from typing import Optional

from .errors import UsageError

ENV_THREADS = "MSDETR_THREADS"


def choose(default: Optional[int] = None) -> int:
    """Threads for torch in this process: $MSDETR_THREADS, else $OMP_NUM_THREADS (torchrun sets it
    to 1 per process), else `default`, else half the cores (1..8)."""
    for var in (ENV_THREADS, "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value:
            try:
                n = int(value)
            except ValueError:
                raise UsageError(f"{var}={value!r} is not a whole number of threads") from None
            if n < 1:
                raise UsageError(f"{var}={value!r}: at least 1 thread")
            return n
    if default is not None:
        return max(1, int(default))
    return max(1, min(8, (os.cpu_count() or 2) // 2))


def configure(default: Optional[int] = None) -> int:
    """torch.set_num_threads(choose(default)); returns the count."""
    import torch
    n = choose(default)
    torch.set_num_threads(n)
    return n


def subprocess_env(threads: int, base: Optional[dict] = None) -> dict:
    """The environment of a training subprocess of `threads` threads (OMP_NUM_THREADS and
    MSDETR_THREADS), from `base` (default os.environ)."""
    env = dict(os.environ if base is None else base)
    env["OMP_NUM_THREADS"] = env[ENV_THREADS] = str(threads)
    return env
