"""Run independent pieces of CPU tensor work side by side, one single-threaded worker per core.

Why (measured with benchmarks/bench_lrn.py): a chain of many small PyTorch ops, such as
the fast LRN's passes over cache-sized chunks of a batch, opens one OpenMP parallel region per
op. On a machine shared with other processes (data-loader workers, other jobs), each region
waits for its slowest, descheduled thread, and the chain became many times slower than on a
quiet machine, slower even than the unfused baseline. Here each worker thread runs its ops on
one thread (no regions, no barriers), and the workers run in parallel because PyTorch ops
release the GIL.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Callable, Sequence, TypeVar

import torch

T = TypeVar("T")

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def _make_single_threaded() -> None:
    torch.get_num_threads()   # let torch set up this thread's OpenMP state (done on first use) ...
    torch.set_num_threads(1)  # ... then make this thread's own ops single-threaded


def _workers(n: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size < n:
            if _pool is not None:
                _pool.shutdown(wait=False)
            threads = torch.get_num_threads()
            _pool = ThreadPoolExecutor(n, thread_name_prefix="repro-cpu",
                                       initializer=_make_single_threaded)
            _pool_size = n
            started = threading.Barrier(n + 1, timeout=60)  # n tasks that all block: n threads
            waits = [_pool.submit(started.wait) for _ in range(n)]
            started.wait()
            for w in waits:
                w.result()
            # torch.set_num_threads(1) in a worker also set the default that threads started
            # later inherit; put back this thread's own count
            torch.set_num_threads(threads)
        return _pool


def _forget_pool() -> None:  # a forked child has none of the parent's threads
    global _lock, _pool, _pool_size
    _lock, _pool, _pool_size = threading.Lock(), None, 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def run_parts(work: Callable[[list[T]], object], parts: Sequence[T]) -> None:
    """Call work(some_parts) on disjoint sublists covering `parts`: one sublist per worker, at
    most torch.get_num_threads() of them, in parallel; inline when one thread would do.
    `work` runs under torch.inference_mode() (it writes results into tensors it is given)."""
    parts = list(parts)
    n = min(torch.get_num_threads(), len(parts))
    if n <= 1:
        with torch.inference_mode():
            work(parts)
        return

    def task(mine: list[T]) -> None:
        with torch.inference_mode():  # grad mode is per thread: set it here, not in the caller
            work(mine)

    pool = _workers(torch.get_num_threads())
    futures = [pool.submit(task, parts[i::n]) for i in range(n)]
    wait(futures)  # all of them, so that none still writes when an error is raised below
    for f in futures:
        f.result()
