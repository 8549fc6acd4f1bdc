"""Run a function in N gloo processes on localhost (the CPU stand-in for NCCL on GPUs)."""
import multiprocessing.connection
import os
import tempfile
import time
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

DEADLINE_S = 300  # the slowest gloo test takes well under a minute here on one thread


def _entry(rank, fn, world, store, args, error_file):
    try:
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
        try:
            fn(rank, world, *args)
        finally:
            dist.destroy_process_group()
    except BaseException:
        with open(error_file, "w") as f:
            f.write(traceback.format_exc())
        raise


def _failure(rank: int, world: int, code: int, error_file: str) -> str:
    text = open(error_file).read() if os.path.exists(error_file) else "(no traceback written)\n"
    return f"gloo rank {rank} of {world} exited with code {code}:\n{text}"


def run_gloo(fn, world: int, *args, deadline_s: float = DEADLINE_S) -> None:
    """fn(rank, world, *args) in `world` spawned processes; fn must be importable (module level).

    Raises with every failed rank's traceback if any process fails (a rank waiting for it in a
    collective may fail in turn, and either may be noticed first; the others are ended), and
    with every rank's state if they have not all finished within deadline_s. Each process's exit
    is polled (waitpid), not only awaited on its sentinel pipe: a pipe that something else still
    holds open cannot leave an exited process unnoticed (a full run once stopped for 20 minutes
    with two exited ranks unreaped)."""
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        errors = [os.path.join(tmp, f"rank{rank}.error") for rank in range(world)]
        procs = [ctx.Process(target=_entry, args=(rank, fn, world, store, args, errors[rank]), daemon=True)
                 for rank in range(world)]
        for p in procs:
            p.start()
        deadline = time.monotonic() + deadline_s
        try:
            while True:
                codes = [p.exitcode for p in procs]  # polls waitpid(WNOHANG)
                failed = [rank for rank, code in enumerate(codes) if code not in (None, 0)]
                if failed:
                    time.sleep(1.0)  # the others, if they fail in turn (a peer gone), report too
                    codes = [p.exitcode for p in procs]
                    raise RuntimeError("\n".join(_failure(rank, world, code, errors[rank])
                                                 for rank, code in enumerate(codes) if code not in (None, 0)))
                if all(code == 0 for code in codes):
                    return
                if time.monotonic() > deadline:
                    states = ", ".join(f"rank {r}: {'running' if c is None else f'exit {c}'} (pid {p.pid})"
                                       for r, (p, c) in enumerate(zip(procs, codes)))
                    raise TimeoutError(f"{fn.__name__} in {world} gloo processes not finished after "
                                       f"{deadline_s:.0f} s: {states}")
                multiprocessing.connection.wait([p.sentinel for p, c in zip(procs, codes) if c is None], timeout=1.0)
        finally:
            for p in procs:
                if p.exitcode is None:
                    p.terminate()
            for p in procs:
                p.join(timeout=10)
                if p.exitcode is None:
                    p.kill()
                    p.join()
